//! Reaping: as PID 1 the agent inherits every orphan, so one thread waits
//! for any child and hands the statuses of the agent's own children to
//! whoever spawned them. Nothing else in the agent may call `wait`.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use sandvisor_proto::ExitStatus;

use crate::log;

/// Hands exit statuses to the threads waiting for them.
#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, Sender<ExitStatus>>>,
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> Arc<Reaper> {
        let reaper = Arc::new(Reaper::default());
        let r = Arc::clone(&reaper);
        let spawned = thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run());
        if let Err(e) = spawned {
            log!("cannot start the reaper thread: {e}");
        }
        reaper
    }

    fn waiters(&self) -> MutexGuard<'_, HashMap<i32, Sender<ExitStatus>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and returns the child with a receiver of its exit
    /// status. The lock is held across spawn and registration, so a child
    /// that exits at once is still handed over.
    ///
    /// # Errors
    /// Those of [`Command::spawn`].
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, Receiver<ExitStatus>)> {
        let mut waiters = self.waiters();
        let child = cmd.spawn()?;
        let (tx, rx) = mpsc::channel();
        let pid = i32::try_from(child.id()).expect("pids fit in i32");
        waiters.insert(pid, tx);
        Ok((child, rx))
    }

    fn run(&self) {
        loop {
            // Peek at the next zombie without reaping it, then reap it under
            // the lock. `Command::spawn` holds that lock too and may wait on
            // a child whose exec failed; this way it reaps that child itself
            // and the two never race for it.
            let pid = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => continue,
                },
                Err(Errno::EINTR) => continue,
                // No children right now.
                Err(Errno::ECHILD) => {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => {
                    log!("waitid failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let mut waiters = self.waiters();
            let status = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::Signal(sig as i32),
                // Reaped by someone else (a failed spawn), or not a zombie
                // after all.
                Ok(_) | Err(_) => continue,
            };
            if let Some(tx) = waiters.remove(&pid.as_raw()) {
                // The waiter may have given up; the status is then not
                // needed.
                let _ = tx.send(status);
            }
        }
    }
}
