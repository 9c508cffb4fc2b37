//! The host end of the agent channel: a vsock context id or a unix socket.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;

use crate::defaults::{
    DEFAULT_SOCKET_CHANNEL_NAME, DEFAULT_SOCKET_DEVICE_ID, DEFAULT_SOCKET_ID, DEFAULT_SOCKET_NAME,
    MAX_SOCKET_PATH_LEN, VSOCK_PORT,
};
use crate::device::{HybridVsock, UnixSocket, VSock};
use crate::probe::DEV_VHOST_VSOCK;

/// The first guest context id that is not reserved (0, 1 and 2 are).
pub const FIRST_CONTEXT_ID: u64 = 3;
/// The largest context id.
pub const MAX_CONTEXT_ID: u64 = u32::MAX as u64;

/// Errors from making the agent socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// `/dev/vhost-vsock` is missing or cannot be opened.
    #[error("vhost-vsock is unavailable: cannot open {path:?}; load the vhost_vsock module or set use_vsock = false")]
    VhostVsockUnavailable {
        /// The device path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Every context id was taken, or the ioctl failed.
    #[error("could not claim a vsock guest context id")]
    NoContextId(#[source] nix::Error),
    /// The socket path does not fit in a unix socket address.
    #[error("socket path {path:?} is {len} bytes long, over the {max}-byte limit of unix sockets; use a shorter storage directory")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The host end of the agent channel.
#[derive(Debug, Clone)]
pub enum AgentSocket {
    /// A virtio-serial port on a host unix socket.
    Unix(UnixSocket),
    /// vhost-vsock with a claimed context id.
    Vsock(VSock),
    /// A hybrid vsock (Firecracker, Cloud Hypervisor).
    HybridVsock(HybridVsock),
}

impl AgentSocket {
    /// The device that gives the guest this channel, for
    /// [`crate::Hypervisor::add_device`].
    pub fn into_device(self) -> crate::device::Device {
        use crate::device::Device;
        match self {
            AgentSocket::Unix(u) => Device::SerialPort(u),
            AgentSocket::Vsock(v) => Device::VsockPci(v),
            AgentSocket::HybridVsock(h) => Device::HybridVsock(h),
        }
    }
}

/// Joins `parts` into a path that fits in a unix socket address.
///
/// # Errors
/// [`SocketError::PathTooLong`] over 107 bytes.
pub fn build_socket_path(parts: &[&Path]) -> Result<PathBuf, SocketError> {
    let path: PathBuf = parts.iter().collect();
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(SocketError::PathTooLong {
            path,
            len,
            max: MAX_SOCKET_PATH_LEN,
        });
    }
    Ok(path)
}

/// Opens `dev` (normally `/dev/vhost-vsock`) and claims a free guest context
/// id on it, starting from a random one at or above 3, searching up, then
/// down. The open device holds the id: the VMM inherits it.
///
/// # Errors
/// [`SocketError::VhostVsockUnavailable`] when the device cannot be opened;
/// [`SocketError::NoContextId`] when no id can be claimed.
pub fn find_context_id(dev: &Path) -> Result<(OwnedFd, u64), SocketError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|source| SocketError::VhostVsockUnavailable {
            path: dev.to_path_buf(),
            source,
        })?;
    let fd: OwnedFd = file.into();
    let start = rand::thread_rng().gen_range(FIRST_CONTEXT_ID..=MAX_CONTEXT_ID);
    let mut last = nix::Error::EADDRINUSE;
    let up = start..=MAX_CONTEXT_ID;
    let down = (FIRST_CONTEXT_ID..start).rev();
    for cid in up.chain(down) {
        match crate::sys::set_guest_cid(fd.as_fd(), cid) {
            Ok(()) => return Ok((fd, cid)),
            Err(nix::Error::EADDRINUSE) => continue,
            // Any other errno would repeat for every id.
            Err(e) => {
                last = e;
                break;
            }
        }
    }
    Err(SocketError::NoContextId(last))
}

/// Makes the agent socket of VM `id`: with vsock, claim a context id on
/// `/dev/vhost-vsock`; without, a unix socket `<storage>/<id>/kata.sock`
/// behind the virtio-serial port `agent.channel.0`.
///
/// # Errors
/// See [`find_context_id`] and [`build_socket_path`].
pub fn generate_vm_socket(
    id: &str,
    use_vsock: bool,
    vm_storage_path: &Path,
) -> Result<AgentSocket, SocketError> {
    if use_vsock {
        let (fd, context_id) = find_context_id(Path::new(DEV_VHOST_VSOCK))?;
        return Ok(AgentSocket::Vsock(VSock {
            vhost_fd: Arc::new(fd),
            context_id,
            port: VSOCK_PORT,
        }));
    }
    let host_path = build_socket_path(&[
        vm_storage_path,
        Path::new(id),
        Path::new(DEFAULT_SOCKET_NAME),
    ])?;
    Ok(AgentSocket::Unix(UnixSocket {
        device_id: DEFAULT_SOCKET_DEVICE_ID.to_string(),
        id: DEFAULT_SOCKET_ID.to_string(),
        host_path,
        name: DEFAULT_SOCKET_CHANNEL_NAME.to_string(),
    }))
}
