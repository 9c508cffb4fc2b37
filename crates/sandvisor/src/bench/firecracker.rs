//! The **firecracker** section (asked for with `--only firecracker`): the
//! Firecracker backend through the [`Hypervisor`] trait, with the tiny PVH
//! guest (a Linux guest barely advances under Firecracker on a PVM host).
//!
//! - API boot: `start_sandbox` (spawn, `GET /` answered, the pre-boot
//!   requests, `InstanceStart` answered), without and with the jailer;
//! - pause and resume (`PATCH /vm`, acknowledged), against the same
//!   targets as QEMU's;
//! - snapshot create (`PUT /snapshot/create` of a paused VM, full);
//! - restore to running: `start_sandbox` of a VM booting from that
//!   snapshot (a fresh process, `PUT /snapshot/load` with `resume_vm`);
//! - hot-plug ack: a 16 MiB drive `PUT` over PCI until Firecracker
//!   answers, against QEMU's hot-plug ack target.
//!
//! Firecracker and the jailer come from the usual lookup
//! ([`crate::backends::vmm::lookup`]: `$SANDVISOR_VMM_DIR` first). Every VM
//! is stopped and its files removed, on failure too.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{hv_err, io_err, ms, targets, BenchError, BenchOptions, Recorder, Section, Unit};
use crate::backends::firecracker::{FcOptions, Firecracker};
use crate::backends::vmm::lookup::{self, Binary};
use crate::config::HypervisorConfig;
use crate::device::{BlockDrive, Device};
use crate::hypervisor::{Hypervisor, NetworkNamespace};
use crate::image::tiny_guest::TinyGuest;

const S: Section = Section::Firecracker;

struct Setup {
    dir: tempfile::TempDir,
    fc: PathBuf,
    jailer: Option<PathBuf>,
}

impl Setup {
    fn new() -> Result<Setup, BenchError> {
        let fc = lookup::find(&Binary::FIRECRACKER, None)
            .map_err(|e| BenchError::Unexpected(format!("firecracker: {e}")))?
            .path;
        let jailer = lookup::find(&Binary::JAILER, None).ok().map(|f| f.path);
        let dir = tempfile::Builder::new()
            .prefix("svbf")
            .tempdir_in("/tmp")
            .map_err(io_err("make the bench's firecracker directory"))?;
        TinyGuest::default()
            .write_to(dir.path().join("guest.elf"))
            .map_err(io_err("write the tiny guest"))?;
        std::fs::write(dir.path().join("initrd.img"), vec![0u8; 4096])
            .map_err(io_err("write the dummy initrd"))?;
        std::fs::File::create(dir.path().join("disk.img"))
            .and_then(|f| f.set_len(16 << 20))
            .map_err(io_err("make the hot-plug disk"))?;
        for d in ["vms", "jails"] {
            std::fs::create_dir_all(dir.path().join(d)).map_err(io_err("make a folder"))?;
        }
        Ok(Setup { dir, fc, jailer })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self, jailed: bool) -> HypervisorConfig {
        HypervisorConfig {
            kernel_path: Some(self.path("guest.elf")),
            initrd_path: Some(self.path("initrd.img")),
            hypervisor_path: Some(self.fc.clone()),
            jailer_path: if jailed { self.jailer.clone() } else { None },
            unjailed: !jailed,
            num_vcpus: 1,
            default_max_vcpus: 1,
            memory_size: 256,
            use_vsock: true,
            devices_state_path: Some(self.path("vm.state")),
            memory_path: Some(self.path("vm.mem")),
            ..HypervisorConfig::default()
        }
    }

    fn backend(&self) -> Firecracker {
        Firecracker::with_options(
            self.path("vms"),
            FcOptions {
                chroot_base: self.path("jails"),
                ..FcOptions::default()
            },
        )
    }
}

async fn create(
    vm: &mut Firecracker,
    id: &str,
    config: &HypervisorConfig,
) -> Result<(), BenchError> {
    vm.create_sandbox(id, &NetworkNamespace::default(), config, false)
        .await
        .map_err(hv_err("firecracker: create"))?;
    let socket = vm
        .generate_socket(id, true)
        .map_err(hv_err("firecracker: agent socket"))?;
    vm.add_device(socket.into_device())
        .await
        .map_err(hv_err("firecracker: add the vsock"))
}

async fn finish(vm: &mut Firecracker) {
    if let Err(e) = vm.stop_sandbox().await {
        tracing::warn!(error = %e, "bench: stopping firecracker failed");
    }
    if let Err(e) = vm.cleanup().await {
        tracing::warn!(error = %e, "bench: cleaning up firecracker failed");
    }
}

