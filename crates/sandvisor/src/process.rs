//! Processes by pid: how one ended ([`Exit`]), the one reader of
//! `/proc/<pid>/stat`, and the one TERM → grace → KILL loop ([`Stoppable`]).
//!
//! The VMM backends (`backends::vmm::process`), the supervisor and the CLI
//! all use these. A pid alone can be reused once its process is gone, so a
//! [`ProcessRef`] also records the process's start time (field 22 of
//! `/proc/<pid>/stat`) and only a process with both the pid and the start
//! time counts as alive.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process, named so that a reused pid is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks after boot, from `/proc/<pid>/stat`;
    /// 0 when it could not be read.
    pub start_time: u64,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It is gone, and no one who could see how it ended was there: it was
    /// not our child (adopted after a re-attach), or the status was
    /// collected elsewhere.
    Unknown,
}

impl Exit {
    /// The exit of a child, from its wait status.
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Unknown,
        }
    }

    /// Whether the process ended with status 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    /// The signal that killed it, when one did.
    pub fn signal(&self) -> Option<i32> {
        match *self {
            Exit::Signal(sig) => Some(sig),
            _ => None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by signal {s} ({sig})"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            Exit::Unknown => f.write_str("gone, exit status unknown (not our child)"),
        }
    }
}

/// A process that can be signalled and waited for: what the one
/// TERM → grace → KILL loop, [`Stoppable::terminate`], needs.
pub trait Stoppable {
    /// Sends `signal`, when the process still runs.
    fn send(&self, signal: Signal);

    /// Waits up to `timeout` for the process to end; whether it did.
    fn wait_ended(&self, timeout: Duration) -> impl std::future::Future<Output = bool> + Send;

    /// Ends the process: `SIGTERM`, up to `grace` to go, then `SIGKILL` and
    /// up to [`REAP_TIMEOUT`] more. Returns whether it is gone.
    fn terminate(&self, grace: Duration) -> impl std::future::Future<Output = bool> + Send
    where
        Self: Sync,
    {
        async move {
            self.send(Signal::SIGTERM);
            if self.wait_ended(grace).await {
                return true;
            }
            self.send(Signal::SIGKILL);
            self.wait_ended(REAP_TIMEOUT).await
        }
    }
}

/// How long a process may take to go after `SIGKILL`.
pub const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a look at a process found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// It runs.
    Alive,
    /// It has ended; how, when this process is its parent.
    Gone(Exit),
}

/// Reads the state letter and start time of `pid` from `/proc/<pid>/stat`:
/// the one reader of that file.
pub fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses:
    // the fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state); the start time is field 22.
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start_time))
}

impl ProcessRef {
    /// The running process `pid`, with its start time.
    pub fn of(pid: u32) -> Self {
        ProcessRef {
            pid,
            start_time: proc_stat(pid).map_or(0, |(_, t)| t),
        }
    }

    /// This process.
    pub fn current() -> Self {
        Self::of(std::process::id())
    }

    /// Whether the process still runs: the pid exists, is not a zombie, and
    /// started when this one did.
    pub fn is_alive(&self) -> bool {
        match proc_stat(self.pid) {
            Some((state, start)) => {
                state != 'Z' && state != 'X' && (self.start_time == 0 || start == self.start_time)
            }
            None => false,
        }
    }

    /// Whether the process still runs, and how it ended when it does not.
    ///
    /// When this process is its parent, the exit status is read with
    /// `waitid(WNOWAIT)`, which leaves the zombie for whoever owns the
    /// child handle to reap; otherwise the status is [`Exit::Unknown`].
    pub fn liveness(&self) -> Liveness {
        let Ok(raw) = i32::try_from(self.pid) else {
            return Liveness::Gone(Exit::Unknown);
        };
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(Pid::from_raw(raw)), flags) {
            Ok(WaitStatus::Exited(_, code)) => Liveness::Gone(Exit::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => Liveness::Gone(Exit::Signal(sig as i32)),
            // Not our child (ECHILD), or still running: /proc decides.
            _ if self.is_alive() => Liveness::Alive,
            _ => Liveness::Gone(Exit::Unknown),
        }
    }

    /// Sends `signal` if the process still runs. Returns whether it was sent.
    pub fn signal(&self, signal: Signal) -> bool {
        if !self.is_alive() {
            return false;
        }
        let Ok(raw) = i32::try_from(self.pid) else {
            return false;
        };
        kill(Pid::from_raw(raw), signal).is_ok()
    }

    /// Waits up to `timeout` for the process to end. Returns whether it did.
    pub async fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Stoppable for ProcessRef {
    fn send(&self, signal: Signal) {
        self.signal(signal);
    }

    async fn wait_ended(&self, timeout: Duration) -> bool {
        self.wait_gone(timeout).await
    }
}

/// Whether a process with `pid` exists and is neither a zombie nor dead.
pub fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive() {
        let me = ProcessRef::current();
        assert_ne!(me.start_time, 0);
        assert!(me.is_alive());
        assert_eq!(me.liveness(), Liveness::Alive);
        let reused = ProcessRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive());
    }

    #[tokio::test]
    async fn child_exit_status_is_seen_without_reaping() {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "kill -9 $$"])
            .spawn()
            .expect("sh runs");
        let pid = child.id().expect("child has a pid");
        let process = ProcessRef::of(pid);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while process.liveness() == Liveness::Alive {
            assert!(tokio::time::Instant::now() < deadline, "child did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(process.liveness(), Liveness::Gone(Exit::Signal(9)));
        // The zombie is still there for its owner to reap.
        let status = child.wait().await.expect("child is reaped by its owner");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    #[test]
    fn exits_read_well() {
        assert_eq!(Exit::Code(1).to_string(), "exit status 1");
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
    }
}
