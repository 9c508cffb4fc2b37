//! VM templating: a VM booted to be a template is saved; a second VM
//! boots from it and carries on where the template was, its memory read
//! from the template's file.

mod support;

use std::time::Instant;

use sandvisor::backends::qemu::{Qemu, QemuError};
use sandvisor::config::BlockDeviceDriver;
use sandvisor::hypervisor::NetworkNamespace;
use sandvisor::{Hypervisor, VmState};
use support::{alive, entries, Console};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_template_boots_clones_that_remember_it() {
    support::trace();
    let storage = support::storage();
    let template_dir = storage.path().join("tpl");
    std::fs::create_dir(&template_dir).expect("template dir");
    let memory = template_dir.join("memory");
    let state = template_dir.join("state");
    let mut config = support::config(BlockDeviceDriver::VirtioScsi);
    config.memory_path = Some(memory.clone());
    config.devices_state_path = Some(state.clone());

    // The template.
    let mut tpl_config = config.clone();
    tpl_config.boot_to_be_template = true;
    let mut tpl = Qemu::with_storage(storage.path());
    tpl.create_sandbox("tpl-vm", &NetworkNamespace::default(), &tpl_config, false)
        .await
        .expect("create template");
    tpl.start_sandbox(support::BOOT_TIMEOUT)
        .await
        .expect("start template");
    let tpl_pid = tpl.pids()[0];
    let console = tpl.sandbox_console("tpl-vm").await.expect("console");
    let mut console = Console::ready(&console.expect("console socket")).await;
    console.run("echo made-in-the-template > /sv-marker").await;
    assert_eq!(
        std::fs::metadata(&memory).expect("memory file").len(),
        512 << 20,
        "guest RAM lives in the template's file"
    );
    let t0 = Instant::now();
    tpl.save_sandbox().await.expect("save");
    eprintln!("template saved in {:?}", t0.elapsed());
    assert_eq!(tpl.save().state, VmState::Paused, "saving pauses");
    let saved = std::fs::metadata(&state).expect("state file").len();
    assert!(saved > 0, "device state written");
    assert!(
        saved < 64 << 20,
        "x-ignore-shared kept the {} MiB of RAM out of the {saved}-byte state file",
        512
    );
    tpl.stop_sandbox().await.expect("stop template");
    tpl.cleanup().await.expect("cleanup template");
    assert!(!alive(tpl_pid));

    // A clone: no boot, a restore.
    let mut clone_config = config.clone();
    clone_config.boot_from_template = true;
    let mut clone = Qemu::with_storage(storage.path());
    clone
        .create_sandbox(
            "clone-vm",
            &NetworkNamespace::default(),
            &clone_config,
            false,
        )
        .await
        .expect("create clone");
    let t0 = Instant::now();
    clone
        .start_sandbox(support::BOOT_TIMEOUT)
        .await
        .expect("start from template");
    let console = clone.sandbox_console("clone-vm").await.expect("console");
    let mut console = Console::ready(&console.expect("console socket")).await;
    assert_eq!(
        console.run("cat /sv-marker").await,
        "made-in-the-template",
        "the clone has the template's memory"
    );
    eprintln!("clone answering after {:?}", t0.elapsed());
    clone.check().await.expect("healthy clone");
    assert_eq!(clone.save().state, VmState::Running);
    console.run("echo clone-only > /sv-marker").await;
    let in_file = |needle: &str| {
        std::process::Command::new("grep")
            .args(["-q", "-a", "-F", needle])
            .arg(&memory)
            .status()
            .expect("grep")
            .success()
    };
    assert!(
        in_file("made-in-the-template"),
        "the template's file holds its RAM"
    );
    assert!(
        !in_file("clone-only"),
        "the clone maps the template privately: its writes stay its own"
    );
    clone.stop_sandbox().await.expect("stop clone");
    clone.cleanup().await.expect("cleanup clone");

    // Saving without a state path is a typed error.
    let mut plain = Qemu::with_storage(storage.path());
    let mut no_state = support::config(BlockDeviceDriver::VirtioScsi);
    no_state.devices_state_path = None;
    plain
        .create_sandbox("plain", &NetworkNamespace::default(), &no_state, false)
        .await
        .expect("create");
    plain
        .start_sandbox(support::BOOT_TIMEOUT)
        .await
        .expect("start");
    let err = plain
        .save_sandbox()
        .await
        .expect_err("no devices_state_path");
    assert!(
        matches!(
            err.backend_source::<QemuError>(),
            Some(QemuError::NoDevicesStatePath)
        ),
        "{err}"
    );
    plain.stop_sandbox().await.expect("stop");
    plain.cleanup().await.expect("cleanup");

    let left: Vec<_> = entries(storage.path())
        .into_iter()
        .filter(|p| *p != template_dir)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
