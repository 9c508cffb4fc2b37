//! `HypervisorConfig`: every field of Kata's, its defaults and its validation.
//!
//! The struct serialises under the key names of Kata's `configuration.toml`
//! (`default_vcpus`, `kernel`, `path`, ...), so `sandvisor env --json` prints
//! what a Kata user already knows. Reading Kata's files lives in [`kata`].

pub mod kata;
pub mod vocabulary;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::assets::{Asset, AssetType};
use crate::defaults;
use crate::param::{EmptyParamKey, Param};

/// Driver for block devices given to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockDeviceDriver {
    /// `virtio-scsi`, the default.
    #[serde(rename = "virtio-scsi")]
    VirtioScsi,
    /// `virtio-blk` on PCI.
    #[serde(rename = "virtio-blk")]
    VirtioBlock,
    /// `virtio-blk-ccw` (s390x).
    #[serde(rename = "virtio-blk-ccw")]
    VirtioBlockCcw,
    /// `virtio-mmio`.
    #[serde(rename = "virtio-mmio")]
    VirtioMmio,
    /// `nvdimm`.
    #[serde(rename = "nvdimm")]
    Nvdimm,
}

/// Shared file system between host and guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SharedFs {
    /// 9p over virtio, the seed's default.
    #[default]
    #[serde(rename = "virtio-9p")]
    Virtio9p,
    /// virtio-fs, served by virtiofsd.
    #[serde(rename = "virtio-fs")]
    VirtioFs,
    /// virtio-fs with nydus.
    #[serde(rename = "virtio-fs-nydus")]
    VirtioFsNydus,
    /// No shared file system.
    #[serde(rename = "none")]
    None,
}

/// How the VMM runs guest code. A sandvisor addition to Kata's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when this host runs stock guests on it, else TCG.
    #[default]
    Auto,
    /// KVM, always.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// How a VMM without ACPI hot-plug (Firecracker) hot-plugs drives and
/// network interfaces. A sandvisor addition to Kata's keys
/// (`hotplug_transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HotplugMode {
    /// PCI (Firecracker's `--enable-pci`): a device is added after boot and
    /// removed to unplug; the guest rescans the bus.
    #[default]
    Pci,
    /// MMIO, as Kata does it: placeholder drives made before boot whose
    /// backing file is swapped; no network hot-plug.
    Mmio,
}

impl HotplugMode {
    /// sandvisor's name for this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            HotplugMode::Pci => "pci",
            HotplugMode::Mmio => "mmio",
        }
    }
}

