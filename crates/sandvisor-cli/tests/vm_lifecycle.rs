//! Sandbox lifecycle through the `sandvisor` binary with real QEMU guests
//! from the default assets: a whole life from create to delete, a VMM
//! killed under its supervisor, a supervisor killed under its VMM, and
//! sandboxes started in parallel.
//!
//! Fails, not skips, when the guest assets are missing. The tests take
//! turns: each boots its own VMs.

mod lifecycle_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifecycle_support::{alive, kill, pid, wait_gone, Env, Run};
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

/// A Kata config for QEMU on the default assets, with DIMM slots so that
/// memory can be hot-plugged.
fn config_with_memory_slots(dir: &Path) -> PathBuf {
    let assets = sandvisor::paths::asset_dir();
    let path = dir.join("configuration.toml");
    let text = format!(
        "[hypervisor.qemu]\n\
         path = \"/usr/bin/qemu-system-x86_64\"\n\
         kernel = \"{}\"\n\
         initrd = \"{}\"\n\
         machine_type = \"q35\"\n\
         memory_slots = 4\n",
        assets.join(sandvisor::paths::KERNEL_FILE).display(),
        assets.join(sandvisor::paths::INITRD_FILE).display(),
    );
    std::fs::write(&path, text).expect("config written");
    path
}

/// Creates and starts a QEMU sandbox with `args` added to `create`.
#[track_caller]
fn boot(env: &Env, id: &str, args: &[&str]) -> Value {
    let mut create = vec!["create", "--hypervisor", "qemu", "--id", id];
    create.extend_from_slice(args);
    assert_eq!(env.run(&create).ok().trim(), id);
    env.run(&["start", id, "--timeout", "120"]).ok();
    let state = env.state(id);
    assert_eq!(state["status"], "running", "{state:#}");
    state
}

/// Runs `sh -c SCRIPT` in the guest of `id`.
fn sh(env: &Env, id: &str, script: &str) -> Run {
    env.run(&["exec", id, "--", "sh", "-c", script])
}

/// Asserts that nothing of sandbox `id` is left: no supervisor, no VMM, no
/// socket, no directory.
#[track_caller]
fn assert_gone(env: &Env, id: &str, supervisor: u32, vmm: u32) {
    assert!(
        wait_gone(supervisor, Duration::from_secs(10)),
        "supervisor {supervisor} left running"
    );
    assert!(
        wait_gone(vmm, Duration::from_secs(10)),
        "VMM {vmm} left running"
    );
    assert!(!env.sandbox_dir(id).exists(), "sandbox directory left");
    let vm_dir = env.runtime_dir().join("vm").join(id);
    assert!(!vm_dir.exists(), "VM directory {vm_dir:?} left");
    let listed = env.run(&["list", "--json"]);
    let listed: Value = serde_json::from_str(listed.ok()).expect("JSON");
    assert!(
        listed
            .as_array()
            .is_some_and(|a| a.iter().all(|s| s["id"] != id)),
        "{listed:#}"
    );
}

fn number(out: &Run) -> u64 {
    out.ok()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {out:?}"))
}

