//! The requests that configure a Firecracker VM before `InstanceStart`: a
//! pure function of the validated config, its devices and the paths
//! Firecracker sees ([`BootPlan`]), golden-tested.
//!
//! # Order
//!
//! `PUT /logger`, `/metrics`, `/machine-config`, `/boot-source`, then every
//! drive (the root image first, then cold-plugged drives, then the
//! placeholders that MMIO hot-plug swaps), every network interface,
//! `/vsock`, `/entropy`, `/serial`, and `/hotplug/memory` when memory may
//! grow. Firecracker takes them in any order before boot; a fixed one keeps
//! logs and golden files stable, and the logger first records the rest.
//!
//! # Kata's keys
//!
//! | key | request |
//! |---|---|
//! | `default_vcpus` | `machine-config.vcpu_count` (1 to 32) |
//! | `default_memory` | `machine-config.mem_size_mib` |
//! | `enable_hugepages` | `machine-config.huge_pages = "2M"` |
//! | `kernel`, `initrd`, `kernel_params` | `boot-source` (`kernel_params` after the backend's defaults, so they win) |
//! | `image` | drive `rootfs`, read-only, not the root device (Kata's choice: a partitioned image), with `root=/dev/vda1` |
//! | `block_device_cache_set`, `block_device_cache_noflush` | `cache_type = "Writeback"` when the cache is set and flushes are honoured |
//! | `enable_virtio_mem` | `PUT /hotplug/memory`, the region up to the host's memory |
//! | `enable_debug` | `logger.level = "Debug"` |
//!
//! `entropy_source` has no equivalent: Firecracker's virtio-rng reads the
//! host's CSPRNG. Every VM gets the entropy device.

use std::path::PathBuf;

use serde::Serialize;

use super::api::{
    BootSource, CacheType, Drive, EntropyDevice, HugePages, LogLevel, Logger, MachineConfiguration,
    MemoryHotplugConfig, Metrics, NetworkInterface, PutBootSource, PutDrive, PutEntropy, PutLogger,
    PutMachineConfig, PutMemoryHotplug, PutMetrics, PutNetworkInterface, PutSerial, PutVsock,
    SerialConfig, Vsock,
};
use crate::backends::vmm::rest::{Endpoint, Method};
use crate::config::HypervisorConfig;
use crate::device::{BlockDrive, NetDevice};
use crate::param::{serialize_params, Param};

/// Firecracker's most vCPUs.
pub const MAX_VCPUS: u32 = 32;
/// The id of the root image's drive.
pub const ROOTFS_DRIVE_ID: &str = "rootfs";
/// virtio-mem slot size: Firecracker's default and minimum, in MiB.
pub const MEMORY_SLOT_MIB: u32 = 128;
/// virtio-mem block size: Firecracker's default, in MiB.
pub const MEMORY_BLOCK_MIB: u32 = 2;

/// Errors from planning a boot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmConfigError {
    /// More vCPUs than Firecracker runs, or none.
    #[error("default_vcpus {vcpus} is out of firecracker's range 1 to {MAX_VCPUS}")]
    Vcpus {
        /// Asked for.
        vcpus: u32,
    },
    /// Huge pages need an even memory size.
    #[error(
        "default_memory {memory_mib} MiB is not a multiple of 2 MiB, which enable_hugepages needs"
    )]
    HugePagesMemory {
        /// The size.
        memory_mib: u32,
    },
    /// virtio-mem asked for, with no room to grow.
    #[error("enable_virtio_mem: the host's {host_mib} MiB leave less than one {MEMORY_SLOT_MIB} MiB slot above default_memory {memory_mib} MiB")]
    NoRoomToGrow {
        /// The host's memory.
        host_mib: u64,
        /// Boot memory.
        memory_mib: u32,
    },
    /// The config was not validated (no kernel).
    #[error("the config has no kernel: validate it first")]
    NoKernel,
}

pub use crate::config::HotplugMode;

/// Everything a boot needs, with every path as Firecracker sees it
/// (inside the jail when there is one).
#[derive(Debug, Clone, PartialEq)]
pub struct BootPlan<'a> {
    /// The validated config.
    pub config: &'a HypervisorConfig,
    /// The hot-plug mode.
    pub hotplug: HotplugMode,
    /// The host's memory, in MiB (bounds virtio-mem).
    pub host_memory_mib: u64,
    /// Firecracker's log.
    pub log: PathBuf,
    /// Firecracker's metrics.
    pub metrics: PathBuf,
    /// The guest's serial output.
    pub serial: PathBuf,
    /// The kernel.
    pub kernel: PathBuf,
    /// The initrd.
    pub initrd: Option<PathBuf>,
    /// The root image.
    pub image: Option<PathBuf>,
    /// Cold-plugged drives, each with its path for Firecracker.
    pub drives: Vec<(BlockDrive, PathBuf)>,
    /// Network interfaces.
    pub nets: Vec<NetDevice>,
    /// The hybrid vsock: guest context id and socket.
    pub vsock: Option<(u32, PathBuf)>,
    /// Placeholder drives (MMIO hot-plug): id and backing file.
    pub placeholders: Vec<(String, PathBuf)>,
}

