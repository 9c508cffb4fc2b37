//! Cloud Hypervisor's REST API (`/api/v1/…` on `--api-socket`): typed
//! bodies and replies, and one [`Endpoint`] per call.
//!
//! The types carry the fields sandvisor sets or reads, under CH's names
//! (`../shared/specs/cloud-hypervisor.yaml`). Request bodies leave out what
//! is unset, so CH's defaults apply; replies ignore fields they do not
//! name, because CH's `vm.info` echoes every field of its own config.
//!
//! | endpoint | call | body | reply |
//! |---|---|---|---|
//! | [`VmmPing`] | `GET vmm.ping` | | [`VmmPingResponse`] |
//! | [`VmmShutdown`] | `PUT vmm.shutdown` | | |
//! | [`VmCreate`] | `PUT vm.create` | [`VmConfig`] | |
//! | [`VmBoot`] | `PUT vm.boot` | | |
//! | [`VmInfoGet`] | `GET vm.info` | | [`VmInfo`] |
//! | [`VmShutdown`] | `PUT vm.shutdown` | | |
//! | [`VmDelete`] | `PUT vm.delete` | | |
//! | [`VmPause`] | `PUT vm.pause` | | |
//! | [`VmResume`] | `PUT vm.resume` | | |
//! | [`VmSnapshot`] | `PUT vm.snapshot` | [`VmSnapshotConfig`] | |
//! | [`VmRestore`] | `PUT vm.restore` | [`RestoreConfig`] | |
//! | [`VmResizePut`] | `PUT vm.resize` | [`VmResize`] | |
//! | [`VmAddDisk`] | `PUT vm.add-disk` | [`DiskConfig`] | [`PciDeviceInfo`] |
//! | [`VmAddNet`] | `PUT vm.add-net` | [`NetConfig`] (tap fds over the socket) | [`PciDeviceInfo`] |
//! | [`VmAddFs`] | `PUT vm.add-fs` | [`FsConfig`] | [`PciDeviceInfo`] |
//! | [`VmAddDevice`] | `PUT vm.add-device` | [`DeviceConfig`] | [`PciDeviceInfo`] |
//! | [`VmRemoveDevicePut`] | `PUT vm.remove-device` | [`VmRemoveDevice`] | |

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backends::vmm::rest::{Endpoint, Method};

/// The prefix of every path of the API.
pub const API_PREFIX: &str = "/api/v1";

fn is_false(b: &bool) -> bool {
    !*b
}

/// The whole VM: the body of `vm.create`, and what `vm.info` reports.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmConfig {
    /// vCPUs.
    pub cpus: CpusConfig,
    /// Guest memory.
    pub memory: MemoryConfig,
    /// What to boot.
    pub payload: PayloadConfig,
    /// Block devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// Network devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// The entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    /// virtio-fs devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
    /// virtio-pmem devices (the guest image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pmem: Vec<PmemConfig>,
    /// The legacy serial port (COM1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<ConsoleConfig>,
    /// The virtio console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
    /// VFIO devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConfig>,
    /// The vsock device, bridged to a host unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// Give the VM a virtual IOMMU.
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
}

/// vCPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpusConfig {
    /// vCPUs at boot.
    pub boot_vcpus: u32,
    /// The most vCPUs `vm.resize` may give.
    pub max_vcpus: u32,
}

/// How memory is hot-plugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HotplugMethod {
    /// ACPI memory hot-plug, in 128 MiB steps; never taken back.
    #[default]
    Acpi,
    /// A virtio-mem device, in 2 MiB blocks; can shrink.
    VirtioMem,
}

/// Guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Boot memory, in bytes.
    pub size: u64,
    /// Room for hot-plugged memory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
    /// Memory hot-plugged so far through virtio-mem, in bytes (a reply
    /// field; ACPI hot-plug grows `size` instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplugged_size: Option<u64>,
    /// How memory is hot-plugged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_method: Option<HotplugMethod>,
    /// Map guest memory shared, so vhost-user daemons (virtiofsd) and
    /// templates can see it.
    #[serde(default)]
    pub shared: bool,
    /// Back guest memory with huge pages.
    #[serde(default)]
    pub hugepages: bool,
    /// Fault all guest memory in at start.
    #[serde(default, skip_serializing_if = "is_false")]
    pub prefault: bool,
    /// Memory zones, when guest memory is made of them (`size` is then 0):
    /// a template's memory is one zone backed by a file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<MemoryZoneConfig>,
}

