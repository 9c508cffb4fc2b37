//! Unit tests of the backend that need no VMM.

use super::vm_config::{VmConfigError, VmSpec};
use super::*;

fn config() -> HypervisorConfig {
    HypervisorConfig {
        kernel_path: Some("/a/vmlinux".into()),
        initrd_path: Some("/a/initrd.img".into()),
        ..HypervisorConfig::default()
    }
}

#[tokio::test]
async fn the_agent_socket_is_the_hybrid_vsock_in_the_vm_directory() {
    let clh = Clh::with_storage("/run/sv");
    let s = clh.generate_socket("vm1", false).expect("fits");
    let AgentSocket::HybridVsock(h) = s else {
        panic!("a hybrid vsock: {s:?}")
    };
    assert_eq!(h.uds_path, Path::new("/run/sv/vm1/clh.sock"));
    assert_eq!((h.context_id, h.port), (3, 1024));
    assert_eq!(
        clh.sandbox_console("vm1").await.expect("fits"),
        Some(PathBuf::from("/run/sv/vm1/console.sock"))
    );
}

#[tokio::test]
async fn operations_before_start_are_invalid_states() {
    let mut clh = Clh::with_storage("/tmp/sv-clh-unit");
    clh.create_sandbox("vm1", &NetworkNamespace::default(), &config(), false)
        .await
        .expect("creates");
    assert_eq!(clh.state(), VmState::Created);
    for r in [
        clh.pause_sandbox().await,
        clh.resume_sandbox().await,
        clh.check().await,
    ] {
        assert!(matches!(r, Err(Error::InvalidState { .. })), "{r:?}");
    }
    assert!(clh.pids().is_empty());
    let serial = clh
        .add_device(Device::SerialPort(crate::device::UnixSocket::default()))
        .await;
    let Err(e) = serial else {
        panic!("a serial port is refused")
    };
    assert!(
        matches!(
            e.backend_source::<ClhError>(),
            Some(ClhError::VmConfig(VmConfigError::UnsupportedDevice { .. }))
        ),
        "{e:?}"
    );
}

#[test]
fn capabilities_follow_the_config() {
    let mut clh = Clh::with_storage("/tmp");
    let caps = clh.capabilities();
    assert!(caps.hybrid_vsock && caps.pause && caps.save && caps.reattach);
    assert!(!caps.memory_hotplug, "no slots, no virtio-mem");
    assert!(!caps.fs_sharing, "9p is not CH's");
    assert!(caps.vm_template, "templates by vm.snapshot and vm.restore");
    clh.config.virtio_mem = true;
    clh.config.shared_fs = crate::config::SharedFs::VirtioFs;
    let caps = clh.capabilities();
    assert!(caps.memory_hotplug && caps.fs_sharing);
}

#[test]
fn vcpu_threads_are_read_by_name() {
    // This test process has no thread named vcpu<N>.
    let ids = vcpu_threads(std::process::id()).expect("reads /proc");
    assert!(ids.vcpus.is_empty());
    assert!(vcpu_threads(u32::MAX).is_err());
}

#[test]
fn exits_become_the_shared_error() {
    let e: Error = ClhError::Exited {
        binary: "/x/cloud-hypervisor".into(),
        pid: 7,
        exit: Exit::Signal(9),
        log_tail: String::new(),
    }
    .into();
    assert_eq!(e.vmm_exit(), Some(Exit::Signal(9)));
    assert!(e.to_string().contains("SIGKILL"), "{e}");
}

