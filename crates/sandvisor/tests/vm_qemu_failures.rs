//! QEMU dying, or never coming up: seen, reported, and nothing left behind.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use sandvisor::backends::qemu::Qemu;
use sandvisor::config::BlockDeviceDriver;
use sandvisor::device::{BlockDrive, Device, HotplugResult};
use sandvisor::hypervisor::NetworkNamespace;
use sandvisor::{Error, Hypervisor, VmState};
use support::{alive, entries, Console};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_qemu_is_seen_within_a_second_and_nothing_is_left() {
    support::trace();
    let storage = support::storage();
    let config = support::config(BlockDeviceDriver::VirtioScsi);
    let mut vm = Qemu::with_storage(storage.path());
    vm.create_sandbox("kill", &NetworkNamespace::default(), &config, false)
        .await
        .expect("create");
    vm.start_sandbox(support::BOOT_TIMEOUT)
        .await
        .expect("start");
    let pid = vm.pids()[0];
    let console = vm.sandbox_console("kill").await.expect("console");
    let mut console = Console::ready(&console.expect("console socket")).await;

    // The SCSI path of block hot-plug, while the VM is alive.
    let disk = storage.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(8 << 20))
        .expect("disk image");
    let drive = BlockDrive {
        file: disk.clone(),
        format: "raw".into(),
        id: "scsi1".into(),
        index: 1,
        ..BlockDrive::default()
    };
    let r = vm
        .hotplug_add_device(Device::Block(drive.clone()))
        .await
        .expect("hot-plug a SCSI disk");
    assert!(matches!(r, HotplugResult::Attached(Some(_))));
    console
        .run_until("ls /sys/block", |o| o.contains("sda"))
        .await;
    assert_eq!(console.run("cat /sys/block/sda/size").await, "16384");
    vm.hotplug_remove_device(Device::Block(drive))
        .await
        .expect("hot-unplug the SCSI disk");
    console
        .run_until("ls /sys/block", |o| !o.contains("sda"))
        .await;
    vm.check().await.expect("healthy");

    // kill -9, as the OOM killer would.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    let killed = Instant::now();
    let err = loop {
        match vm.check().await {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    killed.elapsed() < Duration::from_secs(1),
                    "check() still healthy 1 s after SIGKILL"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let seen = killed.elapsed();
    eprintln!("SIGKILL seen by check() after {seen:?}");
    assert!(seen < Duration::from_secs(1));
    assert!(
        matches!(&err, Error::VmmExited { exit, starting: false, .. } if exit.signal() == Some(9)),
        "{err}"
    );
    assert!(err.to_string().contains("SIGKILL"), "{err}");
    assert_eq!(vm.save().state, VmState::Stopped);

    // A stop after a crash reports the crash, and still tidies up.
    let err = vm.stop_sandbox().await.expect_err("the crash is reported");
    assert!(err.to_string().contains("killed by signal 9"), "{err}");
    vm.stop_sandbox().await.expect("a second stop is a no-op");
    vm.cleanup().await.expect("cleanup");
    assert!(!alive(pid));
    let left: Vec<_> = entries(storage.path())
        .into_iter()
        .filter(|p| *p != disk)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_that_fails_to_start_is_reported_and_leaves_nothing() {
    support::trace();
    let storage = support::storage();
    let mut config = support::config(BlockDeviceDriver::VirtioScsi);
    config.kernel_path = Some(storage.path().join("no-such-vmlinuz"));
    let mut vm = Qemu::with_storage(storage.path());
    vm.create_sandbox("bad", &NetworkNamespace::default(), &config, false)
        .await
        .expect("create: files are checked by QEMU, not here");
    let err = vm
        .start_sandbox(support::BOOT_TIMEOUT)
        .await
        .expect_err("no kernel");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::VmmExited { starting: true, .. }),
        "{msg}"
    );
    assert!(msg.contains("no-such-vmlinuz"), "QEMU's own words: {msg}");
    assert!(vm.pids().is_empty());
    assert_eq!(vm.save().state, VmState::Created);
    assert!(entries(storage.path()).is_empty(), "nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmm_that_never_answers_is_killed_at_the_deadline() {
    support::trace();
    let storage = support::storage();
    // A stand-in VMM that ignores its arguments and never opens QMP.
    let fake = tempfile::tempdir().expect("tempdir");
    let bin = fake.path().join("qemu-hangs");
    // Its sleep's argument is this test's own, so that another test's
    // `sleep 600` running meanwhile is not counted below.
    let nap = format!("600.{}", std::process::id());
    std::fs::write(
        &bin,
        format!("#!/bin/sh\necho hanging on purpose\nexec sleep {nap}\n"),
    )
    .expect("script");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut config = support::config(BlockDeviceDriver::VirtioScsi);
    config.hypervisor_path = Some(bin);
    let mut vm = Qemu::with_storage(storage.path());
    vm.create_sandbox("hang", &NetworkNamespace::default(), &config, false)
        .await
        .expect("create");
    let t0 = Instant::now();
    let err = vm
        .start_sandbox(Duration::from_secs(1))
        .await
        .expect_err("no QMP");
    let msg = err.to_string();
    assert!(matches!(err, Error::StartTimeout { .. }), "{msg}");
    assert!(msg.contains("hanging on purpose"), "the log tail: {msg}");
    eprintln!("start refused after {:?}", t0.elapsed());
    assert!(vm.pids().is_empty());
    assert!(entries(storage.path()).is_empty(), "nothing left");
    // No `sleep` of ours survives.
    let ours = format!("sleep\0{nap}\0").into_bytes();
    let survivors = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| *c == ours)
        .count();
    assert_eq!(survivors, 0, "the hung VMM was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_owning_handle_kills_the_vm_and_disconnect_keeps_it() {
    support::trace();
    let storage = support::storage();
    let config = support::config(BlockDeviceDriver::VirtioScsi);

    // Dropped while owning: killed, directory removed.
    let mut vm = Qemu::with_storage(storage.path());
    vm.create_sandbox("drop", &NetworkNamespace::default(), &config, false)
        .await
        .expect("create");
    vm.start_sandbox(support::BOOT_TIMEOUT)
        .await
        .expect("start");
    let pid = vm.pids()[0];
    drop(vm);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(pid), "dropping the owner kills the VM");
    assert!(
        entries(storage.path()).is_empty(),
        "and removes its directory"
    );

    // Disconnected first: the VM outlives the handle, for a re-attach.
    let mut vm = Qemu::with_storage(storage.path());
    vm.create_sandbox("keep", &NetworkNamespace::default(), &config, false)
        .await
        .expect("create");
    vm.start_sandbox(support::BOOT_TIMEOUT)
        .await
        .expect("start");
    let state = vm.save();
    vm.disconnect().await;
    drop(vm);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        alive(state.pid),
        "a disconnected handle leaves the VM running"
    );
    let mut vm = Qemu::with_storage(storage.path());
    vm.load(state).await.expect("re-attach");
    vm.stop_sandbox().await.expect("stop");
    vm.cleanup().await.expect("cleanup");
    assert!(entries(storage.path()).is_empty());
}
