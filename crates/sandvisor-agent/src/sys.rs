//! The agent's only `unsafe`: turning the raw descriptor `accept` returns
//! into an owned one, and the terminal ioctls nix has no safe call for.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::Command;

use nix::pty::Winsize;

nix::ioctl_write_ptr_bad!(tiocswinsz, nix::libc::TIOCSWINSZ, Winsize);
nix::ioctl_write_int_bad!(tiocsctty, nix::libc::TIOCSCTTY);

/// Sets the window size of the terminal `fd` (either side of a
/// pseudo-terminal); the kernel sends SIGWINCH to its foreground group.
///
/// # Errors
/// The ioctl's errno.
pub fn set_window_size(fd: BorrowedFd<'_>, size: &Winsize) -> nix::Result<()> {
    // SAFETY: `fd` is open for the whole call (it is borrowed), and
    // TIOCSWINSZ only reads the `Winsize` behind the pointer, which lives
    // across the call.
    unsafe { tiocswinsz(fd.as_raw_fd(), size) }.map(drop)
}

/// Makes the child of `cmd` the leader of a new session whose controlling
/// terminal is its stdin, as a login shell's is. Its stdin must be a
/// terminal.
pub fn take_terminal_on_exec(cmd: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec, after
    // its stdio is in place; it calls only setsid(2) and ioctl(2), which are
    // async-signal-safe, allocates nothing and touches no lock.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            tiocsctty(0, 0)?;
            Ok(())
        });
    }
}

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
