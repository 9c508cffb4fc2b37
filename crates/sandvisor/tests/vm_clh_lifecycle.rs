//! Cloud Hypervisor end to end with the tiny PVH guest: start, console,
//! pause and resume, disk hot-plug and unplug, resize, vCPU threads, save,
//! stop, and nothing left behind.
//!
//! Needs `$SANDVISOR_VMM_DIR/cloud-hypervisor`. What a booted Linux guest
//! would add, and this guest cannot show, is said at each step.

#[path = "support/clh.rs"]
mod clh;

use std::time::Duration;

use sandvisor::backends::clh::{Clh, ClhError};
use sandvisor::device::{BlockDrive, Device, HotplugResult};
use sandvisor::hypervisor::{Hypervisor, NetworkNamespace, VmState};

#[tokio::test]
async fn the_whole_lifecycle_on_a_real_cloud_hypervisor() {
    let guest = clh::guest();
    let storage = tempfile::Builder::new()
        .prefix("svc")
        .tempdir_in("/tmp")
        .expect("storage");
    let _reaper = clh::Reaper(storage.path().to_path_buf());
    let config = clh::config(&guest);
    let mut vm = Clh::with_storage(storage.path());
    vm.create_sandbox("life", &NetworkNamespace::default(), &config, false)
        .await
        .expect("creates");
    let agent = vm.generate_socket("life", true).expect("agent socket");
    vm.add_device(agent.into_device())
        .await
        .expect("adds the hybrid vsock");

    vm.start_sandbox(clh::START_TIMEOUT).await.expect("starts");
    assert_eq!(vm.state(), VmState::Running);
    let pids = vm.pids();
    assert_eq!(pids.len(), 1, "cloud hypervisor alone: {pids:?}");
    vm.check()
        .await
        .expect("check: alive and answering vmm.ping");
    let paths = vm.vm_paths().expect("paths").clone();
    assert!(paths.api.exists(), "API socket");
    // The agent's hybrid vsock is CH's socket; a Linux guest's agent would
    // answer `CONNECT 1024` on it, which the tiny guest cannot.
    assert!(paths.vsock.exists(), "hybrid vsock socket");

    // The banner on the console socket.
    let console = vm
        .sandbox_console("life")
        .await
        .expect("console")
        .expect("a console socket");
    let mut serial = clh::Serial::connect(&console).await;
    serial.wait_banner(Duration::from_secs(10)).await;

    // Pause: no output for 500 ms. Resume: output again.
    vm.pause_sandbox().await.expect("pauses");
    assert_eq!(vm.state(), VmState::Paused);
    // What was in flight before the pause drains first.
    serial.read_for(Duration::from_millis(200)).await;
    let quiet = serial.read_for(Duration::from_millis(500)).await;
    assert!(quiet.is_empty(), "output while paused: {quiet:?}");
    vm.resume_sandbox().await.expect("resumes");
    assert!(
        serial.new_dots(Duration::from_secs(10)).await,
        "no output after resume"
    );

    // Hot-plug a 16 MiB disk: vm.info lists it; unplug: it is gone from the
    // config. (A Linux guest would also see /dev/vdX appear and go; the
    // tiny guest has no ACPI to eject with, so CH's device tree keeps the
    // node until the guest acknowledges.)
    let disk = storage.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(16 << 20))
        .expect("disk file");
    let drive = BlockDrive {
        file: disk.clone(),
        format: "raw".into(),
        index: 1,
        ..BlockDrive::default()
    };
    let added = vm
        .hotplug_add_device(Device::Block(drive.clone()))
        .await
        .expect("add-disk");
    let HotplugResult::Attached(Some(attached)) = added else {
        panic!("the drive comes back: {added:?}")
    };
    assert_eq!(attached.id, "clh_drive_1");
    let pci = attached.pci_path.expect("a guest PCI path");
    assert!(pci.starts_with("00/"), "{pci}");
    let info = vm.vm_info().await.expect("vm.info");
    assert!(
        info.config
            .disks
            .iter()
            .any(|d| d.id.as_deref() == Some("clh_drive_1") && d.path.as_deref() == Some(&*disk)),
        "vm.info lists the disk: {:?}",
        info.config.disks
    );
    let again = vm.hotplug_add_device(Device::Block(drive.clone())).await;
    assert!(
        matches!(
            again
                .as_ref()
                .err()
                .and_then(|e| e.backend_source::<ClhError>()),
            Some(ClhError::DeviceExists { .. })
        ),
        "{again:?}"
    );
    vm.hotplug_remove_device(Device::Block(drive))
        .await
        .expect("remove-device");
    let info = vm.vm_info().await.expect("vm.info");
    assert!(
        !info
            .config
            .disks
            .iter()
            .any(|d| d.id.as_deref() == Some("clh_drive_1")),
        "the disk is gone: {:?}",
        info.config.disks
    );

    // Resize to 2 vCPUs and +256 MiB: vm.info shows both. (A Linux guest
    // would online them through its agent; here only CH's view is seen.)
    assert_eq!(vm.resize_vcpus(2).await.expect("resize vcpus"), (1, 2));
    let zero = vm.resize_vcpus(0).await;
    assert!(zero.is_err(), "0 vCPUs is refused: {zero:?}");
    let (mib, dev) = vm
        .resize_memory(512, 128, false)
        .await
        .expect("resize memory");
    assert_eq!((mib, dev.size_mib), (512, 256));
    let (same, none) = vm.resize_memory(256, 128, false).await.expect("no shrink");
    assert_eq!((same, none.size_mib), (512, 0), "memory never shrinks");
    let info = vm.vm_info().await.expect("vm.info");
    assert_eq!(info.config.cpus.boot_vcpus, 2);
    assert_eq!(info.memory_bytes(), 512 << 20);

    // Thread ids: both vCPU threads, named vcpu0 and vcpu1 by CH.
    let mut threads = vm.thread_ids().await.expect("thread ids");
    for _ in 0..20 {
        if threads.vcpus.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        threads = vm.thread_ids().await.expect("thread ids");
    }
    assert_eq!(
        threads.vcpus.keys().copied().collect::<Vec<_>>(),
        [0, 1],
        "{threads:?}"
    );

    // Save: a snapshot on a normal KVM host; on PVM, CH's GetNestedState
    // error, typed and with CH's message. Nothing else passes.
    match vm.save_sandbox().await {
        Ok(()) => {
            let dir = vm.snapshot_dir().expect("recorded").to_path_buf();
            assert!(dir.join("state.json").is_file(), "snapshot in {dir:?}");
            assert_eq!(vm.save().snapshot_dir, Some(dir));
        }
        Err(e) => {
            let fault = e.backend_source::<ClhError>().and_then(ClhError::fault);
            assert!(
                matches!(fault, Some((500, msg)) if msg.contains("GetNestedState")),
                "save failed other than with PVM's GetNestedState: {e:?}"
            );
            assert!(vm.snapshot_dir().is_none());
        }
    }
    assert_eq!(vm.state(), VmState::Paused, "save pauses first");

    // Stop and clean up: nothing left.
    vm.stop_sandbox().await.expect("stops");
    assert_eq!(vm.state(), VmState::Stopped);
    for pid in &pids {
        assert!(clh::gone(*pid).await, "pid {pid} is still alive");
    }
    vm.cleanup().await.expect("cleans up");
    assert!(!paths.dir.exists(), "VM directory left: {:?}", paths.dir);
    assert!(!console.exists());
    assert!(clh::processes_mentioning(storage.path()).is_empty());
    std::fs::remove_file(&disk).expect("disk file");
    let left: Vec<_> = std::fs::read_dir(storage.path())
        .expect("storage")
        .collect();
    assert!(left.is_empty(), "left in storage: {left:?}");
}
