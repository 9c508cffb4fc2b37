//! A typed, async QMP client.
//!
//! Every command is a serde struct implementing [`Command`], which names
//! the QMP command and the type its `return` decodes into. A reader task
//! owns the read half of the socket: it hands each reply to the caller
//! waiting on its `id`, and each event to every [`Qmp::subscribe`]r.
//! Every call has a timeout; an error reply keeps QEMU's `class` and `desc`.
//!
//! Why not the `qapi`/`qapi-qmp` crates: their types are generated from
//! the newest QEMU schema, not from the 7.2 this project runs, so a field
//! QEMU 7.2 lacks or names differently fails to decode; and the few dozen
//! commands used here are small, stable structs that read better next to
//! the code that sends them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// How long a command waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("cannot connect to QMP socket {path:?}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// QEMU's greeting was missing or malformed.
    #[error("no QMP greeting from {path:?}")]
    Greeting {
        /// The socket.
        path: PathBuf,
        /// What went wrong, when something was read.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// Writing a command failed.
    #[error("cannot send QMP command {command}")]
    Send {
        /// The command.
        command: &'static str,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// QEMU answered with an error.
    #[error("qmp {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: &'static str,
        /// QEMU's error class.
        class: ErrorClass,
        /// QEMU's description.
        desc: String,
    },
    /// No reply in time.
    #[error("qmp {command}: no reply within {timeout:?}")]
    Timeout {
        /// The command.
        command: &'static str,
        /// How long it waited.
        timeout: Duration,
    },
    /// The connection closed before the reply came.
    #[error("qmp {command}: QEMU closed the connection")]
    Disconnected {
        /// The command.
        command: &'static str,
    },
    /// The reply did not decode into the expected type.
    #[error("qmp {command}: unexpected reply")]
    Decode {
        /// The command.
        command: &'static str,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A command's arguments did not encode.
    #[error("qmp {command}: cannot encode the arguments")]
    Encode {
        /// The command.
        command: &'static str,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
}

impl QmpError {
    /// Whether a connect error can pass: the socket does not exist yet, or
    /// nobody listens on it yet, while QEMU starts.
    pub fn is_transient_connect(&self) -> bool {
        match self {
            QmpError::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ),
            _ => false,
        }
    }

    /// QEMU's error class, for an error reply.
    pub fn class(&self) -> Option<&ErrorClass> {
        match self {
            QmpError::Command { class, .. } => Some(class),
            _ => None,
        }
    }
}

/// QEMU's error classes (`qapi/error.json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum ErrorClass {
    /// Most errors.
    GenericError,
    /// The command does not exist.
    CommandNotFound,
    /// The device exists but is not active.
    DeviceNotActive,
    /// The device does not exist.
    DeviceNotFound,
    /// KVM lacks a capability.
    KVMMissingCap,
    /// A class this client does not know.
    #[serde(other)]
    Other,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

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
    /// Where to, such as `exec:cat > file`.
    pub uri: String,
}

impl Command for Migrate {
    const NAME: &'static str = "migrate";
    type Returns = Empty;
}

/// `migrate-incoming`.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateIncoming {
    /// Where from, such as `exec:cat file`.
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

/// A QMP event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The guest paused.
    Stop,
    /// The guest resumed.
    Resume,
    /// The guest or QEMU shut down.
    Shutdown {
        /// Whether the guest asked for it.
        guest: bool,
        /// Why.
        reason: String,
    },
    /// A device finished unplugging.
    DeviceDeleted {
        /// Its id, when it had one.
        device: Option<String>,
        /// Its QOM path.
        path: String,
    },
    /// A migration changed state.
    Migration {
        /// The new status.
        status: String,
    },
    /// The guest kernel panicked.
    GuestPanicked,
    /// Any other event.
    Other {
        /// Its name.
        name: String,
        /// Its data.
        data: Value,
    },
}

