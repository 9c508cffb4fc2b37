//! Sandbox lifecycle through the `sandvisor` binary, on the mock backend:
//! supervisors, persisted state, locking, re-attach and errors. The same
//! flows on QEMU are in `vm_lifecycle.rs`.

mod lifecycle_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifecycle_support::{alive, kill, pid, wait_gone, Env};

fn create_mock(env: &Env, id: &str) {
    let out = env.run(&["create", "--hypervisor", "mock", "--id", id]);
    assert_eq!(out.ok().trim(), id);
}

#[test]
fn whole_lifecycle_leaves_nothing_behind() {
    let env = Env::new();
    create_mock(&env, "life");
    let created = env.state("life");
    assert_eq!(created["status"], "created");
    assert_eq!(created["hypervisor"], "mock");
    let supervisor = pid(&created, "supervisor");
    assert!(alive(supervisor));
    let dir = env.sandbox_dir("life");
    assert!(dir.join("control.sock").exists());
    assert!(dir.join("state.json").is_file());

    env.run(&["start", "life"]).ok();
    assert_eq!(env.state("life")["status"], "running");
    env.run(&["pause", "life"]).ok();
    assert_eq!(env.state("life")["status"], "paused");
    env.run(&["resume", "life"]).ok();
    assert_eq!(env.state("life")["status"], "running");

    let disk = tempfile::NamedTempFile::new().expect("disk file");
    let disk_path = disk.path().to_str().expect("utf-8 path");
    let out = env.run(&["hotplug", "life", "block", disk_path]);
    assert!(out.ok().contains("added block device"), "{out:?}");
    assert!(env
        .run(&["hotplug", "life", "cpu", "2"])
        .ok()
        .contains("the guest has 3"));
    let out = env.run(&["hotplug", "life", "memory", "256"]);
    assert!(out.ok().contains("the guest has 1280 MiB"), "{out:?}");
    let state = env.state("life");
    assert_eq!(state["vcpus"], 3);
    assert_eq!(state["memory_mib"], 1280);
    assert_eq!(state["devices"].as_array().map(Vec::len), Some(2));
    // Unplug finds the disk by its path.
    env.run(&["hotplug", "life", "block", disk_path, "--remove"])
        .ok();
    assert_eq!(
        env.state("life")["devices"].as_array().map(Vec::len),
        Some(1)
    );

    env.run(&["save", "life"]).ok();
    env.run(&["stop", "life"]).ok();
    assert_eq!(env.state("life")["status"], "stopped");
    // The supervisor stays until delete.
    assert!(alive(supervisor));
    env.run(&["delete", "life"]).ok();

    assert!(
        wait_gone(supervisor, Duration::from_secs(5)),
        "supervisor left running"
    );
    assert!(!dir.exists(), "sandbox directory left behind");
    env.run(&["state", "life"])
        .fails_with("no sandbox \"life\"; see `sandvisor list`");
}

#[test]
fn the_record_is_written_through_save_and_load() {
    let env = Env::new();
    create_mock(&env, "rec");
    env.run(&["start", "rec"]).ok();
    let text =
        std::fs::read_to_string(env.sandbox_dir("rec").join("state.json")).expect("state.json");
    let on_disk: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(on_disk["version"], 1);
    assert_eq!(on_disk["id"], "rec");
    assert_eq!(on_disk["status"], "running");
    assert_eq!(on_disk["hypervisor_state"]["hypervisor"], "mock");
    assert!(on_disk["created"]
        .as_str()
        .is_some_and(|c| c.ends_with('Z')));
    assert_eq!(on_disk, env.state("rec"));
}

#[test]
fn create_prints_a_fresh_id_when_none_is_given() {
    let env = Env::new();
    let a = env
        .run(&["create", "--hypervisor", "mock"])
        .ok()
        .trim()
        .to_string();
    let b = env
        .run(&["create", "--hypervisor", "mock"])
        .ok()
        .trim()
        .to_string();
    assert_ne!(a, b);
    for id in [&a, &b] {
        assert_eq!(id.len(), 16, "{id}");
        assert_eq!(env.state(id)["status"], "created");
    }
    let list = env.run(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(list.ok()).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(2));
}

#[test]
fn ids_are_validated_and_unique() {
    let env = Env::new();
    env.run(&["create", "--hypervisor", "mock", "--id", "../x"])
        .fails_with("invalid sandbox id");
    env.run(&["create", "--hypervisor", "mock", "--id", "vm"])
        .fails_with("reserved");
    create_mock(&env, "dup");
    env.run(&["create", "--hypervisor", "mock", "--id", "dup"])
        .fails_with("sandbox \"dup\" already exists");
    // The failed create did not touch the existing sandbox.
    assert_eq!(env.state("dup")["status"], "created");
}

