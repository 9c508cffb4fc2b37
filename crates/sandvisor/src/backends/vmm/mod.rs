//! What the VMM-process backends share: finding the VMM binary
//! ([`lookup`]), supervising the VMM and its helper processes ([`process`]),
//! virtiofsd ([`virtiofsd`]), vhost-device-vsock ([`vsock_daemon`]), and the REST client for their API sockets
//! ([`rest`]).

#[cfg(test)]
pub(crate) mod contract;
pub mod lookup;
pub mod process;
pub mod rest;
pub mod virtiofsd;
pub mod vsock_daemon;

/// Removes `dir` and everything in it; a directory already gone is no
/// error. Every backend removes its VM directory (and Firecracker its jail)
/// this way on stop, cleanup and failed starts.
///
/// # Errors
/// The removal's error, for the backend to wrap with its own variant.
pub fn remove_dir_if_present(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
