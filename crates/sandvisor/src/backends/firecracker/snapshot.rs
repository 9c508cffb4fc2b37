//! Pausing, resuming, writing a snapshot, and booting a fresh Firecracker
//! from a template's snapshot.

use super::api::{
    self, MemoryBackend, MemoryBackendType, PatchVm, PutSnapshotCreate, PutSnapshotLoad,
    SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmRunState, VmStateUpdate,
    VsockOverride,
};
use super::jailer::Placement;
use super::launch::send_pre_boot;
use super::vm_config::PreBoot;
use super::{
    jail_fs, names, FcError, Firecracker, API_TIMEOUT, PLACEHOLDER_BYTES, SNAPSHOT_TIMEOUT,
};
use crate::backends::vmm::rest::RestClient;
use crate::device::Device;
use crate::hypervisor::{Result, VmState};

impl Firecracker {
    /// Pauses the running guest (`PATCH /vm`).
    pub(super) async fn pause_vm(&mut self) -> Result<()> {
        self.require("pause_sandbox", &[VmState::Running])?;
        let api = self.api()?;
        let r = api
            .call(
                &PatchVm(VmStateUpdate {
                    state: VmRunState::Paused,
                }),
                API_TIMEOUT,
            )
            .await
            .map_err(FcError::from);
        self.or_exited(r).await?;
        self.state = VmState::Paused;
        Ok(())
    }

    /// Resumes the paused guest (`PATCH /vm`).
    pub(super) async fn resume_vm(&mut self) -> Result<()> {
        self.require("resume_sandbox", &[VmState::Paused])?;
        let api = self.api()?;
        let r = api
            .call(
                &PatchVm(VmStateUpdate {
                    state: VmRunState::Resumed,
                }),
                API_TIMEOUT,
            )
            .await
            .map_err(FcError::from);
        self.or_exited(r).await?;
        self.state = VmState::Running;
        Ok(())
    }

    /// Pauses the guest and writes a full snapshot: the state and memory
    /// files the config names, else `vm.snap` and `vm.mem` beside Firecracker.
    pub(super) async fn snapshot_vm(&mut self) -> Result<()> {
        self.require("save_sandbox", &[VmState::Running, VmState::Paused])?;
        if self.state == VmState::Running {
            self.pause_vm().await?;
        }
        let f = self.files.clone().expect("a running VM has its files");
        let jailed = f.jail.is_some();
        // Firecracker writes where it can see: the jail, or the VM directory
        // unless the config names the files.
        let (state_in, mem_in) = match (
            jailed,
            &self.config.devices_state_path,
            &self.config.memory_path,
        ) {
            (false, Some(s), Some(m)) => (s.clone(), m.clone()),
            _ => (f.inside(names::SNAPSHOT), f.inside(names::MEMORY)),
        };
        let api = self.api()?;
        let r = api
            .call(
                &PutSnapshotCreate(SnapshotCreateParams {
                    snapshot_type: Some(SnapshotType::Full),
                    snapshot_path: state_in,
                    mem_file_path: mem_in,
                }),
                SNAPSHOT_TIMEOUT,
            )
            .await
            .map_err(FcError::from);
        self.or_exited(r).await?;
        if jailed {
            for (name, to) in [
                (names::SNAPSHOT, &self.config.devices_state_path),
                (names::MEMORY, &self.config.memory_path),
            ] {
                if let Some(to) = to {
                    let from = f.host(name);
                    std::fs::rename(&from, to)
                        .or_else(|_| std::fs::copy(&from, to).map(drop))
                        .map_err(|source| FcError::SnapshotFile {
                            from: from.clone(),
                            to: to.clone(),
                            source,
                        })?;
                    let _ = std::fs::remove_file(&from);
                }
            }
        }
        tracing::info!(id = self.id, "sandbox saved");
        Ok(())
    }

    /// Loads the template's snapshot into the fresh process and resumes it.
    pub(super) async fn restore_template(&mut self, api: &RestClient) -> Result<()> {
        let (Some(mem), Some(state)) = (
            self.config.memory_path.clone(),
            self.config.devices_state_path.clone(),
        ) else {
            return Err(FcError::NoTemplateFiles.into());
        };
        let f = self
            .files
            .clone()
            .expect("create_sandbox set the files before the state became Created");
        let (uid, gid) = self.owner();
        let mem = self.hand_over(&mem, "snapshot", Placement::LinkOrCopy, true)?;
        let state = self.hand_over(&state, "snapshot", Placement::LinkOrCopy, false)?;
        for name in [names::LOG, names::METRICS, names::SERIAL] {
            jail_fs::make_file(&f.host(name), uid, gid).map_err(FcError::from)?;
        }
        // The snapshot names the template's placeholder drives by the path
        // Firecracker had: in a jail, the same path in this jail. (Without
        // a jail it is the template VM's directory, which must still be
        // there: Firecracker cannot re-point drives at load.)
        if f.jail.is_some() {
            for id in &self.hot.placeholders {
                let host = f.host(&format!("{id}.img"));
                jail_fs::make_placeholder(&host, PLACEHOLDER_BYTES, uid, gid)
                    .map_err(FcError::from)?;
            }
        }
        let pre = [
            PreBoot::Logger(api::PutLogger(api::Logger {
                log_path: f.inside(names::LOG),
                level: Some(api::LogLevel::Info),
                show_level: Some(true),
                show_log_origin: None,
            })),
            PreBoot::Metrics(api::PutMetrics(api::Metrics {
                metrics_path: f.inside(names::METRICS),
            })),
            PreBoot::Serial(api::PutSerial(api::SerialConfig {
                serial_out_path: Some(f.inside(names::SERIAL)),
            })),
        ];
        for r in &pre {
            let res = send_pre_boot(api, r).await;
            self.or_exited(res).await?;
        }
        let has_vsock = self
            .devices
            .iter()
            .any(|d| matches!(d, Device::HybridVsock(_)));
        let load = PutSnapshotLoad(SnapshotLoadParams {
            snapshot_path: state,
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: mem,
            },
            resume_vm: true,
            track_dirty_pages: None,
            vsock_override: has_vsock.then(|| VsockOverride {
                uds_path: f.inside(names::VSOCK),
            }),
            network_overrides: Vec::new(),
        });
        let res = api
            .call(&load, SNAPSHOT_TIMEOUT)
            .await
            .map_err(FcError::from);
        self.or_exited(res).await
    }
}
