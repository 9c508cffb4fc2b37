//! Firecracker's REST API, typed: one serde struct per request body and per
//! reply (`../shared/specs/firecracker.yaml`), and one endpoint struct per
//! call, implementing the REST client's [`Endpoint`].
//!
//! Bodies serialise only what they set: an optional field left `None` is
//! left out, so Firecracker applies its own default (its request types
//! deny unknown fields, and some reject `null`). Paths are host paths as
//! Firecracker sees them: inside the jail when there is one.
//!
//! Calls the YAML spec leaves out but Firecracker answers: `DELETE
//! /drives/{id}` and `DELETE /network-interfaces/{id}` unplug a PCI device
//! from a VM started with `--enable-pci` (upstream `docs/device-hotplug.md`).

use std::borrow::Cow;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backends::vmm::rest::{Endpoint, Method};

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

/// Log level of Firecracker's logger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Informational messages and above (Firecracker's default).
    Info,
    /// Debug messages and above.
    Debug,
    /// Everything.
    Trace,
    /// Nothing.
    Off,
}

/// `PUT /logger`: where Firecracker writes its human-readable log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// File or named pipe for the log.
    pub log_path: PathBuf,
    /// The level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Prefix lines with their level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with their source file and line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
}

/// `PUT /metrics`: where Firecracker flushes its JSON metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// File or named pipe for the metrics.
    pub metrics_path: PathBuf,
}

/// How guest memory is backed by huge pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages.
    None,
    /// Transparent huge pages (`madvise`).
    Transparent,
    /// hugetlbfs 2 MiB pages.
    #[serde(rename = "2M")]
    TwoMiB,
}

/// `PUT /machine-config`: vCPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// vCPUs, 1 to 32 (1 or even with SMT).
    pub vcpu_count: u32,
    /// Memory in MiB.
    pub mem_size_mib: u32,
    /// Simultaneous multithreading.
    #[serde(default)]
    pub smt: bool,
    /// Track dirty pages (diff snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

/// `PUT /boot-source`: the kernel, initrd and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// The kernel (an uncompressed ELF, PVH or Linux boot protocol).
    pub kernel_image_path: PathBuf,
    /// The initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// How a drive treats flush requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Ignore flushes (Firecracker's default).
    Unsafe,
    /// Honour flushes with `fsync`.
    Writeback,
}

/// A drive's I/O engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking I/O on the device thread (the default).
    Sync,
    /// io_uring.
    Async,
}

/// `PUT /drives/{drive_id}`: a virtio-blk drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Its id (also the path parameter).
    pub drive_id: String,
    /// The file or block device backing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Whether it is the root device (`/dev/vda` and `root=` on the command line).
    pub is_root_device: bool,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// How flushes are treated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// The I/O engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
}

/// `PATCH /drives/{drive_id}`: a new backing file for a drive after boot
/// (the guest sees a capacity change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialDrive {
    /// The drive.
    pub drive_id: String,
    /// Its new backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device on a tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Its id (also the path parameter).
    pub iface_id: String,
    /// The host tap device.
    pub host_dev_name: String,
    /// The guest MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// `PUT /vsock`: the hybrid vsock. Firecracker listens on `uds_path` for
/// host-initiated connections (`CONNECT <port>\n`) and connects to
/// `<uds_path>_<port>` for guest-initiated ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// Guest context id, at least 3.
    pub guest_cid: u32,
    /// The host unix socket.
    pub uds_path: PathBuf,
}

/// `PUT /entropy`: a virtio-rng device fed from the host's CSPRNG.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntropyDevice {}

/// `PUT /serial`: where COM1's output goes (else Firecracker's stdout).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialConfig {
    /// File or named pipe for the guest's serial output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
}

/// An action of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl+Alt+Del (the i8042 reset line; a Linux guest reboots,
    /// which Firecracker turns into its exit).
    SendCtrlAltDel,
    /// Flush metrics now.
    FlushMetrics,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    /// The action.
    pub action_type: ActionType,
}

/// The state `PATCH /vm` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// Stop the vCPUs.
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStateUpdate {
    /// The state wanted.
    pub state: VmRunState,
}

/// What a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only the pages dirtied since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create`, on a paused VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    /// Full or diff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
    /// The file for the VM's device and vCPU state.
    pub snapshot_path: PathBuf,
    /// The file for guest memory.
    pub mem_file_path: PathBuf,
}

