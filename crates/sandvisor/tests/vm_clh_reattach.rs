//! Another handle takes over a running Cloud Hypervisor: from `save()`
//! (the supervisor's re-attach) and from `to_grpc()` (the VM cache), and
//! drives it; virtio-fs brings virtiofsd along, and both go at stop.
//!
//! Needs `$SANDVISOR_VMM_DIR/cloud-hypervisor`, and virtiofsd for the
//! virtio-fs test. A booted Linux guest would also mount the share; the
//! tiny guest cannot, so only the device and the daemon are checked.

#[path = "support/clh.rs"]
mod clh;

use std::path::Path;
use std::time::Duration;

use sandvisor::backends::clh::Clh;
use sandvisor::config::SharedFs;
use sandvisor::device::{Device, SharedFsVolume};
use sandvisor::hypervisor::{Hypervisor, NetworkNamespace, VmState};

fn storage() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("svc")
        .tempdir_in("/tmp")
        .expect("storage")
}

#[tokio::test]
async fn a_second_handle_loads_the_saved_state_and_pauses_the_vm() {
    let guest = clh::guest();
    let storage = storage();
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    let config = clh::config(&guest);
    let mut first = Clh::with_storage(storage.path());
    first
        .create_sandbox("re", &NetworkNamespace::default(), &config, false)
        .await
        .expect("creates");
    first
        .start_sandbox(clh::START_TIMEOUT)
        .await
        .expect("starts");
    let pid = first.pids()[0];
    let state = first.save();
    assert_eq!(state.pid, pid);
    assert_ne!(state.vmm_start_time, 0, "the start time guards the pid");
    // Through JSON, as state.json carries it.
    let state = serde_json::from_str(&serde_json::to_string(&state).expect("json")).expect("json");
    first.disconnect().await;
    drop(first);
    assert!(
        clh::processes_mentioning(storage.path()).contains(&pid),
        "disconnect keeps CH"
    );

    let mut second = Clh::with_storage("/nonexistent-storage");
    second.load(state).await.expect("re-attaches");
    assert_eq!(second.state(), VmState::Running);
    assert_eq!(second.pids(), [pid]);
    let console = second
        .sandbox_console("re")
        .await
        .expect("console")
        .expect("socket");
    let mut serial = clh::Serial::connect(&console).await;
    // The first reader of the console gets what was kept since boot.
    serial.wait_banner(Duration::from_secs(10)).await;
    assert!(
        serial.new_dots(Duration::from_secs(10)).await,
        "the guest runs"
    );
    second
        .pause_sandbox()
        .await
        .expect("pauses through the new handle");
    serial.read_for(Duration::from_millis(200)).await;
    let quiet = serial.read_for(Duration::from_millis(500)).await;
    assert!(quiet.is_empty(), "output while paused: {quiet:?}");
    second.check().await.expect("healthy");

    // The VM cache hand-over: to_grpc gives it away without killing it.
    let data = second.to_grpc().await.expect("to_grpc");
    drop(second);
    assert!(
        clh::processes_mentioning(storage.path()).contains(&pid),
        "to_grpc keeps CH"
    );
    let mut third = Clh::new();
    third.from_grpc(&config, &data).await.expect("from_grpc");
    assert_eq!(third.state(), VmState::Paused);
    third.resume_sandbox().await.expect("resumes");
    assert!(serial.new_dots(Duration::from_secs(10)).await, "runs again");

    third.stop_sandbox().await.expect("stops an adopted CH");
    assert!(clh::gone(pid).await, "CH is gone");
    third.cleanup().await.expect("cleans up");
    assert!(clh::processes_mentioning(storage.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(storage.path())
        .expect("storage")
        .collect();
    assert!(left.is_empty(), "left in storage: {left:?}");
}

#[tokio::test]
async fn virtio_fs_runs_virtiofsd_first_and_stops_it_last() {
    let daemon = Path::new("/usr/lib/qemu/virtiofsd");
    assert!(
        daemon.is_file(),
        "{} is missing: install qemu-system-x86 (it ships virtiofsd)",
        daemon.display()
    );
    let guest = clh::guest();
    let storage = storage();
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    let share = storage.path().join("share");
    std::fs::create_dir(&share).expect("share dir");
    let mut config = clh::config(&guest);
    config.shared_fs = SharedFs::VirtioFs;
    config.virtio_fs_daemon = Some(daemon.to_path_buf());
    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox("fs", &NetworkNamespace::default(), &config, false)
        .await
        .expect("creates");
    vm.add_device(Device::Fs(SharedFsVolume {
        mount_tag: "kataShared".into(),
        host_path: share.clone(),
    }))
    .await
    .expect("adds the share");
    vm.start_sandbox(clh::START_TIMEOUT).await.expect("starts");
    let pids = vm.pids();
    assert_eq!(pids.len(), 2, "cloud hypervisor, then virtiofsd: {pids:?}");
    let info = vm.vm_info().await.expect("vm.info");
    assert_eq!(info.config.fs.len(), 1, "{:?}", info.config.fs);
    assert_eq!(info.config.fs[0].tag, "kataShared");
    assert!(info.config.memory.shared, "virtio-fs needs shared memory");
    vm.check().await.expect("healthy");
    vm.stop_sandbox().await.expect("stops");
    for pid in pids {
        assert!(clh::gone(pid).await, "pid {pid} is still alive");
    }
    vm.cleanup().await.expect("cleans up");
    std::fs::remove_dir(&share).expect("share");
    assert!(clh::processes_mentioning(storage.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(storage.path())
        .expect("storage")
        .collect();
    assert!(left.is_empty(), "left in storage: {left:?}");
}