/// One VM's measurements; the VM is stopped by the caller.
async fn one_round(
    opts: &BenchOptions,
    setup: &Setup,
    vm: &mut Firecracker,
    jailed: bool,
    rec: &mut Recorder,
) -> Result<(), BenchError> {
    let (key, label) = if jailed {
        (
            "fc_boot_jailed",
            "firecracker API boot, jailed (spawn to InstanceStart answered)",
        )
    } else {
        (
            "fc_boot",
            "firecracker API boot (spawn to InstanceStart answered)",
        )
    };
    let config = setup.config(jailed);
    create(vm, if jailed { "bench-fcj" } else { "bench-fc" }, &config).await?;
    let t = Instant::now();
    vm.start_sandbox(opts.boot_timeout)
        .await
        .map_err(hv_err("firecracker: start"))?;
    rec.add(S, key, label, Unit::Millis, None, ms(t.elapsed()));
    if jailed {
        return Ok(());
    }
    for _ in 0..opts.ops {
        let t = Instant::now();
        vm.pause_sandbox()
            .await
            .map_err(hv_err("firecracker: pause"))?;
        let paused = t.elapsed();
        let t = Instant::now();
        vm.resume_sandbox()
            .await
            .map_err(hv_err("firecracker: resume"))?;
        let resumed = t.elapsed();
        rec.add(
            S,
            "fc_pause",
            "firecracker pause (PATCH /vm Paused, acknowledged)",
            Unit::Millis,
            Some(targets::PAUSE_RESUME_MS),
            ms(paused),
        );
        rec.add(
            S,
            "fc_resume",
            "firecracker resume (PATCH /vm Resumed, acknowledged)",
            Unit::Millis,
            Some(targets::PAUSE_RESUME_MS),
            ms(resumed),
        );
    }
    for i in 0..opts.hotplugs {
        let drive = BlockDrive {
            file: setup.path("disk.img"),
            id: format!("bench{i}"),
            ..BlockDrive::default()
        };
        let t = Instant::now();
        vm.hotplug_add_device(Device::Block(drive.clone()))
            .await
            .map_err(hv_err("firecracker: hot-plug a drive"))?;
        rec.add(
            S,
            "fc_hotplug_ack",
            "firecracker drive hot-plug over PCI (PUT /drives answered)",
            Unit::Millis,
            Some(targets::HOTPLUG_ACK_MS),
            ms(t.elapsed()),
        );
        vm.hotplug_remove_device(Device::Block(drive))
            .await
            .map_err(hv_err("firecracker: unplug a drive"))?;
    }
    vm.pause_sandbox()
        .await
        .map_err(hv_err("firecracker: pause"))?;
    let t = Instant::now();
    vm.save_sandbox()
        .await
        .map_err(hv_err("firecracker: snapshot"))?;
    rec.add(
        S,
        "fc_snapshot",
        "firecracker snapshot create, 256 MiB, paused (PUT /snapshot/create answered)",
        Unit::Millis,
        None,
        ms(t.elapsed()),
    );
    Ok(())
}

async fn restore_round(
    opts: &BenchOptions,
    setup: &Setup,
    vm: &mut Firecracker,
    rec: &mut Recorder,
) -> Result<(), BenchError> {
    let mut config = setup.config(false);
    config.boot_from_template = true;
    create(vm, "bench-fcr", &config).await?;
    let t = Instant::now();
    vm.start_sandbox(opts.boot_timeout)
        .await
        .map_err(hv_err("firecracker: restore"))?;
    rec.add(
        S,
        "fc_restore",
        "firecracker restore to running (spawn, PUT /snapshot/load with resume_vm answered)",
        Unit::Millis,
        None,
        ms(t.elapsed()),
    );
    Ok(())
}

/// Runs the section.
pub(super) async fn section(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let setup = Setup::new()?;
    let rounds = opts.boots.max(1);
    for _ in 0..rounds {
        let mut vm = setup.backend();
        let r = one_round(opts, &setup, &mut vm, false, rec).await;
        finish(&mut vm).await;
        r?;
        let mut vm = setup.backend();
        let r = restore_round(opts, &setup, &mut vm, rec).await;
        finish(&mut vm).await;
        r?;
        if setup.jailer.is_some() {
            let mut vm = setup.backend();
            let r = one_round(opts, &setup, &mut vm, true, rec).await;
            finish(&mut vm).await;
            r?;
        }
    }
    progress(&format!(
        "firecracker: {rounds} boots, restores{}, {} pause/resume pairs and {} hot-plugs each",
        if setup.jailer.is_some() {
            " and jailed boots"
        } else {
            ""
        },
        opts.ops,
        opts.hotplugs
    ));
    check_empty(&setup.path("vms"))?;
    check_empty(&setup.path("jails"))
}

fn check_empty(dir: &Path) -> Result<(), BenchError> {
    let left: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err(format!("read {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Unexpected(format!(
            "firecracker VMs left files behind: {left:?}"
        )))
    }
}
