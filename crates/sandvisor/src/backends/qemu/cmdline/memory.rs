//! Guest memory: what backs RAM (Kata's `setupTemplate`,
//! `setupFileBackedMem` and `getMemArgs`), `-m` with its hot-plug room,
//! and virtio-mem.

use std::path::PathBuf;

use super::boot::ImageMode;
use super::{path_opt, Args, CmdlineError, Plan, RAM_BACKEND_ID, VIRTIO_MEM_ID};
use crate::config::HypervisorConfig;
use crate::device::Device;

/// What backs guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBackend {
    /// Anonymous memory, QEMU's default.
    Ram,
    /// A memfd, shareable with vhost-user daemons.
    Memfd,
    /// A file, or a temporary file in a directory.
    File {
        /// The file or directory.
        path: PathBuf,
    },
}

/// How guest RAM is backed: the backend and its knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryKnobs {
    /// The backend.
    pub backend: MemoryBackend,
    /// Map it shared.
    pub share: bool,
    /// Preallocate it.
    pub prealloc: bool,
}

impl MemoryKnobs {
    /// Whether boot RAM needs an explicit backend object.
    pub(super) fn needs_object(&self) -> bool {
        self.backend != MemoryBackend::Ram || self.share || self.prealloc
    }

    /// `-object` properties of a backend named `id` of `size_mib`.
    pub fn object(&self, id: &str, size_mib: u64) -> String {
        let mut s = match &self.backend {
            MemoryBackend::Ram => format!("memory-backend-ram,id={id},size={size_mib}M"),
            MemoryBackend::Memfd => format!("memory-backend-memfd,id={id},size={size_mib}M"),
            MemoryBackend::File { path } => format!(
                "memory-backend-file,id={id},size={size_mib}M,mem-path={}",
                path_opt(path)
            ),
        };
        if self.share {
            s.push_str(",share=on");
        } else if matches!(self.backend, MemoryBackend::File { .. }) {
            s.push_str(",share=off");
        }
        if self.prealloc {
            s.push_str(",prealloc=on");
        }
        s
    }
}

/// Whether a device in `devices` (or the config) needs guest memory shared
/// with another process. A hybrid vsock counts from the config alone, so
/// that a template with one is refused at create: without shared memory
/// vhost-device-vsock cannot map the guest's rings, and QEMU does not fail
/// but logs it when the guest starts the device, after which every
/// `CONNECT` is dropped.
fn needs_shared_memory(config: &HypervisorConfig, devices: &[Device]) -> bool {
    let fs = config.shared_fs.is_virtio_fs() && devices.iter().any(|d| matches!(d, Device::Fs(_)));
    let vhost_user = devices
        .iter()
        .any(|d| matches!(d, Device::VhostUser(_) | Device::HybridVsock(_)));
    let hybrid_vsock = config.use_vsock && config.vhost_user_vsock_daemon.is_some();
    fs || vhost_user || hybrid_vsock || config.enable_vhost_user_store
}

/// How guest RAM is backed for `config` and `devices`: Kata's
/// `setupTemplate`, `setupFileBackedMem` and `getMemArgs` in one place.
///
/// # Errors
/// [`CmdlineError::TemplateWithSharedMemory`] and
/// [`CmdlineError::VhostUserWithoutHugepages`], as Kata.
pub fn memory_knobs(
    config: &HypervisorConfig,
    devices: &[Device],
) -> Result<MemoryKnobs, CmdlineError> {
    let template = config.boot_to_be_template || config.boot_from_template;
    let shared = needs_shared_memory(config, devices);
    if config.enable_vhost_user_store && !config.huge_pages {
        return Err(CmdlineError::VhostUserWithoutHugepages);
    }
    if template {
        if shared || config.file_backed_mem_root_dir.is_some() {
            return Err(CmdlineError::TemplateWithSharedMemory);
        }
        let path = config
            .memory_path
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/shm"));
        return Ok(MemoryKnobs {
            backend: MemoryBackend::File { path },
            share: config.boot_to_be_template,
            prealloc: config.mem_prealloc,
        });
    }
    if config.huge_pages {
        return Ok(MemoryKnobs {
            backend: MemoryBackend::File {
                path: PathBuf::from("/dev/hugepages"),
            },
            share: true,
            prealloc: true,
        });
    }
    if let Some(dir) = &config.file_backed_mem_root_dir {
        return Ok(MemoryKnobs {
            backend: MemoryBackend::File { path: dir.clone() },
            share: true,
            prealloc: config.mem_prealloc,
        });
    }
    if shared {
        return Ok(MemoryKnobs {
            backend: MemoryBackend::Memfd,
            share: true,
            prealloc: config.mem_prealloc,
        });
    }
    Ok(MemoryKnobs {
        backend: MemoryBackend::Ram,
        share: false,
        prealloc: config.mem_prealloc,
    })
}

