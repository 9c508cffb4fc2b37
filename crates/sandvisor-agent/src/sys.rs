//! The agent's only `unsafe`: turning the raw descriptor `accept` returns
//! into an owned one, and the random device's ioctls.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::libc::c_int;

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

/// The most bytes [`add_entropy`] takes at once.
pub const MAX_ENTROPY_BYTES: usize = sandvisor_proto::MAX_RESEED_BYTES;

/// `struct rand_pool_info` (linux/random.h) with room for
/// [`MAX_ENTROPY_BYTES`] in its trailing buffer.
#[repr(C)]
struct RandPoolInfo {
    /// Entropy credited, in bits.
    entropy_count: c_int,
    /// Bytes in `buf`.
    buf_size: c_int,
    buf: [u32; MAX_ENTROPY_BYTES / 4],
}

// RNDADDENTROPY is _IOW('R', 0x03, int[2]): its size names the header only,
// the buffer follows it.
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[c_int; 2]>()),
    RandPoolInfo
);
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Mixes `data` into the kernel's input pool through `random` (an open
/// `/dev/random`), crediting 8 bits per byte (`RNDADDENTROPY`, which needs
/// CAP_SYS_ADMIN). `data` longer than [`MAX_ENTROPY_BYTES`] is cut.
///
/// # Errors
/// The ioctl's errno.
pub fn add_entropy(random: &File, data: &[u8]) -> nix::Result<()> {
    let data = &data[..data.len().min(MAX_ENTROPY_BYTES)];
    let mut info = RandPoolInfo {
        entropy_count: c_int::try_from(data.len() * 8).unwrap_or(c_int::MAX),
        buf_size: c_int::try_from(data.len()).unwrap_or(c_int::MAX),
        buf: [0; MAX_ENTROPY_BYTES / 4],
    };
    for (i, chunk) in data.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        info.buf[i] = u32::from_ne_bytes(word);
    }
    // SAFETY: `info` is a properly laid out rand_pool_info whose buffer
    // holds at least `buf_size` bytes; the kernel only reads it, during
    // the call.
    unsafe { rnd_add_entropy(random.as_raw_fd(), &info) }.map(drop)
}

/// Makes the kernel's CRNG reseed from its input pool now
/// (`RNDRESEEDCRNG`), so that output after this call depends on what
/// [`add_entropy`] added.
///
/// # Errors
/// The ioctl's errno.
pub fn reseed_crng(random: &File) -> nix::Result<()> {
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no user memory.
    unsafe { rnd_reseed_crng(random.as_raw_fd()) }.map(drop)
}