impl Event {
    fn decode(name: String, data: Value) -> Event {
        #[derive(Deserialize)]
        struct Shutdown {
            guest: bool,
            reason: String,
        }
        #[derive(Deserialize)]
        struct DeviceDeleted {
            device: Option<String>,
            path: String,
        }
        #[derive(Deserialize)]
        struct Migration {
            status: String,
        }
        let typed = match name.as_str() {
            "STOP" => Some(Event::Stop),
            "RESUME" => Some(Event::Resume),
            "GUEST_PANICKED" => Some(Event::GuestPanicked),
            "SHUTDOWN" => serde_json::from_value::<Shutdown>(data.clone())
                .ok()
                .map(|s| Event::Shutdown {
                    guest: s.guest,
                    reason: s.reason,
                }),
            "DEVICE_DELETED" => serde_json::from_value::<DeviceDeleted>(data.clone())
                .ok()
                .map(|d| Event::DeviceDeleted {
                    device: d.device,
                    path: d.path,
                }),
            "MIGRATION" => serde_json::from_value::<Migration>(data.clone())
                .ok()
                .map(|m| Event::Migration { status: m.status }),
            _ => None,
        };
        typed.unwrap_or(Event::Other { name, data })
    }
}

#[derive(Serialize)]
struct Request<'a, C> {
    execute: &'static str,
    #[serde(skip_serializing_if = "is_empty_object")]
    arguments: &'a C,
    id: u64,
}

fn is_empty_object<C: Serialize>(c: &&C) -> bool {
    matches!(serde_json::to_value(c), Ok(Value::Object(m)) if m.is_empty())
}

