//! A hybrid vsock through the `sandvisor` binary, with a real QEMU guest
//! from the default assets: `use_vsock = true` on a host without
//! `/dev/vhost-vsock` gives the guest a `vhost-user-vsock-pci` device
//! served by vhost-device-vsock, and the agent answers through it. Then a
//! daemon killed under a running VM: the supervisor stops the sandbox and
//! records it `dead` naming the daemon, and `delete` removes everything.
//!
//! Fails, not skips, when the guest assets or vhost-device-vsock are
//! missing (`scripts/setup.sh` installs both), or when this host has a
//! usable `/dev/vhost-vsock` (then `use_vsock` takes the kernel's vsock and
//! this test has nothing to prove).

mod lifecycle_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifecycle_support::{alive, kill, pid, wait_gone, Env, Run};
use serde_json::Value;

static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

const DAEMON: &str = "vhost-device-vsock";

fn require_host() {
    let dir = sandvisor::paths::asset_dir();
    for f in [sandvisor::paths::KERNEL_FILE, sandvisor::paths::INITRD_FILE] {
        assert!(
            dir.join(f).is_file(),
            "guest asset {} is missing: run sandvisor image build",
            dir.join(f).display()
        );
    }
    let lookup = sandvisor::backends::vmm::lookup::find(
        &sandvisor::backends::vmm::lookup::Binary::VHOST_DEVICE_VSOCK,
        None,
    );
    assert!(lookup.is_ok(), "{lookup:?}: run scripts/setup.sh");
    let vhost = sandvisor::probe::probe_vhost_vsock(Path::new(sandvisor::probe::DEV_VHOST_VSOCK));
    assert!(
        vhost.is_err(),
        "/dev/vhost-vsock works here: use_vsock takes the kernel's vsock, not a hybrid one"
    );
}

/// A Kata config for QEMU on the default assets with `use_vsock = true`.
fn vsock_config(dir: &Path) -> PathBuf {
    let assets = sandvisor::paths::asset_dir();
    let path = dir.join("configuration.toml");
    let text = format!(
        "[hypervisor.qemu]\n\
         path = \"/usr/bin/qemu-system-x86_64\"\n\
         kernel = \"{}\"\n\
         initrd = \"{}\"\n\
         machine_type = \"q35\"\n\
         default_memory = 512\n\
         use_vsock = true\n",
        assets.join(sandvisor::paths::KERNEL_FILE).display(),
        assets.join(sandvisor::paths::INITRD_FILE).display(),
    );
    std::fs::write(&path, text).expect("config written");
    path
}

/// The command line of `pid`, its arguments apart.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The running processes whose command line names a file in `dir`, with
/// `program` as their executable's name.
fn processes_in(dir: &Path, program: &str) -> Vec<u32> {
    let dir = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let args = cmdline(pid);
            args.first()
                .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == program))
                && args.iter().any(|a| a.contains(&dir))
                && alive(pid)
        })
        .collect()
}

/// Kills, on drop, every vhost-device-vsock serving a VM of the runtime
/// directory: `Env` kills the supervisors and VMMs a failed test leaves,
/// not their helpers.
struct DaemonReaper(PathBuf);

impl Drop for DaemonReaper {
    fn drop(&mut self) {
        for pid in processes_in(&self.0, DAEMON) {
            kill(pid, "KILL");
        }
    }
}

/// Creates and starts sandbox `id` from `config`; returns its state.
#[track_caller]
fn boot(env: &Env, id: &str, config: &Path) -> Value {
    let config = config.to_str().expect("utf-8 path");
    let create = [
        "create",
        "--hypervisor",
        "qemu",
        "--id",
        id,
        "--config",
        config,
    ];
    assert_eq!(env.run(&create).ok().trim(), id);
    env.run(&["start", id, "--timeout", "120"]).ok();
    let state = env.state(id);
    assert_eq!(state["status"], "running", "{state:#}");
    state
}

/// The VM directory of sandbox `id`.
fn vm_dir(env: &Env, id: &str) -> PathBuf {
    env.runtime_dir().join("vm").join(id)
}

