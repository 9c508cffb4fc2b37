//! The QMP commands this client sends and the replies they decode into:
//! one serde struct per command, implementing [`Command`].

use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A QMP command: its name, and what its `return` decodes into.
pub trait Command: Serialize {
    /// The QMP command name.
    const NAME: &'static str;
    /// The decoded `return`.
    type Returns: DeserializeOwned;
}

/// An empty `return`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Empty {}

macro_rules! unit_command {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $ret:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, Serialize)]
        pub struct $ty {}
        impl Command for $ty {
            const NAME: &'static str = $name;
            type Returns = $ret;
        }
    };
}

unit_command!(
    /// `qmp_capabilities`: leave negotiation mode.
    QmpCapabilities, "qmp_capabilities", Empty
);
unit_command!(
    /// `stop`: pause the guest.
    Stop, "stop", Empty
);
unit_command!(
    /// `cont`: resume the guest.
    Cont, "cont", Empty
);
unit_command!(
    /// `quit`: exit QEMU.
    Quit, "quit", Empty
);
unit_command!(
    /// `query-status`.
    QueryStatus, "query-status", StatusInfo
);
unit_command!(
    /// `query-hotpluggable-cpus`.
    QueryHotpluggableCpus, "query-hotpluggable-cpus", Vec<HotpluggableCpu>
);
unit_command!(
    /// `query-cpus-fast`.
    QueryCpusFast, "query-cpus-fast", Vec<CpuInfoFast>
);
unit_command!(
    /// `query-memory-devices`.
    QueryMemoryDevices, "query-memory-devices", Vec<MemoryDeviceInfo>
);
unit_command!(
    /// `query-migrate`.
    QueryMigrate, "query-migrate", MigrationInfo
);
unit_command!(
    /// `query-version`.
    QueryVersion, "query-version", VersionInfo
);

/// `query-status`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the guest runs.
    pub running: bool,
    /// The run state: `running`, `paused`, `inmigrate`, `postmigrate`,
    /// `internal-error`, `guest-panicked`, `shutdown`, ...
    pub status: String,
}

/// One entry of `query-hotpluggable-cpus`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HotpluggableCpu {
    /// The CPU type for `device_add`, such as `max-x86_64-cpu`.
    #[serde(rename = "type")]
    pub driver: String,
    /// Where the CPU sits.
    pub props: CpuInstanceProperties,
    /// Set when a CPU occupies the slot.
    #[serde(rename = "qom-path")]
    pub qom_path: Option<String>,
}

/// Where a CPU sits in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpuInstanceProperties {
    /// NUMA node.
    #[serde(rename = "node-id", skip_serializing_if = "Option::is_none")]
    pub node_id: Option<i64>,
    /// Socket.
    #[serde(rename = "socket-id", skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<i64>,
    /// Die.
    #[serde(rename = "die-id", skip_serializing_if = "Option::is_none")]
    pub die_id: Option<i64>,
    /// Core.
    #[serde(rename = "core-id", skip_serializing_if = "Option::is_none")]
    pub core_id: Option<i64>,
    /// Thread.
    #[serde(rename = "thread-id", skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<i64>,
}

/// One entry of `query-cpus-fast`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CpuInfoFast {
    /// The vCPU index.
    #[serde(rename = "cpu-index")]
    pub cpu_index: u32,
    /// Its host thread id.
    #[serde(rename = "thread-id")]
    pub thread_id: u32,
    /// Its QOM path.
    #[serde(rename = "qom-path")]
    pub qom_path: String,
}

/// One entry of `query-memory-devices`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemoryDeviceInfo {
    /// `dimm`, `nvdimm`, `virtio-mem`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Its details.
    pub data: MemoryDeviceData,
}

/// The details of a memory device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemoryDeviceData {
    /// The device id.
    pub id: Option<String>,
    /// Guest physical address (DIMMs).
    pub addr: Option<u64>,
    /// Size in bytes (DIMMs).
    pub size: Option<u64>,
    /// Memory slot (DIMMs).
    pub slot: Option<u32>,
    /// The backend.
    pub memdev: Option<String>,
}

/// `query-migrate`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MigrationInfo {
    /// `setup`, `active`, `completed`, `failed`, `cancelled`, ...; absent
    /// before any migration.
    pub status: Option<String>,
    /// Why it failed.
    #[serde(rename = "error-desc")]
    pub error_desc: Option<String>,
}

/// `query-version`'s reply and the greeting's version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VersionInfo {
    /// The numbers.
    pub qemu: VersionTriple,
    /// The distribution's package version.
    #[serde(default)]
    pub package: String,
}

