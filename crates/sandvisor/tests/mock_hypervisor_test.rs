//! Kata 1.x `virtcontainers/mock_hypervisor_test.go`, plus the mock's
//! hot-plug and VM-cache answers from `mock_hypervisor.go`.

use std::time::Duration;

use sandvisor::backends::mock::MockHypervisor;
use sandvisor::config::HypervisorConfig;
use sandvisor::device::{BlockDrive, Device, HotplugResult, MemoryDevice};
use sandvisor::hypervisor::NetworkNamespace;
use sandvisor::socket::AgentSocket;
use sandvisor::{Error, Hypervisor, HypervisorType};

const VM_START_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn mock_hypervisor_create_sandbox() {
    let mut m = MockHypervisor::new();
    let ns = NetworkNamespace::default();

    // Wrong config.
    let bad = HypervisorConfig::default();
    let err = m
        .create_sandbox("mock_sandbox", &ns, &bad, false)
        .await
        .expect_err("no kernel");
    assert!(matches!(err, Error::Config(_)), "{err:?}");

    let good = HypervisorConfig {
        kernel_path: Some("/tmp/vc-tmp/kernel".into()),
        image_path: Some("/tmp/vc-tmp/image".into()),
        hypervisor_path: Some("/tmp/vc-tmp/hypervisor".into()),
        ..Default::default()
    };
    m.create_sandbox("mock_sandbox", &ns, &good, false)
        .await
        .expect("a valid config");
    assert_eq!(
        m.hypervisor_config().num_vcpus,
        1,
        "validated, with defaults"
    );
}

#[tokio::test]
async fn mock_hypervisor_start_sandbox() {
    MockHypervisor::new()
        .start_sandbox(VM_START_TIMEOUT)
        .await
        .expect("starts");
}

#[tokio::test]
async fn mock_hypervisor_stop_sandbox() {
    MockHypervisor::new().stop_sandbox().await.expect("stops");
}

#[tokio::test]
async fn mock_hypervisor_add_device() {
    let img = Device::Image(BlockDrive {
        file: "/tmp/vc-tmp/image".into(),
        ..Default::default()
    });
    MockHypervisor::new().add_device(img).await.expect("adds");
}

#[tokio::test]
async fn mock_hypervisor_get_sandbox_console() {
    let result = MockHypervisor::new()
        .sandbox_console("testSandboxID")
        .await
        .expect("answers");
    assert_eq!(result, None);
}

#[tokio::test]
async fn mock_hypervisor_save_sandbox() {
    MockHypervisor::new().save_sandbox().await.expect("saves");
}

#[tokio::test]
async fn mock_hypervisor_disconnect() {
    MockHypervisor::new().disconnect().await;
}

#[tokio::test]
async fn mock_hypervisor_check() {
    MockHypervisor::new().check().await.expect("healthy");
}

#[test]
fn mock_generate_socket() {
    let s = MockHypervisor::new()
        .generate_socket("a", true)
        .expect("a socket");
    let AgentSocket::Unix(u) = s else {
        panic!("expected a unix socket, got {s:?}");
    };
    assert_eq!(u.host_path, std::path::Path::new("/tmp/socket"));
    assert_eq!(u.name, "socket");
}

#[tokio::test]
async fn mock_hypervisor_hotplug_cpu_returns_count_asked() {
    let mut m = MockHypervisor::new();
    assert_eq!(
        m.hotplug_add_device(Device::Cpu(3)).await.expect("adds"),
        HotplugResult::Cpus(3)
    );
    assert_eq!(
        m.hotplug_remove_device(Device::Cpu(2))
            .await
            .expect("removes"),
        HotplugResult::Cpus(2)
    );
}

#[tokio::test]
async fn mock_hypervisor_hotplug_memory_returns_size() {
    let mut m = MockHypervisor::new();
    let mem = MemoryDevice {
        slot: 1,
        size_mib: 512,
        ..Default::default()
    };
    assert_eq!(
        m.hotplug_add_device(Device::Memory(mem))
            .await
            .expect("adds"),
        HotplugResult::MemoryMib(512)
    );
    assert_eq!(
        m.hotplug_remove_device(Device::Memory(mem))
            .await
            .expect("removes"),
        HotplugResult::MemoryMib(0)
    );
}

#[tokio::test]
async fn mock_hypervisor_thread_ids_are_own_pid() {
    let ids = MockHypervisor::new().thread_ids().await.expect("answers");
    assert_eq!(ids.vcpus.len(), 1);
    assert_eq!(ids.vcpus.get(&0), Some(&std::process::id()));
}

#[tokio::test]
async fn mock_hypervisor_vm_cache_unsupported() {
    let mut m = MockHypervisor::new();
    for err in [
        m.to_grpc().await.expect_err("no VM cache"),
        m.from_grpc(&HypervisorConfig::default(), b"{}")
            .await
            .expect_err("no VM cache"),
    ] {
        match &err {
            Error::Unsupported {
                hypervisor, reason, ..
            } => {
                assert_eq!(*hypervisor, HypervisorType::Mock);
                assert_eq!(reason, "not supported by VM cache");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn mock_hypervisor_resize_and_pids() {
    let mut m = MockHypervisor::new();
    assert_eq!(m.resize_vcpus(4).await.expect("answers"), (0, 0));
    let (size, dev) = m.resize_memory(4096, 128, false).await.expect("answers");
    assert_eq!((size, dev), (0, MemoryDevice::default()));
    assert!(m.capabilities() == Default::default());
    assert_eq!(m.save().hypervisor, HypervisorType::Mock);
}