/// Checks that QEMU runs a vhost-user-vsock device and that one daemon
/// serves it; returns the daemon's pid.
#[track_caller]
fn assert_hybrid_vsock(env: &Env, id: &str, vmm: u32) -> u32 {
    let dir = vm_dir(env, id);
    let argv = cmdline(vmm);
    let vhost_user = dir.join("vhost-user-vsock.sock");
    assert!(
        argv.iter().any(|a| a.starts_with("vhost-user-vsock-pci,")),
        "{argv:?}"
    );
    assert!(
        argv.contains(&format!(
            "socket,id=charvsock0,path={}",
            vhost_user.display()
        )),
        "{argv:?}"
    );
    assert!(
        argv.iter()
            .any(|a| a.starts_with("memory-backend-memfd,") && a.contains("share=on")),
        "{argv:?}"
    );
    assert!(
        !argv.iter().any(|a| a.contains("virtio-serial")),
        "{argv:?}"
    );
    let daemons = processes_in(&dir, DAEMON);
    assert_eq!(
        daemons.len(),
        1,
        "one vhost-device-vsock for {id}: {daemons:?}"
    );
    let daemon = daemons[0];
    let args = cmdline(daemon);
    assert!(
        args.iter().any(|a| a.contains(&format!(
            "socket={},uds-path={}",
            vhost_user.display(),
            dir.join("hvsock.sock").display()
        ))),
        "{args:?}"
    );
    daemon
}

/// Asserts that nothing of sandbox `id` is left: no supervisor, QEMU or
/// daemon, no socket, no directory.
#[track_caller]
fn assert_gone(env: &Env, id: &str, pids: &[u32]) {
    for &pid in pids {
        assert!(
            wait_gone(pid, Duration::from_secs(10)),
            "pid {pid} ({:?}) left running",
            cmdline(pid)
        );
    }
    let dir = vm_dir(env, id);
    assert!(
        processes_in(&dir, DAEMON).is_empty(),
        "a daemon left running"
    );
    assert!(!dir.exists(), "VM directory {dir:?} left");
    assert!(!env.sandbox_dir(id).exists(), "sandbox directory left");
}

/// A hybrid-vsock sandbox started for one test: the VM lock is held and
/// leftover daemons are reaped while it lives. Fields drop in order: the
/// reaper, then the environment (which deletes what is left), then the
/// lock.
struct Booted {
    _config_dir: tempfile::TempDir,
    _reaper: DaemonReaper,
    env: Env,
    supervisor: u32,
    vmm: u32,
    daemon: u32,
    _one: std::sync::MutexGuard<'static, ()>,
}

/// Creates and starts sandbox `id` with a hybrid vsock, checking that one
/// daemon serves it.
#[track_caller]
fn boot_vsock(id: &str) -> Booted {
    let one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_host();
    let env = Env::new();
    let reaper = DaemonReaper(env.runtime_dir().to_path_buf());
    let config_dir = tempfile::tempdir().expect("config dir");
    let config = vsock_config(config_dir.path());
    let state = boot(&env, id, &config);
    let vmm = pid(&state, "vmm");
    let daemon = assert_hybrid_vsock(&env, id, vmm);
    Booted {
        _config_dir: config_dir,
        _reaper: reaper,
        supervisor: pid(&state, "supervisor"),
        vmm,
        daemon,
        env,
        _one: one,
    }
}

fn echo(env: &Env, id: &str) -> Run {
    env.run(&["exec", id, "--", "echo", "via-vsock"])
}

#[test]
fn vm_vsock_agent_answers_through_vhost_device_vsock() {
    let b = boot_vsock("hv");
    let (env, supervisor, vmm, daemon) = (&b.env, b.supervisor, b.vmm, b.daemon);

    let out = echo(env, "hv");
    assert_eq!(out.ok(), "via-vsock\n", "{out:?}");
    // The agent serves vsock only: it knows from the kernel command line.
    let out = env.run(&["exec", "hv", "--", "cat", "/proc/cmdline"]);
    assert!(out.ok().contains("agent.use_vsock=true"), "{out:?}");

    env.run(&["delete", "hv", "--force"]).ok();
    assert_gone(env, "hv", &[supervisor, vmm, daemon]);
}

