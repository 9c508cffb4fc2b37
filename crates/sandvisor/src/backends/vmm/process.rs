//! Supervising VMM processes (QEMU, Cloud Hypervisor, Firecracker, acrn-dm)
//! and their helpers (virtiofsd, vhost-device-vsock).
//!
//! A VMM is a child we watch, not a daemon we lose: it is spawned in its
//! own process group (so a terminal's signals aimed at the caller do not
//! reach it, and it outlives a supervising process that dies), with stdout
//! and stderr in a log file in the VM directory (not a pipe, which would
//! break when the reader dies). A task waits on it and publishes how it
//! ended on a watch channel, so a crash or a kill is seen at once and
//! reported with its exit status — an OOM-killed QEMU is an error, not a
//! clean stop (kata-containers#6128).
//!
//! A VMM that another process started is *adopted*: a pidfd names it even
//! if its pid is reused, and becomes readable when it exits. Its exit
//! status cannot be known (it is not our child), only that it exited.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::process::Stoppable;
pub use crate::process::{pid_alive, Exit};

/// How many bytes of a log [`log_tail`] reads at most.
pub const LOG_TAIL_BYTES: u64 = 4096;

/// Errors from spawning and adopting processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The log file could not be created.
    #[error("cannot create log file {path:?}")]
    Log {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Descriptors could not be mapped into the child.
    #[error("cannot pass descriptors to {program:?}")]
    Fds {
        /// The program.
        program: PathBuf,
        /// What went wrong.
        #[source]
        source: command_fds::FdMappingCollision,
    },
    /// The program could not be started.
    #[error("cannot start {program:?}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// No process to adopt.
    #[error("no process with pid {pid} is running")]
    NotRunning {
        /// The pid.
        pid: u32,
    },
    /// A process runs under that pid, but it is not the expected one.
    #[error("pid {pid} is not the expected process: its command line lacks {expected:?}")]
    NotOurs {
        /// The pid.
        pid: u32,
        /// What its command line should contain.
        expected: String,
    },
    /// A pidfd could not be opened or watched.
    #[error("cannot watch pid {pid}")]
    Pidfd {
        /// The pid.
        pid: u32,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

/// What to spawn.
#[derive(Debug)]
pub struct Spawn<'a> {
    /// The program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Descriptors the child inherits: the open file and its number there.
    pub fds: Vec<(OwnedFd, i32)>,
    /// Where stdout and stderr go.
    pub log: &'a Path,
    /// Enter this network namespace first (through `nsenter`).
    pub netns: Option<&'a Path>,
    /// Run as this uid and gid, with no supplementary groups, instead of
    /// as this process's user.
    pub run_as: Option<(u32, u32)>,
}

/// A supervised process: our child, or one adopted by pid.
#[derive(Debug)]
pub struct Supervised {
    pid: u32,
    adopted: bool,
    /// Set once we signal it: its end is then ours, not news to warn about.
    stopping: Arc<AtomicBool>,
    exit: watch::Receiver<Option<Exit>>,
    waiter: JoinHandle<()>,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // The waiter holds no resource but the child handle; aborting it
        // leaves the process alone (tokio reaps orphaned children).
        self.waiter.abort();
    }
}

