//! The bad-input table against a live sandbox: requests a running (or
//! paused) QEMU sandbox must refuse, each with a non-zero exit, a message
//! naming the path, number or state and saying what to do, and no panic;
//! after each, the sandbox still runs a command. The `exec` checks need a
//! booted Linux guest (the default assets); the refusals need only the VMM.
//!
//! Fails, not skips, when the guest assets are missing.

mod bad_input_support;
mod lifecycle_support;

use bad_input_support::{run_table, Case};
use lifecycle_support::Env;

const ID: &str = "bad";

/// Run against sandbox [`ID`], started with `default_maxvcpus = 1` and
/// memory slots: one vCPU, so any vCPU hot-plug exceeds the maximum.
const LIVE: &[Case] = &[
    Case {
        name: "create an id that exists",
        config: None,
        args: &["create", "--id", ID],
        needles: &["\"bad\" already exists", "pick another id"],
    },
    Case {
        name: "start a running sandbox",
        config: None,
        args: &["start", ID],
        needles: &["it is running", "started already"],
    },
    Case {
        name: "resume a running sandbox",
        config: None,
        args: &["resume", ID],
        needles: &["it is running", "runs already"],
    },
    Case {
        name: "delete a running sandbox without --force",
        config: None,
        args: &["delete", ID],
        needles: &["it is running", "--force"],
    },
    Case {
        name: "hot-plug a disk file that does not exist",
        config: None,
        args: &["hotplug", ID, "block", "{dir}/missing.img"],
        needles: &["missing.img", "give an existing disk image"],
    },
    Case {
        name: "hot-plug a directory as a disk",
        config: None,
        args: &["hotplug", ID, "block", "{dir}"],
        needles: &["is a directory", "disk image or block device"],
    },
    Case {
        name: "unplug a disk never plugged",
        config: None,
        args: &["hotplug", ID, "--remove", "block", "{dir}/never.img"],
        needles: &["never.img", "is plugged"],
    },
    Case {
        name: "hot-plug zero vCPUs",
        config: None,
        args: &["hotplug", ID, "cpu", "0"],
        needles: &["at least 1"],
    },
    Case {
        name: "hot-plug a vCPU beyond default_maxvcpus",
        config: None,
        args: &["hotplug", ID, "cpu", "1"],
        needles: &["cannot add 1 vCPU", "at most 1 (default_maxvcpus)"],
    },
    Case {
        name: "hot-plug zero memory",
        config: None,
        args: &["hotplug", ID, "memory", "0"],
        needles: &["at least 1 MiB"],
    },
    Case {
        name: "hot-plug more memory than the host has",
        config: None,
        args: &["hotplug", ID, "memory", "99999999"],
        needles: &["99999999 MiB", "at most the host's"],
    },
    Case {
        name: "unplug memory never plugged",
        config: None,
        args: &["hotplug", ID, "--remove", "memory", "128"],
        needles: &["no 128 MiB memory region is plugged"],
    },
    Case {
        name: "hot-plug a NIC on a tap that does not exist",
        config: None,
        args: &["hotplug", ID, "net", "svnotap0"],
        needles: &["\"svnotap0\"", "ip tuntap add svnotap0"],
    },
    Case {
        name: "unplug a NIC never plugged",
        config: None,
        args: &["hotplug", ID, "--remove", "net", "svnotap1"],
        needles: &["svnotap1"],
    },
    Case {
        name: "resize to zero vCPUs",
        config: None,
        args: &["resize", ID, "--cpus", "0"],
        needles: &["at least 1"],
    },
    Case {
        name: "resize beyond default_maxvcpus",
        config: None,
        args: &["resize", ID, "--cpus", "99"],
        needles: &["cannot resize to 99 vCPUs", "default_maxvcpus"],
    },
    Case {
        name: "resize memory down",
        config: None,
        args: &["resize", ID, "--memory", "1"],
        needles: &["cannot resize memory to 1 MiB", "ask for more than"],
    },
    Case {
        name: "resize memory beyond the host",
        config: None,
        args: &["resize", ID, "--memory", "99999999"],
        needles: &["MiB", "at most the host's"],
    },
    Case {
        name: "exec a program the guest lacks",
        config: None,
        args: &["exec", ID, "--", "/no/such/program"],
        needles: &["\"/no/such/program\"", "No such file"],
    },
];

