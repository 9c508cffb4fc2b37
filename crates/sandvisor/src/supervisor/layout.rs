//! The files of one sandbox under the runtime directory, and its lock.
//!
//! ```text
//! <runtime>/<id>/
//!     state.json      the record (see [`super::state`])
//!     lock            flock'ed by a CLI command while it works on the sandbox
//!     control.sock    the supervisor's control socket
//!     supervisor.log  the supervisor's stdout and stderr
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::id::SandboxId;
use crate::socket::{build_socket_path, SocketError};

/// The record's file name.
pub const STATE_FILE: &str = "state.json";
/// The lock file's name.
pub const LOCK_FILE: &str = "lock";
/// The control socket's name.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The supervisor log's name.
pub const LOG_FILE: &str = "supervisor.log";

/// Errors from the sandbox directory and its lock.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A directory or file could not be made, opened or removed.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was tried.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The directory of a new sandbox exists already.
    #[error("sandbox \"{0}\" already exists; pick another id or `sandvisor delete` it")]
    Exists(SandboxId),
    /// No such sandbox.
    #[error("no sandbox \"{0}\"; see `sandvisor list`")]
    NotFound(SandboxId),
    /// Another command holds the lock for longer than the wait.
    #[error(
        "sandbox {id} is busy: another sandvisor command held its lock for {waited:?}; try again"
    )]
    Busy {
        /// The sandbox.
        id: SandboxId,
        /// How long this command waited.
        waited: Duration,
    },
    /// The control socket path does not fit a unix socket address.
    #[error("runtime directory too long for sandbox {id}'s control socket; set SANDVISOR_RUNTIME_DIR to a shorter path")]
    SocketPath {
        /// The sandbox.
        id: SandboxId,
        /// The length problem.
        #[source]
        source: SocketError,
    },
}

/// The paths of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDir {
    id: SandboxId,
    dir: PathBuf,
}

impl SandboxDir {
    /// The directory of sandbox `id` under `runtime_dir`.
    pub fn new(runtime_dir: &Path, id: SandboxId) -> Self {
        SandboxDir {
            dir: runtime_dir.join(id.as_str()),
            id,
        }
    }

    /// The sandbox id.
    pub fn id(&self) -> &SandboxId {
        &self.id
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// `lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// `control.sock`.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join(CONTROL_SOCKET)
    }

    /// `supervisor.log`.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Whether the sandbox exists: its record is there.
    pub fn exists(&self) -> bool {
        self.state_file().is_file()
    }