#[test]
fn unknown_ids_are_reported() {
    let env = Env::new();
    for args in [
        &["state", "ghost"][..],
        &["start", "ghost"],
        &["pause", "ghost"],
        &["exec", "ghost", "--", "true"],
        &["hotplug", "ghost", "cpu", "1"],
        &["delete", "ghost"],
        &["console", "ghost"],
    ] {
        env.run(args)
            .fails_with("no sandbox \"ghost\"; see `sandvisor list`");
    }
    assert!(!env.sandbox_dir("ghost").exists());
    assert_eq!(env.run(&["list", "--json"]).ok().trim(), "[]");
}

#[test]
fn operations_in_the_wrong_state_are_refused() {
    let env = Env::new();
    create_mock(&env, "ws");
    env.run(&["pause", "ws"])
        .fails_with("cannot pause sandbox ws: it is created");
    env.run(&["exec", "ws", "--", "true"])
        .fails_with("cannot exec in sandbox ws: it is created");
    env.run(&["start", "ws"]).ok();
    env.run(&["start", "ws"])
        .fails_with("cannot start sandbox ws: it is running");
    env.run(&["resume", "ws"])
        .fails_with("cannot resume sandbox ws: it is running");
    env.run(&["delete", "ws"])
        .fails_with("cannot delete sandbox ws: it is running");
    env.run(&["pause", "ws"]).ok();
    env.run(&["hotplug", "ws", "cpu", "1"])
        .fails_with("cannot hotplug into sandbox ws: it is paused");
    env.run(&["stop", "ws"]).ok();
    env.run(&["resume", "ws"])
        .fails_with("cannot resume sandbox ws: it is stopped");
    env.run(&["stop", "ws"])
        .fails_with("cannot stop sandbox ws: it is stopped");
    env.run(&["delete", "ws"]).ok();
}

#[test]
fn delete_force_stops_a_running_sandbox() {
    let env = Env::new();
    create_mock(&env, "f");
    env.run(&["start", "f"]).ok();
    let supervisor = pid(&env.state("f"), "supervisor");
    env.run(&["delete", "--force", "f"]).ok();
    assert!(wait_gone(supervisor, Duration::from_secs(5)));
    assert!(!env.sandbox_dir("f").exists());
}

#[test]
fn backends_that_cannot_do_it_say_so() {
    let env = Env::new();
    // ACRN needs an ACRN Service VM, which this host is not: the create
    // fails at once and names the device it looked for.
    env.run(&["create", "--hypervisor", "acrn", "--id", "c"])
        .fails_with("no ACRN hypervisor");
    assert!(
        !env.sandbox_dir("c").exists(),
        "a failed create leaves nothing"
    );
    // The mock runs no guest, so it has nothing to exec in.
    create_mock(&env, "m");
    env.run(&["start", "m"]).ok();
    env.run(&["exec", "m", "--", "true"])
        .fails_with("mock does not support guest processes");
    env.run(&["hotplug", "m", "block", "/nonexistent/disk"])
        .fails_with("/nonexistent/disk");
    env.run(&["hotplug", "m", "net", "tap9", "--remove"])
        .fails_with("no network device on tap tap9 is plugged");
}

#[test]
fn a_killed_supervisor_is_replaced_by_one_that_reattaches() {
    let env = Env::new();
    create_mock(&env, "re");
    env.run(&["start", "re"]).ok();
    env.run(&["hotplug", "re", "cpu", "1"]).ok();
    let old = pid(&env.state("re"), "supervisor");
    kill(old, "KILL");
    assert!(wait_gone(old, Duration::from_secs(5)));

    let listed = env.run(&["list"]);
    assert!(
        listed.ok().contains("running (supervisor gone)"),
        "{listed:?}"
    );

    // The next command notices and re-attaches; the record survives.
    let state = env.state("re");
    let new = pid(&state, "supervisor");
    assert_ne!(new, old);
    assert!(alive(new));
    assert_eq!(state["status"], "running");
    assert_eq!(state["vcpus"], 2);
    env.run(&["pause", "re"]).ok();
    assert_eq!(env.state("re")["status"], "paused");
    let log = std::fs::read_to_string(env.sandbox_dir("re").join("supervisor.log"))
        .expect("supervisor log");
    assert!(log.contains("mode=Reattach"), "{log}");

    // The same through a mutating command, after another kill.
    kill(new, "KILL");
    assert!(wait_gone(new, Duration::from_secs(5)));
    env.run(&["resume", "re"]).ok();
    assert_eq!(env.state("re")["status"], "running");
    env.run(&["delete", "--force", "re"]).ok();
}

#[test]
fn a_sandbox_whose_supervisor_died_in_a_final_state_can_be_deleted() {
    let env = Env::new();
    create_mock(&env, "fin");
    env.run(&["start", "fin"]).ok();
    env.run(&["stop", "fin"]).ok();
    let sup = pid(&env.state("fin"), "supervisor");
    kill(sup, "KILL");
    assert!(wait_gone(sup, Duration::from_secs(5)));
    // Nothing runs, so nothing is re-attached.
    let state = env.state("fin");
    assert_eq!(state["status"], "stopped");
    assert_eq!(pid(&state, "supervisor"), sup);
    env.run(&["start", "fin"])
        .fails_with("cannot start sandbox fin: it is stopped");
    env.run(&["delete", "fin"]).ok();
    assert!(!env.sandbox_dir("fin").exists());
}

