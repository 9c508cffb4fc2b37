//! vhost-device-vsock, the vhost-user daemon behind a hybrid vsock.
//!
//! On a host without `/dev/vhost-vsock`, a QEMU guest still gets a vsock
//! device (`vhost-user-vsock-pci`) when rust-vmm's `vhost-device-vsock`
//! serves it. The daemon owns two unix sockets:
//!
//! - the vhost-user socket, which QEMU's chardev connects to as a client;
//! - the hybrid vsock socket (`uds-path`), where the host asks for a guest
//!   port with `CONNECT <port>\n` and gets `OK <port>\n`, as with
//!   Firecracker and Cloud Hypervisor.
//!
//! What the daemon does, and so what this module must do for it:
//!
//! - It binds the hybrid socket first, then the vhost-user socket, already
//!   listening when the file appears: that file appearing is the readiness
//!   signal [`start`] waits for (under a deadline, and any exit before it,
//!   whatever the exit code, is a failure). Stale files are removed first,
//!   so an old socket is never taken for a new one.
//! - It does not exit when QEMU goes away (it waits for the next QEMU), so
//!   the backend stops it with the VM.
//! - It has no signal handler: `SIGTERM` ends it at once and leaves both
//!   socket files behind, so [`VsockDaemon::stop`] unlinks them.
//! - It does not check the guest CID; one daemon serves one VM, so
//!   [`GUEST_CID`] (the first CID a guest may have) is used for every VM.
//!
//! The daemon runs in the foreground, supervised like QEMU, its output in
//! its own log file in the VM directory.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::process::{log_tail, Exit, ProcessError, Spawn, Supervised};
use crate::process::ProcessRef;

/// The guest CID given to the daemon: 0 to 2 are reserved (2 is the host).
pub const GUEST_CID: u32 = 3;

/// How often [`start`] looks for the vhost-user socket.
const READY_POLL: Duration = Duration::from_millis(10);

/// How long [`VsockDaemon::stop`] waits after `SIGTERM` before `SIGKILL`.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Errors from starting, adopting and stopping the daemon.
#[derive(Debug, thiserror::Error)]
pub enum VsockDaemonError {
    /// A stale socket file could not be removed.
    #[error("cannot remove socket {path:?}")]
    Unlink {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The daemon could not be started or adopted.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The daemon exited before its vhost-user socket appeared.
    #[error("vhost-device-vsock (pid {pid}) exited before creating {socket:?}: {exit}; its log ends with:\n{log_tail}")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// The socket it was to create.
        socket: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// The vhost-user socket did not appear in time; the daemon was killed.
    #[error("vhost-device-vsock (pid {pid}) did not create {socket:?} within {timeout:?}; its log ends with:\n{log_tail}")]
    Timeout {
        /// Its pid.
        pid: u32,
        /// The socket it was to create.
        socket: PathBuf,
        /// How long it was waited for.
        timeout: Duration,
        /// The end of its log.
        log_tail: String,
    },
    /// The pid to adopt belongs to a process started at another time.
    #[error("pid {pid} is not the vhost-device-vsock that was started: its start time differs")]
    Replaced {
        /// The pid.
        pid: u32,
    },
}

/// Where one daemon lives: its two sockets and its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonPaths {
    /// The vhost-user socket QEMU's chardev connects to.
    pub vhost_user: PathBuf,
    /// The hybrid vsock socket the host connects to (`uds-path`).
    pub uds: PathBuf,
    /// Its standard output and error.
    pub log: PathBuf,
}

/// The daemon's arguments: one VM, in the `--vm` form, which is checked
/// whole (a partial set of the single flags parses and then exits 0).
pub fn args(paths: &DaemonPaths, guest_cid: u32) -> Vec<String> {
    vec![
        "--vm".to_owned(),
        format!(
            "guest-cid={guest_cid},socket={},uds-path={}",
            paths.vhost_user.display(),
            paths.uds.display()
        ),
    ]
}

/// A running daemon, spawned by [`start`] or adopted by [`VsockDaemon::adopt`].
#[derive(Debug)]
pub struct VsockDaemon {
    process: Supervised,
    start_time: u64,
    paths: DaemonPaths,
}