/// Where restored guest memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file, mapped private.
    File,
    /// A userfaultfd handler listening on a unix socket.
    Uffd,
}

/// The memory backend of a snapshot load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// File or userfaultfd.
    pub backend_type: MemoryBackendType,
    /// The memory file, or the handler's socket.
    pub backend_path: PathBuf,
}

/// A new unix socket for the vsock device of a restored VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// The new socket path.
    pub uds_path: PathBuf,
}

/// A new tap device for a network interface of a restored VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new tap device.
    pub host_dev_name: String,
}

/// `PUT /snapshot/load`, on a fresh Firecracker (nothing configured but
/// the logger and metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    /// The VM state file.
    pub snapshot_path: PathBuf,
    /// Where memory comes from.
    pub mem_backend: MemoryBackend,
    /// Resume the VM once loaded.
    #[serde(default)]
    pub resume_vm: bool,
    /// Track dirty pages from here on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// A new socket for the vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// New tap devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
}

/// `PUT /hotplug/memory`, before boot: the virtio-mem region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHotplugConfig {
    /// The most memory that can be plugged, in MiB (a multiple of the slot).
    pub total_size_mib: u32,
    /// Granularity of the host side, in MiB (at least 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_size_mib: Option<u32>,
    /// Granularity of the guest side, in MiB (a power of 2, at least 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size_mib: Option<u32>,
}

/// `PATCH /hotplug/memory`, after boot: how much of the region to plug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryHotplugSizeUpdate {
    /// The size wanted, in MiB.
    pub requested_size_mib: u32,
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// The state `GET /` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured or being configured, not booted.
    #[serde(rename = "Not started")]
    NotStarted,
    /// The vCPUs run.
    Running,
    /// The vCPUs are paused.
    Paused,
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The application name (`Firecracker`).
    pub app_name: String,
    /// The instance id (`--id`, or `anonymous-instance`).
    pub id: String,
    /// The VM state.
    pub state: InstanceState,
    /// The VMM version.
    pub vmm_version: String,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    /// The build version.
    pub firecracker_version: String,
}

/// `GET /hotplug/memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryHotplugStatus {
    /// The region's size, in MiB.
    pub total_size_mib: u32,
    /// Slot size, in MiB.
    pub slot_size_mib: u32,
    /// Block size, in MiB.
    pub block_size_mib: u32,
    /// What the guest has plugged, in MiB.
    pub plugged_size_mib: u32,
    /// What was asked for, in MiB.
    pub requested_size_mib: u32,
}

/// `GET /vm/config`: the VM's configuration as Firecracker holds it (the
/// parts sandvisor reads; other keys are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FullVmConfiguration {
    /// The boot source (empty after a snapshot load).
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config")]
    pub machine_config: Option<MachineConfiguration>,
    /// Every drive.
    pub drives: Vec<Drive>,
    /// Every network interface.
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device.
    pub vsock: Option<Vsock>,
    /// The entropy device.
    pub entropy: Option<EntropyDevice>,
    /// The virtio-mem region.
    #[serde(rename = "memory-hotplug")]
    pub memory_hotplug: Option<MemoryHotplugConfig>,
}

// ---------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------

macro_rules! body_endpoint {
    ($(#[$doc:meta])* $name:ident($body:ty), $method:ident, $($path:tt)+) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub $body);

        impl Endpoint for $name {
            type Reply = ();
            const METHOD: Method = Method::$method;
            fn path(&self) -> Cow<'static, str> {
                body_endpoint!(@path self, $($path)+)
            }
        }
    };
    (@path $self:ident, $path:literal) => { Cow::Borrowed($path) };
    (@path $self:ident, |$b:ident| $e:expr) => {{
        let $b = &$self.0;
        Cow::Owned($e)
    }};
}

macro_rules! get_endpoint {
    ($(#[$doc:meta])* $name:ident -> $reply:ty, $path:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
        pub struct $name;

        impl Endpoint for $name {
            type Reply = $reply;
            const METHOD: Method = Method::Get;
            fn path(&self) -> Cow<'static, str> {
                Cow::Borrowed($path)
            }
            fn has_body(&self) -> bool {
                false
            }
        }
    };
}