/// A QEMU version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct VersionTriple {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl fmt::Display for VersionTriple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// `device_add`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceAdd {
    /// The device type.
    pub driver: String,
    /// The device id.
    pub id: String,
    /// The bus, such as a bridge id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// The slot on the bus, such as `0x01`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Properties of the device type.
    #[serde(flatten)]
    pub props: DeviceProps,
}

impl Command for DeviceAdd {
    const NAME: &'static str = "device_add";
    type Returns = Empty;
}

/// Properties of the device types that sandvisor hot-plugs.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum DeviceProps {
    /// A vCPU.
    Cpu(CpuInstanceProperties),
    /// `virtio-blk-pci`.
    VirtioBlk {
        /// The block node.
        drive: String,
    },
    /// `scsi-hd`.
    ScsiHd {
        /// The block node.
        drive: String,
        /// SCSI target.
        #[serde(rename = "scsi-id")]
        scsi_id: u32,
        /// LUN.
        lun: u32,
    },
    /// `pc-dimm` and `nvdimm`.
    Memdev {
        /// The memory backend.
        memdev: String,
    },
    /// `virtio-net-pci`.
    VirtioNet {
        /// The netdev.
        netdev: String,
        /// Guest MAC.
        mac: String,
    },
    /// `virtio-net-pci` with several queues.
    VirtioNetMq {
        /// The netdev.
        netdev: String,
        /// Guest MAC.
        mac: String,
        /// Multi-queue.
        mq: bool,
        /// MSI-X vectors.
        vectors: u32,
    },
    /// `vfio-pci` by host address.
    VfioHost {
        /// `DDDD:BB:DD.F`.
        host: String,
    },
    /// `vfio-pci` by sysfs path (mediated devices).
    VfioSysfs {
        /// The sysfs path.
        sysfsdev: String,
    },
    /// `vhost-user-blk-pci`.
    VhostUserBlk {
        /// The chardev.
        chardev: String,
    },
}

/// `device_del`.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDel {
    /// The device id.
    pub id: String,
}

impl Command for DeviceDel {
    const NAME: &'static str = "device_del";
    type Returns = Empty;
}

/// `blockdev-add` of a raw or qcow2 node over a file or host device.
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevAdd {
    /// The format driver: `raw`, `qcow2`.
    pub driver: String,
    /// The node name.
    #[serde(rename = "node-name")]
    pub node_name: String,
    /// Read-only.
    #[serde(rename = "read-only")]
    pub read_only: bool,
    /// Cache options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<BlockdevCache>,
    /// The protocol node.
    pub file: BlockdevFile,
}

impl Command for BlockdevAdd {
    const NAME: &'static str = "blockdev-add";
    type Returns = Empty;
}

/// `cache` of `blockdev-add`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BlockdevCache {
    /// O_DIRECT.
    pub direct: bool,
    /// Ignore flushes.
    #[serde(rename = "no-flush")]
    pub no_flush: bool,
}

/// The protocol layer of a block node.
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevFile {
    /// `file` or `host_device`.
    pub driver: &'static str,
    /// The path.
    pub filename: PathBuf,
    /// `threads`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aio: Option<&'static str>,
}

/// `blockdev-del`.
#[derive(Debug, Clone, Serialize)]
pub struct BlockdevDel {
    /// The node name.
    #[serde(rename = "node-name")]
    pub node_name: String,
}

impl Command for BlockdevDel {
    const NAME: &'static str = "blockdev-del";
    type Returns = Empty;
}

/// `object-add` of a memory backend.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectAdd {
    /// `memory-backend-ram`, `-file` or `-memfd`.
    #[serde(rename = "qom-type")]
    pub qom_type: &'static str,
    /// The object id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// The file or directory, for `memory-backend-file`.
    #[serde(rename = "mem-path", skip_serializing_if = "Option::is_none")]
    pub mem_path: Option<PathBuf>,
    /// Map shared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<bool>,
    /// Preallocate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prealloc: Option<bool>,
}

impl Command for ObjectAdd {
    const NAME: &'static str = "object-add";
    type Returns = Empty;
}

/// `object-del`.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectDel {
    /// The object id.
    pub id: String,
}

impl Command for ObjectDel {
    const NAME: &'static str = "object-del";
    type Returns = Empty;
}

/// `netdev_add` of a tap device opened by name.
#[derive(Debug, Clone, Serialize)]
pub struct NetdevAddTap {
    /// Always `tap`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The netdev id.
    pub id: String,
    /// The host tap interface.
    pub ifname: String,
    /// `no`: QEMU runs no script.
    pub script: &'static str,
    /// `no`.
    pub downscript: &'static str,
    /// Use vhost-net.
    pub vhost: bool,
    /// Queue pairs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<u32>,
}

