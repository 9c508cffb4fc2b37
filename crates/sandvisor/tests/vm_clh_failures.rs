//! Cloud Hypervisor failing: killed under a running VM, a kernel that does
//! not exist, a VMM that exits at once. Each must be reported as what it
//! is, and leave nothing: no process, no socket, no directory.
//!
//! Needs `$SANDVISOR_VMM_DIR/cloud-hypervisor`. None of these needs a
//! booted Linux guest.

#[path = "support/clh.rs"]
mod clh;

use sandvisor::backends::clh::Clh;
use sandvisor::hypervisor::{Error, Hypervisor, NetworkNamespace, VmState};
use sandvisor::process::Exit;

fn storage() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("svc")
        .tempdir_in("/tmp")
        .expect("storage")
}

fn nothing_left(storage: &std::path::Path) {
    assert!(
        clh::processes_mentioning(storage).is_empty(),
        "processes left: {:?}",
        clh::processes_mentioning(storage)
    );
    let left: Vec<_> = std::fs::read_dir(storage).expect("storage").collect();
    assert!(left.is_empty(), "left in storage: {left:?}");
}

#[tokio::test]
async fn a_sigkilled_vmm_fails_check_naming_the_signal() {
    let guest = clh::guest();
    let storage = storage();
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox(
        "kill",
        &NetworkNamespace::default(),
        &clh::config(&guest),
        false,
    )
    .await
    .expect("creates");
    vm.start_sandbox(clh::START_TIMEOUT).await.expect("starts");
    vm.check().await.expect("healthy before the kill");
    let pid = vm.pids()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");

    let e = vm.check().await.expect_err("check fails once CH is killed");
    assert_eq!(e.vmm_exit(), Some(Exit::Signal(9)), "{e:?}");
    assert!(e.to_string().contains("SIGKILL"), "names the signal: {e}");
    assert_eq!(vm.state(), VmState::Stopped);

    // A crash is an error from stop too, never a clean stop.
    let stop = vm.stop_sandbox().await;
    assert!(
        matches!(
            &stop,
            Err(Error::VmmExited {
                exit: Exit::Signal(9),
                ..
            })
        ),
        "{stop:?}"
    );
    vm.cleanup().await.expect("cleans up");
    nothing_left(storage.path());
}

#[tokio::test]
async fn a_bad_kernel_path_fails_the_start_and_leaves_nothing() {
    let guest = clh::guest();
    let storage = storage();
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    let mut config = clh::config(&guest);
    config.kernel_path = Some(guest.dir.path().join("no-such-kernel"));
    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox("badk", &NetworkNamespace::default(), &config, false)
        .await
        .expect("creates: files are start's business");
    let e = vm
        .start_sandbox(clh::START_TIMEOUT)
        .await
        .expect_err("cannot boot a missing kernel");
    // CH's own words travel in the chain.
    let chain = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        chain.contains("vm.create") || chain.contains("vm.boot"),
        "{chain}"
    );
    assert!(vm.pids().is_empty());
    nothing_left(storage.path());
}

#[tokio::test]
async fn a_vmm_that_exits_at_once_is_reported_and_leaves_nothing() {
    let guest = clh::guest();
    let storage = storage();
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    // A "cloud-hypervisor" that fails as soon as it runs.
    let fake = guest.dir.path().join("cloud-hypervisor");
    std::fs::write(&fake, "#!/bin/sh\necho 'no KVM for you' >&2\nexit 3\n").expect("script");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut config = clh::config(&guest);
    config.hypervisor_path = Some(fake);
    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox("early", &NetworkNamespace::default(), &config, false)
        .await
        .expect("creates");
    let e = vm
        .start_sandbox(clh::START_TIMEOUT)
        .await
        .expect_err("the VMM exited");
    match &e {
        Error::VmmExited {
            exit,
            starting,
            log_tail,
            ..
        } => {
            assert_eq!(*exit, Exit::Code(3));
            assert!(*starting);
            assert!(log_tail.contains("no KVM for you"), "{log_tail:?}");
        }
        other => panic!("expected VmmExited: {other:?}"),
    }
    nothing_left(storage.path());
}

/// A VM booted from a template is restored (`vm.restore`) from the
/// template's directory. Here the directory holds no snapshot (this PVM
/// host cannot make one), so CH refuses: the start fails with CH's message
/// and leaves nothing. Restoring a real snapshot needs a KVM host that can
/// take one.
#[tokio::test]
async fn a_restore_from_a_missing_snapshot_fails_cleanly() {
    let guest = clh::guest();
    let storage = storage();
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    let template = guest.dir.path().join("template");
    std::fs::create_dir(&template).expect("template dir");
    let mut config = clh::config(&guest);
    config.boot_from_template = true;
    config.memory_path = Some(template.join("memory"));
    config.devices_state_path = Some(template.clone());
    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox("tmpl", &NetworkNamespace::default(), &config, false)
        .await
        .expect("creates");
    let e = vm
        .start_sandbox(clh::START_TIMEOUT)
        .await
        .expect_err("nothing to restore");
    let chain = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(chain.contains("vm.restore"), "{chain}");
    assert!(vm.pids().is_empty());
    nothing_left(storage.path());
}

/// virtiofsd starts before CH; when the boot then fails, it goes too (Kata's
/// Go backend leaks it there).
#[tokio::test]
async fn a_failed_boot_with_virtio_fs_stops_virtiofsd() {
    let daemon = std::path::Path::new("/usr/lib/qemu/virtiofsd");
    assert!(
        daemon.is_file(),
        "{} is missing: install qemu-system-x86 (it ships virtiofsd)",
        daemon.display()
    );
    let guest = clh::guest();
    let storage = storage();
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    // The share sits in the storage directory, so virtiofsd's command line
    // names it and a leaked daemon would be found.
    let share = storage.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let mut config = clh::config(&guest);
    config.kernel_path = Some(guest.dir.path().join("no-such-kernel"));
    config.shared_fs = sandvisor::config::SharedFs::VirtioFs;
    config.virtio_fs_daemon = Some(daemon.to_path_buf());
    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox("fsfail", &NetworkNamespace::default(), &config, false)
        .await
        .expect("creates");
    vm.add_device(sandvisor::device::Device::Fs(
        sandvisor::device::SharedFsVolume {
            mount_tag: "kataShared".into(),
            host_path: share.clone(),
        },
    ))
    .await
    .expect("adds the share");
    vm.start_sandbox(clh::START_TIMEOUT)
        .await
        .expect_err("cannot boot a missing kernel");
    assert!(vm.pids().is_empty());
    std::fs::remove_dir(&share).expect("share");
    nothing_left(storage.path());
}
