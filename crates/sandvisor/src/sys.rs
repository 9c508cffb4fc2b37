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

/// The part of `struct ifreq` that `TUNSETIFF` reads: the name and the
/// flags, padded to the kernel's 40 bytes.
#[repr(C)]
struct TapIfReq {
    name: [u8; 16],
    flags: nix::libc::c_short,
    pad: [u8; 22],
}

nix::ioctl_write_ptr_bad!(tunsetiff, nix::libc::TUNSETIFF, TapIfReq);

/// Opens one queue of the tap interface `name` (`IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR`, and `IFF_MULTI_QUEUE` when `multi_queue`), as a VMM
/// wants its descriptors. The interface must exist or is made (then it
/// lasts as long as a descriptor is open).
///
/// # Errors
/// The open of `/dev/net/tun` or the ioctl's errno; `EINVAL` for a name of
/// 16 bytes or more.
pub fn open_tap_queue(name: &str, multi_queue: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;

    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= 16 {
        return Err(std::io::Error::from_raw_os_error(nix::libc::EINVAL));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut flags = nix::libc::IFF_TAP | nix::libc::IFF_NO_PI | nix::libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= nix::libc::IFF_MULTI_QUEUE;
    }
    let mut req = TapIfReq {
        name: [0; 16],
        // The flags all fit in the low 16 bits the kernel reads.
        flags: flags as nix::libc::c_short,
        pad: [0; 22],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `tun` is an open /dev/net/tun; TUNSETIFF reads a 40-byte
    // ifreq from a pointer to a local that outlives the call (and may write
    // the chosen name back into it, which is ours to overwrite).
    unsafe { tunsetiff(tun.as_raw_fd(), &req) }.map_err(std::io::Error::from)?;
    Ok(tun.into())
}