/// One zone of guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryZoneConfig {
    /// The zone's id.
    pub id: String,
    /// Its size, in bytes.
    pub size: u64,
    /// The file backing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Map the file shared (writes reach it) rather than private (copy
    /// on write).
    #[serde(default)]
    pub shared: bool,
    /// Room for virtio-mem hot-plug in this zone, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotplug_size: Option<u64>,
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PayloadConfig {
    /// Firmware, when the kernel is not booted directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    /// The kernel: an ELF with a PVH entry, or a bzImage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
}

/// The format of a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    /// A fixed VHD.
    FixedVhd,
    /// qcow2.
    Qcow2,
    /// A raw image or block device.
    Raw,
    /// VHDX.
    Vhdx,
    /// Left to CH to detect (deprecated there).
    Unknown,
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The host file or device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
    /// Open with `O_DIRECT`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct: bool,
    /// Behind the virtual IOMMU.
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// Queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u32>,
    /// A vhost-user-blk device.
    #[serde(default, skip_serializing_if = "is_false")]
    pub vhost_user: bool,
    /// The vhost-user daemon's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<PathBuf>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The image format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<ImageType>,
}

/// A network device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetConfig {
    /// The host tap interface, when CH opens it by name (not when its
    /// descriptors are passed over the socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// Guest MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Queues: two per queue pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u32>,
    /// Behind the virtual IOMMU.
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// A vhost-user-net device.
    #[serde(default, skip_serializing_if = "is_false")]
    pub vhost_user: bool,
    /// The vhost-user daemon's socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<PathBuf>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The entropy device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RngConfig {
    /// The host entropy source.
    pub src: PathBuf,
    /// Behind the virtual IOMMU.
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
}

/// A virtio-fs device, served by a vhost-user daemon.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FsConfig {
    /// The tag the guest mounts by.
    pub tag: String,
    /// The daemon's vhost-user socket.
    pub socket: PathBuf,
    /// Request queues.
    pub num_queues: u32,
    /// Queue size.
    pub queue_size: u32,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A virtio-pmem device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PmemConfig {
    /// The backing file.
    pub file: PathBuf,
    /// Its size in bytes; the file's when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Behind the virtual IOMMU.
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// Keep guest writes out of the file.
    #[serde(default, skip_serializing_if = "is_false")]
    pub discard_writes: bool,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// Where a serial port or console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ConsoleMode {
    /// No device.
    #[default]
    Off,
    /// A pseudo-terminal.
    Pty,
    /// CH's own terminal.
    Tty,
    /// Appended to a file.
    File,
    /// A unix socket CH listens on.
    Socket,
    /// Discarded.
    Null,
}

/// A serial port or virtio console.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// Where the output goes.
    pub mode: ConsoleMode,
    /// The file, in [`ConsoleMode::File`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The socket, in [`ConsoleMode::Socket`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl ConsoleConfig {
    /// No device.
    pub fn off() -> Self {
        ConsoleConfig::default()
    }

    /// A unix socket CH listens on.
    pub fn socket(path: impl Into<PathBuf>) -> Self {
        ConsoleConfig {
            mode: ConsoleMode::Socket,
            file: None,
            socket: Some(path.into()),
        }
    }
}

/// A VFIO device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Its sysfs path, `/sys/bus/pci/devices/<bdf>`.
    pub path: PathBuf,
    /// Behind the virtual IOMMU.
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The vsock device: guest vsock bridged to a host unix socket (a hybrid
/// vsock: the host connects and writes `CONNECT <port>`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VsockConfig {
    /// Guest context id, at least 3.
    pub cid: u64,
    /// The host unix socket.
    pub socket: PathBuf,
    /// Behind the virtual IOMMU.
    #[serde(default, skip_serializing_if = "is_false")]
    pub iommu: bool,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The state of a VM, as `vm.info` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// Created, not booted.
    Created,
    /// Running.
    Running,
    /// Shut down (the VMM still runs).
    Shutdown,
    /// Paused.
    Paused,
    /// Stopped at a debugger breakpoint.
    BreakPoint,
}

