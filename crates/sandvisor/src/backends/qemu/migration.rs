//! Migration: saving a VM's device state to a file (`save_sandbox`, and
//! the template a VM cache boots from) and restoring a template at start.

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
        let uri = format!("exec:cat {}", shell_quote(&state_file.to_string_lossy()));
        let qmp = self.qmp().await?;
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
        let uri = format!("exec:cat > {}", shell_quote(&path.to_string_lossy()));
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
        qmp.execute(&qmp::Migrate { uri: uri.clone() })
            .await
            .map_err(QemuError::from)?;
        wait_migration(&qmp, &uri, MIGRATION_TIMEOUT).await?;
        tracing::info!(id = self.id, path = %path.display(), "sandbox saved");
        Ok(())
    }
}

/// Single-quotes `s` for `/bin/sh`, which runs `exec:` migration commands.
pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
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