/// One request made before boot.
#[derive(Debug, Clone, PartialEq)]
pub enum PreBoot {
    /// `PUT /logger`.
    Logger(PutLogger),
    /// `PUT /metrics`.
    Metrics(PutMetrics),
    /// `PUT /machine-config`.
    Machine(PutMachineConfig),
    /// `PUT /boot-source`.
    Boot(PutBootSource),
    /// `PUT /drives/{id}`.
    Drive(PutDrive),
    /// `PUT /network-interfaces/{id}`.
    Net(PutNetworkInterface),
    /// `PUT /vsock`.
    Vsock(PutVsock),
    /// `PUT /entropy`.
    Entropy(PutEntropy),
    /// `PUT /serial`.
    Serial(PutSerial),
    /// `PUT /hotplug/memory`.
    MemoryHotplug(PutMemoryHotplug),
}

/// A request as golden files and logs show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shown {
    /// `PUT`, ...
    pub method: &'static str,
    /// The path.
    pub path: String,
    /// The body.
    pub body: serde_json::Value,
}

fn show<E: Endpoint>(e: &E) -> Shown {
    Shown {
        method: match E::METHOD {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        },
        path: e.path().into_owned(),
        body: serde_json::to_value(e).unwrap_or(serde_json::Value::Null),
    }
}

impl PreBoot {
    /// Method, path and body.
    pub fn shown(&self) -> Shown {
        match self {
            PreBoot::Logger(e) => show(e),
            PreBoot::Metrics(e) => show(e),
            PreBoot::Machine(e) => show(e),
            PreBoot::Boot(e) => show(e),
            PreBoot::Drive(e) => show(e),
            PreBoot::Net(e) => show(e),
            PreBoot::Vsock(e) => show(e),
            PreBoot::Entropy(e) => show(e),
            PreBoot::Serial(e) => show(e),
            PreBoot::MemoryHotplug(e) => show(e),
        }
    }
}

/// The kernel parameters of the backend, before the config's own: the
/// serial console (COM1 goes to the serial file), reboot through the
/// keyboard controller and no reboot loop after a panic (Firecracker exits
/// on reboot), no PCI probe without `--enable-pci`, and the root device
/// when a root image is used.
pub fn kernel_params(config: &HypervisorConfig, hotplug: HotplugMode) -> Vec<Param> {
    let mut p = vec![
        Param::new("console", "ttyS0"),
        Param::new("reboot", "k"),
        Param::new("panic", "1"),
    ];
    if hotplug == HotplugMode::Mmio {
        p.push(Param::new("pci", "off"));
    }
    if config.image_path.is_some() {
        p.push(Param::new("root", "/dev/vda1"));
        p.push(Param::new("rootflags", "data=ordered,errors=remount-ro ro"));
        p.push(Param::new("rootfstype", "ext4"));
    }
    p.extend(config.kernel_params.iter().cloned());
    p
}

/// The virtio-mem region for `config` on a host with `host_mib`, if memory
/// may grow: everything above boot memory up to the host's, in whole slots.
///
/// # Errors
/// [`VmConfigError::NoRoomToGrow`] when not one slot fits.
pub fn memory_hotplug(
    config: &HypervisorConfig,
    host_mib: u64,
) -> Result<Option<MemoryHotplugConfig>, VmConfigError> {
    if !config.virtio_mem {
        return Ok(None);
    }
    let room = host_mib.saturating_sub(u64::from(config.memory_size));
    let slots = room / u64::from(MEMORY_SLOT_MIB);
    let total = u32::try_from(slots * u64::from(MEMORY_SLOT_MIB)).unwrap_or(u32::MAX);
    if slots == 0 {
        return Err(VmConfigError::NoRoomToGrow {
            host_mib,
            memory_mib: config.memory_size,
        });
    }
    Ok(Some(MemoryHotplugConfig {
        total_size_mib: total,
        slot_size_mib: Some(MEMORY_SLOT_MIB),
        block_size_mib: Some(MEMORY_BLOCK_MIB),
    }))
}

