//! The body of `vm.create`: a pure function of the validated config, the
//! devices added before start and the VM's paths.
//!
//! | config | `VmConfig` |
//! |---|---|
//! | `default_vcpus`, `default_maxvcpus` | `cpus {boot_vcpus, max_vcpus}` |
//! | `default_memory` | `memory.size` |
//! | `memory_slots` > 0, or `enable_virtio_mem` | `memory.hotplug_size`: the host's memory less the boot size, in 128 MiB steps; `hotplug_method = VirtioMem` with `enable_virtio_mem` |
//! | `shared_fs = virtio-fs`, templates | `memory.shared` |
//! | `enable_hugepages`, `enable_mem_prealloc` | `memory.hugepages`, `memory.prefault` |
//! | `kernel`, `initrd`, `kernel_params` | `payload {kernel, initramfs, cmdline}` |
//! | `image` | `pmem` (writes discarded), or a read-only disk with `disable_image_nvdimm` |
//! | `entropy_source` | `rng.src` (default `/dev/urandom`) |
//! | `enable_iommu` | `iommu`, and `iommu` on VFIO devices |
//! | `block_device_cache_direct` | `direct` on disks |
//! | devices: block, net (tap), virtio-fs, VFIO, hybrid vsock, vhost-user | `disks`, `net`, `fs`, `devices`, `vsock` |
//!
//! The serial port (COM1, `console=ttyS0`) goes to the VM's console socket,
//! which CH listens on and which keeps what the guest wrote before anyone
//! connected; the virtio console is off.
//!
//! Keys CH has no use for are listed by [`ignored_keys`], for one warning.

use std::path::{Path, PathBuf};

use super::api::{
    ConsoleConfig, CpusConfig, DeviceConfig, DiskConfig, FsConfig, HotplugMethod, ImageType,
    MemoryConfig, MemoryZoneConfig, NetConfig, PayloadConfig, PmemConfig, RngConfig, VmConfig,
    VsockConfig,
};
use crate::assets::AssetType;
use crate::config::{Accel, HypervisorConfig, SharedFs};
use crate::device::{BlockDrive, Device, NetDevice, VfioDevice, VhostUserDevice, VhostUserKind};
use crate::param::{self, serialize_params, Param};

/// ACPI memory hot-plug works in steps of this many MiB.
pub const ACPI_BLOCK_MIB: u32 = 128;
/// virtio-mem works in blocks of this many MiB.
pub const VIRTIO_MEM_BLOCK_MIB: u32 = 2;
/// The entropy source when the config names none.
pub const DEFAULT_ENTROPY: &str = "/dev/urandom";
/// Id of the guest image's device.
pub const IMAGE_ID: &str = "clh_image";
/// Id of the virtio-fs device.
pub const FS_ID: &str = "clh_fs_0";
/// Queue size of virtio-fs devices, as Kata sets it.
pub const FS_QUEUE_SIZE: u32 = 1024;
const MIB: u64 = 1 << 20;

/// Errors from building a [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmConfigError {
    /// A device kind Cloud Hypervisor cannot take.
    #[error("cloud hypervisor cannot attach a {kind} device: {reason}")]
    UnsupportedDevice {
        /// The kind.
        kind: String,
        /// Why.
        reason: &'static str,
    },
    /// A shared directory with `shared_fs = "none"`.
    #[error("shared directory {tag:?} given, but shared_fs is \"none\"")]
    SharedFsDisabled {
        /// The mount tag.
        tag: String,
    },
    /// 9p, which Cloud Hypervisor does not have.
    #[error("cloud hypervisor has no 9p: set shared_fs = \"virtio-fs\" to share {tag:?}")]
    NoNineP {
        /// The mount tag.
        tag: String,
    },
    /// A second virtio-fs share.
    #[error("a VM has one virtio-fs share, served by one virtiofsd: {tag:?} would be a second")]
    SecondVirtioFs {
        /// The mount tag.
        tag: String,
    },
    /// A disk format CH does not read.
    #[error("block device {path:?} has format {format:?}: expected raw, qcow2, vhd or vhdx")]
    DiskFormat {
        /// The file.
        path: PathBuf,
        /// Its format.
        format: String,
    },
    /// A config that did not go through validation.
    #[error("the config has no kernel: validate it first")]
    NoKernel,
}