#[test]
fn a_held_lock_makes_commands_wait_then_give_up() {
    let env = Env::new().with_env("SANDVISOR_LOCK_TIMEOUT", "0.5");
    create_mock(&env, "lk");
    env.run(&["start", "lk"]).ok();
    let lock = env.sandbox_dir("lk").join("lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "3"])
        .stdout(Stdio::null())
        .spawn()
        .expect("flock(1) runs");
    std::thread::sleep(Duration::from_millis(300));
    env.run(&["pause", "lk"]).fails_with("sandbox lk is busy");
    // Reading the state needs no lock.
    assert_eq!(env.state("lk")["status"], "running");
    // A command with a longer wait gets the lock once it is released.
    let patient = Env::command(&env)
        .env("SANDVISOR_LOCK_TIMEOUT", "20")
        .args(["pause", "lk"])
        .output()
        .expect("sandvisor runs");
    assert!(patient.status.success(), "{patient:?}");
    holder.wait().expect("flock ends");
    assert_eq!(env.state("lk")["status"], "paused");
}

#[test]
fn parallel_sandboxes_are_independent() {
    let env = Env::new();
    let ids = ["p1", "p2", "p3"];
    let started = Instant::now();
    std::thread::scope(|s| {
        for id in ids {
            let env = &env;
            s.spawn(move || {
                create_mock(env, id);
                env.run(&["start", id]).ok();
            });
        }
    });
    let mut sockets = Vec::new();
    let mut supervisors = Vec::new();
    for id in ids {
        let state = env.state(id);
        assert_eq!(state["status"], "running", "{state:#}");
        sockets.push(
            state["control_socket"]
                .as_str()
                .expect("socket")
                .to_string(),
        );
        supervisors.push(pid(&state, "supervisor"));
    }
    sockets.sort();
    sockets.dedup();
    assert_eq!(sockets.len(), 3);
    supervisors.sort();
    supervisors.dedup();
    assert_eq!(supervisors.len(), 3);
    assert!(started.elapsed() < Duration::from_secs(30));
    // Concurrent commands on one sandbox serialise on its lock.
    std::thread::scope(|s| {
        let env = &env;
        let a = s.spawn(move || env.run(&["pause", "p1"]));
        let b = s.spawn(move || env.run(&["pause", "p1"]));
        let results = [a.join().expect("joined"), b.join().expect("joined")];
        let ok = results.iter().filter(|r| r.code == Some(0)).count();
        assert_eq!(ok, 1, "{results:#?}");
        let failed = results
            .iter()
            .find(|r| r.code != Some(0))
            .expect("one fails");
        failed.fails_with("cannot pause sandbox p1: it is paused");
    });
}

#[test]
fn list_and_state_print_for_people() {
    let env = Env::new();
    create_mock(&env, "h1");
    env.run(&["start", "h1"]).ok();
    let list = env.run(&["list"]);
    let lines: Vec<&str> = list.ok().lines().collect();
    assert!(lines[0].starts_with("ID"), "{lines:?}");
    assert!(
        lines[1].starts_with("h1 ") && lines[1].contains("mock") && lines[1].ends_with("running")
    );
    let state = env.run(&["state", "h1"]);
    assert!(state.ok().contains("status:      running"), "{state:?}");
}

#[test]
fn a_sandbox_killed_before_start_is_prepared_again() {
    let env = Env::new();
    create_mock(&env, "early");
    let state = env.state("early");
    // `save` writes the device state into the sandbox directory.
    let devices_state = env.sandbox_dir("early").join("devices.state");
    assert_eq!(
        state["config"]["devices_state_path"].as_str(),
        devices_state.to_str()
    );
    let old = pid(&state, "supervisor");
    kill(old, "KILL");
    assert!(wait_gone(old, Duration::from_secs(5)));
    env.run(&["start", "early"]).ok();
    let state = env.state("early");
    assert_eq!(state["status"], "running");
    assert_ne!(pid(&state, "supervisor"), old);
    env.run(&["delete", "--force", "early"]).ok();
}

#[test]
fn an_invalid_config_creates_nothing() {
    let env = Env::new();
    env.run(&[
        "create",
        "--hypervisor",
        "mock",
        "--id",
        "small",
        "--memory",
        "100",
    ])
    .fails_with("100 MiB is below the minimum");
    assert!(!env.sandbox_dir("small").exists());
    create_mock(&env, "sized");
    env.run(&["delete", "sized"]).ok();
    let out = env.run(&[
        "create",
        "--hypervisor",
        "mock",
        "--id",
        "sized",
        "--cpus",
        "2",
        "--memory",
        "512",
    ]);
    assert_eq!(out.ok().trim(), "sized");
    let state = env.state("sized");
    assert_eq!(
        (state["vcpus"].as_u64(), state["memory_mib"].as_u64()),
        (Some(2), Some(512))
    );
}