/// Removes `path` if it exists.
fn unlink(path: &Path) -> Result<(), VsockDaemonError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VsockDaemonError::Unlink {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether a unix socket file is at `path`.
fn socket_exists(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Starts `program` for one VM and waits up to `timeout` for its
/// vhost-user socket. Stale socket files at `paths` are removed first. On
/// every error no daemon is left running and no socket is left behind.
///
/// # Errors
/// [`VsockDaemonError::Unlink`] for a stale file that cannot go,
/// [`VsockDaemonError::Process`] when it cannot be spawned,
/// [`VsockDaemonError::Exited`] when it ends first (whatever its exit
/// code), [`VsockDaemonError::Timeout`] when the socket does not come.
pub async fn start(
    program: &Path,
    paths: &DaemonPaths,
    guest_cid: u32,
    timeout: Duration,
) -> Result<VsockDaemon, VsockDaemonError> {
    let deadline = Instant::now() + timeout;
    unlink(&paths.vhost_user)?;
    unlink(&paths.uds)?;
    let args = args(paths, guest_cid);
    let process = Supervised::spawn(Spawn {
        program,
        args: &args,
        fds: Vec::new(),
        log: &paths.log,
        netns: None,
        run_as: None,
    })?;
    let daemon = VsockDaemon {
        start_time: ProcessRef::of(process.pid()).start_time,
        process,
        paths: paths.clone(),
    };
    let mut exit = daemon.process.exit_watch();
    loop {
        if let Some(exit) = daemon.process.exited() {
            let err = VsockDaemonError::Exited {
                pid: daemon.pid(),
                exit,
                socket: paths.vhost_user.clone(),
                log_tail: log_tail(&paths.log),
            };
            daemon.remove_sockets();
            return Err(err);
        }
        if socket_exists(&paths.vhost_user) {
            tracing::info!(pid = daemon.pid(), socket = %paths.vhost_user.display(), "vhost-device-vsock ready");
            return Ok(daemon);
        }
        let now = Instant::now();
        if now >= deadline {
            daemon.kill();
            // Reaped, so that the error says the truth: nothing is left.
            let _ = daemon.process.wait(crate::process::REAP_TIMEOUT).await;
            return Err(VsockDaemonError::Timeout {
                pid: daemon.pid(),
                socket: paths.vhost_user.clone(),
                timeout,
                log_tail: log_tail(&paths.log),
            });
        }
        let step = READY_POLL.min(deadline - now);
        // Wakes at once if the daemon exits.
        let _ = tokio::time::timeout(step, exit.changed()).await;
    }
}

impl VsockDaemon {
    /// Adopts the daemon `process` (started by another process for the same
    /// VM): its pid must still name the process started then, and its
    /// command line must name `paths.vhost_user`.
    ///
    /// # Errors
    /// [`VsockDaemonError::Replaced`] for a reused pid, else
    /// [`VsockDaemonError::Process`].
    pub fn adopt(process: ProcessRef, paths: DaemonPaths) -> Result<Self, VsockDaemonError> {
        let expected = format!("socket={}", paths.vhost_user.display());
        let supervised = Supervised::adopt(process.pid, &expected)?;
        // Checked once the pidfd is open: the pid cannot change under us now.
        let now = ProcessRef::of(process.pid);
        if process.start_time != 0 && now.start_time != process.start_time {
            return Err(VsockDaemonError::Replaced { pid: process.pid });
        }
        Ok(VsockDaemon {
            process: supervised,
            start_time: now.start_time,
            paths,
        })
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The pid and start time, for saving and a later [`VsockDaemon::adopt`].
    pub fn process_ref(&self) -> ProcessRef {
        ProcessRef {
            pid: self.process.pid(),
            start_time: self.start_time,
        }
    }

    /// Its sockets and log.
    pub fn paths(&self) -> &DaemonPaths {
        &self.paths
    }

    /// How it ended, if it has.
    pub fn exited(&self) -> Option<Exit> {
        self.process.exited()
    }

    /// A receiver that changes when it ends.
    pub fn exit_watch(&self) -> tokio::sync::watch::Receiver<Option<Exit>> {
        self.process.exit_watch()
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.paths.log)
    }

    /// Stops it: `SIGTERM`, [`STOP_GRACE`], `SIGKILL`; then removes both
    /// sockets. Returns how it ended, when that is known.
    pub async fn stop(&self) -> Option<Exit> {
        let exit = self.process.terminate(STOP_GRACE).await;
        self.remove_sockets();
        exit
    }

    /// `SIGKILL` now and remove both sockets, without waiting: for paths
    /// that cannot wait (drop, a failed start).
    pub fn kill(&self) {
        self.process.kill();
        self.remove_sockets();
    }

    fn remove_sockets(&self) {
        for path in [&self.paths.vhost_user, &self.paths.uds] {
            if let Err(e) = unlink(path) {
                tracing::warn!(error = %e, "vhost-device-vsock socket left behind");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn paths_in(dir: &Path) -> DaemonPaths {
        DaemonPaths {
            vhost_user: dir.join("vhost-user-vsock.sock"),
            uds: dir.join("hvsock.sock"),
            log: dir.join("vhost-device-vsock.log"),
        }
    }

    /// A shell script standing in for the daemon.
    fn fake(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-vhost-device-vsock");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    /// The real daemon; these tests fail, rather than skip, without it.
    fn daemon() -> PathBuf {
        match super::super::lookup::find(&super::super::lookup::Binary::VHOST_DEVICE_VSOCK, None) {
            Ok(found) => found.path,
            Err(e) => {
                panic!("{e}; run scripts/setup.sh (cargo install --locked vhost-device-vsock)")
            }
        }
    }

    #[test]
    fn arguments_name_one_vm_whole() {
        let p = paths_in(Path::new("/run/vm"));
        assert_eq!(
            args(&p, GUEST_CID),
            [
                "--vm",
                "guest-cid=3,socket=/run/vm/vhost-user-vsock.sock,uds-path=/run/vm/hvsock.sock"
            ]
        );
    }

    #[tokio::test]
    async fn an_early_exit_is_a_failure_whatever_its_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = paths_in(dir.path());
        // Exit 0 without a socket, as the real daemon does for flags that
        // parse but make no config.
        let program = fake(dir.path(), "echo 'Error parsing arguments'; exit 0");
        let err = start(&program, &paths, GUEST_CID, Duration::from_secs(10))
            .await
            .expect_err("no socket");
        let VsockDaemonError::Exited { exit, log_tail, .. } = &err else {
            panic!("expected Exited, got {err:?}");
        };
        assert_eq!(*exit, Exit::Code(0));
        assert!(log_tail.contains("Error parsing arguments"), "{log_tail}");
    }

    #[tokio::test]
    async fn a_socket_that_never_comes_times_out_and_the_daemon_is_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = paths_in(dir.path());
        let program = fake(dir.path(), "exec sleep 60");
        // A stale file where the socket goes must not count as ready.
        let stale = std::os::unix::net::UnixListener::bind(&paths.vhost_user).expect("bind");
        drop(stale);
        let err = start(&program, &paths, GUEST_CID, Duration::from_millis(300))
            .await
            .expect_err("no socket");
        let VsockDaemonError::Timeout { pid, .. } = err else {
            panic!("expected Timeout, got {err:?}");
        };
        assert!(!crate::process::pid_alive(pid), "pid {pid} left running");
        assert!(!paths.vhost_user.exists(), "stale socket left");
    }

    #[tokio::test]
    async fn the_daemon_alone_accepts_and_closes_and_the_client_keeps_retrying() {
        use crate::agent::{AgentAddress, AgentClient, ClientError};
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = paths_in(dir.path());
        let d = start(&daemon(), &paths, GUEST_CID, Duration::from_secs(10))
            .await
            .expect("daemon starts");
        assert!(paths.uds.exists() && paths.vhost_user.exists());
        let addr = AgentAddress::HybridVsock {
            path: paths.uds.clone(),
            port: sandvisor_proto::VSOCK_PORT,
        };
        // One attempt: with no guest behind it, the daemon takes the
        // connection and drops it.
        let Err(one) = crate::agent::transport::open(&addr).await else {
            panic!("no guest to answer, yet the connect went through");
        };
        assert!(
            matches!(
                one.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
            ),
            "{one:?}"
        );
        // The client retries that until its deadline, and says so.
        let err = AgentClient::connect(&addr, Duration::from_secs(1))
            .await
            .expect_err("no guest to answer");
        let ClientError::ConnectTimeout { last, .. } = &err else {
            panic!("expected ConnectTimeout, got {err:?}");
        };
        let ClientError::Connect { source, .. } = last.as_ref() else {
            panic!("expected a connect error last, got {last:?}");
        };
        // The deadline may cut the last attempt short (TimedOut) on a busy
        // host; any other kind means the daemon answered something else.
        assert!(
            matches!(
                source.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::TimedOut
            ),
            "{source:?}"
        );
        // The daemon survived the retries.
        assert_eq!(d.exited(), None);
        d.stop().await;
        assert!(d.exited().is_some());
        assert!(!paths.uds.exists(), "hybrid socket left");
        assert!(!paths.vhost_user.exists(), "vhost-user socket left");
    }

    #[tokio::test]
    async fn a_second_owner_adopts_the_daemon_by_pid_and_start_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = paths_in(dir.path());
        let d = start(&daemon(), &paths, GUEST_CID, Duration::from_secs(10))
            .await
            .expect("daemon starts");
        let saved = d.process_ref();
        assert_ne!(saved.start_time, 0);
        let reused = ProcessRef {
            start_time: saved.start_time + 1,
            ..saved
        };
        let r = VsockDaemon::adopt(reused, paths.clone());
        assert!(matches!(r, Err(VsockDaemonError::Replaced { .. })), "{r:?}");
        let other = DaemonPaths {
            vhost_user: dir.path().join("other.sock"),
            ..paths.clone()
        };
        let r = VsockDaemon::adopt(saved, other);
        assert!(
            matches!(
                r,
                Err(VsockDaemonError::Process(ProcessError::NotOurs { .. }))
            ),
            "{r:?}"
        );
        let adopted = VsockDaemon::adopt(saved, paths.clone()).expect("adopts");
        assert_eq!(adopted.process_ref(), saved);
        adopted.stop().await;
        // The adopter saw it go; the spawner sees its real exit.
        assert_eq!(adopted.exited(), Some(Exit::Unknown));
        let exit = d.process.wait(Duration::from_secs(5)).await;
        assert_eq!(exit, Some(Exit::Signal(15)));
        assert!(!paths.uds.exists() && !paths.vhost_user.exists());
    }
}