    /// Makes the directory of a new sandbox, and the runtime directory above
    /// it when missing, both private to this user.
    ///
    /// # Errors
    /// [`LayoutError::Exists`] when the directory exists: ids are unique,
    /// and `mkdir` is what makes two `create`s of one id fail cleanly.
    pub fn create(&self) -> Result<(), LayoutError> {
        build_socket_path(&[&self.control_socket()]).map_err(|source| LayoutError::SocketPath {
            id: self.id.clone(),
            source,
        })?;
        if let Some(parent) = self.dir.parent() {
            crate::private::create_dir_all(parent).map_err(|source| LayoutError::Io {
                op: "create directory",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(LayoutError::Exists(self.id.clone()))
            }
            Err(source) => Err(LayoutError::Io {
                op: "create directory",
                path: self.dir.clone(),
                source,
            }),
        }
    }

    /// Takes the sandbox lock, waiting up to `timeout` for another command
    /// to release it.
    ///
    /// After the lock is taken it checks that the lock file is still the one
    /// in the directory and that the record exists: a `delete` that ran
    /// while this command waited leaves neither.
    ///
    /// # Errors
    /// [`LayoutError::NotFound`] when the sandbox does not exist (or no
    /// longer does); [`LayoutError::Busy`] after `timeout`.
    pub async fn lock(&self, timeout: Duration) -> Result<SandboxLock, LayoutError> {
        let lock = self.lock_inner(timeout).await?;
        if !self.exists() {
            return Err(LayoutError::NotFound(self.id.clone()));
        }
        Ok(lock)
    }

    /// Takes the lock of a sandbox being created, whose record does not
    /// exist yet.
    pub(crate) async fn lock_new(&self) -> Result<SandboxLock, LayoutError> {
        self.lock_inner(Duration::ZERO).await
    }

    async fn lock_inner(&self, timeout: Duration) -> Result<SandboxLock, LayoutError> {
        let path = self.lock_file();
        let not_found = || LayoutError::NotFound(self.id.clone());
        let start = tokio::time::Instant::now();
        loop {
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(crate::private::FILE_MODE)
                .open(&path)
            {
                Ok(f) => f,
                // The directory is gone (or never was).
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
                Err(source) => {
                    return Err(LayoutError::Io {
                        op: "open lock",
                        path,
                        source,
                    })
                }
            };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => {
                    if same_file(&flock, &path) {
                        return Ok(SandboxLock { _flock: flock });
                    }
                    // Locked a file that `delete` unlinked meanwhile.
                    if !self.dir.exists() {
                        return Err(not_found());
                    }
                }
                Err((_, nix::Error::EWOULDBLOCK)) => {}
                Err((_, errno)) => {
                    return Err(LayoutError::Io {
                        op: "lock",
                        path,
                        source: errno.into(),
                    })
                }
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(LayoutError::Busy {
                    id: self.id.clone(),
                    waited,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Removes the directory and everything in it. Call it holding the lock:
    /// the lock file goes last, after the record, so that a command waiting
    /// for the lock finds no record and reports the sandbox gone.
    ///
    /// # Errors
    /// [`LayoutError::Io`] for a file that cannot be removed.
    pub fn remove(&self, _lock: &SandboxLock) -> Result<(), LayoutError> {
        let io_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| LayoutError::Io { op, path, source }
        };
        remove_if_exists(&self.state_file()).map_err(io_err("remove", &self.state_file()))?;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read directory", &self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &self.dir))?;
            let path = entry.path();
            if entry.file_name() == LOCK_FILE {
                continue;
            }
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                remove_if_exists(&path)
            };
            removed.map_err(io_err("remove", &path))?;
        }
        remove_if_exists(&self.lock_file()).map_err(io_err("remove", &self.lock_file()))?;
        match std::fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &self.dir)(e)),
            _ => Ok(()),
        }
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The held lock of one sandbox; released on drop.
#[derive(Debug)]
pub struct SandboxLock {
    _flock: Flock<File>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(runtime: &Path) -> SandboxDir {
        SandboxDir::new(runtime, "sb".parse().expect("valid id"))
    }

    #[tokio::test]
    async fn create_twice_fails() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let d = dir(&tmp.path().join("run"));
        d.create().expect("first create");
        assert!(matches!(d.create(), Err(LayoutError::Exists(_))));
    }

    #[tokio::test]
    async fn lock_excludes_and_waits() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let d = dir(tmp.path());
        d.create().expect("created");
        std::fs::write(d.state_file(), "{}").expect("record");
        let held = d.lock(Duration::ZERO).await.expect("first lock");
        let err = d
            .lock(Duration::from_millis(100))
            .await
            .expect_err("second lock must wait and fail");
        assert!(matches!(err, LayoutError::Busy { .. }), "{err}");
        drop(held);
        d.lock(Duration::ZERO).await.expect("free again");
    }

    #[tokio::test]
    async fn waiter_sees_a_deleted_sandbox_as_gone() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let d = dir(tmp.path());
        d.create().expect("created");
        std::fs::write(d.state_file(), "{}").expect("record");
        let held = d.lock(Duration::ZERO).await.expect("lock");
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.lock(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.remove(&held).expect("removed");
        drop(held);
        let got = waiter.await.expect("joined");
        assert!(matches!(got, Err(LayoutError::NotFound(_))), "{got:?}");
        assert!(!d.path().exists());
    }

    #[test]
    fn missing_sandbox_is_not_found() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let d = dir(tmp.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let got = rt.block_on(d.lock(Duration::ZERO));
        assert!(matches!(got, Err(LayoutError::NotFound(_))));
        assert!(!d.path().exists(), "looking must not create the directory");
    }
}
