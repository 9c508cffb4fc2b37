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

/// Opens a pidfd for `pid` (`pidfd_open(2)`, Linux 5.3+): a descriptor that
/// becomes readable when the process exits, and that keeps naming that
/// process even if its pid is reused.
///
/// # Errors
/// The syscall's errno: `ESRCH` when no such process exists.
pub fn pidfd_open(pid: u32) -> nix::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;

    let pid = nix::libc::pid_t::try_from(pid).map_err(|_| nix::Error::EINVAL)?;
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new fd
    // or -1; it reads and writes no memory of ours.
    let ret = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(nix::Error::last());
    }
    let fd = i32::try_from(ret).map_err(|_| nix::Error::EBADF)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Registers a pidfd with tokio's reactor, for readability only (a pidfd
/// polls readable once its process has exited).
///
/// # Errors
/// When the reactor refuses the descriptor.
pub fn watch_pidfd(
    pidfd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor that it alone closes,
    // and its as_raw_fd returns that same descriptor for as long as the
    // AsyncFd owns it.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)
}