/// A node of `vm.info`'s device tree.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Its id.
    #[serde(default)]
    pub id: Option<String>,
    /// The node above it.
    #[serde(default)]
    pub parent: Option<String>,
    /// The nodes below it.
    #[serde(default)]
    pub children: Vec<String>,
    /// Its PCI address, `SSSS:BB:DD.F`.
    #[serde(default)]
    pub pci_bdf: Option<String>,
}

/// The reply of `vm.info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's config as it is now (hot-plugged devices and resizes
    /// included).
    pub config: VmConfig,
    /// Its state.
    pub state: VmRunState,
    /// The memory the guest has, in bytes.
    #[serde(default)]
    pub memory_actual_size: Option<u64>,
    /// The devices, by id.
    #[serde(default)]
    pub device_tree: BTreeMap<String, DeviceNode>,
}

impl VmInfo {
    /// The memory the VM has been given, in bytes: boot memory plus what
    /// virtio-mem added (ACPI hot-plug grows the boot size itself).
    pub fn memory_bytes(&self) -> u64 {
        self.config.memory.size + self.config.memory.hotplugged_size.unwrap_or(0)
    }
}

/// A hot-plugged device and where it sits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    /// Its id.
    pub id: String,
    /// Its guest PCI address, `SSSS:BB:DD.F`.
    pub bdf: String,
}

impl PciDeviceInfo {
    /// The guest PCI path in Kata's `bus/slot` form (`00/02` for
    /// `0000:00:02.0`); `None` when the address does not parse.
    pub fn pci_path(&self) -> Option<String> {
        let mut parts = self.bdf.split(':');
        let (_segment, bus, devfn) = (parts.next()?, parts.next()?, parts.next()?);
        let slot = devfn.split('.').next()?;
        let ok = |s: &str, n| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
        if !ok(bus, 2) || !ok(slot, 2) || parts.next().is_some() {
            return None;
        }
        Some(format!("{bus}/{slot}"))
    }
}

/// The body of `vm.resize`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmResize {
    /// vCPUs wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u32>,
    /// Memory wanted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_ram: Option<u64>,
    /// Balloon size wanted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_balloon: Option<u64>,
}

/// The body of `vm.remove-device`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmRemoveDevice {
    /// The device's id.
    pub id: String,
}

/// The body of `vm.snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmSnapshotConfig {
    /// Where to write, `file:///<dir>`.
    pub destination_url: String,
}

/// The body of `vm.restore`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestoreConfig {
    /// Where to read, `file:///<dir>`.
    pub source_url: String,
    /// Fault the restored memory in at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefault: Option<bool>,
    /// Resume the VM once restored (else it stays paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
}

/// The reply of `vmm.ping`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmmPingResponse {
    /// The build's version, such as `v54.0.0`.
    #[serde(default)]
    pub build_version: Option<String>,
    /// The version, such as `54.0.0`.
    pub version: String,
    /// The VMM's pid.
    #[serde(default)]
    pub pid: Option<i64>,
    /// Compiled-in features, such as `kvm`.
    #[serde(default)]
    pub features: Vec<String>,
}

/// `file://` URL of a directory, as `vm.snapshot` and `vm.restore` take.
pub fn file_url(dir: &std::path::Path) -> String {
    format!("file://{}", dir.display())
}

macro_rules! endpoint {
    (
        $(#[$doc:meta])*
        $name:ident, $method:ident, $path:literal, no body, $reply:ty
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
        pub struct $name;

        impl Endpoint for $name {
            type Reply = $reply;
            const METHOD: Method = Method::$method;
            fn path(&self) -> Cow<'static, str> {
                Cow::Borrowed(concat!("/api/v1/", $path))
            }
            fn has_body(&self) -> bool {
                false
            }
        }
    };
    (
        $(#[$doc:meta])*
        $name:ident, $method:ident, $path:literal, $body:ty, $reply:ty
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub $body);

        impl Endpoint for $name {
            type Reply = $reply;
            const METHOD: Method = Method::$method;
            fn path(&self) -> Cow<'static, str> {
                Cow::Borrowed(concat!("/api/v1/", $path))
            }
        }
    };
}

