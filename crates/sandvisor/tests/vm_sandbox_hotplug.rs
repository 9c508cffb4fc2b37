//! A running sandbox grows, and the guest agent makes the growth usable:
//! resize to 2 vCPUs and hot-plug 256 MiB, have the agent online them, and
//! see `nproc` and MemTotal change inside the guest; hot-plug a disk image
//! holding an ext4 file system, mount it through the agent and read back a
//! file written on the host.

mod support;
use support::sh;

use sandvisor::agent::AgentClient;
use sandvisor::backends::qemu::Qemu;
use sandvisor::config::BlockDeviceDriver;
use sandvisor::sandbox::Sandbox;
use sandvisor_proto::{MountRequest, OnlineCpuMemRequest};

async fn mem_total_kib(agent: &AgentClient) -> u64 {
    let line = sh(agent, "grep MemTotal /proc/meminfo").await;
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_resize_hotplug_memory_and_disk_are_usable_in_the_guest() {
    let storage = support::storage();
    let mut config = support::config(BlockDeviceDriver::VirtioBlock);
    config.kernel_params.clear();
    config.validate().expect("valid config");
    let mut sandbox = Sandbox::launch(
        "hotplug".into(),
        Box::new(Qemu::with_storage(storage.path())),
        &config,
        support::BOOT_TIMEOUT,
    )
    .await
    .expect("sandbox boots and its agent answers");

    assert_eq!(sh(sandbox.agent(), "nproc").await, "1");
    let mem_before = mem_total_kib(sandbox.agent()).await;

    // Grow: 2 vCPUs and 256 MiB more, then have the agent online them.
    let (old, new) = sandbox
        .hypervisor()
        .resize_vcpus(2)
        .await
        .expect("resize to 2 vCPUs");
    assert_eq!((old, new), (1, 2));
    let (mem_now, dimm) = sandbox
        .hypervisor()
        .resize_memory(config.memory_size + 256, 128, false)
        .await
        .expect("hot-plug 256 MiB");
    assert_eq!(mem_now, config.memory_size + 256);
    assert_eq!(dimm.size_mib, 256);
    let online = sandbox
        .agent()
        .online_cpu_mem(OnlineCpuMemRequest {
            nb_cpus: 1,
            memory_mib: 256,
            wait_ms: 5_000,
            ..OnlineCpuMemRequest::default()
        })
        .await
        .expect("agent onlines the new CPU and memory");
    assert_eq!(online.cpus_online, 2, "{online:?}");
    assert_eq!(
        online.memory_blocks_onlined, 2,
        "two 128 MiB blocks: {online:?}"
    );

    assert_eq!(sh(sandbox.agent(), "nproc").await, "2");
    let grown = mem_total_kib(sandbox.agent()).await - mem_before;
    assert!(
        (250 * 1024..=256 * 1024).contains(&grown),
        "MemTotal grew by {grown} KiB, expected about 256 MiB"
    );

    // A disk hot-plugged while the guest runs, mounted through the agent.
    let disk_dir = tempfile::tempdir().expect("tempdir");
    let image = support::ext4_image(disk_dir.path(), "written on the host\n");
    let added = support::hotplug_data_disk(&mut sandbox, &image, "hot-plug the disk").await;
    assert_eq!(added.size_bytes, 16 * 1024 * 1024, "{added:?}");
    sandbox
        .agent()
        .mount(MountRequest {
            source: format!("/dev/{}", added.name),
            target: "/mnt/data".into(),
            fstype: "ext4".into(),
            options: vec!["ro".into()],
        })
        .await
        .expect("agent mounts the disk");
    assert_eq!(
        sh(sandbox.agent(), "cat /mnt/data/hello.txt").await,
        "written on the host"
    );

    sandbox.shutdown().await.expect("clean shutdown");
    let left: Vec<_> = std::fs::read_dir(storage.path())
        .expect("storage dir")
        .collect();
    assert!(left.is_empty(), "VM files left: {left:?}");
}