/// Where a VM's files live: one directory, `<storage>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// The VM directory.
    pub dir: PathBuf,
    /// CH's API socket (`--api-socket`).
    pub api: PathBuf,
    /// The serial console socket.
    pub console: PathBuf,
    /// The hybrid vsock's host socket, which the agent is reached on.
    pub vsock: PathBuf,
    /// virtiofsd's vhost-user socket.
    pub virtiofs: PathBuf,
    /// CH's stdout and stderr.
    pub log: PathBuf,
    /// virtiofsd's stdout and stderr.
    pub virtiofsd_log: PathBuf,
    /// Where `save_sandbox` writes the snapshot.
    pub snapshot: PathBuf,
}

impl VmPaths {
    /// File name of the API socket.
    pub const API: &'static str = "clh-api.sock";
    /// File name of the console socket.
    pub const CONSOLE: &'static str = "console.sock";
    /// File name of the hybrid vsock socket (Kata's name).
    pub const VSOCK: &'static str = "clh.sock";
    /// File name of virtiofsd's socket.
    pub const VIRTIOFS: &'static str = "vhost-fs.sock";
    /// Name of the snapshot directory.
    pub const SNAPSHOT: &'static str = "snapshot";

    /// The paths of VM `id` under `storage`.
    pub fn new(storage: &Path, id: &str) -> Self {
        let dir = storage.join(id);
        VmPaths {
            api: dir.join(Self::API),
            console: dir.join(Self::CONSOLE),
            vsock: dir.join(Self::VSOCK),
            virtiofs: dir.join(Self::VIRTIOFS),
            log: dir.join("clh.log"),
            virtiofsd_log: dir.join("virtiofsd.log"),
            snapshot: dir.join(Self::SNAPSHOT),
            dir,
        }
    }
}

/// Everything [`build`] needs.
#[derive(Debug, Clone, Copy)]
pub struct VmSpec<'a> {
    /// The validated config.
    pub config: &'a HypervisorConfig,
    /// Devices added before start, in order.
    pub devices: &'a [Device],
    /// The VM's paths.
    pub paths: &'a VmPaths,
    /// The host's memory, in MiB; bounds `hotplug_size`.
    pub host_memory_mib: u64,
}

/// Stable id of the block device at drive `index`.
pub fn drive_id(index: u32) -> String {
    format!("clh_drive_{index}")
}

/// Stable id of a network device: its own id, or `clh_net_<tap>` (a tap
/// name is unique where CH runs, so unplug finds the same id).
pub fn net_id(net: &NetDevice) -> String {
    if net.id.is_empty() {
        format!("clh_net_{}", net.tap_name)
    } else {
        net.id.clone()
    }
}

/// Stable id of a VFIO device: its own id, or `clh_vfio_<bdf>` with `:`
/// and `.` as `_`.
pub fn vfio_id(dev: &VfioDevice) -> String {
    if dev.id.is_empty() {
        format!("clh_vfio_{}", dev.bdf.replace([':', '.'], "_"))
    } else {
        dev.id.clone()
    }
}

/// The sysfs path CH opens for a VFIO device.
pub fn vfio_path(dev: &VfioDevice) -> PathBuf {
    if dev.sysfs_dev.as_os_str().is_empty() {
        Path::new("/sys/bus/pci/devices").join(&dev.bdf)
    } else {
        dev.sysfs_dev.clone()
    }
}

/// CH's image type for a drive's `format` (empty means raw).
///
/// # Errors
/// [`VmConfigError::DiskFormat`] for any other format.
pub fn image_type(drive: &BlockDrive) -> Result<ImageType, VmConfigError> {
    match drive.format.as_str() {
        "" | "raw" => Ok(ImageType::Raw),
        "qcow2" => Ok(ImageType::Qcow2),
        "vhd" => Ok(ImageType::FixedVhd),
        "vhdx" => Ok(ImageType::Vhdx),
        other => Err(VmConfigError::DiskFormat {
            path: drive.file.clone(),
            format: other.to_string(),
        }),
    }
}

/// The disk of a block device.
///
/// # Errors
/// [`VmConfigError::DiskFormat`].
pub fn disk(config: &HypervisorConfig, drive: &BlockDrive) -> Result<DiskConfig, VmConfigError> {
    Ok(DiskConfig {
        path: Some(drive.file.clone()),
        readonly: drive.read_only,
        direct: config.block_device_cache_direct,
        iommu: config.iommu_platform,
        id: Some(drive_id(drive.index)),
        image_type: Some(image_type(drive)?),
        ..DiskConfig::default()
    })
}

