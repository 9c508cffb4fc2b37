//! Private files and parallel sandboxes, through the `sandvisor` binary with
//! real QEMU guests from the default assets.
//!
//! - After `start`, every entry under the runtime directory is private:
//!   directories 0700, files and sockets 0600, walked recursively. This
//!   needs only a started VMM; the `exec` after it needs a booted guest.
//! - While `run` runs its command, its VM directory is private too: QEMU's
//!   QMP, console and agent sockets 0600, not the 0755 QEMU's umask gives
//!   (a booted guest: the command must be running).
//! - Ten sandboxes created and started at once all come up, with distinct
//!   control, console and agent sockets; every one runs a command (a
//!   booted guest).
//! - Commands on one sandbox from several shells at once take turns: each
//!   succeeds with its own output (a booted guest).
//!
//! Fails, not skips, when the guest assets are missing. The tests take
//! turns: each boots its own VMs.

mod lifecycle_support;

use std::collections::BTreeSet;
use std::time::Duration;

use lifecycle_support::{pid, wait_gone, Env};
use serde_json::Value;

static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn require_assets() {
    let dir = sandvisor::paths::asset_dir();
    for f in [sandvisor::paths::KERNEL_FILE, sandvisor::paths::INITRD_FILE] {
        assert!(
            dir.join(f).is_file(),
            "guest asset {} is missing: run sandvisor image build",
            dir.join(f).display()
        );
    }
}

#[track_caller]
fn boot(env: &Env, id: &str) -> Value {
    let create = [
        "create",
        "--hypervisor",
        "qemu",
        "--id",
        id,
        "--memory",
        "256",
    ];
    assert_eq!(env.run(&create).ok().trim(), id);
    env.run(&["start", id, "--timeout", "240"]).ok();
    let state = env.state(id);
    assert_eq!(state["status"], "running", "{state:#}");
    state
}

#[track_caller]
fn delete_all(env: &Env, states: &[(String, Value)]) {
    for (id, state) in states {
        let (sup, vmm) = (pid(state, "supervisor"), pid(state, "vmm"));
        env.run(&["delete", "--force", id]).ok();
        assert!(
            wait_gone(sup, Duration::from_secs(10)),
            "supervisor of {id} left"
        );
        assert!(wait_gone(vmm, Duration::from_secs(10)), "VMM of {id} left");
    }
}

#[test]
fn vm_every_entry_under_the_runtime_directory_is_private_after_start() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let state = boot(&env, "priv");
    let loose = sandvisor::private::not_private(env.runtime_dir()).expect("walk");
    let shown: Vec<String> = loose
        .iter()
        .map(|(p, m)| format!("{:o} {}", m, p.display()))
        .collect();
    assert!(shown.is_empty(), "not private:\n{}", shown.join("\n"));
    // The walk saw the VMM's sockets and the console log, not an empty tree.
    let vm_dir = env.runtime_dir().join("vm").join("priv");
    for name in ["qmp.sock", "qemu.log"] {
        assert!(vm_dir.join(name).exists(), "{name} missing in {vm_dir:?}");
    }
    assert_eq!(env.run(&["exec", "priv", "--", "echo", "hi"]).ok(), "hi\n");
    assert!(sandvisor::private::not_private(env.runtime_dir())
        .expect("walk")
        .is_empty());
    delete_all(&env, &[("priv".to_string(), state)]);
}

#[test]
fn vm_the_vm_directory_of_run_is_private_while_the_command_runs() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    // The command says it runs, then waits for a line on its stdin.
    let mut child = env
        .command()
        .args([
            "run",
            "--hypervisor",
            "qemu",
            "--memory",
            "256",
            "--timeout",
            "240",
        ])
        .args(["--", "sh", "-c", "echo up; read line; echo got $line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sandvisor run");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read run's output");
    // Look while the command runs; whatever is found, the command is then
    // let go and run ends, so that nothing is left on a failure.
    let vm_root = env.runtime_dir().join("vm");
    let vm_dirs: Vec<_> = std::fs::read_dir(&vm_root)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    let sockets: Vec<String> = vm_dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            use std::os::unix::fs::FileTypeExt;
            e.file_type().is_ok_and(|t| t.is_socket())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // The runtime directory is the test's (a named one keeps its mode);
    // what sandvisor made under it is walked.
    let loose = sandvisor::private::not_private(&vm_root).expect("walk");
    let _ = writeln!(stdin, "bye");
    drop(stdin);
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
    let out = child.wait_with_output().expect("run exits");

    assert_eq!(
        first,
        "up\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rest, "got bye\n");
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(vm_dirs.len(), 1, "one VM directory: {vm_dirs:?}");
    let vm_dir = &vm_dirs[0];
    // The walk saw the VMM's sockets, not an empty tree.
    for name in ["qmp.sock", "console.sock"] {
        assert!(
            sockets.iter().any(|s| s == name),
            "{name} not in {sockets:?}"
        );
    }
    let shown: Vec<String> = loose
        .iter()
        .map(|(p, m)| format!("{:o} {}", m, p.display()))
        .collect();
    assert!(shown.is_empty(), "not private:\n{}", shown.join("\n"));
    // run removed its VM directory.
    assert!(!vm_dir.exists(), "{vm_dir:?} left behind");
}

#[test]
fn vm_ten_sandboxes_started_at_once_all_come_up_apart() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let states: Vec<(String, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let env = &env;
                s.spawn(move || (id.clone(), boot(env, id)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("boot thread"))
            .collect()
    });
    for key in ["control_socket", "console_socket", "agent"] {
        let set: BTreeSet<String> = states.iter().map(|(_, s)| s[key].to_string()).collect();
        assert_eq!(set.len(), ids.len(), "{key} not distinct: {states:#?}");
    }
    let vmms: BTreeSet<u32> = states.iter().map(|(_, s)| pid(s, "vmm")).collect();
    assert_eq!(vmms.len(), ids.len());
    for id in &ids {
        assert_eq!(
            env.run(&["exec", id, "--", "echo", id]).ok(),
            format!("{id}\n")
        );
    }
    delete_all(&env, &states);
}

#[test]
fn vm_commands_from_several_shells_on_one_sandbox_take_turns() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let state = boot(&env, "turns");
    let outs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let env = &env;
                s.spawn(move || {
                    let script = format!("echo begin {i}; sleep 0.2; echo end {i}");
                    env.run(&["exec", "turns", "--", "sh", "-c", &script])
                        .ok()
                        .to_string()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("exec thread"))
            .collect()
    });
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(out, &format!("begin {i}\nend {i}\n"));
    }
    // State-changing commands queue on the sandbox lock instead of failing.
    for verb in ["pause", "resume"] {
        std::thread::scope(|s| {
            for v in [verb, "state", "list", "state"] {
                let env = &env;
                s.spawn(move || {
                    let args: &[&str] = if v == "list" { &[v] } else { &[v, "turns"] };
                    env.run(args).ok().to_string()
                });
            }
        });
    }
    assert_eq!(env.run(&["exec", "turns", "--", "echo", "ok"]).ok(), "ok\n");
    delete_all(&env, &[("turns".to_string(), state)]);
}