#[test]
fn vm_vsock_a_killed_daemon_ends_the_sandbox_naming_it() {
    let b = boot_vsock("lost");
    let (env, supervisor, vmm, daemon) = (&b.env, b.supervisor, b.vmm, b.daemon);
    assert_eq!(echo(env, "lost").ok(), "via-vsock\n");

    kill(daemon, "KILL");
    assert!(
        wait_gone(daemon, Duration::from_secs(10)),
        "daemon survived"
    );
    // QEMU does not notice; the supervisor does, and stops the sandbox as
    // Kata does when a helper dies: `dead`, naming the daemon.
    let state = env.wait_status("lost", "dead", Duration::from_secs(20));
    assert_eq!(state["helper_exit"]["helper"], DAEMON, "{state:#}");
    assert_eq!(
        state["helper_exit"]["exit"],
        serde_json::json!({"signal": 9}),
        "{state:#}"
    );
    assert!(wait_gone(vmm, Duration::from_secs(20)), "QEMU was stopped");
    echo(env, "lost").fails_with("it is dead");
    let text = env.run(&["state", "lost"]);
    assert!(text.ok().contains(DAEMON), "{text:?}");

    env.run(&["delete", "lost", "--force"]).ok();
    assert_gone(env, "lost", &[supervisor, vmm, daemon]);
}

#[test]
fn vm_vsock_a_new_supervisor_adopts_the_daemon() {
    let b = boot_vsock("adopt");
    let (env, old, vmm, daemon) = (&b.env, b.supervisor, b.vmm, b.daemon);
    assert_eq!(echo(env, "adopt").ok(), "via-vsock\n");
    kill(old, "KILL");
    assert!(wait_gone(old, Duration::from_secs(5)));
    assert!(
        alive(vmm) && alive(daemon),
        "QEMU and its daemon outlive the supervisor"
    );

    // The next command's supervisor re-attaches: QEMU and the daemon are
    // adopted, and the agent answers through the same daemon.
    assert_eq!(echo(env, "adopt").ok(), "via-vsock\n");
    let state = env.state("adopt");
    let new = pid(&state, "supervisor");
    assert_ne!(new, old);
    assert_eq!(pid(&state, "vmm"), vmm);
    assert_eq!(assert_hybrid_vsock(env, "adopt", vmm), daemon);

    // The daemon dies while no supervisor watches: the next supervisor
    // re-attaches to QEMU, finds the daemon gone, and the exec fails
    // (the agent channel lost, or the sandbox already stopped as dead,
    // whichever it sees first); then the sandbox is dead naming it.
    kill(new, "KILL");
    kill(daemon, "KILL");
    assert!(wait_gone(new, Duration::from_secs(5)));
    assert!(wait_gone(daemon, Duration::from_secs(5)));
    let exec = echo(env, "adopt");
    assert_ne!(exec.code, Some(0), "{exec:?}");
    assert!(
        exec.stderr.contains("agent channel is lost") || exec.stderr.contains("it is dead"),
        "{exec:?}"
    );
    let state = env.wait_status("adopt", "dead", Duration::from_secs(20));
    assert_eq!(state["helper_exit"]["helper"], DAEMON, "{state:#}");
    let last = pid(&state, "supervisor");
    assert!(wait_gone(vmm, Duration::from_secs(20)), "QEMU was stopped");

    env.run(&["delete", "adopt", "--force"]).ok();
    assert_gone(env, "adopt", &[new, last, vmm, daemon]);
}

