//! virtiofsd, the vhost-user daemon behind virtio-fs.
//!
//! As Kata 1.x does, sandvisor binds the vhost-user socket itself and
//! hands the listening descriptor to virtiofsd as fd 3 (`--fd=3`): the
//! socket exists before QEMU starts and connects, so there is no race and
//! no polling for a socket file. virtiofsd runs in the foreground (`-f`),
//! supervised like QEMU, with its output in `virtiofsd.log`.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::process::{ProcessError, Spawn, Supervised};
use crate::config::HypervisorConfig;

/// The fd number virtiofsd receives its listening socket on.
pub const SOCKET_FD: i32 = 3;

/// Errors from starting virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    /// No daemon configured.
    #[error("shared_fs = \"virtio-fs\" needs virtio_fs_daemon set to a virtiofsd binary")]
    NoDaemon,
    /// The vhost-user socket could not be bound.
    #[error("cannot listen on vhost-user socket {path:?}")]
    Listen {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The daemon could not be started.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// Adopts the virtiofsd a saved state names (`pid`), for a backend's load.
/// Returns the adopted process, if any, and the adoption's error apart, so
/// that a load adopts its other processes before it fails: the cleanup
/// after a failed load then still ends what it knows.
pub fn adopt(pid: Option<u32>) -> (Option<Supervised>, Result<(), ProcessError>) {
    match pid.map(|p| Supervised::adopt(p, "virtiofsd")) {
        Some(Ok(v)) => (Some(v), Ok(())),
        Some(Err(e)) => (None, Err(e)),
        None => (None, Ok(())),
    }
}

/// virtiofsd's arguments, as Kata 1.x passes them.
pub fn args(config: &HypervisorConfig, source: &Path) -> Vec<String> {
    let cache = if config.virtio_fs_cache.is_empty() {
        "auto"
    } else {
        config.virtio_fs_cache.as_str()
    };
    let mut a = vec![
        format!("--fd={SOCKET_FD}"),
        "-o".to_string(),
        format!("source={}", source.display()),
        "-o".to_string(),
        format!("cache={cache}"),
        "-o".to_string(),
        "no_posix_lock".to_string(),
        // Foreground: a daemonising virtiofsd would escape supervision.
        "-f".to_string(),
    ];
    if config.debug {
        a.push("-d".to_string());
    }
    a.extend(config.virtio_fs_extra_args.iter().cloned());
    a
}

/// Binds `socket` and starts virtiofsd on it, sharing `source`.
///
/// # Errors
/// See [`VirtiofsdError`].
pub fn start(
    config: &HypervisorConfig,
    source: &Path,
    socket: &Path,
    log: &Path,
) -> Result<Supervised, VirtiofsdError> {
    let daemon = config
        .virtio_fs_daemon
        .as_deref()
        .ok_or(VirtiofsdError::NoDaemon)?;
    let listen_err = |source| VirtiofsdError::Listen {
        path: socket.to_path_buf(),
        source,
    };
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = UnixListener::bind(socket).map_err(listen_err)?;
    crate::private::tighten(socket).map_err(listen_err)?;
    let fd: OwnedFd = listener.into();
    let args = args(config, source);
    Ok(Supervised::spawn(Spawn {
        program: daemon,
        args: &args,
        fds: vec![(fd, SOCKET_FD)],
        log,
        netns: None,
        run_as: None,
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_follow_kata() {
        let mut c = HypervisorConfig {
            virtio_fs_cache: "always".into(),
            virtio_fs_extra_args: vec!["--thread-pool-size=1".into()],
            ..HypervisorConfig::default()
        };
        assert_eq!(
            args(&c, Path::new("/run/share")),
            [
                "--fd=3",
                "-o",
                "source=/run/share",
                "-o",
                "cache=always",
                "-o",
                "no_posix_lock",
                "-f",
                "--thread-pool-size=1"
            ]
        );
        c.debug = true;
        c.virtio_fs_cache.clear();
        c.virtio_fs_extra_args.clear();
        let a = args(&c, Path::new("/s"));
        assert!(a.contains(&"cache=auto".to_string()));
        assert_eq!(a.last().map(String::as_str), Some("-d"));
    }
}