#[derive(Debug, Deserialize)]
struct ErrorReply {
    class: ErrorClass,
    desc: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Incoming {
    Return {
        #[serde(rename = "return")]
        ret: Value,
        id: Option<u64>,
    },
    Error {
        error: ErrorReply,
        id: Option<u64>,
    },
    Event {
        event: String,
        #[serde(default)]
        data: Value,
    },
}

#[derive(Deserialize)]
struct Greeting {
    #[serde(rename = "QMP")]
    qmp: GreetingBody,
}

#[derive(Deserialize)]
struct GreetingBody {
    version: VersionInfo,
}

type Reply = Result<Value, ErrorReply>;
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>>;

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    version: VersionTriple,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and leaves
    /// negotiation mode, all within `timeout`.
    ///
    /// # Errors
    /// [`QmpError::Connect`] (see [`QmpError::is_transient_connect`]),
    /// [`QmpError::Greeting`], or the error of `qmp_capabilities`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let connect_err = |source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
            .map_err(connect_err)?;
        let (read, writer) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting_err = |source| QmpError::Greeting {
            path: path.to_path_buf(),
            source,
        };
        let line = tokio::time::timeout(timeout, lines.next_line())
            .await
            .map_err(|_| greeting_err(None))?
            .map_err(|e| QmpError::Connect {
                path: path.to_path_buf(),
                source: e,
            })?
            .ok_or_else(|| greeting_err(None))?;
        let greeting: Greeting = serde_json::from_str(&line).map_err(|e| greeting_err(Some(e)))?;

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (events, _) = broadcast::channel(256);
        let reader = tokio::spawn(read_loop(lines, Arc::clone(&pending), events.clone()));
        let qmp = Qmp {
            path: path.to_path_buf(),
            writer: tokio::sync::Mutex::new(writer),
            pending,
            events,
            next_id: AtomicU64::new(1),
            reader,
            version: greeting.qmp.version.qemu,
        };
        qmp.execute_with(&QmpCapabilities {}, timeout).await?;
        tracing::debug!(path = %path.display(), version = %qmp.version, "QMP connected");
        Ok(qmp)
    }

    /// The QEMU version from the greeting.
    pub fn version(&self) -> VersionTriple {
        self.version
    }

    /// The socket this connection uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the connection is closed (QEMU went away).
    pub fn is_closed(&self) -> bool {
        self.pending.lock().map(|p| p.is_none()).unwrap_or(true)
    }

    /// Receives every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs `cmd` with the default timeout.
    ///
    /// # Errors
    /// See [`Qmp::execute_with`].
    pub async fn execute<C: Command>(&self, cmd: &C) -> Result<C::Returns, QmpError> {
        self.execute_with(cmd, DEFAULT_TIMEOUT).await
    }

    /// Runs `cmd`, waiting at most `timeout` for its reply.
    ///
    /// # Errors
    /// [`QmpError::Command`] for an error reply; [`QmpError::Timeout`],
    /// [`QmpError::Disconnected`], [`QmpError::Send`] or
    /// [`QmpError::Decode`] otherwise.
    pub async fn execute_with<C: Command>(
        &self,
        cmd: &C,
        timeout: Duration,
    ) -> Result<C::Returns, QmpError> {
        let command = C::NAME;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = serde_json::to_vec(&Request {
            execute: command,
            arguments: cmd,
            id,
        })
        .map_err(|source| QmpError::Encode { command, source })?;
        line.push(b'\n');

        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .pending
                .lock()
                .map_err(|_| QmpError::Disconnected { command })?;
            match pending.as_mut() {
                Some(map) => map.insert(id, tx),
                None => return Err(QmpError::Disconnected { command }),
            };
        }
        let forget = || {
            if let Ok(mut p) = self.pending.lock() {
                if let Some(map) = p.as_mut() {
                    map.remove(&id);
                }
            }
        };
        tracing::trace!(command, id, "qmp send");
        let sent = tokio::time::timeout(timeout, async {
            let mut w = self.writer.lock().await;
            w.write_all(&line).await?;
            w.flush().await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                forget();
                return Err(QmpError::Send { command, source });
            }
            Err(_) => {
                forget();
                return Err(QmpError::Timeout { command, timeout });
            }
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(QmpError::Disconnected { command }),
            Err(_) => {
                forget();
                return Err(QmpError::Timeout { command, timeout });
            }
        };
        match reply {
            Ok(value) => {
                serde_json::from_value(value).map_err(|source| QmpError::Decode { command, source })
            }
            Err(e) => Err(QmpError::Command {
                command,
                class: e.class,
                desc: e.desc,
            }),
        }
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: broadcast::Sender<Event>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "QMP read failed");
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let msg: Incoming = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, line, "undecodable QMP message");
                continue;
            }
        };
        let (id, reply) = match msg {
            Incoming::Return { ret, id } => (id, Ok(ret)),
            Incoming::Error { error, id } => (id, Err(error)),
            Incoming::Event { event, data } => {
                tracing::debug!(event, "qmp event");
                // Nobody listening is fine.
                let _ = events.send(Event::decode(event, data));
                continue;
            }
        };
        let Some(id) = id else {
            tracing::warn!("QMP reply without id");
            continue;
        };
        let waiter = pending
            .lock()
            .ok()
            .and_then(|mut p| p.as_mut().and_then(|m| m.remove(&id)));
        if let Some(tx) = waiter {
            // The caller may have timed out and gone.
            let _ = tx.send(reply);
        }
    }
    // Closing: fail every waiting call, refuse new ones.
    if let Ok(mut p) = pending.lock() {
        p.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode_as_qmp_expects() {
        let line = serde_json::to_value(Request {
            execute: DeviceAdd::NAME,
            arguments: &DeviceAdd {
                driver: "max-x86_64-cpu".into(),
                id: "cpu-0".into(),
                bus: None,
                addr: None,
                props: DeviceProps::Cpu(CpuInstanceProperties {
                    node_id: None,
                    socket_id: Some(1),
                    die_id: Some(0),
                    core_id: Some(0),
                    thread_id: Some(0),
                }),
            },
            id: 7,
        })
        .expect("encodes");
        assert_eq!(
            line,
            serde_json::json!({"execute": "device_add", "id": 7, "arguments": {
                "driver": "max-x86_64-cpu", "id": "cpu-0",
                "socket-id": 1, "die-id": 0, "core-id": 0, "thread-id": 0}})
        );
        let line = serde_json::to_value(Request {
            execute: Stop::NAME,
            arguments: &Stop {},
            id: 1,
        })
        .expect("encodes");
        assert_eq!(line, serde_json::json!({"execute": "stop", "id": 1}));
    }

    #[test]
    fn replies_and_events_decode() {
        let m: Incoming = serde_json::from_str(
            r#"{"error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}, "id": 3}"#,
        )
        .expect("decodes");
        assert!(
            matches!(m, Incoming::Error { error, id: Some(3) } if error.class == ErrorClass::DeviceNotFound)
        );
        let m: Incoming =
            serde_json::from_str(r#"{"error": {"class": "SomethingNew", "desc": "d"}, "id": 4}"#)
                .expect("decodes");
        assert!(matches!(m, Incoming::Error { error, .. } if error.class == ErrorClass::Other));
        let m: Incoming = serde_json::from_str(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"device": "virtio-d", "path": "/machine/peripheral/virtio-d"}}"#,
        )
        .expect("decodes");
        let Incoming::Event { event, data } = m else {
            panic!("not an event")
        };
        assert_eq!(
            Event::decode(event, data),
            Event::DeviceDeleted {
                device: Some("virtio-d".into()),
                path: "/machine/peripheral/virtio-d".into()
            }
        );
    }
}