impl Command for NetdevAddTap {
    const NAME: &'static str = "netdev_add";
    type Returns = Empty;
}

/// `netdev_del`.
#[derive(Debug, Clone, Serialize)]
pub struct NetdevDel {
    /// The netdev id.
    pub id: String,
}

impl Command for NetdevDel {
    const NAME: &'static str = "netdev_del";
    type Returns = Empty;
}

/// `chardev-add` of a unix socket client.
#[derive(Debug, Clone, Serialize)]
pub struct ChardevAdd {
    /// The chardev id.
    pub id: String,
    /// The backend.
    pub backend: ChardevBackend,
}

impl Command for ChardevAdd {
    const NAME: &'static str = "chardev-add";
    type Returns = Value;
}

/// A `socket` chardev backend.
#[derive(Debug, Clone, Serialize)]
pub struct ChardevBackend {
    /// Always `socket`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The socket.
    pub data: ChardevSocket,
}

/// A unix socket chardev.
#[derive(Debug, Clone, Serialize)]
pub struct ChardevSocket {
    /// The address.
    pub addr: SocketAddress,
    /// Listen instead of connect.
    pub server: bool,
}

/// A unix socket address.
#[derive(Debug, Clone, Serialize)]
pub struct SocketAddress {
    /// Always `unix`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The path.
    pub data: UnixSocketAddress,
}

/// The path of a unix socket.
#[derive(Debug, Clone, Serialize)]
pub struct UnixSocketAddress {
    /// The path.
    pub path: PathBuf,
}

/// `chardev-remove`.
#[derive(Debug, Clone, Serialize)]
pub struct ChardevRemove {
    /// The chardev id.
    pub id: String,
}

impl Command for ChardevRemove {
    const NAME: &'static str = "chardev-remove";
    type Returns = Empty;
}

/// `migrate-set-capabilities`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateSetCapabilities {
    /// The capabilities to set.
    pub capabilities: Vec<MigrationCapability>,
}

impl Command for MigrateSetCapabilities {
    const NAME: &'static str = "migrate-set-capabilities";
    type Returns = Empty;
}

/// One migration capability.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationCapability {
    /// Its name, such as `x-ignore-shared`.
    pub capability: &'static str,
    /// On or off.
    pub state: bool,
}

/// `migrate`.
#[derive(Debug, Clone, Serialize)]
pub struct Migrate {
    /// Where to, such as `fd:<name>` for a descriptor `getfd` named.
    pub uri: String,
}

impl Command for Migrate {
    const NAME: &'static str = "migrate";
    type Returns = Empty;
}

/// `getfd`: names the descriptor passed with this command (SCM_RIGHTS),
/// for a later `fd:<fdname>` migration URI.
#[derive(Debug, Clone, Serialize)]
pub struct GetFd {
    /// The name to give it.
    pub fdname: String,
}

impl Command for GetFd {
    const NAME: &'static str = "getfd";
    type Returns = Empty;
}

/// `closefd`: closes a descriptor `getfd` named and nothing took.
#[derive(Debug, Clone, Serialize)]
pub struct CloseFd {
    /// Its name.
    pub fdname: String,
}

impl Command for CloseFd {
    const NAME: &'static str = "closefd";
    type Returns = Empty;
}

/// `add-fd`: puts the descriptor passed with this command (SCM_RIGHTS)
/// in a new fd set, which a file name `/dev/fdset/<id>` then opens, so
/// that QEMU never opens the path itself (a rootless QEMU could not).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AddFd {
    /// A note QEMU keeps with the descriptor, such as the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opaque: Option<String>,
}

/// The reply of [`AddFd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AddFdInfo {
    /// The set the descriptor went into.
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
    /// The descriptor's number in QEMU.
    pub fd: i64,
}

impl Command for AddFd {
    const NAME: &'static str = "add-fd";
    type Returns = AddFdInfo;
}

/// `remove-fd`: drops an fd set; QEMU closes its descriptors once nothing
/// that opened them holds them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RemoveFd {
    /// The set.
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
}

impl Command for RemoveFd {
    const NAME: &'static str = "remove-fd";
    type Returns = Empty;
}

/// `migrate-incoming`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateIncoming {
    /// Where from, such as `fd:<name>` for a descriptor `getfd` named.
    pub uri: String,
}

impl Command for MigrateIncoming {
    const NAME: &'static str = "migrate-incoming";
    type Returns = Empty;
}

/// `qom-set` of an integer property.
#[derive(Debug, Clone, Serialize)]
pub struct QomSet {
    /// The object path.
    pub path: String,
    /// The property.
    pub property: &'static str,
    /// The value.
    pub value: u64,
}

impl Command for QomSet {
    const NAME: &'static str = "qom-set";
    type Returns = Empty;
}