/// Every request the backend sends, checked against Cloud Hypervisor's
/// published API (`shared/specs/cloud-hypervisor.yaml`): paths, methods,
/// and bodies (property names, required ones, types, enum values).
#[test]
fn every_request_meets_the_cloud_hypervisor_spec() {
    use crate::backends::vmm::contract::{check_endpoint, Spec};
    use crate::device::{BlockDrive, NetDevice, VfioDevice};
    use api::*;

    let spec = Spec::cloud_hypervisor().expect("the spec loads");
    let paths = VmPaths::new(Path::new("/run/sv"), "vm1");
    let vsock = Device::HybridVsock(HybridVsock {
        uds_path: paths.vsock.clone(),
        context_id: VSOCK_CID,
        port: VSOCK_PORT,
    });
    let mut rich = config();
    rich.validate().expect("valid");
    rich.shared_fs = crate::config::SharedFs::VirtioFs;
    rich.virtio_mem = true;
    rich.mem_slots = 1;
    rich.iommu = true;
    rich.huge_pages = true;
    rich.mem_prealloc = true;
    let drive = BlockDrive {
        file: "/d.img".into(),
        format: "raw".into(),
        index: 1,
        read_only: true,
        ..BlockDrive::default()
    };
    let tap = NetDevice {
        id: String::new(),
        tap_name: "tap0".into(),
        mac: "02:00:00:00:00:01".into(),
        queues: 2,
    };
    let vfio_dev = VfioDevice {
        id: String::new(),
        bdf: "0000:3b:00.0".into(),
        sysfs_dev: std::path::PathBuf::new(),
    };
    let devices = [
        vsock,
        Device::Block(drive.clone()),
        Device::Net(tap.clone()),
        Device::Fs(crate::device::SharedFsVolume {
            mount_tag: "kataShared".into(),
            host_path: "/s".into(),
        }),
        Device::Vfio(vfio_dev.clone()),
    ];
    let mut image = config();
    image.initrd_path = None;
    image.image_path = Some("/rootfs.img".into());
    image.validate().expect("valid");
    let mut image_disk = image.clone();
    image_disk.disable_image_nvdimm = true;
    let mut template = config();
    template.validate().expect("valid");
    template.boot_to_be_template = true;
    template.virtio_mem = true;
    template.memory_path = Some("/run/vc/vm/template/memory".into());
    template.devices_state_path = Some("/run/vc/vm/template/state".into());
    for (c, devs) in [
        (&template, &devices[..1]),
        (&rich, &devices[..]),
        (&image, &[][..]),
        (&image_disk, &[][..]),
    ] {
        let vm = vm_config::build(&VmSpec {
            config: c,
            devices: devs,
            paths: &paths,
            host_memory_mib: 4096,
        })
        .expect("builds");
        check_endpoint(&spec, &VmCreate(vm)).expect("vm.create");
    }
    let c = &rich;
    let checks: Vec<(&str, Result<(), _>)> = vec![
        ("vmm.ping", check_endpoint(&spec, &VmmPing)),
        ("vmm.shutdown", check_endpoint(&spec, &VmmShutdown)),
        ("vm.boot", check_endpoint(&spec, &VmBoot)),
        ("vm.info", check_endpoint(&spec, &VmInfoGet)),
        ("vm.shutdown", check_endpoint(&spec, &VmShutdown)),
        ("vm.delete", check_endpoint(&spec, &VmDelete)),
        ("vm.pause", check_endpoint(&spec, &VmPause)),
        ("vm.resume", check_endpoint(&spec, &VmResume)),
        (
            "vm.snapshot",
            check_endpoint(
                &spec,
                &VmSnapshot(VmSnapshotConfig {
                    destination_url: file_url(&paths.snapshot),
                }),
            ),
        ),
        (
            "vm.restore",
            check_endpoint(
                &spec,
                &VmRestore(RestoreConfig {
                    source_url: file_url(&paths.snapshot),
                    prefault: Some(false),
                    resume: Some(true),
                }),
            ),
        ),
        (
            "vm.resize",
            check_endpoint(
                &spec,
                &VmResizePut(VmResize {
                    desired_vcpus: Some(2),
                    desired_ram: Some(512 << 20),
                    desired_balloon: None,
                }),
            ),
        ),
        (
            "vm.add-disk",
            check_endpoint(&spec, &VmAddDisk(vm_config::disk(c, &drive).expect("disk"))),
        ),
        (
            "vm.add-net (by name)",
            check_endpoint(&spec, &VmAddNet(vm_config::net(c, &tap, 0))),
        ),
        (
            "vm.add-net (fds)",
            check_endpoint(&spec, &VmAddNet(vm_config::net(c, &tap, 2))),
        ),
        (
            "vm.add-fs",
            check_endpoint(
                &spec,
                &VmAddFs(vm_config::fs("kataShared", &paths.virtiofs)),
            ),
        ),
        (
            "vm.add-device",
            check_endpoint(&spec, &VmAddDevice(vm_config::vfio(c, &vfio_dev))),
        ),
        (
            "vm.remove-device",
            check_endpoint(
                &spec,
                &VmRemoveDevicePut(VmRemoveDevice {
                    id: "clh_drive_1".into(),
                }),
            ),
        ),
    ];
    let broken: Vec<String> = checks
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(broken.is_empty(), "{broken:#?}");
}

/// The checker is not a rubber stamp: a body CH would not take fails.
#[test]
fn the_spec_check_catches_a_wrong_body() {
    use crate::backends::vmm::contract::{check_endpoint, Spec};

    #[derive(serde::Serialize)]
    struct BadResize {
        desired_cpus: u32,
    }
    impl crate::backends::vmm::rest::Endpoint for BadResize {
        type Reply = ();
        const METHOD: crate::backends::vmm::rest::Method = crate::backends::vmm::rest::Method::Put;
        fn path(&self) -> std::borrow::Cow<'static, str> {
            std::borrow::Cow::Borrowed("/api/v1/vm.resize")
        }
    }
    let spec = Spec::cloud_hypervisor().expect("the spec loads");
    assert!(check_endpoint(&spec, &BadResize { desired_cpus: 2 }).is_err());
}
