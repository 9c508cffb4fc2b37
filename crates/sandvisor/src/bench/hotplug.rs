//! The hot-plug section: vCPUs, memory and disks, each timed until QEMU
//! acknowledges and until a guest command sees it.

use std::time::{Duration, Instant};

use sandvisor_proto::OnlineCpuMemRequest;

use super::report::Unit;
use super::{
    agent_err, guest_sh, hv_err, io_err, ms, targets, BenchError, BenchOptions, Recorder, Section,
    POLL_INTERVAL,
};
use crate::agent::AgentClient;
use crate::config::HypervisorConfig;
use crate::device::{BlockDrive, Device};
use crate::sandbox::Sandbox;

/// Polls `seen` every [`POLL_INTERVAL`] until it is true; how long it took
/// from `since`.
async fn until_seen<F, Fut>(
    what: &'static str,
    since: Instant,
    mut seen: F,
) -> Result<Duration, BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, BenchError>>,
{
    let limit = Duration::from_secs(10);
    loop {
        if seen().await? {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            return Err(BenchError::NotSeen {
                what,
                waited: limit,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn mem_total_kib(agent: &AgentClient) -> Result<u64, BenchError> {
    let line = guest_sh(agent, "grep MemTotal /proc/meminfo").await?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// The hot-plug section, on the sandbox lifecycle shares: vCPUs, then
/// memory, then disks.
pub(super) async fn hotplug(
    opts: &BenchOptions,
    sandbox: &mut Sandbox,
    config: &HypervisorConfig,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    cpus(opts, sandbox, config, rec).await?;
    let dimms = memory(opts, sandbox, config, rec).await?;
    disks(opts, sandbox, rec).await?;
    progress(&format!(
        "hotplug: {} vCPUs, {dimms} DIMMs, {} disks; the guest polled every {}ms",
        opts.hotplugs,
        opts.hotplugs,
        POLL_INTERVAL.as_millis()
    ));
    Ok(())
}

/// vCPUs, one at a time; the agent onlines each, as Kata's runtime asks.
async fn cpus(
    opts: &BenchOptions,
    sandbox: &mut Sandbox,
    config: &HypervisorConfig,
    rec: &mut Recorder,
) -> Result<(), BenchError> {
    let h = Section::Hotplug;
    let plugs = u32::try_from(opts.hotplugs).unwrap_or(u32::MAX);
    for want in (config.num_vcpus + 1)..=(config.num_vcpus.saturating_add(plugs)) {
        let t = Instant::now();
        sandbox
            .hypervisor()
            .resize_vcpus(want)
            .await
            .map_err(hv_err("hot-plug a vCPU"))?;
        let ack = t.elapsed();
        let agent = sandbox.agent();
        // The agent waits for the vCPU to appear and onlines it.
        agent
            .online_cpu_mem(OnlineCpuMemRequest {
                nb_cpus: 1,
                cpu_only: true,
                wait_ms: 5_000,
                ..OnlineCpuMemRequest::default()
            })
            .await
            .map_err(agent_err("online the vCPU"))?;
        let seen = until_seen("vCPU", t, || async move {
            Ok(guest_sh(agent, "nproc").await?.parse::<u32>().unwrap_or(0) >= want)
        })
        .await?;
        rec.add(
            h,
            "hotplug_cpu_ack",
            "hot-plug vCPU: QEMU acknowledges",
            Unit::Millis,
            Some(targets::HOTPLUG_ACK_MS),
            ms(ack),
        );
        rec.add(
            h,
            "hotplug_cpu_seen",
            "hot-plug vCPU: online in the guest (nproc)",
            Unit::Millis,
            Some(targets::HOTPLUG_VISIBLE_MS),
            ms(seen),
        );
    }
    Ok(())
}

/// Memory, 128 MiB at a time, as many as the DIMM slots allow; returns how
/// many DIMMs were plugged.
async fn memory(
    opts: &BenchOptions,
    sandbox: &mut Sandbox,
    config: &HypervisorConfig,
    rec: &mut Recorder,
) -> Result<usize, BenchError> {
    let h = Section::Hotplug;
    let mut memory = config.memory_size;
    let dimms = opts.hotplugs.min(config.mem_slots as usize);
    for _ in 0..dimms {
        let before = mem_total_kib(sandbox.agent()).await?;
        let t = Instant::now();
        sandbox
            .hypervisor()
            .resize_memory(memory + 128, 128, false)
            .await
            .map_err(hv_err("hot-plug 128 MiB"))?;
        let ack = t.elapsed();
        memory += 128;
        let agent = sandbox.agent();
        // The agent waits for the DIMM's memory to appear and onlines it.
        agent
            .online_cpu_mem(OnlineCpuMemRequest {
                memory_mib: 128,
                wait_ms: 5_000,
                ..OnlineCpuMemRequest::default()
            })
            .await
            .map_err(agent_err("online the memory"))?;
        let seen = until_seen("memory", t, || async move {
            Ok(mem_total_kib(agent).await? >= before + 120 * 1024)
        })
        .await?;
        rec.add(
            h,
            "hotplug_memory_ack",
            "hot-plug 128 MiB DIMM: QEMU acknowledges",
            Unit::Millis,
            Some(targets::HOTPLUG_ACK_MS),
            ms(ack),
        );
        rec.add(
            h,
            "hotplug_memory_seen",
            "hot-plug 128 MiB DIMM: in the guest's MemTotal",
            Unit::Millis,
            Some(targets::HOTPLUG_VISIBLE_MS),
            ms(seen),
        );
    }
    Ok(dimms)
}

/// Disks: 16 MiB sparse files.
async fn disks(
    opts: &BenchOptions,
    sandbox: &mut Sandbox,
    rec: &mut Recorder,
) -> Result<(), BenchError> {
    let h = Section::Hotplug;
    let disks = tempfile::Builder::new()
        .prefix("sandvisor-bench-disks-")
        .tempdir()
        .map_err(io_err("make a directory for disk images"))?;
    for i in 0..opts.hotplugs {
        let file = disks.path().join(format!("disk{i}.img"));
        let f =
            std::fs::File::create(&file).map_err(io_err(format!("create {}", file.display())))?;
        f.set_len(16 << 20)
            .map_err(io_err(format!("size {}", file.display())))?;
        let before = sandbox
            .agent()
            .list_block_devices()
            .await
            .map_err(agent_err("list block devices"))?
            .len();
        let t = Instant::now();
        sandbox
            .hypervisor()
            .hotplug_add_device(Device::Block(BlockDrive {
                file,
                format: "raw".into(),
                id: format!("bench{i}"),
                index: u32::try_from(i + 1).unwrap_or(u32::MAX),
                ..BlockDrive::default()
            }))
            .await
            .map_err(hv_err("hot-plug a disk"))?;
        let ack = t.elapsed();
        let agent = sandbox.agent();
        let seen = until_seen("disk", t, || async move {
            Ok(agent
                .list_block_devices()
                .await
                .map_err(agent_err("list block devices"))?
                .len()
                > before)
        })
        .await?;
        rec.add(
            h,
            "hotplug_disk_ack",
            "hot-plug disk: QEMU acknowledges",
            Unit::Millis,
            Some(targets::HOTPLUG_ACK_MS),
            ms(ack),
        );
        rec.add(
            h,
            "hotplug_disk_seen",
            "hot-plug disk: block device in the guest",
            Unit::Millis,
            Some(targets::HOTPLUG_VISIBLE_MS),
            ms(seen),
        );
    }
    Ok(())
}