/// Run while sandbox [`ID`] is paused; it is resumed after them.
const PAUSED: &[Case] = &[
    Case {
        name: "pause a paused sandbox",
        config: None,
        args: &["pause", ID],
        needles: &["it is paused", "paused already"],
    },
    Case {
        name: "exec in a paused sandbox",
        config: None,
        args: &["exec", ID, "--", "true"],
        needles: &["it is paused", "sandvisor resume"],
    },
    Case {
        name: "hot-plug into a paused sandbox",
        config: None,
        args: &["hotplug", ID, "cpu", "1"],
        needles: &["it is paused", "sandvisor resume"],
    },
    Case {
        name: "resize a paused sandbox",
        config: None,
        args: &["resize", ID, "--memory", "2048"],
        needles: &["it is paused", "sandvisor resume"],
    },
];

/// Run after sandbox [`ID`] was stopped.
const STOPPED: &[Case] = &[
    Case {
        name: "exec in a stopped sandbox",
        config: None,
        args: &["exec", ID, "--", "true"],
        needles: &["it is stopped", "sandvisor delete"],
    },
    Case {
        name: "pause a stopped sandbox",
        config: None,
        args: &["pause", ID],
        needles: &["it is stopped"],
    },
];

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let assets = sandvisor::paths::asset_dir();
    for f in [sandvisor::paths::KERNEL_FILE, sandvisor::paths::INITRD_FILE] {
        assert!(
            assets.join(f).is_file(),
            "guest asset {} is missing: run sandvisor image build",
            assets.join(f).display()
        );
    }
    let path = dir.join("configuration.toml");
    let text = format!(
        "[hypervisor.qemu]\n\
         path = \"/usr/bin/qemu-system-x86_64\"\n\
         kernel = \"{}\"\n\
         initrd = \"{}\"\n\
         machine_type = \"q35\"\n\
         default_maxvcpus = 1\n\
         default_memory = 512\n\
         memory_slots = 4\n",
        assets.join(sandvisor::paths::KERNEL_FILE).display(),
        assets.join(sandvisor::paths::INITRD_FILE).display(),
    );
    std::fs::write(&path, text).expect("config written");
    path
}

#[test]
fn vm_bad_requests_to_a_live_sandbox_are_refused_and_it_keeps_running() {
    let env = Env::new();
    let scratch = tempfile::tempdir().expect("scratch");
    let cfg = config(scratch.path());
    let cfg = cfg.to_str().expect("utf-8 path");
    assert_eq!(
        env.run(&["create", "--config", cfg, "--id", ID])
            .ok()
            .trim(),
        ID
    );
    env.run(&["start", ID, "--timeout", "120"]).ok();
    let still_runs = |case: &Case| {
        let got = env.run(&["exec", ID, "--", "echo", "alive"]);
        (got.code != Some(0) || got.stdout != "alive\n").then(|| {
            format!(
                "after {:?} the sandbox no longer runs a command: {got:?}",
                case.name
            )
        })
    };
    let mut failures = run_table(LIVE, env.runtime_dir(), still_runs);
    env.run(&["pause", ID]).ok();
    failures.extend(run_table(PAUSED, env.runtime_dir(), |_| {
        (env.state(ID)["status"] != "paused").then(|| "no longer paused".to_string())
    }));
    env.run(&["resume", ID]).ok();
    assert_eq!(env.run(&["exec", ID, "--", "echo", "ok"]).ok(), "ok\n");
    env.run(&["stop", ID]).ok();
    failures.extend(run_table(STOPPED, env.runtime_dir(), |_| None));
    env.run(&["delete", ID]).ok();
    let total = LIVE.len() + PAUSED.len() + STOPPED.len();
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
