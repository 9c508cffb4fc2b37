//! The keys a `[hypervisor.*]` section of a Kata `configuration.toml` may
//! hold, and what sandvisor does with each.
//!
//! The vocabulary is the union of
//! - the `hypervisor` struct of Kata 1.x's loader (`kata-containers/runtime`,
//!   `pkg/katautils/config.go`), including keys its templates leave
//!   commented out;
//! - the same struct in current Kata (`kata-containers/kata-containers`,
//!   `src/runtime/pkg/katautils/config.go`) over its history, so files
//!   written for any 2.x–4.x release load (`path_list` and the other
//!   `*_list` spellings of early 2.0 included);
//! - the keys of Kata's Rust runtime (`kata-types`) that name a field
//!   sandvisor has (`boot_to_be_template`, `memory_path`, ...) or that its
//!   files carry (`sgx_epc_size`, `overhead_vcpus`, ...);
//! - `rootless` is honoured by QEMU only (other backends refuse it);
//! - sandvisor's own additions: `accel`, `vhost_user_vsock_daemon`; for
//!   Firecracker, `hotplug_transport` (`pci` or `mmio`),
//!   `drive_placeholders`, `jailer_uid`, `jailer_gid` and `unjailed`
//!   (what `jailer_path = ""` means, as `env` prints it).
//!
//! Kata reads the same struct for every hypervisor section, so every key is
//! known in every section. What a backend cannot honour is refused at load
//! ([`super::kata::check_backend_keys`]): a `shared_fs` or
//! `block_device_driver` value outside its lists, or a key only other
//! backends read.
//!
//! A key is either [`KeyStatus::Implemented`], with a setter that parses
//! the TOML value into the [`HypervisorConfig`] field, or
//! [`KeyStatus::Unimplemented`]: known to Kata, ignored here with one
//! warning. A key in neither list is an error (see [`super::kata`]).

use std::path::PathBuf;
use std::str::FromStr;

use toml::Value;

use crate::config::{Accel, BlockDeviceDriver, HypervisorConfig, SharedFs};
use crate::param::deserialize_params;

/// Why a TOML value does not fit its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The value has the wrong TOML type.
    #[error("expected {expected}, found {found}")]
    Type {
        /// What the key takes, such as "an integer".
        expected: &'static str,
        /// What the file gave, such as "a string".
        found: &'static str,
    },
    /// A number outside the key's range.
    #[error("{value} is out of range: expected {expected}")]
    Range {
        /// The value given.
        value: String,
        /// The range, in words.
        expected: &'static str,
    },
    /// A string that is not one of the key's values.
    #[error("bad value {value:?}: expected one of {allowed}")]
    Enum {
        /// The value given.
        value: String,
        /// The allowed values, comma-separated.
        allowed: String,
    },
}

/// Facts about the host that Kata's loader applies to some keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// CPUs this process may run on (Go's `runtime.NumCPU()`).
    pub cpus: u32,
}

impl HostFacts {
    /// The facts of this host.
    pub fn probe() -> Self {
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        HostFacts { cpus }
    }
}

/// Sets a [`HypervisorConfig`] field from a TOML value.
pub type Setter = fn(&mut HypervisorConfig, &Value, HostFacts) -> Result<(), ValueError>;

/// What sandvisor does with a key.
#[derive(Clone, Copy)]
pub enum KeyStatus {
    /// The key sets a field.
    Implemented(Setter),
    /// A Kata key sandvisor does not implement: ignored, with a warning.
    Unimplemented,
}

impl std::fmt::Debug for KeyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyStatus::Implemented(_) => "Implemented",
            KeyStatus::Unimplemented => "Unimplemented",
        })
    }
}

/// One key of a `[hypervisor.*]` section.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// The key, as written in the file.
    pub name: &'static str,
    /// What sandvisor does with it.
    pub status: KeyStatus,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn string(v: &Value) -> Result<String, ValueError> {
    v.as_str().map(str::to_string).ok_or(ValueError::Type {
        expected: "a string",
        found: type_name(v),
    })
}

