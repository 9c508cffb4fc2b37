//! The few ioctls sandvisor makes itself. The only module with `unsafe`.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

// VHOST_VSOCK_SET_GUEST_CID = _IOW(VHOST_VIRTIO, 0x60, __u64), VHOST_VIRTIO = 0xAF.
nix::ioctl_write_ptr!(vhost_vsock_set_guest_cid, 0xAF, 0x60, u64);

/// Claims guest context id `cid` on an open `/dev/vhost-vsock`.
///
/// # Errors
/// The ioctl's errno: `EADDRINUSE` when another VM holds `cid`.
pub fn set_guest_cid(vhost_vsock: BorrowedFd<'_>, cid: u64) -> nix::Result<()> {
    // SAFETY: the fd is a live, borrowed descriptor; the ioctl reads one u64
    // from a pointer to a local that outlives the call and writes nothing.
    unsafe { vhost_vsock_set_guest_cid(vhost_vsock.as_raw_fd(), &cid) }.map(drop)
}

/// Registers an owned socket with tokio's reactor (used for vsock, which
/// tokio has no type for).
///
/// # Errors
/// When the reactor refuses the descriptor.
pub fn register_async_fd(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: `register` needs the descriptor to stay open, and to be what
    // `as_raw_fd` returns, for the AsyncFd's whole life. The AsyncFd takes
    // the OwnedFd, which closes the descriptor only when dropped and always
    // returns the same one.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}