macro_rules! str_enum {
    ($ty:ty, $what:literal, [$($variant:expr),+ $(,)?]) => {
        impl FromStr for $ty {
            type Err = ConfigError;
            fn from_str(s: &str) -> Result<Self, ConfigError> {
                let all = [$($variant),+];
                all.into_iter().find(|v| v.as_str() == s).ok_or_else(|| ConfigError::BadValue {
                    key: $what,
                    value: s.to_string(),
                    expected: all.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

impl BlockDeviceDriver {
    /// Kata's name for this driver.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockDeviceDriver::VirtioScsi => "virtio-scsi",
            BlockDeviceDriver::VirtioBlock => "virtio-blk",
            BlockDeviceDriver::VirtioBlockCcw => "virtio-blk-ccw",
            BlockDeviceDriver::VirtioMmio => "virtio-mmio",
            BlockDeviceDriver::Nvdimm => "nvdimm",
        }
    }
}
str_enum!(
    BlockDeviceDriver,
    "block_device_driver",
    [
        BlockDeviceDriver::VirtioScsi,
        BlockDeviceDriver::VirtioBlock,
        BlockDeviceDriver::VirtioBlockCcw,
        BlockDeviceDriver::VirtioMmio,
        BlockDeviceDriver::Nvdimm,
    ]
);

impl SharedFs {
    /// Kata's name for this file system.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedFs::Virtio9p => "virtio-9p",
            SharedFs::VirtioFs => "virtio-fs",
            SharedFs::VirtioFsNydus => "virtio-fs-nydus",
            SharedFs::None => "none",
        }
    }

    /// Whether this is a virtio-fs flavour.
    pub fn is_virtio_fs(self) -> bool {
        matches!(self, SharedFs::VirtioFs | SharedFs::VirtioFsNydus)
    }
}
str_enum!(
    SharedFs,
    "shared_fs",
    [
        SharedFs::Virtio9p,
        SharedFs::VirtioFs,
        SharedFs::VirtioFsNydus,
        SharedFs::None,
    ]
);

impl Accel {
    /// sandvisor's name for this accelerator choice.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}
str_enum!(Accel, "accel", [Accel::Auto, Accel::Kvm, Accel::Tcg]);
str_enum!(
    HotplugMode,
    "hotplug_transport",
    [HotplugMode::Pci, HotplugMode::Mmio]
);

/// Errors from validating a [`HypervisorConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `unjailed = true` and a `jailer_path`.
    #[error("unjailed = true and jailer_path = {0:?} contradict each other: keep one")]
    UnjailedWithJailer(PathBuf),
    /// No guest kernel.
    #[error("missing kernel path (key `kernel`)")]
    MissingKernel,
    /// Neither an image nor an initrd.
    #[error("missing image and initrd path: set `image` or `initrd`")]
    MissingImageAndInitrd,
    /// Both an image and an initrd.
    #[error("image {image:?} and initrd {initrd:?} are both set: keep only one")]
    ImageAndInitrd {
        /// The image path.
        image: PathBuf,
        /// The initrd path.
        initrd: PathBuf,
    },
    /// Both template flags.
    #[error("cannot boot both to be a VM template and from a VM template")]
    TemplateBothWays,
    /// A template flag without a memory path.
    #[error("missing memory path (`memory_path`) for a VM template")]
    TemplateMissingMemoryPath,
    /// Boot from template without a device-state path.
    #[error("missing devices state path (`devices_state_path`) to boot from a VM template")]
    TemplateMissingDevicesStatePath,
    /// Too little memory.
    #[error("default_memory {memory_mib} MiB is below the minimum of {min_mib} MiB: give at least {min_mib}")]
    MemoryTooSmall {
        /// The configured size.
        memory_mib: u32,
        /// The minimum.
        min_mib: u32,
    },
    /// More boot vCPUs than the maximum.
    #[error("default_vcpus ({vcpus}) is above default_maxvcpus ({max_vcpus}): lower default_vcpus or raise default_maxvcpus")]
    VcpusAboveMax {
        /// Boot vCPUs.
        vcpus: u32,
        /// Maximum vCPUs.
        max_vcpus: u32,
    },
    /// A value that is not one of the allowed ones.
    #[error("bad value {value:?} for `{key}`: expected one of {expected}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// The allowed values.
        expected: String,
    },
    /// A number outside the range the key allows.
    #[error("`{key}` = {value} is out of range: expected {min} to {max}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value given.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A kernel parameter without a key.
    #[error(transparent)]
    EmptyParamKey(#[from] EmptyParamKey),
}

/// The `virtio_fs_cache` modes virtiofsd takes: Kata's `never`, `auto` and
/// `always`, Kata 1.x's `none`, and the Rust virtiofsd's `metadata`.
pub const VIRTIO_FS_CACHE_MODES: [&str; 5] = ["never", "none", "metadata", "auto", "always"];

/// The 9p `msize` range: Linux refuses a mount below 4 KiB, and QEMU's 9p
/// server offers at most 1 MiB.
pub const MSIZE_9P_RANGE: std::ops::RangeInclusive<u32> = 4096..=1_048_576;

/// The hypervisor configuration: Kata's `HypervisorConfig`, field for field.
///
/// Numeric fields left at 0 and the block driver left unset take the seed's
/// defaults in [`HypervisorConfig::validate`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HypervisorConfig {
    /// vCPUs the VM boots with.
    #[serde(rename = "default_vcpus")]
    pub num_vcpus: u32,
    /// The most vCPUs the VM may have; bounds CPU hot-plug.
    #[serde(rename = "default_maxvcpus")]
    pub default_max_vcpus: u32,
    /// Memory the VM boots with, in MiB.
    #[serde(rename = "default_memory")]
    pub memory_size: u32,
    /// PCI bridges, for hot-plugging devices.
    pub default_bridges: u32,
    /// `msize` of 9p shares.
    pub msize_9p: u32,
    /// Memory slots, for hot-plugging memory.
    #[serde(rename = "memory_slots")]
    pub mem_slots: u32,
    /// Extra memory space for NVDIMM devices, in MiB.
    #[serde(rename = "memory_offset")]
    pub mem_offset: u32,
    /// virtio-fs DAX cache size, in MiB.
    pub virtio_fs_cache_size: u32,
    /// Extra guest kernel parameters.
    #[serde(with = "params_as_string")]
    pub kernel_params: Vec<Param>,
    /// Extra hypervisor parameters.
    #[serde(with = "params_as_string")]
    pub hypervisor_params: Vec<Param>,
    /// Guest kernel.
    #[serde(rename = "kernel")]
    pub kernel_path: Option<PathBuf>,
    /// Guest root image. Exclusive with `initrd`.
    #[serde(rename = "image")]
    pub image_path: Option<PathBuf>,
    /// Guest initrd. Exclusive with `image`.
    #[serde(rename = "initrd")]
    pub initrd_path: Option<PathBuf>,
    /// Firmware (BIOS) image.
    #[serde(rename = "firmware")]
    pub firmware_path: Option<PathBuf>,
    /// Machine accelerators, such as `nvdimm=on`.
    pub machine_accelerators: String,
    /// CPU features, such as `pmu=off`.
    pub cpu_features: String,
    /// The VMM binary.
    #[serde(rename = "path")]
    pub hypervisor_path: Option<PathBuf>,
    /// VMM binaries that annotations may choose.
    #[serde(rename = "valid_hypervisor_paths")]
    pub hypervisor_path_list: Vec<String>,
    /// VMM control binaries that annotations may choose.
    #[serde(rename = "valid_ctlpaths")]
    pub hypervisor_ctl_path_list: Vec<String>,
    /// The VMM control binary (ACRN's `acrnctl`).
    #[serde(rename = "ctlpath")]
    pub hypervisor_ctl_path: Option<PathBuf>,
    /// The jailer binary (Firecracker).
    pub jailer_path: Option<PathBuf>,
    /// `jailer_path = ""` was written: Firecracker runs unjailed, on
    /// purpose. Unset (`false`) with no `jailer_path`, the jailer the
    /// lookup finds is used, and its absence is an error (sandvisor).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unjailed: bool,
    /// Jailer binaries that annotations may choose.
    #[serde(rename = "valid_jailer_paths")]
    pub jailer_path_list: Vec<String>,
    /// Driver for block devices; `virtio-scsi` when unset.
    pub block_device_driver: Option<BlockDeviceDriver>,
    /// Machine type, such as `q35`, `pc` or `microvm`.
    #[serde(rename = "machine_type")]
    pub hypervisor_machine_type: String,
    /// Guest memory file of a VM template.
    pub memory_path: Option<PathBuf>,
    /// Device state file of a VM template.
    pub devices_state_path: Option<PathBuf>,
    /// Host entropy source for virtio-rng.
    pub entropy_source: Option<PathBuf>,
    /// Shared file system.
    pub shared_fs: SharedFs,
    /// The virtiofsd binary.
    pub virtio_fs_daemon: Option<PathBuf>,
    /// virtiofsd binaries that annotations may choose.
    #[serde(rename = "valid_virtio_fs_daemon_paths")]
    pub virtio_fs_daemon_list: Vec<String>,
    /// virtio-fs cache mode.
    pub virtio_fs_cache: String,
    /// Extra virtiofsd arguments.
    pub virtio_fs_extra_args: Vec<String>,
    /// Directory for file-backed guest memory.
    #[serde(rename = "file_mem_backend")]
    pub file_backed_mem_root_dir: Option<PathBuf>,
    /// PFlash images.
    #[serde(rename = "pflashes")]
    pub pflash: Vec<PathBuf>,
    /// File-backed memory directories that annotations may choose.
    #[serde(rename = "valid_file_mem_backends")]
    pub file_backed_mem_root_list: Vec<String>,
    /// Custom assets, which win over the configured paths.
    #[serde(skip)]
    pub custom_assets: BTreeMap<AssetType, Asset>,
    /// Set cache options on block devices.
    pub block_device_cache_set: bool,
    /// Use O_DIRECT for block devices.
    pub block_device_cache_direct: bool,
    /// Ignore flush requests on block devices.
    pub block_device_cache_noflush: bool,
    /// Forbid block devices for container rootfs.
    pub disable_block_device_use: bool,
    /// Process block I/O in separate threads.
    #[serde(rename = "enable_iothreads")]
    pub enable_io_threads: bool,
    /// Debug output from the VMM and the guest kernel.
    #[serde(rename = "enable_debug")]
    pub debug: bool,
    /// Preallocate guest memory.
    #[serde(rename = "enable_mem_prealloc")]
    pub mem_prealloc: bool,
    /// Back guest memory with huge pages.
    #[serde(rename = "enable_hugepages")]
    pub huge_pages: bool,
    /// Use virtio-mem for memory hot-plug.
    #[serde(rename = "enable_virtio_mem")]
    pub virtio_mem: bool,
    /// Give the VM a vIOMMU.
    #[serde(rename = "enable_iommu")]
    pub iommu: bool,
    /// Set IOMMU_PLATFORM on devices that support it.
    #[serde(rename = "enable_iommu_platform")]
    pub iommu_platform: bool,
    /// Realtime scheduling for the VMM.
    pub realtime: bool,
    /// Lock guest memory (with `realtime`).
    pub mlock: bool,
    /// Skip the adjustments made when running nested.
    pub disable_nesting_checks: bool,
    /// Talk to the agent over vsock instead of virtio-serial.
    #[serde(rename = "use_vsock")]
    pub use_vsock: bool,
    /// With `use_vsock` on QEMU and no usable `/dev/vhost-vsock`: the
    /// vhost-device-vsock binary that serves the guest's vsock as a hybrid
    /// vsock (`vhost-user-vsock-pci`). Set by the config loader; `None`
    /// means the kernel's vhost-vsock.
    pub vhost_user_vsock_daemon: Option<PathBuf>,
    /// Give the image as virtio-blk instead of NVDIMM.
    pub disable_image_nvdimm: bool,
    /// Hot-plug VFIO devices on the root bus.
    pub hotplug_vfio_on_root_bus: bool,
    /// PCIe root ports, for hot-plugging PCIe devices.
    pub pcie_root_port: u32,
    /// Boot to become a VM template.
    pub boot_to_be_template: bool,
    /// Boot from a VM template.
    pub boot_from_template: bool,
    /// Do not use vhost-net.
    pub disable_vhost_net: bool,
    /// Allow vhost-user storage devices.
    pub enable_vhost_user_store: bool,
    /// Directory of vhost-user devices.
    pub vhost_user_store_path: Option<PathBuf>,
    /// vhost-user store directories that annotations may choose.
    #[serde(rename = "valid_vhost_user_store_paths")]
    pub vhost_user_store_path_list: Vec<String>,
    /// Guest directory of OCI hooks.
    pub guest_hook_path: Option<PathBuf>,
    /// Id of the VM when it came from the factory.
    #[serde(rename = "vm_id")]
    pub vm_id: String,
    /// SELinux label of the VMM process.
    #[serde(rename = "selinux_label")]
    pub selinux_process_label: String,
    /// Annotations enabled by name.
    pub enable_annotations: Vec<String>,
    /// How guest code runs: `auto`, `kvm` or `tcg` (sandvisor).
    pub accel: Accel,
    /// Firecracker: how drives and interfaces are hot-plugged, `pci` or
    /// `mmio`; unset, the backend's choice (`pci`) (sandvisor).
    pub hotplug_transport: Option<HotplugMode>,
    /// Firecracker: placeholder drives made before boot for MMIO hot-plug;
    /// unset, 8 with `mmio` (as Kata) and none with `pci` (sandvisor).
    pub drive_placeholders: Option<u32>,
    /// The uid Firecracker runs as in its jailer; unset, 65534 (`nobody`):
    /// root only when asked for (sandvisor).
    pub jailer_uid: Option<u32>,
    /// The gid Firecracker runs as in its jailer; unset, 65534 (sandvisor).
    pub jailer_gid: Option<u32>,
    /// QEMU: run the VMM as an unprivileged uid of its own instead of as
    /// the caller (Kata's `rootless`). sandvisor spawns QEMU with a uid
    /// picked per sandbox from a reserved range; no user is created.
    pub rootless: bool,
}

impl HypervisorConfig {
    fn check_template_config(&self) -> Result<(), ConfigError> {
        if self.boot_to_be_template && self.boot_from_template {
            return Err(ConfigError::TemplateBothWays);
        }
        if self.boot_to_be_template || self.boot_from_template {
            if self.memory_path.is_none() {
                return Err(ConfigError::TemplateMissingMemoryPath);
            }
            if self.boot_from_template && self.devices_state_path.is_none() {
                return Err(ConfigError::TemplateMissingDevicesStatePath);
            }
        }
        Ok(())
    }

    /// Checks the config and fills in the seed's defaults, in the seed's
    /// order: kernel, image or initrd, template rules, then defaults.
    ///
    /// It does not check that files exist; `sandvisor check` does.
    ///
    /// # Errors
    /// The first rule broken, as a [`ConfigError`] naming the key.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.kernel_path.is_none() {
            return Err(ConfigError::MissingKernel);
        }
        if let (true, Some(jailer)) = (self.unjailed, &self.jailer_path) {
            return Err(ConfigError::UnjailedWithJailer(jailer.clone()));
        }
        match (&self.image_path, &self.initrd_path) {
            (None, None) => return Err(ConfigError::MissingImageAndInitrd),
            (Some(image), Some(initrd)) => {
                return Err(ConfigError::ImageAndInitrd {
                    image: image.clone(),
                    initrd: initrd.clone(),
                })
            }
            _ => {}
        }
        self.check_template_config()?;

        if self.num_vcpus == 0 {
            self.num_vcpus = defaults::DEFAULT_VCPUS;
        }
        if self.memory_size == 0 {
            self.memory_size = defaults::DEFAULT_MEMORY_MIB;
        }
        if self.default_bridges == 0 {
            self.default_bridges = defaults::DEFAULT_BRIDGES;
        }
        if self.block_device_driver.is_none() {
            self.block_device_driver = Some(defaults::DEFAULT_BLOCK_DRIVER);
        }
        if self.default_max_vcpus == 0 {
            self.default_max_vcpus = defaults::max_vcpus();
        }
        if self.msize_9p == 0 && !self.shared_fs.is_virtio_fs() {
            self.msize_9p = defaults::DEFAULT_MSIZE_9P;
        }

        if self.memory_size < defaults::MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall {
                memory_mib: self.memory_size,
                min_mib: defaults::MIN_MEMORY_MIB,
            });
        }
        if self.num_vcpus > self.default_max_vcpus {
            return Err(ConfigError::VcpusAboveMax {
                vcpus: self.num_vcpus,
                max_vcpus: self.default_max_vcpus,
            });
        }
        // Both would otherwise fail only later: virtiofsd refuses the mode
        // after the VMM is up, the guest refuses the msize at mount time.
        if !self.virtio_fs_cache.is_empty()
            && !VIRTIO_FS_CACHE_MODES.contains(&self.virtio_fs_cache.as_str())
        {
            return Err(ConfigError::BadValue {
                key: "virtio_fs_cache",
                value: self.virtio_fs_cache.clone(),
                expected: VIRTIO_FS_CACHE_MODES.join(", "),
            });
        }
        if self.msize_9p != 0 && !MSIZE_9P_RANGE.contains(&self.msize_9p) {
            return Err(ConfigError::OutOfRange {
                key: "msize_9p",
                value: u64::from(self.msize_9p),
                min: u64::from(*MSIZE_9P_RANGE.start()),
                max: u64::from(*MSIZE_9P_RANGE.end()),
            });
        }
        Ok(())
    }

    /// The block driver, or the default when unset.
    pub fn block_driver(&self) -> BlockDeviceDriver {
        self.block_device_driver
            .unwrap_or(defaults::DEFAULT_BLOCK_DRIVER)
    }

    /// Adds a kernel parameter.
    ///
    /// # Errors
    /// [`EmptyParamKey`] when the key is empty.
    pub fn add_kernel_param(&mut self, p: Param) -> Result<(), EmptyParamKey> {
        if p.key.is_empty() {
            return Err(EmptyParamKey { value: p.value });
        }
        self.kernel_params.push(p);
        Ok(())
    }

    /// Adds a custom asset, which then wins over the configured path.
    ///
    /// # Errors
    /// When the asset is not valid: see [`Asset::validate`].
    pub fn add_custom_asset(&mut self, asset: Asset) -> Result<(), crate::assets::AssetError> {
        asset.validate()?;
        tracing::debug!(asset = %asset.kind(), path = %asset.path().display(), "using custom asset");
        self.custom_assets.insert(asset.kind(), asset);
        Ok(())
    }

    /// The path of an asset: the custom one when there is one, else the
    /// configured one.
    pub fn asset_path(&self, kind: AssetType) -> Option<&Path> {
        if let Some(a) = self.custom_assets.get(&kind) {
            return Some(a.path());
        }
        match kind {
            AssetType::Kernel => self.kernel_path.as_deref(),
            AssetType::Image => self.image_path.as_deref(),
            AssetType::Initrd => self.initrd_path.as_deref(),
            AssetType::Hypervisor => self.hypervisor_path.as_deref(),
            AssetType::HypervisorCtl => self.hypervisor_ctl_path.as_deref(),
            AssetType::Jailer => self.jailer_path.as_deref(),
            AssetType::Firmware => self.firmware_path.as_deref(),
        }
    }

    /// Whether `kind` comes from a custom asset.
    pub fn is_custom_asset(&self, kind: AssetType) -> bool {
        self.custom_assets.contains_key(&kind)
    }
}