endpoint!(
    /// `GET vmm.ping`: the VMM answers, with its version.
    VmmPing, Get, "vmm.ping", no body, VmmPingResponse
);
endpoint!(
    /// `PUT vmm.shutdown`: the VMM exits.
    VmmShutdown, Put, "vmm.shutdown", no body, ()
);
endpoint!(
    /// `PUT vm.create`: configure the VM, without booting it.
    VmCreate, Put, "vm.create", VmConfig, ()
);
endpoint!(
    /// `PUT vm.boot`: boot the created VM.
    VmBoot, Put, "vm.boot", no body, ()
);
endpoint!(
    /// `GET vm.info`: the VM's config and state.
    VmInfoGet, Get, "vm.info", no body, VmInfo
);
endpoint!(
    /// `PUT vm.shutdown`: stop the guest; the VMM stays.
    VmShutdown, Put, "vm.shutdown", no body, ()
);
endpoint!(
    /// `PUT vm.delete`: forget the VM.
    VmDelete, Put, "vm.delete", no body, ()
);
endpoint!(
    /// `PUT vm.pause`: stop the vCPUs.
    VmPause, Put, "vm.pause", no body, ()
);
endpoint!(
    /// `PUT vm.resume`: restart the vCPUs.
    VmResume, Put, "vm.resume", no body, ()
);
endpoint!(
    /// `PUT vm.snapshot`: write the paused VM to a directory.
    VmSnapshot, Put, "vm.snapshot", VmSnapshotConfig, ()
);
endpoint!(
    /// `PUT vm.restore`: make the VM from a snapshot, in a VMM with none.
    VmRestore, Put, "vm.restore", RestoreConfig, ()
);
endpoint!(
    /// `PUT vm.resize`: change vCPUs or memory.
    VmResizePut, Put, "vm.resize", VmResize, ()
);
endpoint!(
    /// `PUT vm.add-disk`: hot-plug a block device.
    VmAddDisk, Put, "vm.add-disk", DiskConfig, PciDeviceInfo
);
endpoint!(
    /// `PUT vm.add-net`: hot-plug a network device; tap descriptors go
    /// over the socket with the request.
    VmAddNet, Put, "vm.add-net", NetConfig, PciDeviceInfo
);
endpoint!(
    /// `PUT vm.add-fs`: hot-plug a virtio-fs device.
    VmAddFs, Put, "vm.add-fs", FsConfig, PciDeviceInfo
);
endpoint!(
    /// `PUT vm.add-device`: hot-plug a VFIO device.
    VmAddDevice, Put, "vm.add-device", DeviceConfig, PciDeviceInfo
);
endpoint!(
    /// `PUT vm.remove-device`: hot-unplug a device by id.
    VmRemoveDevicePut, Put, "vm.remove-device", VmRemoveDevice, ()
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods() {
        fn pm<E: Endpoint>(e: &E) -> (Method, String, bool) {
            (E::METHOD, e.path().into_owned(), e.has_body())
        }
        assert_eq!(
            pm(&VmmPing),
            (Method::Get, "/api/v1/vmm.ping".into(), false)
        );
        assert_eq!(
            pm(&VmInfoGet),
            (Method::Get, "/api/v1/vm.info".into(), false)
        );
        assert_eq!(
            pm(&VmCreate(VmConfig::default())),
            (Method::Put, "/api/v1/vm.create".into(), true)
        );
        assert_eq!(
            pm(&VmRemoveDevicePut(VmRemoveDevice::default())),
            (Method::Put, "/api/v1/vm.remove-device".into(), true)
        );
        assert!(VmPause.path().starts_with(API_PREFIX));
    }

    #[test]
    fn bodies_are_their_payload() {
        let body = serde_json::to_string(&VmResizePut(VmResize {
            desired_vcpus: Some(2),
            ..VmResize::default()
        }))
        .expect("serialises");
        assert_eq!(body, r#"{"desired_vcpus":2}"#);
        let body = serde_json::to_string(&VmRemoveDevicePut(VmRemoveDevice {
            id: "clh_drive_1".into(),
        }))
        .expect("serialises");
        assert_eq!(body, r#"{"id":"clh_drive_1"}"#);
    }

    /// What CH v54 answered to `vm.info` here, trimmed: fields sandvisor
    /// does not name are ignored.
    const VM_INFO: &str = r#"{"config":{"cpus":{"boot_vcpus":2,"max_vcpus":2,"kvm_hyperv":false,
        "max_phys_bits":46,"features":{"amx":false},"nested":true,"core_scheduling":"Vm","profile":"Host"},
        "memory":{"size":268435456,"mergeable":false,"hotplug_method":"VirtioMem","hotplug_size":1073741824,
        "hotplugged_size":268435456,"shared":true,"hugepages":false,"prefault":false,"reserve":false,"thp":true},
        "payload":{"kernel":"/tmp/k","cmdline":"console=ttyS0"},
        "disks":[{"id":"clh_drive_1","pci_segment":0,"path":"/tmp/d.img","readonly":false,"direct":false,
        "num_queues":1,"queue_size":128,"vhost_user":false,"disable_io_uring":false,"disable_aio":false,
        "backing_files":false,"sparse":true,"image_type":"Raw","lock_granularity":"ByteRange"}],
        "rng":{"pci_segment":0,"src":"/dev/urandom"},"serial":{"mode":"Socket","socket":"/tmp/s.sock"},
        "console":{"mode":"Off","pci_segment":0},"debug_console":{"mode":"Off","iobase":233},
        "vsock":{"id":"_vsock0","pci_segment":0,"cid":3,"socket":"/tmp/clh.sock"},
        "pvpanic":false,"iommu":false,"watchdog":false,"landlock_enable":false},
        "state":"Running","memory_actual_size":268435456,
        "device_tree":{"_virtio-pci-clh_drive_1":{"id":"_virtio-pci-clh_drive_1","resources":[{"PciBar":
        {"index":0,"base":70368735789056,"size":524288,"type_":"Mmio64","prefetchable":false}}],
        "children":["clh_drive_1"],"pci_bdf":"0000:00:03.0"},
        "clh_drive_1":{"id":"clh_drive_1","resources":[],"parent":"_virtio-pci-clh_drive_1","children":[]}}}"#;

    #[test]
    fn vm_info_decodes_what_ch_answers() {
        let info: VmInfo = serde_json::from_str(VM_INFO).expect("decodes");
        assert_eq!(info.state, VmRunState::Running);
        assert_eq!(info.config.cpus.boot_vcpus, 2);
        assert_eq!(
            info.config.memory.hotplug_method,
            Some(HotplugMethod::VirtioMem)
        );
        assert_eq!(info.memory_bytes(), 512 << 20);
        assert_eq!(info.config.disks[0].id.as_deref(), Some("clh_drive_1"));
        assert_eq!(info.config.disks[0].image_type, Some(ImageType::Raw));
        assert_eq!(
            info.config.serial,
            Some(ConsoleConfig::socket("/tmp/s.sock"))
        );
        assert_eq!(
            info.device_tree["_virtio-pci-clh_drive_1"]
                .pci_bdf
                .as_deref(),
            Some("0000:00:03.0")
        );
        assert_eq!(
            info.device_tree["clh_drive_1"].parent.as_deref(),
            Some("_virtio-pci-clh_drive_1")
        );
    }

    #[test]
    fn ping_decodes() {
        let r: VmmPingResponse = serde_json::from_str(
            r#"{"build_version":"v54.0.0","version":"54.0.0","pid":11629,"features":["io_uring","kvm"]}"#,
        )
        .expect("decodes");
        assert_eq!(r.version, "54.0.0");
        assert_eq!(r.pid, Some(11629));
    }

    #[test]
    fn pci_paths() {
        let p = |bdf: &str| {
            PciDeviceInfo {
                id: "x".into(),
                bdf: bdf.into(),
            }
            .pci_path()
        };
        assert_eq!(p("0000:00:03.0").as_deref(), Some("00/03"));
        assert_eq!(p("0000:01:1f.0").as_deref(), Some("01/1f"));
        assert_eq!(p("garbage"), None);
        assert_eq!(p("0000:0:3.0"), None);
    }
}