/// The network device of a tap, opened by name (`fds` = 0) or passed as
/// `fds` descriptors over the API socket.
pub fn net(config: &HypervisorConfig, dev: &NetDevice, fds: usize) -> NetConfig {
    let pairs = dev.queues.max(1);
    NetConfig {
        tap: (fds == 0).then(|| dev.tap_name.clone()),
        mac: (!dev.mac.is_empty()).then(|| dev.mac.clone()),
        num_queues: Some(2 * if fds == 0 { pairs } else { fds as u32 }),
        iommu: config.iommu_platform,
        id: Some(net_id(dev)),
        ..NetConfig::default()
    }
}

/// The virtio-fs device on virtiofsd's socket.
pub fn fs(tag: &str, socket: &Path) -> FsConfig {
    FsConfig {
        tag: tag.to_string(),
        socket: socket.to_path_buf(),
        num_queues: 1,
        queue_size: FS_QUEUE_SIZE,
        id: Some(FS_ID.to_string()),
    }
}

/// The VFIO device.
pub fn vfio(config: &HypervisorConfig, dev: &VfioDevice) -> DeviceConfig {
    DeviceConfig {
        path: vfio_path(dev),
        iommu: config.iommu,
        id: Some(vfio_id(dev)),
    }
}

/// Room for hot-plugged memory, in MiB: none without `memory_slots` or
/// virtio-mem; else the host's memory less the boot size, rounded down to
/// [`ACPI_BLOCK_MIB`] (CH reserves address space, not memory).
pub fn hotplug_room_mib(config: &HypervisorConfig, host_memory_mib: u64) -> u64 {
    if config.mem_slots == 0 && !config.virtio_mem {
        return 0;
    }
    let room = host_memory_mib.saturating_sub(u64::from(config.memory_size));
    room - room % u64::from(ACPI_BLOCK_MIB)
}

/// Id of a template's one memory zone.
pub const TEMPLATE_ZONE: &str = "template";

fn memory(config: &HypervisorConfig, host_memory_mib: u64) -> MemoryConfig {
    let room = hotplug_room_mib(config, host_memory_mib);
    if let (true, Some(file)) = (config.boot_to_be_template, &config.memory_path) {
        // A template's memory is one zone on the template's file, mapped
        // shared so the file holds guest memory when `vm.snapshot` runs;
        // clones map the same file private (see `template_restore_config`).
        return MemoryConfig {
            size: 0,
            shared: true,
            hugepages: config.huge_pages,
            prefault: config.mem_prealloc,
            zones: vec![MemoryZoneConfig {
                id: TEMPLATE_ZONE.into(),
                size: u64::from(config.memory_size) * MIB,
                file: Some(file.clone()),
                shared: true,
                hotplug_size: (room > 0 && config.virtio_mem).then_some(room * MIB),
            }],
            hotplug_method: (room > 0 && config.virtio_mem).then_some(HotplugMethod::VirtioMem),
            ..MemoryConfig::default()
        };
    }
    MemoryConfig {
        size: u64::from(config.memory_size) * MIB,
        hotplug_size: (room > 0).then_some(room * MIB),
        hotplugged_size: None,
        hotplug_method: (room > 0 && config.virtio_mem).then_some(HotplugMethod::VirtioMem),
        shared: config.shared_fs.is_virtio_fs()
            || config.boot_to_be_template
            || config.boot_from_template,
        hugepages: config.huge_pages,
        prefault: config.mem_prealloc,
        zones: Vec::new(),
    }
}

/// File name of the config `vm.snapshot` saves in the snapshot directory.
pub const SAVED_CONFIG: &str = "config.json";

/// The config a template's snapshot saved, for one clone: guest memory
/// and every memory zone mapped private (`shared: false`), so the clone's
/// writes go to its own copy-on-write pages and never reach the template's
/// file; the serial console and hybrid vsock sockets moved to the clone's
/// own `paths` (CH's `vm.restore` cannot re-point them, and two clones
/// cannot listen on one socket). This works on the JSON tree, not on
/// [`VmConfig`], because the saved config holds keys this crate does not
/// model and `vm.restore` needs all of them back.
pub fn template_restore_config(saved: &str, paths: &VmPaths) -> Result<String, serde_json::Error> {
    use serde::de::Error as _;
    use serde_json::Value;
    let mut tree: Value = serde_json::from_str(saved)?;
    let memory = tree
        .get_mut("memory")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| serde_json::Error::custom("the saved config has no \"memory\" object"))?;
    memory.insert("shared".into(), false.into());
    if let Some(zones) = memory.get_mut("zones").and_then(Value::as_array_mut) {
        for zone in zones.iter_mut().filter_map(Value::as_object_mut) {
            zone.insert("shared".into(), false.into());
        }
    }
    for (key, to) in [("serial", &paths.console), ("vsock", &paths.vsock)] {
        let socket = tree
            .get_mut(key)
            .and_then(Value::as_object_mut)
            .and_then(|o| o.get_mut("socket"))
            .filter(|v| v.is_string());
        if let Some(socket) = socket {
            *socket = to.display().to_string().into();
        }
    }
    serde_json::to_string(&tree)
}

