//! Devices a backend can attach to a VM, before boot or by hot-plug.
//!
//! Kata passes `devInfo interface{}` with a separate `deviceType`; here a
//! device is one enum whose variants carry their own description, so a
//! mismatch between the two cannot be written.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The kind of a device, without its description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceType {
    /// The guest root image.
    Image,
    /// A shared file system (9p or virtio-fs).
    Fs,
    /// A network interface.
    Net,
    /// A block device.
    Block,
    /// A serial port on a unix socket, such as the agent channel.
    SerialPort,
    /// A vhost-vsock PCI device.
    VsockPci,
    /// A VFIO passthrough device.
    Vfio,
    /// A vhost-user device.
    VhostUser,
    /// vCPUs.
    Cpu,
    /// Memory.
    Memory,
    /// A hybrid vsock: a unix socket on the host, vsock in the guest.
    HybridVsock,
    /// A NIC on the VMM's user-mode network stack (QEMU's slirp).
    UserNet,
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DeviceType::Image => "image",
            DeviceType::Fs => "fs",
            DeviceType::Net => "net",
            DeviceType::Block => "block",
            DeviceType::SerialPort => "serial-port",
            DeviceType::VsockPci => "vsock-pci",
            DeviceType::Vfio => "vfio",
            DeviceType::VhostUser => "vhost-user",
            DeviceType::Cpu => "cpu",
            DeviceType::Memory => "memory",
            DeviceType::HybridVsock => "hybrid-vsock",
            DeviceType::UserNet => "user-net",
        };
        f.write_str(name)
    }
}

/// A device and its description.
#[derive(Debug, Clone)]
pub enum Device {
    /// The guest root image.
    Image(BlockDrive),
    /// A shared directory.
    Fs(SharedFsVolume),
    /// A network interface backed by a tap device.
    Net(NetDevice),
    /// A block device.
    Block(BlockDrive),
    /// A serial port on a unix socket.
    SerialPort(UnixSocket),
    /// A vhost-vsock PCI device with its claimed context id.
    VsockPci(VSock),
    /// A VFIO passthrough device.
    Vfio(VfioDevice),
    /// A vhost-user device.
    VhostUser(VhostUserDevice),
    /// A number of vCPUs to add or remove.
    Cpu(u32),
    /// A memory region to add or remove.
    Memory(MemoryDevice),
    /// A hybrid vsock.
    HybridVsock(HybridVsock),
    /// A NIC on the VMM's user-mode network stack.
    UserNet(UserNetwork),
}

impl Device {
    /// The kind of this device.
    pub fn device_type(&self) -> DeviceType {
        match self {
            Device::Image(_) => DeviceType::Image,
            Device::Fs(_) => DeviceType::Fs,
            Device::Net(_) => DeviceType::Net,
            Device::Block(_) => DeviceType::Block,
            Device::SerialPort(_) => DeviceType::SerialPort,
            Device::VsockPci(_) => DeviceType::VsockPci,
            Device::Vfio(_) => DeviceType::Vfio,
            Device::VhostUser(_) => DeviceType::VhostUser,
            Device::Cpu(_) => DeviceType::Cpu,
            Device::Memory(_) => DeviceType::Memory,
            Device::HybridVsock(_) => DeviceType::HybridVsock,
            Device::UserNet(_) => DeviceType::UserNet,
        }
    }
}

/// A drive: a host file or block device given to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BlockDrive {
    /// Host path of the file or device.
    pub file: PathBuf,
    /// Image format, such as `raw` or `qcow2`.
    pub format: String,
    /// Unique id of the drive inside the VM.
    pub id: String,
    /// Drive index, used to predict the guest device name.
    pub index: u32,
    /// Attach read-only.
    pub read_only: bool,
    /// Guest PCI path (`bridge/slot`) once attached, as the backend reports it.
    pub pci_path: Option<String>,
    /// Guest device node once known, such as `/dev/vdb`.
    pub virt_path: Option<String>,
}

/// A host directory shared with the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SharedFsVolume {
    /// Tag the guest mounts by.
    pub mount_tag: String,
    /// Host directory to share.
    pub host_path: PathBuf,
}

