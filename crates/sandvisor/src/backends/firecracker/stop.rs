//! Stopping Firecracker (`SendCtrlAltDel`, then SIGTERM and SIGKILL under
//! deadlines) and removing what a VM leaves: its directory, its jail and
//! the jailer's cgroups.

use std::path::Path;

use nix::sys::signal::Signal;

use super::api::{ActionType, InstanceActionInfo, PutAction};
use super::jailer::CgroupVersion;
use super::{jail_fs, remove_dir, FcError, Firecracker, CTRL_ALT_DEL_GRACE, FC, TERM_GRACE};
use crate::hypervisor::{Error, Result, VmState};
use crate::process::{Exit, REAP_TIMEOUT};

impl Firecracker {
    /// Stops the VM: `SendCtrlAltDel` to a running guest, then SIGTERM and
    /// SIGKILL under deadlines; a Firecracker that had died on its own is
    /// reported with its exit status.
    pub(super) async fn stop_vm(&mut self) -> Result<()> {
        let Some(p) = self.fc.take() else {
            if matches!(self.state, VmState::Running | VmState::Paused) {
                self.state = VmState::Stopped;
            }
            return Ok(());
        };
        let died_alone = p.exited();
        if died_alone.is_none() {
            // A running guest is asked first (a Linux guest reboots, which
            // ends Firecracker); a paused one could not take it.
            let mut asked = false;
            if self.state == VmState::Running {
                if let Ok(api) = self.api() {
                    let ctrl_alt_del = PutAction(InstanceActionInfo {
                        action_type: ActionType::SendCtrlAltDel,
                    });
                    match api.call(&ctrl_alt_del, CTRL_ALT_DEL_GRACE).await {
                        Ok(()) => asked = true,
                        Err(e) => tracing::debug!(error = %e, "SendCtrlAltDel"),
                    }
                }
            }
            let went = asked && p.wait(CTRL_ALT_DEL_GRACE).await.is_some();
            if !went {
                let pid_ns_init = self.options.new_pid_ns
                    && self.files.as_ref().is_some_and(|f| f.jail.is_some());
                if pid_ns_init {
                    // The init of a pid namespace ignores SIGTERM.
                    p.kill();
                } else {
                    p.signal(Signal::SIGTERM);
                    if p.wait(TERM_GRACE).await.is_none() {
                        tracing::warn!(pid = p.pid(), "firecracker ignored SIGTERM: SIGKILL");
                        p.kill();
                    }
                }
                if p.wait(REAP_TIMEOUT).await.is_none() {
                    tracing::error!(pid = p.pid(), "firecracker did not die after SIGKILL");
                }
            }
        }
        self.api = None;
        self.state = VmState::Stopped;
        match died_alone {
            Some(exit) if !matches!(exit, Exit::Unknown) && !exit.success() => {
                let e = Error::VmmExited {
                    hypervisor: FC,
                    binary: self.binary(),
                    pid: p.pid(),
                    exit,
                    starting: false,
                    log_tail: self.log_tail(),
                };
                tracing::error!(id = self.id, error = %e, "firecracker had died before stop");
                Err(e)
            }
            Some(exit) => {
                tracing::info!(id = self.id, %exit, "firecracker had exited before stop");
                Ok(())
            }
            None => {
                tracing::info!(id = self.id, "sandbox stopped");
                Ok(())
            }
        }
    }

    /// Forgets a stopped VMM and removes the VM's files.
    pub(super) async fn cleanup_vm(&mut self) -> Result<()> {
        if self.fc.as_ref().is_some_and(|p| p.exited().is_none()) {
            return Err(self.invalid("cleanup"));
        }
        self.api = None;
        self.fc = None;
        self.devices.clear();
        self.remove_files()?;
        tracing::debug!(id = self.id, "VM files removed");
        Ok(())
    }

    pub(super) fn remove_files(&self) -> Result<(), FcError> {
        let Some(f) = &self.files else {
            return Ok(());
        };
        let mut first = None;
        if let Some(j) = &f.jail {
            if let Err(e) = jail_fs::remove_jail(j.dir()) {
                first = Some(FcError::from(e));
            }
            // The jailer's parent directory, `<base>/firecracker`, when empty.
            if let Some(parent) = j.dir().parent() {
                let _ = std::fs::remove_dir(parent);
            }
            self.remove_cgroups();
        }
        if let Err(e) = remove_dir(&f.dir) {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Removes the cgroups the jailer made (`<controller
    /// mount>/firecracker/<id>` for each controller set).
    pub(super) fn remove_cgroups(&self) {
        if self.options.cgroups.is_empty() {
            return;
        }
        let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
            return;
        };
        for setting in &self.options.cgroups {
            let controller = setting.split('.').next().unwrap_or_default();
            for line in mounts.lines() {
                let mut f = line.split_whitespace();
                let (Some(_), Some(dir), Some(fs), Some(opts)) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    continue;
                };
                let matches = match self.options.cgroup_version {
                    CgroupVersion::V1 => fs == "cgroup" && opts.split(',').any(|o| o == controller),
                    CgroupVersion::V2 => fs == "cgroup2",
                };
                if matches {
                    let cg = Path::new(dir).join("firecracker").join(&self.id);
                    let _ = std::fs::remove_dir(&cg);
                }
            }
        }
    }
}