/// A path; Kata treats an empty string as unset.
fn path(v: &Value) -> Result<Option<PathBuf>, ValueError> {
    let s = string(v)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

fn boolean(v: &Value) -> Result<bool, ValueError> {
    v.as_bool().ok_or(ValueError::Type {
        expected: "a boolean (true or false)",
        found: type_name(v),
    })
}

fn uint32(v: &Value) -> Result<u32, ValueError> {
    let i = v.as_integer().ok_or(ValueError::Type {
        expected: "an integer",
        found: type_name(v),
    })?;
    u32::try_from(i).map_err(|_| ValueError::Range {
        value: i.to_string(),
        expected: "an integer from 0 to 4294967295",
    })
}

fn strings(v: &Value) -> Result<Vec<String>, ValueError> {
    const EXPECTED: &str = "an array of strings";
    let arr = v.as_array().ok_or(ValueError::Type {
        expected: EXPECTED,
        found: type_name(v),
    })?;
    arr.iter()
        .map(|e| {
            e.as_str().map(str::to_string).ok_or(ValueError::Type {
                expected: EXPECTED,
                found: "an array holding a non-string",
            })
        })
        .collect()
}

fn parsed<T: FromStr<Err = crate::config::ConfigError>>(v: &Value) -> Result<T, ValueError> {
    let s = string(v)?;
    s.parse::<T>().map_err(|e| match e {
        crate::config::ConfigError::BadValue { expected, .. } => ValueError::Enum {
            value: s,
            allowed: expected,
        },
        other => ValueError::Enum {
            value: s,
            allowed: other.to_string(),
        },
    })
}

/// Kata's list normalisation for `machine_accelerators` and `cpu_features`:
/// split on commas, trim, drop empty items.
pub fn normalize_comma_list(s: &str) -> String {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

/// Kata's rule for `default_vcpus`: negative or above the host's CPUs means
/// the host's CPU count; 0 stays 0 (the default, 1, comes with
/// [`HypervisorConfig::validate`]); current Kata takes fractions, which a VM
/// cannot have, so they round up.
pub fn kata_default_vcpus(requested: f64, host_cpus: u32) -> u32 {
    if requested < 0.0 || requested > f64::from(host_cpus) {
        return host_cpus;
    }
    // In range [0, host_cpus], so the cast is exact after ceil.
    requested.ceil() as u32
}

/// Kata's rule for `default_maxvcpus`: 0 or at least the host's CPUs means
/// the host's CPU count, and never above what the VMM supports (`max`).
pub fn kata_default_max_vcpus(requested: u32, host_cpus: u32, max: u32) -> u32 {
    let req = if requested == 0 || requested >= host_cpus {
        host_cpus
    } else {
        requested
    };
    req.min(max)
}

/// The most PCI bridges Kata gives a VM (`maxPCIBridges`).
pub const MAX_PCI_BRIDGES: u32 = 5;

fn vcpus(v: &Value) -> Result<f64, ValueError> {
    match v {
        Value::Integer(i) => Ok(*i as f64),
        Value::Float(f) if f.is_finite() => Ok(*f),
        other => Err(ValueError::Type {
            expected: "a number",
            found: type_name(other),
        }),
    }
}

macro_rules! set {
    ($name:literal, |$c:ident, $v:ident, $h:ident| $body:expr) => {
        KeySpec {
            name: $name,
            status: KeyStatus::Implemented(
                |$c: &mut HypervisorConfig, $v: &Value, $h: HostFacts| -> Result<(), ValueError> {
                    let _ = $h;
                    $body;
                    Ok(())
                },
            ),
        }
    };
}

macro_rules! ignored {
    ($($name:literal),+ $(,)?) => {
        [$(KeySpec { name: $name, status: KeyStatus::Unimplemented }),+]
    };
}

/// Keys that set a field.
static IMPLEMENTED: &[KeySpec] = &[
    set!("path", |c, v, h| c.hypervisor_path = path(v)?),
    set!("valid_hypervisor_paths", |c, v, h| c.hypervisor_path_list =
        strings(v)?),
    set!("path_list", |c, v, h| c.hypervisor_path_list = strings(v)?),
    set!("jailer_path", |c, v, h| {
        c.jailer_path = path(v)?;
        // An empty path is Kata's "no jailer": kept apart from an absent
        // key, which means the jailer the lookup finds.
        c.unjailed = c.jailer_path.is_none();
    }),
    set!("valid_jailer_paths", |c, v, h| c.jailer_path_list =
        strings(v)?),
    set!("jailer_path_list", |c, v, h| c.jailer_path_list =
        strings(v)?),
    set!("ctlpath", |c, v, h| c.hypervisor_ctl_path = path(v)?),
    set!("valid_ctlpaths", |c, v, h| c.hypervisor_ctl_path_list =
        strings(v)?),
    set!("ctlpath_list", |c, v, h| c.hypervisor_ctl_path_list =
        strings(v)?),
    set!("kernel", |c, v, h| c.kernel_path = path(v)?),
    set!("initrd", |c, v, h| c.initrd_path = path(v)?),
    set!("image", |c, v, h| c.image_path = path(v)?),
    set!("firmware", |c, v, h| c.firmware_path = path(v)?),
    set!("machine_accelerators", |c, v, h| c.machine_accelerators =
        normalize_comma_list(&string(v)?)),
    set!("cpu_features", |c, v, h| c.cpu_features =
        normalize_comma_list(&string(v)?)),
    set!("kernel_params", |c, v, h| c.kernel_params =
        deserialize_params(string(v)?.split_whitespace())),
    set!("machine_type", |c, v, h| c.hypervisor_machine_type =
        string(v)?),
    set!("block_device_driver", |c, v, h| c.block_device_driver = {
        let s = string(v)?;
        if s.is_empty() {
            None
        } else {
            Some(parsed::<BlockDeviceDriver>(v)?)
        }
    }),
    set!("entropy_source", |c, v, h| c.entropy_source = path(v)?),
    set!("shared_fs", |c, v, h| c.shared_fs = {
        if string(v)?.is_empty() {
            SharedFs::default()
        } else {
            parsed::<SharedFs>(v)?
        }
    }),
    set!("virtio_fs_daemon", |c, v, h| c.virtio_fs_daemon = path(v)?),
    set!("valid_virtio_fs_daemon_paths", |c, v, h| c
        .virtio_fs_daemon_list =
        strings(v)?),
    set!("virtio_fs_daemon_list", |c, v, h| c.virtio_fs_daemon_list =
        strings(v)?),
    set!("virtio_fs_cache", |c, v, h| c.virtio_fs_cache = string(v)?),
    set!("virtio_fs_extra_args", |c, v, h| c.virtio_fs_extra_args =
        strings(v)?),
    set!("virtio_fs_cache_size", |c, v, h| c.virtio_fs_cache_size =
        uint32(v)?),
    set!("pflashes", |c, v, h| c.pflash =
        strings(v)?.into_iter().map(PathBuf::from).collect()),
    set!("block_device_cache_set", |c, v, h| c
        .block_device_cache_set =
        boolean(v)?),
    set!("block_device_cache_direct", |c, v, h| c
        .block_device_cache_direct =
        boolean(v)?),
    set!("block_device_cache_noflush", |c, v, h| c
        .block_device_cache_noflush =
        boolean(v)?),
    set!("rootless", |c, v, h| c.rootless = boolean(v)?),
    set!("enable_vhost_user_store", |c, v, h| c
        .enable_vhost_user_store =
        boolean(v)?),
    set!("vhost_user_store_path", |c, v, h| c.vhost_user_store_path =
        path(v)?),
    set!("valid_vhost_user_store_paths", |c, v, h| c
        .vhost_user_store_path_list =
        strings(v)?),
    set!("vhost_user_store_path_list", |c, v, h| c
        .vhost_user_store_path_list =
        strings(v)?),
    set!("default_vcpus", |c, v, h| c.num_vcpus =
        kata_default_vcpus(vcpus(v)?, h.cpus)),
    // Clamped to the host by the loader, present or not, as Kata does.
    set!("default_maxvcpus", |c, v, h| c.default_max_vcpus =
        uint32(v)?),
    set!("default_memory", |c, v, h| c.memory_size = uint32(v)?),
    set!("memory_slots", |c, v, h| c.mem_slots = uint32(v)?),
    set!("memory_offset", |c, v, h| c.mem_offset = uint32(v)?),
    set!("default_bridges", |c, v, h| c.default_bridges =
        uint32(v)?.min(MAX_PCI_BRIDGES)),
    set!("msize_9p", |c, v, h| c.msize_9p = uint32(v)?),
    set!("pcie_root_port", |c, v, h| c.pcie_root_port = uint32(v)?),
    set!("disable_block_device_use", |c, v, h| c
        .disable_block_device_use =
        boolean(v)?),
    set!("enable_mem_prealloc", |c, v, h| c.mem_prealloc =
        boolean(v)?),
    set!("enable_hugepages", |c, v, h| c.huge_pages = boolean(v)?),
    set!("enable_virtio_mem", |c, v, h| c.virtio_mem = boolean(v)?),
    set!("enable_iommu", |c, v, h| c.iommu = boolean(v)?),
    set!("enable_iommu_platform", |c, v, h| c.iommu_platform =
        boolean(v)?),
    set!("file_mem_backend", |c, v, h| c.file_backed_mem_root_dir =
        path(v)?),
    set!("valid_file_mem_backends", |c, v, h| c
        .file_backed_mem_root_list =
        strings(v)?),
    set!("file_mem_backend_list", |c, v, h| c
        .file_backed_mem_root_list =
        strings(v)?),
    // Kata 1.x: `Mlock: !h.Swap`.
    set!("enable_swap", |c, v, h| c.mlock = !boolean(v)?),
    set!("enable_debug", |c, v, h| c.debug = boolean(v)?),
    set!("disable_nesting_checks", |c, v, h| c
        .disable_nesting_checks =
        boolean(v)?),
    set!("enable_iothreads", |c, v, h| c.enable_io_threads =
        boolean(v)?),
    set!("use_vsock", |c, v, h| c.use_vsock = boolean(v)?),
    set!("disable_image_nvdimm", |c, v, h| c.disable_image_nvdimm =
        boolean(v)?),
    set!("hotplug_vfio_on_root_bus", |c, v, h| c
        .hotplug_vfio_on_root_bus =
        boolean(v)?),
    set!("disable_vhost_net", |c, v, h| c.disable_vhost_net =
        boolean(v)?),
    set!("guest_hook_path", |c, v, h| c.guest_hook_path = path(v)?),
    set!("enable_annotations", |c, v, h| c.enable_annotations =
        strings(v)?),
    // Kata's Rust runtime (`kata-types`, `VmTemplateInfo`, `SecurityInfo`).
    set!("boot_to_be_template", |c, v, h| c.boot_to_be_template =
        boolean(v)?),
    set!("boot_from_template", |c, v, h| c.boot_from_template =
        boolean(v)?),
    set!("memory_path", |c, v, h| c.memory_path = path(v)?),
    set!("device_state_path", |c, v, h| c.devices_state_path =
        path(v)?),
    // sandvisor's spelling of `device_state_path`, as `env` prints it.
    set!("devices_state_path", |c, v, h| c.devices_state_path =
        path(v)?),
    set!("selinux_label", |c, v, h| c.selinux_process_label =
        string(v)?),
    // sandvisor.
    set!("accel", |c, v, h| c.accel = {
        if string(v)?.is_empty() {
            Accel::default()
        } else {
            parsed::<Accel>(v)?
        }
    }),
    set!("hotplug_transport", |c, v, h| c.hotplug_transport = {
        if string(v)?.is_empty() {
            None
        } else {
            Some(parsed::<crate::config::HotplugMode>(v)?)
        }
    }),
    set!("drive_placeholders", |c, v, h| c.drive_placeholders =
        Some(uint32(v)?)),
    set!("jailer_uid", |c, v, h| c.jailer_uid = Some(uint32(v)?)),
    // What `jailer_path = ""` sets; `env` prints it so.
    set!("unjailed", |c, v, h| c.unjailed = boolean(v)?),
    set!("jailer_gid", |c, v, h| c.jailer_gid = Some(uint32(v)?)),
    // sandvisor.
    set!("vhost_user_vsock_daemon", |c, v, h| c
        .vhost_user_vsock_daemon =
        path(v)?),
];

/// Kata keys sandvisor does not implement.
static UNIMPLEMENTED: &[KeySpec] = &ignored!(
    // Go runtime, 2.x to current.
    "block_device_aio",
    "block_device_logical_sector_size",
    "block_device_physical_sector_size",
    "cold_plug_vfio",
    "confidential_guest",
    "default_maxmemory",
    "disable_guest_selinux",
    "disable_seccomp",
    "disable_selinux",
    "disk_rate_limiter_bw_max_rate",
    "disk_rate_limiter_bw_one_time_burst",
    "disk_rate_limiter_ops_max_rate",
    "disk_rate_limiter_ops_one_time_burst",
    "enable_guest_swap",
    "enable_numa",
    "enable_vcpus_pinning",
    "extra_monitor_socket",
    "firmware_volume",
    "guest_extension_images",
    "guest_memory_dump_paging",
    "guest_memory_dump_path",
    "hot_plug_vfio",
    "hotplug_vfio",
    "hypervisor_loglevel",
    "indep_iothreads",
    "kernel_verity_params",
    "measurement_algo",
    "net_rate_limiter_bw_max_rate",
    "net_rate_limiter_bw_one_time_burst",
    "net_rate_limiter_ops_max_rate",
    "net_rate_limiter_ops_one_time_burst",
    "numa_mapping",
    "pcie_switch_port",
    "reclaim_guest_freed_memory",
    "remote_hypervisor_socket",
    "remote_hypervisor_timeout",
    "rootfs_type",
    "rx_rate_limiter_max_rate",
    "seccompsandbox",
    "sev_snp_guest",
    "snp_certs_path",
    "snp_guest_policy",
    "snp_id_auth",
    "snp_id_block",
    "tdx_quote_generation_service_socket_port",
    "tx_rate_limiter_max_rate",
    "use_legacy_serial",
    "valid_entropy_sources",
    "vhost_user_reconnect_timeout_sec",
    "virtio_fs_queue_size",
    // Rust runtime (`kata-types`).
    "default_gpu_model",
    "default_gpus",
    "disable_nested_virtualization",
    "guest_swap_create_threshold_secs",
    "guest_swap_path",
    "guest_swap_size_percent",
    "hugepage_type",
    "overhead_memory",
    "overhead_vcpus",
    "prefetch_list_path",
    "qgs_port",
    "seccomp_sandbox",
    "sgx_epc_size",
    "virtio_fs_is_dax",
    "vm_rootfs_driver",
);

/// Every key of a hypervisor section: implemented ones first.
pub fn hypervisor_keys() -> impl Iterator<Item = &'static KeySpec> {
    IMPLEMENTED.iter().chain(UNIMPLEMENTED.iter())
}

/// The spec of hypervisor-section key `name`.
pub fn hypervisor_key(name: &str) -> Option<&'static KeySpec> {
    hypervisor_keys().find(|k| k.name == name)
}