/// How the image reaches the guest.
fn image_is_pmem(config: &HypervisorConfig) -> bool {
    !config.disable_image_nvdimm
}

/// The guest kernel command line: Kata's parameters for Cloud Hypervisor
/// and amd64, `console=ttyS0` for the console socket, root parameters for
/// an image, `debug` or `quiet`, `panic=1`, `nr_cpus`,
/// `agent.use_vsock=true` (the agent is reached over vsock), then the
/// config's `kernel_params`, which win because the kernel honours the last
/// value.
pub fn kernel_params(config: &HypervisorConfig) -> Vec<Param> {
    let mut p: Vec<Param> = [
        ("tsc", "reliable"),
        ("no_timer_check", ""),
        ("rcupdate.rcu_expedited", "1"),
        ("noreplace-smp", ""),
        ("reboot", "k"),
        ("console", "ttyS0"),
        ("cryptomgr.notests", ""),
        ("net.ifnames", "0"),
    ]
    .into_iter()
    .map(|(k, v)| Param::new(k, v))
    .collect();
    if config.iommu {
        p.push(Param::new("intel_iommu", "on"));
        p.push(Param::new("iommu", "pt"));
    } else {
        p.push(Param::new("iommu", "off"));
    }
    if config.image_path.is_some() {
        if image_is_pmem(config) {
            p.extend(param::nvdimm_kernel_root_params());
        } else {
            p.extend(param::virtio_blk_kernel_root_params());
        }
    }
    p.push(Param::new(if config.debug { "debug" } else { "quiet" }, ""));
    if config.image_path.is_some() {
        let show = if config.debug { "true" } else { "false" };
        p.push(Param::new("systemd.show_status", show));
    }
    p.push(Param::new("panic", "1"));
    p.push(Param::new("nr_cpus", config.default_max_vcpus.to_string()));
    p.push(Param::new("agent.use_vsock", "true"));
    p.extend(config.kernel_params.iter().cloned());
    p
}

fn unsupported(device: &Device, reason: &'static str) -> VmConfigError {
    VmConfigError::UnsupportedDevice {
        kind: device.device_type().to_string(),
        reason,
    }
}

fn vhost_user(
    vm: &mut VmConfig,
    dev: &VhostUserDevice,
    device: &Device,
) -> Result<(), VmConfigError> {
    let id = (!dev.id.is_empty()).then(|| dev.id.clone());
    match dev.kind {
        VhostUserKind::Net => vm.net.push(NetConfig {
            mac: (!dev.mac.is_empty()).then(|| dev.mac.clone()),
            vhost_user: true,
            vhost_socket: Some(dev.socket_path.clone()),
            id,
            ..NetConfig::default()
        }),
        VhostUserKind::Blk => vm.disks.push(DiskConfig {
            vhost_user: true,
            vhost_socket: Some(dev.socket_path.clone()),
            id,
            ..DiskConfig::default()
        }),
        VhostUserKind::Fs => {
            if !vm.fs.is_empty() {
                return Err(VmConfigError::SecondVirtioFs {
                    tag: dev.tag.clone(),
                });
            }
            vm.fs.push(FsConfig {
                id,
                ..fs(&dev.tag, &dev.socket_path)
            });
        }
        VhostUserKind::Scsi => {
            return Err(unsupported(
                device,
                "cloud hypervisor has no vhost-user-scsi",
            ))
        }
    }
    Ok(())
}