/// The backend knobs for hot-plugged memory: like boot RAM, except in a
/// VM template, whose memory file holds boot RAM only; hot-plugged memory
/// there is plain RAM.
///
/// # Errors
/// As [`memory_knobs`].
pub fn hotplug_memory_knobs(
    config: &HypervisorConfig,
    devices: &[Device],
) -> Result<MemoryKnobs, CmdlineError> {
    let boot = memory_knobs(config, devices)?;
    if config.boot_to_be_template || config.boot_from_template {
        return Ok(MemoryKnobs {
            backend: MemoryBackend::Ram,
            share: false,
            prealloc: boot.prealloc,
        });
    }
    Ok(boot)
}

/// The `maxmem` in MiB: the host's memory plus `memory_offset` plus room
/// for the image NVDIMM (at least 1 GiB, as Kata's amd64 code).
pub fn max_memory_mib(
    config: &HypervisorConfig,
    host_memory_mib: u64,
    image_size: Option<u64>,
) -> u64 {
    let nvdimm = image_size.map_or(0, |b| b.div_ceil(1 << 20)).max(1024);
    host_memory_mib + u64::from(config.mem_offset) + nvdimm
}

/// `-m`, the RAM backend object and `-overcommit`.
pub(super) fn boot_memory(p: &Plan<'_>) -> Args {
    let c = p.spec.config;
    let mut a = Args::default();
    // -m: slots and maxmem make room for hot-plugged DIMMs, the image
    // NVDIMM and virtio-mem.
    let mut slots = c.mem_slots;
    if p.image == Some(ImageMode::Nvdimm) {
        slots = slots.max(1);
    }
    let mut mem = format!("{}M", c.memory_size);
    if p.machine.supports_hotplug() && (slots > 0 || c.virtio_mem) {
        mem.push_str(&format!(
            ",slots={slots},maxmem={}M",
            max_memory_mib(c, p.spec.host_memory_mib, p.spec.image_size)
        ));
    }
    a.push2("-m", mem);
    if p.knobs.needs_object() {
        a.push2(
            "-object",
            p.knobs.object(RAM_BACKEND_ID, u64::from(c.memory_size)),
        );
    }
    if c.realtime || c.mlock {
        let lock = if c.mlock { "on" } else { "off" };
        a.push2("-overcommit", format!("mem-lock={lock}"));
    }
    a
}

/// The virtio-mem device and its backend, when the config asks for it.
///
/// # Errors
/// As [`hotplug_memory_knobs`].
pub(super) fn virtio_mem(p: &Plan<'_>) -> Result<Args, CmdlineError> {
    let c = p.spec.config;
    let mut a = Args::default();
    if c.virtio_mem && p.machine.supports_hotplug() {
        // As Kata: room for the rest of the host's memory, in whole
        // 128 MiB guest memory blocks (QEMU wants 2 MiB multiples).
        let size = (p
            .spec
            .host_memory_mib
            .saturating_sub(u64::from(c.memory_size))
            / 128
            * 128)
            .max(128);
        a.push2(
            "-object",
            hotplug_memory_knobs(c, p.spec.devices)?.object("virtiomem-mem", size),
        );
        a.push2(
            "-device",
            format!(
                "virtio-mem-pci,id={VIRTIO_MEM_ID},memdev=virtiomem-mem,requested-size=0{}",
                p.iommu_platform
            ),
        );
    }
    Ok(a)
}