/// vhost-device-vsock's device thread ends for good when a host connection
/// closes while the guest is paused (its rings are stopped then), and a
/// supervisor killed in a pause closes its agent connection. QEMU holds a
/// copy of that connection, so nothing closes, and after `resume` the new
/// supervisor reaches the agent. Needs a booted Linux guest (the agent).
#[test]
fn vm_vsock_a_supervisor_killed_in_a_pause_leaves_the_agent_reachable() {
    let b = boot_vsock("nap");
    let (env, vmm, daemon) = (&b.env, b.vmm, b.daemon);
    let mut supervisors = vec![b.supervisor];
    assert_eq!(echo(env, "nap").ok(), "via-vsock\n");

    // Twice: the second pause comes after a re-attached supervisor made
    // a connection of its own, which replaced the first one QEMU held.
    for round in 0..2 {
        env.run(&["pause", "nap"]).ok();
        let old = pid(&env.state("nap"), "supervisor");
        kill(old, "KILL");
        assert!(wait_gone(old, Duration::from_secs(10)), "round {round}");
        assert_eq!(env.state("nap")["status"], "paused", "round {round}");
        env.run(&["resume", "nap"]).ok();
        let out = echo(env, "nap");
        assert_eq!(out.ok(), "via-vsock\n", "round {round}: {out:?}");
        supervisors.push(pid(&env.state("nap"), "supervisor"));
    }
    assert_eq!(pid(&env.state("nap"), "vmm"), vmm);
    assert_eq!(assert_hybrid_vsock(env, "nap", vmm), daemon);

    env.run(&["delete", "nap", "--force"]).ok();
    supervisors.extend([vmm, daemon]);
    assert_gone(env, "nap", &supervisors);
}

/// With both the supervisor and QEMU killed, `delete --force` has no
/// supervisor to ask and no VMM to re-attach to: it still ends the
/// vhost-device-vsock the record names. Needs a booted Linux guest only to
/// get a started sandbox.
#[test]
fn vm_vsock_delete_after_the_vmm_and_supervisor_died_ends_the_daemon() {
    let b = boot_vsock("orphan");
    let (env, supervisor, vmm, daemon) = (&b.env, b.supervisor, b.vmm, b.daemon);

    kill(supervisor, "KILL");
    kill(vmm, "KILL");
    assert!(wait_gone(supervisor, Duration::from_secs(10)));
    assert!(wait_gone(vmm, Duration::from_secs(10)));
    assert!(alive(daemon), "the daemon outlives both");

    env.run(&["delete", "orphan", "--force"]).ok();
    assert_gone(env, "orphan", &[supervisor, vmm, daemon]);
}

/// What an `exec -i` types while its sandbox is paused waits for the
/// resume: had it reached vhost-device-vsock in the pause, the daemon's
/// device would be gone and no exec would answer again. Needs a booted
/// Linux guest (`cat` under the agent).
#[test]
fn vm_vsock_stdin_typed_in_a_pause_arrives_after_the_resume() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let b = boot_vsock("typing");
    let (env, supervisor, vmm, daemon) = (&b.env, b.supervisor, b.vmm, b.daemon);

    let mut cat = env
        .command()
        .args(["exec", "-i", "typing", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec -i cat");
    let mut stdin = cat.stdin.take().expect("stdin");
    // Lines come through a channel, so that one that never comes fails
    // the test (after a generous 60 s) instead of hanging it.
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = cat.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("read")).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("cat never echoed {what:?}: {e}"))
    };
    let line = |stdin: &mut std::process::ChildStdin, text: &str| {
        writeln!(stdin, "{text}").expect("types");
        stdin.flush().expect("flush");
    };
    line(&mut stdin, "before");
    assert_eq!(next("before"), "before");

    env.run(&["pause", "typing"]).ok();
    line(&mut stdin, "during");
    // Give the supervisor time to have sent it, were it not held.
    std::thread::sleep(Duration::from_secs(1));
    env.run(&["resume", "typing"]).ok();
    assert_eq!(next("during"), "during");
    let out = echo(env, "typing");
    assert_eq!(out.ok(), "via-vsock\n", "{out:?}");

    line(&mut stdin, "after");
    assert_eq!(next("after"), "after");
    drop(stdin);
    let status = cat.wait().expect("cat ends at EOF");
    assert!(status.success(), "{status:?}");

    env.run(&["delete", "typing", "--force"]).ok();
    assert_gone(env, "typing", &[supervisor, vmm, daemon]);
}