/// The drive for a block device at `path`.
pub fn drive(config: &HypervisorConfig, d: &BlockDrive, path: PathBuf) -> Drive {
    let writeback = config.block_device_cache_set && !config.block_device_cache_noflush;
    Drive {
        drive_id: d.id.clone(),
        path_on_host: Some(path),
        is_root_device: false,
        is_read_only: Some(d.read_only),
        cache_type: writeback.then_some(CacheType::Writeback),
        io_engine: None,
    }
}

/// The network interface for `n`.
pub fn network_interface(n: &NetDevice) -> NetworkInterface {
    NetworkInterface {
        iface_id: n.id.clone(),
        host_dev_name: n.tap_name.clone(),
        guest_mac: Some(n.mac.clone()).filter(|m| !m.is_empty()),
        mtu: None,
    }
}

/// The requests that configure `plan`, in order; `InstanceStart` is not
/// among them.
///
/// # Errors
/// See [`VmConfigError`].
pub fn pre_boot_requests(plan: &BootPlan<'_>) -> Result<Vec<PreBoot>, VmConfigError> {
    let c = plan.config;
    if c.kernel_path.is_none() {
        return Err(VmConfigError::NoKernel);
    }
    if c.num_vcpus == 0 || c.num_vcpus > MAX_VCPUS {
        return Err(VmConfigError::Vcpus { vcpus: c.num_vcpus });
    }
    if c.huge_pages && c.memory_size % 2 != 0 {
        return Err(VmConfigError::HugePagesMemory {
            memory_mib: c.memory_size,
        });
    }
    let mut out = vec![
        PreBoot::Logger(PutLogger(Logger {
            log_path: plan.log.clone(),
            level: Some(if c.debug {
                LogLevel::Debug
            } else {
                LogLevel::Info
            }),
            show_level: Some(true),
            show_log_origin: None,
        })),
        PreBoot::Metrics(PutMetrics(Metrics {
            metrics_path: plan.metrics.clone(),
        })),
        PreBoot::Machine(PutMachineConfig(MachineConfiguration {
            vcpu_count: c.num_vcpus,
            mem_size_mib: c.memory_size,
            smt: false,
            track_dirty_pages: None,
            huge_pages: c.huge_pages.then_some(HugePages::TwoMiB),
        })),
        PreBoot::Boot(PutBootSource(BootSource {
            kernel_image_path: plan.kernel.clone(),
            initrd_path: plan.initrd.clone(),
            boot_args: Some(serialize_params(&kernel_params(c, plan.hotplug), "=").join(" ")),
        })),
    ];
    if let Some(image) = &plan.image {
        out.push(PreBoot::Drive(PutDrive(Drive {
            drive_id: ROOTFS_DRIVE_ID.to_string(),
            path_on_host: Some(image.clone()),
            is_root_device: false,
            is_read_only: Some(true),
            cache_type: None,
            io_engine: None,
        })));
    }
    for (d, path) in &plan.drives {
        out.push(PreBoot::Drive(PutDrive(drive(c, d, path.clone()))));
    }
    for (id, path) in &plan.placeholders {
        out.push(PreBoot::Drive(PutDrive(Drive {
            drive_id: id.clone(),
            path_on_host: Some(path.clone()),
            is_root_device: false,
            is_read_only: Some(false),
            cache_type: None,
            io_engine: None,
        })));
    }
    for n in &plan.nets {
        out.push(PreBoot::Net(PutNetworkInterface(network_interface(n))));
    }
    if let Some((cid, uds)) = &plan.vsock {
        out.push(PreBoot::Vsock(PutVsock(Vsock {
            guest_cid: *cid,
            uds_path: uds.clone(),
        })));
    }
    out.push(PreBoot::Entropy(PutEntropy(EntropyDevice {})));
    out.push(PreBoot::Serial(PutSerial(SerialConfig {
        serial_out_path: Some(plan.serial.clone()),
    })));
    if let Some(m) = memory_hotplug(c, plan.host_memory_mib)? {
        out.push(PreBoot::MemoryHotplug(PutMemoryHotplug(m)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HypervisorConfig {
        let mut c = HypervisorConfig {
            kernel_path: Some("/assets/vmlinux".into()),
            initrd_path: Some("/assets/initrd.img".into()),
            memory_size: 256,
            ..HypervisorConfig::default()
        };
        c.validate().expect("valid");
        c
    }

    fn plan(config: &HypervisorConfig) -> BootPlan<'_> {
        BootPlan {
            config,
            hotplug: HotplugMode::Pci,
            host_memory_mib: 4096,
            log: "/vm/firecracker.log".into(),
            metrics: "/vm/metrics.json".into(),
            serial: "/vm/console.log".into(),
            kernel: "/assets/vmlinux".into(),
            initrd: config.initrd_path.clone(),
            image: None,
            drives: Vec::new(),
            nets: Vec::new(),
            vsock: Some((3, "/vm/kata.hvsock".into())),
            placeholders: Vec::new(),
        }
    }

    /// Compares `plan`'s requests with `golden/<name>.json`; with
    /// `SANDVISOR_BLESS=1`, writes the file instead.
    fn golden(name: &str, plan: &BootPlan<'_>) {
        let shown: Vec<Shown> = pre_boot_requests(plan)
            .expect("plans")
            .iter()
            .map(PreBoot::shown)
            .collect();
        let got = serde_json::to_string_pretty(&shown).expect("serialises") + "\n";
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/backends/firecracker/golden")
            .join(format!("{name}.json"));
        if std::env::var_os("SANDVISOR_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&path, &got).expect("writes golden");
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path:?}: {e}; run with SANDVISOR_BLESS=1 to write it"));
        assert_eq!(got, want, "golden {name} differs");
    }

    #[test]
    fn golden_initrd_pci() {
        let c = config();
        golden("initrd_pci", &plan(&c));
    }

    #[test]
    fn golden_image_mmio_placeholders_net_debug() {
        let mut c = HypervisorConfig {
            kernel_path: Some("/assets/vmlinux".into()),
            image_path: Some("/assets/rootfs.img".into()),
            num_vcpus: 2,
            memory_size: 512,
            debug: true,
            block_device_cache_set: true,
            kernel_params: vec![Param::new("quiet", ""), Param::new("panic", "0")],
            ..HypervisorConfig::default()
        };
        c.validate().expect("valid");
        let mut p = plan(&c);
        p.hotplug = HotplugMode::Mmio;
        p.initrd = None;
        p.image = Some("/drives/rootfs.img".into());
        p.drives = vec![(
            BlockDrive {
                file: "/data/d1.img".into(),
                id: "d1".into(),
                read_only: true,
                ..BlockDrive::default()
            },
            "/drives/d1.img".into(),
        )];
        p.placeholders = vec![
            ("drive_0".into(), "/drives/drive_0".into()),
            ("drive_1".into(), "/drives/drive_1".into()),
        ];
        p.nets = vec![NetDevice {
            id: "eth0".into(),
            tap_name: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            queues: 1,
        }];
        golden("image_mmio_placeholders_net_debug", &p);
    }

    #[test]
    fn golden_virtio_mem_hugepages_no_vsock() {
        let mut c = config();
        c.virtio_mem = true;
        c.huge_pages = true;
        let mut p = plan(&c);
        p.vsock = None;
        p.host_memory_mib = 2000;
        golden("virtio_mem_hugepages_no_vsock", &p);
    }

    #[test]
    fn every_pre_boot_request_keeps_to_the_published_spec() {
        let spec = crate::backends::vmm::contract::Spec::firecracker().expect("spec loads");
        let c = config();
        for r in pre_boot_requests(&plan(&c)).expect("plans") {
            let s = r.shown();
            let method = match s.method {
                "PUT" => Method::Put,
                other => panic!("pre-boot requests are PUTs, not {other}"),
            };
            spec.check(method, &s.path, Some(&s.body))
                .unwrap_or_else(|e| panic!("{} {}: {e}", s.method, s.path));
        }
    }

    #[test]
    fn bad_configs_are_refused_with_their_values() {
        let mut c = config();
        c.num_vcpus = 33;
        c.default_max_vcpus = 64;
        assert_eq!(
            pre_boot_requests(&plan(&c)),
            Err(VmConfigError::Vcpus { vcpus: 33 })
        );
        let mut c = config();
        c.huge_pages = true;
        c.memory_size = 257;
        assert_eq!(
            pre_boot_requests(&plan(&c)),
            Err(VmConfigError::HugePagesMemory { memory_mib: 257 })
        );
        let mut c = config();
        c.virtio_mem = true;
        let mut p = plan(&c);
        p.host_memory_mib = 300;
        assert_eq!(
            pre_boot_requests(&p),
            Err(VmConfigError::NoRoomToGrow {
                host_mib: 300,
                memory_mib: 256
            })
        );
    }

    #[test]
    fn memory_grows_in_whole_slots_up_to_the_host() {
        let mut c = config();
        c.virtio_mem = true;
        let m = memory_hotplug(&c, 1000).expect("room").expect("enabled");
        // 1000 - 256 = 744 MiB: five 128 MiB slots.
        assert_eq!(m.total_size_mib, 640);
        c.virtio_mem = false;
        assert_eq!(memory_hotplug(&c, 1000), Ok(None));
    }
}