impl Supervised {
    /// Spawns `spec` in its own process group, stdin from `/dev/null`,
    /// stdout and stderr appended to `spec.log`.
    ///
    /// # Errors
    /// See [`ProcessError`].
    pub fn spawn(spec: Spawn<'_>) -> Result<Supervised, ProcessError> {
        let log = crate::private::open_append(spec.log).map_err(|source| ProcessError::Log {
            path: spec.log.to_path_buf(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| ProcessError::Log {
            path: spec.log.to_path_buf(),
            source,
        })?;
        let mut cmd = match spec.netns {
            Some(ns) => {
                // nsenter execs the program: the pid stays the VMM's.
                // Entering needs privilege: nsenter drops to `run_as`
                // after it entered, and drops the supplementary groups.
                let mut c = tokio::process::Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()));
                if let Some((uid, gid)) = spec.run_as {
                    c.arg(format!("--setuid={uid}"))
                        .arg(format!("--setgid={gid}"));
                }
                c.arg("--").arg(spec.program);
                c
            }
            None => {
                let mut c = tokio::process::Command::new(spec.program);
                if let Some((uid, gid)) = spec.run_as {
                    // std sets the gid, drops the supplementary groups
                    // (when root) and sets the uid, in that order.
                    c.uid(uid).gid(gid);
                }
                c
            }
        };
        cmd.args(spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0)
            .kill_on_drop(false);
        let mappings = spec
            .fds
            .into_iter()
            .map(|(parent_fd, child_fd)| FdMapping {
                parent_fd,
                child_fd,
            })
            .collect();
        cmd.fd_mappings(mappings)
            .map_err(|source| ProcessError::Fds {
                program: spec.program.to_path_buf(),
                source,
            })?;
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: spec.program.to_path_buf(),
            source,
        })?;
        let pid = child.id().ok_or_else(|| ProcessError::Spawn {
            program: spec.program.to_path_buf(),
            source: io::Error::other("the child exited before its pid was read"),
        })?;
        let (tx, rx) = watch::channel(None);
        let program = spec.program.display().to_string();
        let stopping = Arc::new(AtomicBool::new(false));
        let asked = Arc::clone(&stopping);
        let waiter = tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => Exit::from_status(status),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "cannot wait for child");
                    Exit::Unknown
                }
            };
            if exit.success() || asked.load(Ordering::Relaxed) {
                tracing::info!(pid, program, %exit, "process exited");
            } else {
                tracing::warn!(pid, program, %exit, "process exited");
            }
            let _ = tx.send(Some(exit));
        });
        tracing::info!(pid, program = %spec.program.display(), "process started");
        Ok(Supervised {
            pid,
            adopted: false,
            stopping,
            exit: rx,
            waiter,
        })
    }

    /// Adopts the running process `pid`, which must have `expected` in its
    /// command line (a guard against a reused pid).
    ///
    /// # Errors
    /// [`ProcessError::NotRunning`], [`ProcessError::NotOurs`] or
    /// [`ProcessError::Pidfd`].
    pub fn adopt(pid: u32, expected: &str) -> Result<Supervised, ProcessError> {
        let pidfd = match crate::sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(nix::Error::ESRCH) => return Err(ProcessError::NotRunning { pid }),
            Err(e) => {
                return Err(ProcessError::Pidfd {
                    pid,
                    source: e.into(),
                })
            }
        };
        // Checked after the pidfd is open: from here on the pid cannot be
        // reused under us.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|_| ProcessError::NotRunning { pid })?;
        if matches!(crate::process::proc_stat(pid), Some(('Z', _))) {
            return Err(ProcessError::NotRunning { pid });
        }
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(expected) {
            return Err(ProcessError::NotOurs {
                pid,
                expected: expected.to_string(),
            });
        }
        let fd =
            crate::sys::watch_pidfd(pidfd).map_err(|source| ProcessError::Pidfd { pid, source })?;
        let (tx, rx) = watch::channel(None);
        let stopping = Arc::new(AtomicBool::new(false));
        let asked = Arc::clone(&stopping);
        let waiter = tokio::spawn(async move {
            // A pidfd polls readable once the process has exited.
            if let Err(e) = fd.readable().await {
                tracing::warn!(pid, error = %e, "cannot poll pidfd");
            }
            if asked.load(Ordering::Relaxed) {
                tracing::info!(pid, "adopted process exited");
            } else {
                tracing::warn!(pid, "adopted process exited");
            }
            let _ = tx.send(Some(Exit::Unknown));
        });
        tracing::info!(pid, "process adopted");
        Ok(Supervised {
            pid,
            adopted: true,
            stopping,
            exit: rx,
            waiter,
        })
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process was adopted rather than spawned by us.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// How it ended, if it has.
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits up to `timeout` for it to end.
    pub async fn wait(&self, timeout: Duration) -> Option<Exit> {
        let mut rx = self.exit.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(Option::is_some).await.map(|exit| *exit)
        })
        .await;
        match waited {
            Ok(Ok(exit)) => exit,
            // The waiter is gone (aborted): report what we know.
            Ok(Err(_)) => *self.exit.borrow(),
            Err(_) => None,
        }
    }

    /// A receiver that changes when the process ends.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.clone()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        if self.exited().is_some() {
            return;
        }
        if matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGKILL) {
            self.stopping.store(true, Ordering::Relaxed);
        }
        if let Err(e) = signal::kill(pid_of(self.pid), sig) {
            tracing::debug!(pid = self.pid, %sig, error = %e, "signal not delivered");
        }
    }

    /// SIGKILLs the process and, when it leads its own group, the group
    /// (QEMU's helpers, such as the `cat` of an `exec:` migration).
    pub fn kill(&self) {
        if self.exited().is_some() {
            return;
        }
        self.stopping.store(true, Ordering::Relaxed);
        let pid = pid_of(self.pid);
        if nix::unistd::getpgid(Some(pid)).ok() == Some(pid) {
            let _ = signal::killpg(pid, Signal::SIGKILL);
        } else {
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILLs (the group) and
    /// waits again ([`Stoppable::terminate`]). Returns how it ended, if it
    /// did.
    pub async fn terminate(&self, grace: Duration) -> Option<Exit> {
        if self.exited().is_none() {
            Stoppable::terminate(self, grace).await;
        }
        self.exited()
    }
}

impl Stoppable for Supervised {
    fn send(&self, sig: Signal) {
        if sig == Signal::SIGKILL {
            self.kill();
        } else {
            self.signal(sig);
        }
    }

    async fn wait_ended(&self, timeout: Duration) -> bool {
        self.wait(timeout).await.is_some()
    }
}

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

/// The last lines of a log, at most [`LOG_TAIL_BYTES`], for error messages.
/// Empty when the log cannot be read.
pub fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(LOG_TAIL_BYTES);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let mut s = String::from_utf8_lossy(&buf).into_owned();
        if start > 0 {
            // Drop the partial first line.
            if let Some(i) = s.find('\n') {
                s.drain(..=i);
            }
        }
        Ok(s.trim_end().to_string())
    };
    read().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_killed_child_is_reported_with_its_signal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let p = Supervised::spawn(Spawn {
            program: Path::new("/bin/sh"),
            args: &["-c".to_string(), "echo started; exec sleep 30".to_string()],
            fds: Vec::new(),
            log: &log,
            netns: None,
            run_as: None,
        })
        .expect("spawns");
        assert!(pid_alive(p.pid()));
        assert_eq!(p.exited(), None);
        p.kill();
        let exit = p.wait(Duration::from_secs(5)).await.expect("exits");
        assert_eq!(exit.signal(), Some(9));
        assert_eq!(exit.to_string(), "killed by signal 9 (SIGKILL)");
        assert!(!pid_alive(p.pid()));
    }

    #[tokio::test]
    async fn a_child_runs_as_the_uid_and_gid_asked_for() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to change uid");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let p = Supervised::spawn(Spawn {
            program: Path::new("/bin/sh"),
            args: &[
                "-c".to_string(),
                "echo $(id -u) $(id -g) $(id -G)".to_string(),
            ],
            fds: Vec::new(),
            log: &log,
            netns: None,
            run_as: Some((54321, 54322)),
        })
        .expect("spawns");
        let exit = p.wait(Duration::from_secs(5)).await.expect("exits");
        assert!(exit.success(), "{exit}");
        assert_eq!(
            std::fs::read_to_string(&log).expect("log").trim(),
            "54321 54322 54322",
            "the uid, the gid and no supplementary group"
        );
    }

    #[tokio::test]
    async fn exit_codes_and_log_tails_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("log");
        let p = Supervised::spawn(Spawn {
            program: Path::new("/bin/sh"),
            args: &[
                "-c".to_string(),
                "echo one; echo two >&2; exit 3".to_string(),
            ],
            fds: Vec::new(),
            log: &log,
            netns: None,
            run_as: None,
        })
        .expect("spawns");
        let exit = p.wait(Duration::from_secs(5)).await.expect("exits");
        assert_eq!(exit.to_string(), "exit status 3");
        assert_eq!(log_tail(&log), "one\ntwo");
    }

    #[tokio::test]
    async fn adopted_processes_are_watched_through_a_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawns");
        let pid = child.id();
        // The child may still be inside exec.
        while std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| c.is_empty()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = Supervised::adopt(pid, "not-in-the-cmdline");
        assert!(matches!(r, Err(ProcessError::NotOurs { .. })), "{r:?}");
        let p = Supervised::adopt(pid, "sleep 30").expect("adopts");
        assert!(p.adopted());
        assert_eq!(p.wait(Duration::from_millis(50)).await, None);
        child.kill().expect("kills");
        child.wait().expect("reaps");
        assert_eq!(p.wait(Duration::from_secs(5)).await, Some(Exit::Unknown));
        assert!(matches!(
            Supervised::adopt(pid, "sleep"),
            Err(ProcessError::NotRunning { .. })
        ));
    }
}
