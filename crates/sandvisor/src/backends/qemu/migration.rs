//! Migration: saving a VM's device state to a file (`save_sandbox`, and
//! the template a VM cache boots from) and restoring a template at start.
//!
//! The state file is opened here and handed to QEMU over QMP (`getfd`,
//! the descriptor as `SCM_RIGHTS`), and the migration URI names it
//! (`fd:<name>`). QEMU runs no shell or `cat` for it, so its seccomp
//! filter denies `spawn` (see the `-sandbox` option of the command line).

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::qmp::{self, Qmp};
use super::{Qemu, QemuError, MIGRATION_TIMEOUT};
use crate::hypervisor::{Hypervisor, Result, VmState};

impl Qemu {
    /// Loads device state from the template and resumes: the memory comes
    /// from the template's file (mapped private), the rest from
    /// `devices_state_path`.
    pub(super) async fn restore_template(&mut self) -> Result<(), QemuError> {
        let state_file = self
            .config
            .devices_state_path
            .clone()
            .ok_or(QemuError::NoDevicesStatePath)?;
        let file = File::open(&state_file).map_err(|source| QemuError::StateFile {
            path: state_file.clone(),
            source,
        })?;
        let qmp = self.qmp().await?;
        let uri = pass_fd(&qmp, &file).await?;
        drop(file);
        qmp.execute(&qmp::MigrateSetCapabilities {
            capabilities: vec![qmp::MigrationCapability {
                capability: "x-ignore-shared",
                state: true,
            }],
        })
        .await?;
        qmp.execute(&qmp::MigrateIncoming { uri: uri.clone() })
            .await?;
        wait_migration(&qmp, &uri, MIGRATION_TIMEOUT).await?;
        qmp.execute(&qmp::Cont {}).await?;
        Ok(())
    }

    /// Pauses the VM if it runs and migrates its state to
    /// `devices_state_path`; a template skips its shared memory.
    pub(super) async fn save_to_file(&mut self) -> Result<()> {
        self.require("save_sandbox", &[VmState::Running, VmState::Paused])?;
        if self.hybrid_vsock() {
            return Err(crate::hypervisor::Error::unsupported(
                "save_sandbox",
                crate::hypervisor_type::HypervisorType::Qemu,
                "the VM has a hybrid vsock (vhost-user-vsock), which QEMU cannot migrate: its state cannot be saved",
            ));
        }
        let path = self
            .config
            .devices_state_path
            .clone()
            .ok_or(QemuError::NoDevicesStatePath)?;
        if self.state == VmState::Running {
            self.pause_sandbox().await?;
        }
        let template = self.config.boot_to_be_template;
        let file = create_state_file(&path)?;
        let qmp = self.qmp().await?;
        if template {
            // The memory is the template's shared file: skip it.
            qmp.execute(&qmp::MigrateSetCapabilities {
                capabilities: vec![qmp::MigrationCapability {
                    capability: "x-ignore-shared",
                    state: true,
                }],
            })
            .await
            .map_err(QemuError::from)?;
        }
        let uri = pass_fd(&qmp, &file).await?;
        drop(file);
        qmp.execute(&qmp::Migrate { uri: uri.clone() })
            .await
            .map_err(QemuError::from)?;
        wait_migration(&qmp, &uri, MIGRATION_TIMEOUT).await?;
        tracing::info!(id = self.id, path = %path.display(), "sandbox saved");
        Ok(())
    }
}

/// The name the migration's descriptor gets in QEMU's monitor.
pub const MIGRATION_FD_NAME: &str = "sv-migration";

/// The migration URI of a descriptor `getfd` named `name`.
pub fn fd_uri(name: &str) -> String {
    format!("fd:{name}")
}

/// Hands QEMU a copy of `file` under [`MIGRATION_FD_NAME`] and returns the
/// URI naming it. QEMU keeps its copy until the migration ends; ours can
/// be closed at once.
async fn pass_fd(qmp: &Qmp, file: &File) -> Result<String, QemuError> {
    qmp.execute_with_fd(
        &qmp::GetFd {
            fdname: MIGRATION_FD_NAME.to_string(),
        },
        file.as_fd(),
        qmp::DEFAULT_TIMEOUT,
    )
    .await?;
    Ok(fd_uri(MIGRATION_FD_NAME))
}

/// Creates (or truncates) the device state file, readable by its owner
/// only: it holds the guest's device state.
fn create_state_file(path: &Path) -> Result<File, QemuError> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| QemuError::StateFile {
            path: path.to_path_buf(),
            source,
        })
}

/// Polls `query-migrate` until the migration completes, fails, or
/// `timeout` passes; keeps the last status for the error.
async fn wait_migration(qmp: &Qmp, uri: &str, timeout: Duration) -> Result<(), QemuError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("none");
    loop {
        let info = qmp.execute(&qmp::QueryMigrate {}).await?;
        let status = info.status.unwrap_or_else(|| "none".to_string());
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(QemuError::Migration {
                    uri: uri.to_string(),
                    status,
                    desc: info.error_desc.unwrap_or_default(),
                })
            }
            _ => {}
        }
        if status != last {
            tracing::debug!(status, "migration");
            last = status;
        }
        if Instant::now() >= deadline {
            return Err(QemuError::Migration {
                uri: uri.to_string(),
                status: last,
                desc: format!("not completed within {timeout:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