/// The body of `vm.create` for `spec`.
///
/// # Errors
/// A device CH cannot take, a second virtio-fs share, 9p, a disk format CH
/// does not read: see [`VmConfigError`].
pub fn build(spec: &VmSpec<'_>) -> Result<VmConfig, VmConfigError> {
    let c = spec.config;
    let kernel = c
        .asset_path(AssetType::Kernel)
        .ok_or(VmConfigError::NoKernel)?;
    let mut vm = VmConfig {
        cpus: CpusConfig {
            boot_vcpus: c.num_vcpus,
            max_vcpus: c.default_max_vcpus.max(c.num_vcpus),
        },
        memory: memory(c, spec.host_memory_mib),
        payload: PayloadConfig {
            firmware: None,
            kernel: Some(kernel.to_path_buf()),
            cmdline: Some(serialize_params(&kernel_params(c), "=").join(" ")),
            initramfs: c.asset_path(AssetType::Initrd).map(Path::to_path_buf),
        },
        rng: Some(RngConfig {
            src: c
                .entropy_source
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ENTROPY)),
            iommu: c.iommu_platform,
        }),
        serial: Some(ConsoleConfig::socket(&spec.paths.console)),
        console: Some(ConsoleConfig::off()),
        iommu: c.iommu,
        ..VmConfig::default()
    };
    if let Some(image) = c.asset_path(AssetType::Image) {
        if image_is_pmem(c) {
            vm.pmem.push(PmemConfig {
                file: image.to_path_buf(),
                discard_writes: true,
                iommu: c.iommu_platform,
                id: Some(IMAGE_ID.to_string()),
                ..PmemConfig::default()
            });
        } else {
            vm.disks.push(DiskConfig {
                path: Some(image.to_path_buf()),
                readonly: true,
                iommu: c.iommu_platform,
                id: Some(IMAGE_ID.to_string()),
                image_type: Some(ImageType::Raw),
                ..DiskConfig::default()
            });
        }
    }
    for device in spec.devices {
        match device {
            Device::Block(d) => vm.disks.push(disk(c, d)?),
            Device::Image(d) => vm.disks.push(DiskConfig {
                readonly: true,
                ..disk(c, d)?
            }),
            Device::Net(n) => vm.net.push(net(c, n, 0)),
            Device::Fs(v) => match c.shared_fs {
                SharedFs::None => {
                    return Err(VmConfigError::SharedFsDisabled {
                        tag: v.mount_tag.clone(),
                    })
                }
                SharedFs::Virtio9p => {
                    return Err(VmConfigError::NoNineP {
                        tag: v.mount_tag.clone(),
                    })
                }
                SharedFs::VirtioFs | SharedFs::VirtioFsNydus => {
                    if !vm.fs.is_empty() {
                        return Err(VmConfigError::SecondVirtioFs {
                            tag: v.mount_tag.clone(),
                        });
                    }
                    vm.fs.push(fs(&v.mount_tag, &spec.paths.virtiofs));
                }
            },
            Device::Vfio(v) => vm.devices.push(vfio(c, v)),
            Device::HybridVsock(h) => {
                vm.vsock = Some(VsockConfig {
                    cid: h.context_id,
                    socket: h.uds_path.clone(),
                    iommu: c.iommu_platform,
                    id: None,
                })
            }
            Device::VhostUser(v) => vhost_user(&mut vm, v, device)?,
            Device::SerialPort(_) => {
                return Err(unsupported(
                    device,
                    "it has no virtio-serial ports; the agent is reached over a hybrid vsock",
                ))
            }
            Device::UserNet(_) => {
                return Err(unsupported(
                    device,
                    "it has no user-mode network stack (that is QEMU's slirp); give it a tap NIC",
                ))
            }
            Device::VsockPci(_) => return Err(unsupported(
                device,
                "it takes no vhost-vsock descriptor; use the hybrid vsock generate_socket gives",
            )),
            Device::Cpu(_) | Device::Memory(_) => {
                return Err(unsupported(
                    device,
                    "boot vCPUs and memory come from default_vcpus and default_memory",
                ))
            }
        }
    }
    Ok(vm)
}

/// The Kata keys set in `config` that Cloud Hypervisor has no use for,
/// for one warning when a VM is created.
pub fn ignored_keys(config: &HypervisorConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut note = |set: bool, key| {
        if set {
            keys.push(key);
        }
    };
    note(!config.hypervisor_machine_type.is_empty(), "machine_type");
    note(
        !config.machine_accelerators.is_empty(),
        "machine_accelerators",
    );
    note(!config.cpu_features.is_empty(), "cpu_features");
    note(config.firmware_path.is_some(), "firmware");
    note(!config.pflash.is_empty(), "pflashes");
    note(!config.hypervisor_params.is_empty(), "hypervisor_params");
    note(config.mem_offset > 0, "memory_offset");
    note(config.virtio_fs_cache_size > 0, "virtio_fs_cache_size");
    note(
        config.file_backed_mem_root_dir.is_some(),
        "file_mem_backend",
    );
    note(config.pcie_root_port > 0, "pcie_root_port");
    note(config.hotplug_vfio_on_root_bus, "hotplug_vfio_on_root_bus");
    note(config.enable_io_threads, "enable_iothreads");
    note(config.realtime, "realtime");
    note(config.mlock, "mlock");
    note(config.accel == Accel::Tcg, "accel");
    keys
}

#[cfg(test)]
mod tests;