#[test]
fn vm_lifecycle_from_create_to_delete() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let config_dir = tempfile::tempdir().expect("config dir");
    let config = config_with_memory_slots(config_dir.path());
    let config = config.to_str().expect("utf-8 path");
    let state = boot(
        &env,
        "whole",
        &["--config", config, "--cpus", "1", "--memory", "512"],
    );
    let supervisor = pid(&state, "supervisor");
    let vmm = pid(&state, "vmm");
    assert!(alive(vmm));
    assert!(env.sandbox_dir("whole").join("control.sock").exists());

    // exec streams stdout and stderr apart and exits with the code.
    let out = sh(&env, "whole", "echo to-out; echo to-err >&2; exit 7");
    assert_eq!(out.code, Some(7), "{out:?}");
    assert_eq!(out.stdout, "to-out\n");
    assert!(out.stderr.contains("to-err\n"), "{out:?}");

    env.run(&["pause", "whole"]).ok();
    assert_eq!(env.state("whole")["status"], "paused");
    env.run(&["exec", "whole", "--", "true"])
        .fails_with("cannot exec in sandbox whole: it is paused");
    env.run(&["resume", "whole"]).ok();
    assert_eq!(env.state("whole")["status"], "running");

    let cpus_before = number(&sh(&env, "whole", "grep -c ^processor /proc/cpuinfo"));
    let mem_before = number(&sh(
        &env,
        "whole",
        "awk '/MemTotal/ {print $2}' /proc/meminfo",
    ));
    let disks_before = sh(&env, "whole", "ls /sys/block").ok().to_string();

    let disk = tempfile::NamedTempFile::new().expect("disk file");
    disk.as_file().set_len(16 << 20).expect("16 MiB disk");
    let disk_path = disk.path().to_str().expect("utf-8 path");
    let out = env.run(&["hotplug", "whole", "block", disk_path]);
    assert!(out.ok().contains("added block device"), "{out:?}");
    let out = env.run(&["hotplug", "whole", "cpu", "1"]);
    assert!(out.ok().contains("the guest has 2"), "{out:?}");
    let out = env.run(&["hotplug", "whole", "memory", "256"]);
    assert!(out.ok().contains("the guest has 768 MiB"), "{out:?}");

    // The guest sees them: /proc/cpuinfo lists the online CPUs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let cpus = number(&sh(&env, "whole", "grep -c ^processor /proc/cpuinfo"));
        let mem = number(&sh(
            &env,
            "whole",
            "awk '/MemTotal/ {print $2}' /proc/meminfo",
        ));
        let disks = sh(&env, "whole", "ls /sys/block").ok().to_string();
        if cpus == cpus_before + 1 && mem >= mem_before + 200 * 1024 && disks != disks_before {
            let sizes = sh(&env, "whole", "cat /sys/block/*/size");
            // 16 MiB in 512-byte sectors.
            assert!(sizes.ok().lines().any(|l| l.trim() == "32768"), "{sizes:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "guest does not see the new devices: cpus {cpus_before} -> {cpus}, \
             MemTotal {mem_before} -> {mem} KiB, disks {disks_before:?} -> {disks:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let state = env.state("whole");
    assert_eq!(state["vcpus"], 2);
    assert_eq!(state["memory_mib"], 768);

    env.run(&["save", "whole"]).ok();
    assert!(env.sandbox_dir("whole").join("devices.state").is_file());
    assert_eq!(env.state("whole")["status"], "running");
    assert_eq!(sh(&env, "whole", "echo still here").ok(), "still here\n");

    env.run(&["stop", "whole"]).ok();
    let state = env.state("whole");
    assert_eq!(state["status"], "stopped");
    assert!(wait_gone(vmm, Duration::from_secs(10)));
    env.run(&["delete", "whole"]).ok();
    assert_gone(&env, "whole", supervisor, vmm);
}

#[test]
fn vm_killed_vmm_is_reported_dead_by_its_signal() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let state = boot(&env, "victim", &["--memory", "512"]);
    let supervisor = pid(&state, "supervisor");
    let vmm = pid(&state, "vmm");
    kill(vmm, "KILL");
    let state = env.wait_status("victim", "dead", Duration::from_secs(10));
    assert_eq!(
        state["vmm_exit"],
        serde_json::json!({"signal": 9}),
        "{state:#}"
    );
    let text = env.run(&["state", "victim"]);
    assert!(
        text.ok()
            .contains("dead (VMM killed by signal 9 (SIGKILL))"),
        "{text:?}"
    );
    env.run(&["exec", "victim", "--", "true"])
        .fails_with("cannot exec in sandbox victim: it is dead");
    env.run(&["delete", "victim"]).ok();
    assert_gone(&env, "victim", supervisor, vmm);
}

#[test]
fn vm_killed_supervisor_is_replaced_and_reattaches() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let state = boot(&env, "orphan", &["--memory", "512"]);
    let old = pid(&state, "supervisor");
    let vmm = pid(&state, "vmm");
    assert_eq!(sh(&env, "orphan", "echo before").ok(), "before\n");
    kill(old, "KILL");
    assert!(wait_gone(old, Duration::from_secs(5)));
    assert!(alive(vmm), "the VMM must outlive its supervisor");

    // The next command starts a supervisor that loads the saved state,
    // adopts the VMM and reconnects to the agent.
    assert_eq!(sh(&env, "orphan", "echo after").ok(), "after\n");
    let state = env.state("orphan");
    let new = pid(&state, "supervisor");
    assert_ne!(new, old);
    assert_eq!(pid(&state, "vmm"), vmm);
    assert_eq!(state["status"], "running");
    env.run(&["pause", "orphan"]).ok();
    env.run(&["resume", "orphan"]).ok();

    // Both gone: the sandbox is dead, and delete cleans up.
    kill(new, "KILL");
    kill(vmm, "KILL");
    assert!(wait_gone(new, Duration::from_secs(5)));
    assert!(wait_gone(vmm, Duration::from_secs(5)));
    let state = env.state("orphan");
    assert_eq!(state["status"], "dead", "{state:#}");
    env.run(&["delete", "orphan"]).ok();
    assert_gone(&env, "orphan", new, vmm);
}

#[test]
fn vm_parallel_sandboxes_all_run_apart() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    require_assets();
    let env = Env::new();
    let ids = ["par1", "par2", "par3"];
    let states: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let env = &env;
                s.spawn(move || boot(env, id, &["--memory", "384"]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("boot thread"))
            .collect()
    });
    let distinct = |key: &dyn Fn(&Value) -> String| {
        let set: BTreeSet<String> = states.iter().map(key).collect();
        assert_eq!(set.len(), ids.len(), "{states:#?}");
    };
    distinct(&|s| s["control_socket"].to_string());
    distinct(&|s| s["console_socket"].to_string());
    distinct(&|s| s["agent"].to_string());
    distinct(&|s| s["vmm"]["pid"].to_string());
    distinct(&|s| s["supervisor"]["pid"].to_string());
    for id in ids {
        assert_eq!(sh(&env, id, "echo $((6*7))").ok(), "42\n");
    }
    let mut pids = Vec::new();
    for (id, state) in ids.iter().zip(&states) {
        pids.push((pid(state, "supervisor"), pid(state, "vmm")));
        env.run(&["delete", "--force", id]).ok();
    }
    for (id, (supervisor, vmm)) in ids.iter().zip(pids) {
        assert_gone(&env, id, supervisor, vmm);
    }
}
