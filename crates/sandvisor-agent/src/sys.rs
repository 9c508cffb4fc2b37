//! The agent's only `unsafe`: turning the raw descriptor `accept` returns
//! into an owned one.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Accepts one connection on a listening socket.
///
/// # Errors
/// The errno of `accept4`.
pub fn accept(listener: &OwnedFd) -> nix::Result<OwnedFd> {
    let fd = nix::sys::socket::accept4(
        listener.as_raw_fd(),
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns; the
    // OwnedFd becomes its only owner and closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
