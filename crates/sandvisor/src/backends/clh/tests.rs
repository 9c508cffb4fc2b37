//! Unit tests of the backend that need no VMM.

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
    assert!(!caps.vm_template);
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