body_endpoint!(
    /// `PUT /logger`.
    PutLogger(Logger), Put, "/logger"
);
body_endpoint!(
    /// `PUT /metrics`.
    PutMetrics(Metrics), Put, "/metrics"
);
body_endpoint!(
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfiguration), Put,
    "/machine-config"
);
body_endpoint!(
    /// `PUT /boot-source`.
    PutBootSource(BootSource), Put, "/boot-source"
);
body_endpoint!(
    /// `PUT /drives/{drive_id}`: before boot, or a PCI hot-plug after it.
    PutDrive(Drive), Put,
    |d| format!("/drives/{}", d.drive_id)
);
body_endpoint!(
    /// `PATCH /drives/{drive_id}`: swap a drive's backing file after boot.
    PatchDrive(PartialDrive), Patch,
    |d| format!("/drives/{}", d.drive_id)
);
body_endpoint!(
    /// `PUT /network-interfaces/{iface_id}`: before boot, or a PCI hot-plug.
    PutNetworkInterface(NetworkInterface), Put,
    |n| format!("/network-interfaces/{}", n.iface_id)
);
body_endpoint!(
    /// `PUT /vsock`.
    PutVsock(Vsock), Put, "/vsock"
);
body_endpoint!(
    /// `PUT /entropy`.
    PutEntropy(EntropyDevice), Put, "/entropy"
);
body_endpoint!(
    /// `PUT /serial`.
    PutSerial(SerialConfig), Put, "/serial"
);
body_endpoint!(
    /// `PUT /actions`.
    PutAction(InstanceActionInfo), Put, "/actions"
);
body_endpoint!(
    /// `PATCH /vm`: pause or resume.
    PatchVm(VmStateUpdate), Patch, "/vm"
);
body_endpoint!(
    /// `PUT /snapshot/create`.
    PutSnapshotCreate(SnapshotCreateParams), Put,
    "/snapshot/create"
);
body_endpoint!(
    /// `PUT /snapshot/load`.
    PutSnapshotLoad(SnapshotLoadParams), Put,
    "/snapshot/load"
);
body_endpoint!(
    /// `PUT /hotplug/memory`: configure the virtio-mem region before boot.
    PutMemoryHotplug(MemoryHotplugConfig), Put,
    "/hotplug/memory"
);
body_endpoint!(
    /// `PATCH /hotplug/memory`: ask the guest to plug this much.
    PatchMemoryHotplug(MemoryHotplugSizeUpdate), Patch,
    "/hotplug/memory"
);

get_endpoint!(
    /// `GET /`: the instance's state and version.
    GetInstanceInfo -> InstanceInfo, "/"
);
get_endpoint!(
    /// `GET /version`.
    GetVersion -> FirecrackerVersion, "/version"
);
get_endpoint!(
    /// `GET /vm/config`: the whole configuration.
    GetVmConfig -> FullVmConfiguration, "/vm/config"
);
get_endpoint!(
    /// `GET /machine-config`.
    GetMachineConfig -> MachineConfiguration, "/machine-config"
);
get_endpoint!(
    /// `GET /hotplug/memory`: the virtio-mem region's status.
    GetMemoryHotplug -> MemoryHotplugStatus, "/hotplug/memory"
);

/// `DELETE /drives/{drive_id}`: PCI hot-unplug (`--enable-pci` only; the
/// guest must have removed the device first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteDrive {
    /// The drive.
    #[serde(skip)]
    pub drive_id: String,
}

impl Endpoint for DeleteDrive {
    type Reply = ();
    const METHOD: Method = Method::Delete;
    fn path(&self) -> Cow<'static, str> {
        Cow::Owned(format!("/drives/{}", self.drive_id))
    }
    fn has_body(&self) -> bool {
        false
    }
}

/// `DELETE /network-interfaces/{iface_id}`: PCI hot-unplug.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeleteNetworkInterface {
    /// The interface.
    #[serde(skip)]
    pub iface_id: String,
}