/// Keys of the `[factory]` section.
pub const FACTORY_KEYS: &[&str] = &[
    "enable_template",
    "template_path",
    "vm_cache_number",
    "vm_cache_endpoint",
];

/// The known key closest to `name`, when one is close enough to be a typo.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::normalized_damerau_levenshtein(name, k), k))
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

/// Parses a `[factory]` value: helpers for [`super::kata`].
pub(crate) mod factory {
    use super::*;

    pub(crate) fn boolean(v: &Value) -> Result<bool, ValueError> {
        super::boolean(v)
    }
    pub(crate) fn uint32(v: &Value) -> Result<u32, ValueError> {
        super::uint32(v)
    }
    pub(crate) fn path(v: &Value) -> Result<Option<PathBuf>, ValueError> {
        super::path(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique() {
        let mut names: Vec<_> = hypervisor_keys().map(|k| k.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn every_serialised_field_is_a_key() {
        // `env --json` prints these names: each must be readable back from a
        // file, except the fields Kata fills in at run time.
        let runtime_only = ["hypervisor_params", "vm_id", "realtime", "mlock"];
        let json = serde_json::to_value(HypervisorConfig::default()).expect("serialises");
        let obj = json.as_object().expect("an object");
        for name in obj.keys() {
            if runtime_only.contains(&name.as_str()) {
                continue;
            }
            let spec = hypervisor_key(name);
            assert!(
                matches!(
                    spec,
                    Some(KeySpec {
                        status: KeyStatus::Implemented(_),
                        ..
                    })
                ),
                "{name} is not an implemented key"
            );
        }
    }

    #[test]
    fn vcpu_rules() {
        assert_eq!(kata_default_vcpus(1.0, 2), 1);
        assert_eq!(kata_default_vcpus(0.0, 2), 0);
        assert_eq!(kata_default_vcpus(-1.0, 2), 2);
        assert_eq!(kata_default_vcpus(8.0, 2), 2);
        assert_eq!(kata_default_vcpus(0.5, 2), 1);
        assert_eq!(kata_default_max_vcpus(0, 2, 240), 2);
        assert_eq!(kata_default_max_vcpus(1, 2, 240), 1);
        assert_eq!(kata_default_max_vcpus(16, 2, 240), 2);
        assert_eq!(kata_default_max_vcpus(0, 512, 240), 240);
    }

    #[test]
    fn closest_key() {
        let keys = hypervisor_keys().map(|k| k.name);
        assert_eq!(closest("defualt_vcpus", keys), Some("default_vcpus"));
        assert_eq!(closest("zzz", hypervisor_keys().map(|k| k.name)), None);
    }
}