/// A network interface backed by a host tap device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetDevice {
    /// Device id inside the VM.
    pub id: String,
    /// Host tap interface name.
    pub tap_name: String,
    /// Guest MAC address.
    pub mac: String,
    /// Queue pairs; 0 or 1 means a single queue.
    pub queues: u32,
}

/// A NIC on the VMM's own user-mode network stack (QEMU's slirp): no tap,
/// no host privileges; the VMM NATs the guest's traffic and forwards TCP
/// ports from host addresses into the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNetwork {
    /// Device id inside the VM.
    pub id: String,
    /// Guest MAC address.
    pub mac: String,
    /// The virtual network, such as `169.254.100.0/24`.
    pub network: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The VMM's address on it: the guest's gateway.
    pub gateway: Ipv4Addr,
    /// The guest's address (the first the VMM's DHCP hands out).
    pub guest: Ipv4Addr,
    /// The VMM's DNS forwarder.
    pub dns: Ipv4Addr,
    /// TCP ports forwarded from the host into the guest.
    pub forwards: Vec<PortForward>,
}

/// A TCP port forwarded from a host address into the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    /// Host address to listen on.
    pub host_addr: Ipv4Addr,
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
}

/// A serial port on a host unix socket (the agent channel, for one).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UnixSocket {
    /// QEMU device id.
    pub device_id: String,
    /// QEMU chardev id.
    pub id: String,
    /// Host path of the socket.
    pub host_path: PathBuf,
    /// Port name the guest sees.
    pub name: String,
}

/// A vhost-vsock device and the guest context id claimed for it.
#[derive(Debug, Clone)]
pub struct VSock {
    /// The open `/dev/vhost-vsock` that holds the context id; the VMM
    /// inherits it.
    pub vhost_fd: Arc<OwnedFd>,
    /// Guest context id.
    pub context_id: u64,
    /// Port the agent listens on.
    pub port: u32,
}

/// A hybrid vsock: a host unix socket that the VMM bridges to guest vsock.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HybridVsock {
    /// Host unix socket path.
    pub uds_path: PathBuf,
    /// Guest context id.
    pub context_id: u64,
    /// Port the agent listens on.
    pub port: u32,
}

/// A VFIO device to pass through.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VfioDevice {
    /// Device id inside the VM.
    pub id: String,
    /// Host PCI address, `DDDD:BB:DD.F`.
    pub bdf: String,
    /// Host sysfs path of the device.
    pub sysfs_dev: PathBuf,
}

/// The kind of a vhost-user device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VhostUserKind {
    /// vhost-user-net.
    #[default]
    Net,
    /// vhost-user-blk.
    Blk,
    /// vhost-user-scsi.
    Scsi,
    /// vhost-user-fs (virtio-fs).
    Fs,
}

/// A vhost-user device backed by a daemon's unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VhostUserDevice {
    /// Device id inside the VM.
    pub id: String,
    /// Which vhost-user device this is.
    pub kind: VhostUserKind,
    /// The daemon's socket.
    pub socket_path: PathBuf,
    /// Guest MAC address, for net.
    pub mac: String,
    /// Mount tag, for fs.
    pub tag: String,
}

/// Memory added to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryDevice {
    /// Memory slot used.
    pub slot: u32,
    /// Size in MiB.
    pub size_mib: u32,
    /// Guest physical address, when known.
    pub addr: u64,
    /// Whether the guest must probe the memory itself
    /// (`/sys/devices/system/memory/probe`).
    pub probe: bool,
}

/// What a hot-plug returns: what was actually added or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HotplugResult {
    /// This many vCPUs were added or removed.
    Cpus(u32),
    /// This many MiB of memory were added or removed.
    MemoryMib(u32),
    /// The device was attached or detached; for a block device, its updated
    /// description (guest PCI path, device node).
    Attached(Option<BlockDrive>),
}

/// vCPU index to host thread id.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VcpuThreadIds {
    /// vCPU index to thread id.
    pub vcpus: BTreeMap<u32, u32>,
}