/// Kernel and hypervisor parameters appear in Kata's files as one
/// space-separated string (`kernel_params = "a=b c"`).
mod params_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::param::{deserialize_params, serialize_params, Param};

    pub fn serialize<S: Serializer>(params: &[Param], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serialize_params(params, "=").join(" "))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Param>, D::Error> {
        let s = String::deserialize(d)?;
        Ok(deserialize_params(s.split_whitespace()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> HypervisorConfig {
        HypervisorConfig {
            kernel_path: Some("/k".into()),
            initrd_path: Some("/i".into()),
            ..HypervisorConfig::default()
        }
    }

    #[test]
    fn virtio_fs_cache_must_be_a_mode_virtiofsd_takes() {
        for mode in VIRTIO_FS_CACHE_MODES {
            let mut c = HypervisorConfig {
                virtio_fs_cache: mode.into(),
                ..valid()
            };
            assert_eq!(c.validate(), Ok(()), "{mode}");
        }
        let mut c = HypervisorConfig {
            virtio_fs_cache: "sometimes".into(),
            ..valid()
        };
        let err = c.validate().expect_err("not a mode");
        assert_eq!(
            err.to_string(),
            "bad value \"sometimes\" for `virtio_fs_cache`: expected one of never, none, metadata, auto, always"
        );
    }

    #[test]
    fn msize_9p_must_be_in_range() {
        let cases = [
            (0, true),
            (4096, true),
            (8192, true),
            (1_048_576, true),
            (100, false),
            (4095, false),
            (1_048_577, false),
        ];
        for (msize, ok) in cases {
            let mut c = HypervisorConfig {
                msize_9p: msize,
                ..valid()
            };
            assert_eq!(c.validate().is_ok(), ok, "{msize}");
        }
        let mut c = HypervisorConfig {
            msize_9p: 100,
            ..valid()
        };
        assert_eq!(
            c.validate().expect_err("too small").to_string(),
            "`msize_9p` = 100 is out of range: expected 4096 to 1048576"
        );
    }
}