impl Endpoint for DeleteNetworkInterface {
    type Reply = ();
    const METHOD: Method = Method::Delete;
    fn path(&self) -> Cow<'static, str> {
        Cow::Owned(format!("/network-interfaces/{}", self.iface_id))
    }
    fn has_body(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("serialises")
    }

    #[test]
    fn optional_fields_are_left_out() {
        let d = PutDrive(Drive {
            drive_id: "rootfs".into(),
            path_on_host: Some("/img".into()),
            is_root_device: true,
            is_read_only: None,
            cache_type: None,
            io_engine: None,
        });
        assert_eq!(d.path(), "/drives/rootfs");
        assert_eq!(
            json(&d),
            r#"{"drive_id":"rootfs","path_on_host":"/img","is_root_device":true}"#
        );
        assert_eq!(json(&PutEntropy(EntropyDevice {})), "{}");
        assert_eq!(json(&PutSerial(SerialConfig::default())), "{}");
    }

    #[test]
    fn enums_use_firecrackers_names() {
        assert_eq!(
            json(&PutAction(InstanceActionInfo {
                action_type: ActionType::SendCtrlAltDel
            })),
            r#"{"action_type":"SendCtrlAltDel"}"#
        );
        assert_eq!(
            json(&PatchVm(VmStateUpdate {
                state: VmRunState::Paused
            })),
            r#"{"state":"Paused"}"#
        );
        assert_eq!(json(&HugePages::TwoMiB), r#""2M""#);
        let info: InstanceInfo = serde_json::from_str(
            r#"{"id":"x","state":"Not started","vmm_version":"1.17.0-dev","app_name":"Firecracker"}"#,
        )
        .expect("decodes");
        assert_eq!(info.state, InstanceState::NotStarted);
    }

    #[test]
    fn snapshot_load_carries_the_backend_and_vsock_override() {
        let load = PutSnapshotLoad(SnapshotLoadParams {
            snapshot_path: "/vm/snap".into(),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: "/vm/mem".into(),
            },
            resume_vm: true,
            track_dirty_pages: None,
            vsock_override: Some(VsockOverride {
                uds_path: "/new/v.sock".into(),
            }),
            network_overrides: Vec::new(),
        });
        assert_eq!(
            json(&load),
            r#"{"snapshot_path":"/vm/snap","mem_backend":{"backend_type":"File","backend_path":"/vm/mem"},"resume_vm":true,"vsock_override":{"uds_path":"/new/v.sock"}}"#
        );
    }

    #[test]
    fn bodyless_calls_say_so() {
        let del = DeleteDrive {
            drive_id: "hp0".into(),
        };
        assert_eq!(del.path(), "/drives/hp0");
        assert!(!del.has_body());
        assert_eq!(DeleteDrive::METHOD, Method::Delete);
        assert!(!GetInstanceInfo.has_body());
        assert_eq!(GetVmConfig.path(), "/vm/config");
    }

    #[test]
    fn the_vm_config_reply_decodes_with_keys_it_does_not_name() {
        let text = r#"{"balloon":null,"drives":[{"drive_id":"hp0","partuuid":null,"is_root_device":false,"cache_type":"Unsafe","is_read_only":false,"path_on_host":"/d","rate_limiter":null,"io_engine":"Sync","socket":null}],"boot-source":{"kernel_image_path":"/k","initrd_path":null,"boot_args":"console=ttyS0"},"cpu-config":null,"logger":null,"machine-config":{"vcpu_count":1,"smt":false,"mem_size_mib":256,"track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":null,"entropy":null}"#;
        let c: FullVmConfiguration = serde_json::from_str(text).expect("decodes");
        assert_eq!(c.drives.len(), 1);
        assert_eq!(c.drives[0].path_on_host.as_deref(), Some("/d".as_ref()));
        assert_eq!(c.machine_config.map(|m| m.mem_size_mib), Some(256));
    }

    /// Every endpoint, with every optional field set, is what
    /// `shared/specs/firecracker.yaml` describes; the two DELETEs are the
    /// calls the spec leaves out (upstream `docs/device-hotplug.md`).
    use crate::backends::vmm::contract::{check_endpoint, ContractError, Spec};

    fn spec() -> Spec {
        Spec::firecracker().expect("the firecracker spec loads")
    }

    /// Asserts that `ep` keeps to the published spec.
    fn keeps<E: Endpoint>(spec: &Spec, ep: &E) {
        let r = check_endpoint(spec, ep);
        assert!(r.is_ok(), "{}: {:?}", std::any::type_name::<E>(), r);
    }

    /// The requests `vm_config` sends before boot.
    #[test]
    fn pre_boot_requests_keep_to_the_published_spec() {
        let spec = spec();
        let drive = Drive {
            drive_id: "d".into(),
            path_on_host: Some("/d".into()),
            is_root_device: false,
            is_read_only: Some(true),
            cache_type: Some(CacheType::Writeback),
            io_engine: Some(IoEngine::Sync),
        };
        keeps(
            &spec,
            &PutLogger(Logger {
                log_path: "/l".into(),
                level: Some(LogLevel::Warning),
                show_level: Some(true),
                show_log_origin: Some(false),
            }),
        );
        keeps(
            &spec,
            &PutMetrics(Metrics {
                metrics_path: "/m".into(),
            }),
        );
        keeps(
            &spec,
            &PutMachineConfig(MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 256,
                smt: false,
                track_dirty_pages: Some(false),
                huge_pages: Some(HugePages::TwoMiB),
            }),
        );
        keeps(
            &spec,
            &PutBootSource(BootSource {
                kernel_image_path: "/k".into(),
                initrd_path: Some("/i".into()),
                boot_args: Some("console=ttyS0".into()),
            }),
        );
        keeps(&spec, &PutDrive(drive));
        keeps(
            &spec,
            &PutNetworkInterface(NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: "tap0".into(),
                guest_mac: Some("02:00:00:00:00:01".into()),
                mtu: Some(1500),
            }),
        );
        keeps(
            &spec,
            &PutVsock(Vsock {
                guest_cid: 3,
                uds_path: "/v".into(),
            }),
        );
        keeps(&spec, &PutEntropy(EntropyDevice {}));
        keeps(
            &spec,
            &PutSerial(SerialConfig {
                serial_out_path: Some("/s".into()),
            }),
        );
        keeps(
            &spec,
            &PutMemoryHotplug(MemoryHotplugConfig {
                total_size_mib: 1024,
                slot_size_mib: Some(128),
                block_size_mib: Some(2),
            }),
        );
    }

    /// Actions, pause and resume, drive swap and memory resize.
    #[test]
    fn runtime_requests_keep_to_the_published_spec() {
        let spec = spec();
        keeps(
            &spec,
            &PatchDrive(PartialDrive {
                drive_id: "d".into(),
                path_on_host: Some("/e".into()),
            }),
        );
        keeps(
            &spec,
            &PutAction(InstanceActionInfo {
                action_type: ActionType::InstanceStart,
            }),
        );
        keeps(
            &spec,
            &PutAction(InstanceActionInfo {
                action_type: ActionType::SendCtrlAltDel,
            }),
        );
        keeps(
            &spec,
            &PatchVm(VmStateUpdate {
                state: VmRunState::Resumed,
            }),
        );
        keeps(
            &spec,
            &PatchMemoryHotplug(MemoryHotplugSizeUpdate {
                requested_size_mib: 256,
            }),
        );
    }

    /// Snapshot create and load.
    #[test]
    fn snapshot_requests_keep_to_the_published_spec() {
        let spec = spec();
        keeps(
            &spec,
            &PutSnapshotCreate(SnapshotCreateParams {
                snapshot_type: Some(SnapshotType::Full),
                snapshot_path: "/s".into(),
                mem_file_path: "/m".into(),
            }),
        );
        keeps(
            &spec,
            &PutSnapshotLoad(SnapshotLoadParams {
                snapshot_path: "/s".into(),
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: "/m".into(),
                },
                resume_vm: true,
                track_dirty_pages: Some(false),
                vsock_override: Some(VsockOverride {
                    uds_path: "/v".into(),
                }),
                network_overrides: vec![NetworkOverride {
                    iface_id: "eth0".into(),
                    host_dev_name: "tap1".into(),
                }],
            }),
        );
    }

    /// The bodiless `GET`s.
    #[test]
    fn queries_keep_to_the_published_spec() {
        let spec = spec();
        keeps(&spec, &GetInstanceInfo);
        keeps(&spec, &GetVersion);
        keeps(&spec, &GetVmConfig);
        keeps(&spec, &GetMachineConfig);
        keeps(&spec, &GetMemoryHotplug);
    }

    /// The spec has no `DELETE` for drives or network interfaces: the
    /// check says the method is missing.
    #[test]
    fn unplug_deletes_are_not_in_the_published_spec() {
        let spec = spec();
        for r in [
            check_endpoint(
                &spec,
                &DeleteDrive {
                    drive_id: "d".into(),
                },
            ),
            check_endpoint(
                &spec,
                &DeleteNetworkInterface {
                    iface_id: "eth0".into(),
                },
            ),
        ] {
            assert!(matches!(r, Err(ContractError::Method { .. })), "{r:?}");
        }
    }
}
