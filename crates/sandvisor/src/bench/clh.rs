//! The **clh** section: Cloud Hypervisor through the `Hypervisor` trait,
//! with the tiny PVH guest (`image::tiny_guest`), which is what runs under
//! CH on a PVM-backed host; a Linux guest and its agent do not, so nothing
//! here waits for a guest to see anything.
//!
//! Per boot: spawn to `vmm.ping`, `vm.create` + `vm.boot` acknowledged;
//! then pause and resume, and the acknowledgement of a disk hot-plug, a
//! vCPU added and 128 MiB added (`vm.add-disk`, `vm.resize`). Targets are
//! QEMU's: 10 ms for pause and resume, 50 ms for an acknowledgement.
//!
//! The binary is found as the backend finds it (`$SANDVISOR_VMM_DIR`,
//! `PATH`, Kata's paths); without one the section is not measured and the
//! report's setup says so.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::report::Unit;
use super::{hv_err, io_err, ms, targets, BenchError, BenchOptions, Recorder, Section};
use crate::backends::clh::Clh;
use crate::backends::vmm::lookup;
use crate::config::HypervisorConfig;
use crate::device::{BlockDrive, Device};
use crate::hypervisor::{Hypervisor, NetworkNamespace};
use crate::image::tiny_guest::TinyGuest;

/// The `cloud-hypervisor` to measure, as the backend's lookup finds it
/// (`$SANDVISOR_VMM_DIR`, `PATH`, Kata's paths), when there is one.
pub fn binary() -> Option<PathBuf> {
    lookup::find(&lookup::Binary::CLOUD_HYPERVISOR, None)
        .ok()
        .map(|found| found.path)
}

const S: Section = Section::Clh;

/// Measures the section with `binary`, into `rec`.
///
/// # Errors
/// The first step that failed; every VM started is stopped and its files
/// removed first.
pub(super) async fn measure(
    opts: &BenchOptions,
    binary: &Path,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let files = tempfile::Builder::new()
        .prefix("svb")
        .tempdir_in("/tmp")
        .map_err(io_err("make a directory for the tiny guest"))?;
    let kernel = files.path().join("guest.elf");
    // A dot every million turns: the console stays quiet.
    let every = NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MIN);
    TinyGuest::new("bench\n", every)
        .write_to(&kernel)
        .map_err(io_err("write the tiny guest"))?;
    let initrd = files.path().join("initrd.img");
    std::fs::write(&initrd, [0u8; 4096]).map_err(io_err("write the initrd"))?;
    // One file per hot-plug: the tiny guest never ejects a disk, so CH
    // keeps an unplugged one open (and locked) until it exits.
    let mut disks = Vec::new();
    for n in 0..opts.hotplugs {
        let disk = files.path().join(format!("disk{n}.img"));
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(16 << 20))
            .map_err(io_err("make a disk"))?;
        disks.push(disk);
    }
    let config = HypervisorConfig {
        kernel_path: Some(kernel),
        initrd_path: Some(initrd),
        hypervisor_path: Some(binary.to_path_buf()),
        num_vcpus: 1,
        default_max_vcpus: 2,
        memory_size: 256,
        mem_slots: 1,
        use_vsock: true,
        ..HypervisorConfig::default()
    };
    for boot in 0..opts.boots {
        let mut vm = Clh::with_storage(files.path());
        let r = one_vm(opts, &mut vm, &config, &disks, boot, rec).await;
        if let Err(e) = vm.stop_sandbox().await {
            tracing::warn!(error = %e, "stopping the bench's cloud hypervisor failed");
        }
        if let Err(e) = vm.cleanup().await {
            tracing::warn!(error = %e, "cleaning up the bench's cloud hypervisor failed");
        }
        r?;
    }
    progress(&format!(
        "clh: {} boots, {} pause/resume pairs and {} disk hot-plugs each",
        opts.boots, opts.ops, opts.hotplugs
    ));
    Ok(())
}

async fn one_vm(
    opts: &BenchOptions,
    vm: &mut Clh,
    config: &HypervisorConfig,
    disks: &[PathBuf],
    boot: usize,
    rec: &mut Recorder,
) -> Result<(), BenchError> {
    let id = format!("bench{boot}");
    vm.create_sandbox(&id, &NetworkNamespace::default(), config, false)
        .await
        .map_err(hv_err("create the CH sandbox"))?;
    let socket = vm
        .generate_socket(&id, true)
        .map_err(hv_err("make the hybrid vsock"))?;
    vm.add_device(socket.into_device())
        .await
        .map_err(hv_err("add the hybrid vsock"))?;
    vm.start_sandbox(opts.boot_timeout)
        .await
        .map_err(hv_err("start cloud hypervisor"))?;
    if let Some(t) = vm.start_timings() {
        rec.add(
            S,
            "clh_vmm_ready",
            "CH: spawn to vmm.ping answering",
            Unit::Millis,
            None,
            ms(t.vmm_ready),
        );
        rec.add(
            S,
            "clh_create_boot",
            "CH: vm.create + vm.boot acknowledged (tiny guest)",
            Unit::Millis,
            None,
            ms(t.create_boot),
        );
    }
    for _ in 0..opts.ops {
        let t = Instant::now();
        vm.pause_sandbox().await.map_err(hv_err("pause"))?;
        let paused = t.elapsed();
        let t = Instant::now();
        vm.resume_sandbox().await.map_err(hv_err("resume"))?;
        let resumed = t.elapsed();
        rec.add(
            S,
            "clh_pause",
            "CH: pause (vm.pause, acknowledged)",
            Unit::Millis,
            Some(targets::PAUSE_RESUME_MS),
            ms(paused),
        );
        rec.add(
            S,
            "clh_resume",
            "CH: resume (vm.resume, acknowledged)",
            Unit::Millis,
            Some(targets::PAUSE_RESUME_MS),
            ms(resumed),
        );
    }
    for (n, disk) in disks.iter().enumerate() {
        let drive = BlockDrive {
            file: disk.clone(),
            format: "raw".into(),
            index: u32::try_from(n + 1).unwrap_or(u32::MAX),
            ..BlockDrive::default()
        };
        let t = Instant::now();
        vm.hotplug_add_device(Device::Block(drive.clone()))
            .await
            .map_err(hv_err("hot-plug a disk"))?;
        rec.add(
            S,
            "clh_hotplug_disk_ack",
            "CH: hot-plug disk (vm.add-disk, acknowledged)",
            Unit::Millis,
            Some(targets::HOTPLUG_ACK_MS),
            ms(t.elapsed()),
        );
        vm.hotplug_remove_device(Device::Block(drive))
            .await
            .map_err(hv_err("unplug the disk"))?;
    }
    let t = Instant::now();
    vm.resize_vcpus(2).await.map_err(hv_err("add a vCPU"))?;
    rec.add(
        S,
        "clh_hotplug_cpu_ack",
        "CH: hot-plug vCPU (vm.resize, acknowledged)",
        Unit::Millis,
        Some(targets::HOTPLUG_ACK_MS),
        ms(t.elapsed()),
    );
    let t = Instant::now();
    vm.resize_memory(config.memory_size + 128, 128, false)
        .await
        .map_err(hv_err("add 128 MiB"))?;
    rec.add(
        S,
        "clh_hotplug_mem_ack",
        "CH: hot-plug 128 MiB (vm.resize, acknowledged)",
        Unit::Millis,
        Some(targets::HOTPLUG_ACK_MS),
        ms(t.elapsed()),
    );
    Ok(())
}
