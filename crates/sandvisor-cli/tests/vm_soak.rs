//! Soak and chaos through the `sandvisor` binary with real QEMU guests:
//! `SOAK_N` mixed lifecycles (default 30; `make soak` runs 200), one in
//! three with the VMM or the supervisor killed -9 at a random step, seeded
//! by `SOAK_SEED` (printed, so a failing run can be replayed).
//!
//! Afterwards nothing may be left: no process naming the runtime
//! directory, no file, socket or directory under it, no mount under it,
//! no descriptor more in this (long-lived) process than before. A sandbox
//! whose VMM was killed must be `dead` with signal 9; one whose supervisor
//! was killed must be re-attached by the next command and keep working.
//!
//! Every lifecycle needs a booted Linux guest (its `exec`s). Fails, not
//! skips, when the guest assets are missing.

mod lifecycle_support;

use std::path::Path;
use std::time::Duration;

use lifecycle_support::{alive, kill, pid, wait_gone, Env};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn env_number(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The steps of a full lifecycle after `start`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Exec,
    Hotplug,
    Unplug,
    Pause,
    Resume,
    Stop,
}

const STEPS: [Step; 6] = [
    Step::Exec,
    Step::Hotplug,
    Step::Unplug,
    Step::Pause,
    Step::Resume,
    Step::Stop,
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Victim {
    Vmm,
    Supervisor,
}

#[derive(Default, Debug)]
struct Tally {
    runs: u64,
    full: u64,
    vmm_kills: u64,
    supervisor_kills: u64,
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmd.contains(needle) && alive(pid) {
                found.push((pid, cmd));
            }
        }
    }
    found
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn entries_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            // The `vm` directory itself is the backends' storage root.
            if p.is_dir() && p.file_name().is_some_and(|n| n == "vm") && d == dir {
                stack.push(p);
                continue;
            }
            // The CLI's own log (library lines without `--log`) stays.
            if d == dir && p.file_name().is_some_and(|n| n == "sandvisor.log") {
                continue;
            }
            out.push(p.display().to_string());
        }
    }
    out
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// One lifecycle of sandbox `id`; kills `victim` just before step `at`.
fn lifecycle(env: &Env, id: &str, disk: &str, kill_at: Option<(usize, Victim)>, t: &mut Tally) {
    let ok = |args: &[&str]| env.run(args).ok().to_string();
    ok(&[
        "create",
        "--hypervisor",
        "qemu",
        "--id",
        id,
        "--memory",
        "384",
    ]);
    ok(&["start", id, "--timeout", "120"]);
    let state = env.state(id);
    let (supervisor, vmm) = (pid(&state, "supervisor"), pid(&state, "vmm"));
    let mut killed_vmm = false;
    for (i, step) in STEPS.iter().enumerate() {
        if let Some((at, victim)) = kill_at.filter(|(at, _)| *at == i) {
            match victim {
                Victim::Vmm => {
                    kill(vmm, "KILL");
                    t.vmm_kills += 1;
                    let state = env.wait_status(id, "dead", Duration::from_secs(20));
                    assert_eq!(
                        state["vmm_exit"],
                        serde_json::json!({"signal": 9}),
                        "{id}: {state:#}"
                    );
                    env.run(&["exec", id, "--", "true"])
                        .fails_with("it is dead");
                    killed_vmm = true;
                    break;
                }
                Victim::Supervisor => {
                    kill(supervisor, "KILL");
                    t.supervisor_kills += 1;
                    assert!(
                        wait_gone(supervisor, Duration::from_secs(10)),
                        "{id}: supervisor"
                    );
                    assert!(alive(vmm), "{id}: the VMM must outlive its supervisor");
                    // The next command re-attaches; a paused guest stays paused.
                    let state = env.state(id);
                    let expect = if at > 3 && at < 5 {
                        "paused"
                    } else {
                        "running"
                    };
                    assert_eq!(state["status"], expect, "{id} after step {at}: {state:#}");
                }
            }
        }
        match step {
            Step::Exec => assert_eq!(ok(&["exec", id, "--", "echo", id]), format!("{id}\n")),
            Step::Hotplug => {
                ok(&["hotplug", id, "block", disk]);
            }
            Step::Unplug => {
                ok(&["hotplug", id, "--remove", "block", disk]);
            }
            Step::Pause => {
                ok(&["pause", id]);
            }
            Step::Resume => {
                ok(&["resume", id]);
                assert_eq!(ok(&["exec", id, "--", "echo", "back"]), "back\n");
            }
            Step::Stop => {
                ok(&["stop", id]);
                assert_eq!(env.state(id)["status"], "stopped");
            }
        }
    }
    if !killed_vmm && kill_at.is_none() {
        t.full += 1;
    }
    ok(&["delete", "--force", id]);
    env.run(&["state", id]).fails_with("no sandbox");
    assert!(
        wait_gone(vmm, Duration::from_secs(10)),
        "{id}: VMM {vmm} left"
    );
    assert!(
        !env.sandbox_dir(id).exists(),
        "{id}: sandbox directory left"
    );
    assert!(
        !env.runtime_dir().join("vm").join(id).exists(),
        "{id}: VM directory left"
    );
}

#[test]
fn vm_soak_mixed_lifecycles_with_kills_leave_nothing_behind() {
    let assets = sandvisor::paths::asset_dir();
    for f in [sandvisor::paths::KERNEL_FILE, sandvisor::paths::INITRD_FILE] {
        assert!(
            assets.join(f).is_file(),
            "guest asset {f} is missing: run sandvisor image build"
        );
    }
    let n = env_number("SOAK_N", 30);
    let seed = env_number(
        "SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
    );
    eprintln!("soak: {n} lifecycles, SOAK_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let disk = scratch.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(8 << 20))
        .expect("disk image");
    let disk = disk.display().to_string();
    let fds_before = fd_count();
    let mut t = Tally::default();
    for i in 0..n {
        let id = format!("soak{i}");
        if rng.gen_ratio(1, 4) {
            // A whole `run`: its own VM, torn down when the command ends.
            let out = env.run(&["run", "--memory", "384", "--", "echo", &id]);
            assert_eq!(out.ok(), format!("{id}\n"), "{id}: {out:?}");
            t.runs += 1;
            continue;
        }
        // A quarter are `run`s, never killed: 4 in 9 of the rest makes a
        // third of all lifecycles.
        let kill_at = rng.gen_ratio(4, 9).then(|| {
            let victim = if rng.gen_bool(0.5) {
                Victim::Vmm
            } else {
                Victim::Supervisor
            };
            (rng.gen_range(0..STEPS.len()), victim)
        });
        eprintln!("soak: {id} kill {kill_at:?}");
        lifecycle(&env, &id, &disk, kill_at, &mut t);
    }
    eprintln!("soak: done {t:?} (SOAK_SEED={seed})");
    let root = env.runtime_dir().display().to_string();
    let procs = processes_naming(&root);
    assert!(procs.is_empty(), "processes left: {procs:#?}");
    let left = entries_under(env.runtime_dir());
    assert!(left.is_empty(), "entries left under {root}: {left:#?}");
    let mounts = mounts_under(env.runtime_dir());
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    assert_eq!(fd_count(), fds_before, "descriptors of the test process");
}
