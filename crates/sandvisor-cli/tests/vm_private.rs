//! Private files and parallel sandboxes, through the `sandvisor` binary with
//! real QEMU guests from the default assets.
//!
//! - After `start`, every entry under the runtime directory is private:
//!   directories 0700, files and sockets 0600, walked recursively. This
//!   needs only a started VMM; the `exec` after it needs a booted guest.
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
