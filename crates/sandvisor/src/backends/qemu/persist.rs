//! A VM's state outside this handle: [`HypervisorState`] for `save` and
//! `load`, its JSON for `to_grpc` and `from_grpc`, and re-adopting the
//! processes of a VM another handle started.

use std::collections::BTreeSet;
use std::path::Path;

use super::cmdline::VmPaths;
use super::hotplug::HotplugState;
use super::launch::host_memory_mib;
use super::qmp;
use super::{Qemu, QemuError, QemuSpec};
use crate::backends::vmm::process::ProcessError;
use crate::backends::vmm::process::Supervised;
use crate::backends::vmm::virtiofsd;
use crate::backends::vmm::vsock_daemon::{VsockDaemon, VsockDaemonError};
use crate::config::HypervisorConfig;
use crate::hypervisor::{HypervisorState, Result, VmState};
use crate::hypervisor_type::HypervisorType;

impl Qemu {
    /// The state another handle needs to re-attach to this VM.
    pub(super) fn snapshot(&self) -> HypervisorState {
        let paths = self.paths.as_ref();
        HypervisorState {
            hypervisor: HypervisorType::Qemu,
            id: self.id.clone(),
            pid: self.qemu.as_ref().map_or(0, Supervised::pid),
            uuid: self.uuid.clone(),
            state: self.state,
            vm_dir: paths.map(|p| p.dir.clone()).unwrap_or_default(),
            api_socket: paths.map(|p| p.qmp.clone()),
            console_socket: paths.map(|p| p.console.clone()),
            block_index_map: self
                .hot
                .block_indexes
                .iter()
                .copied()
                .collect::<BTreeSet<_>>(),
            hotplugged_memory_mib: self.hot.memory_mib,
            hotplugged_vcpus: self.hot.vcpus.clone(),
            hotplugged_memory: self.hot.memory.clone(),
            hotplugged_devices: self.hot.device_strings(),
            virtiofsd_pid: self.virtiofsd.as_ref().map(Supervised::pid),
            vsock_daemon: self
                .vsock_daemon
                .as_ref()
                .map(VsockDaemon::process_ref)
                .or(self.vsock_daemon_lost),
            pcie_root_port: self.config.pcie_root_port,
            hotplug_vfio_on_root_bus: self.config.hotplug_vfio_on_root_bus,
            config: self.config.clone(),
            ..HypervisorState::default()
        }
    }

    /// Re-attaches to the VM `state` describes and asks QEMU whether it
    /// runs.
    pub(super) async fn attach(&mut self, state: HypervisorState) -> Result<()> {
        self.require("load", &[VmState::New])?;
        let mut config = state.config.clone();
        config.validate()?;
        self.config = config;
        self.restore_from_state(&state)?;
        self.adopt(&state)?;
        let qmp = self.qmp().await?;
        let status = qmp
            .execute(&qmp::QueryStatus {})
            .await
            .map_err(QemuError::from)?;
        self.state = if status.running {
            VmState::Running
        } else {
            VmState::Paused
        };
        tracing::info!(id = self.id, pid = state.pid, state = %self.state, "re-attached to qemu");
        Ok(())
    }

    /// [`Qemu::attach`] from the JSON [`Qemu::detach_to_grpc`] wrote,
    /// trusting the recorded state instead of asking QEMU.
    pub(super) async fn attach_from_grpc(
        &mut self,
        config: &HypervisorConfig,
        data: &[u8],
    ) -> Result<()> {
        self.require("from_grpc", &[VmState::New])?;
        let state: HypervisorState = serde_json::from_slice(data).map_err(QemuError::Grpc)?;
        let mut config = config.clone();
        config.validate()?;
        self.config = config;
        self.restore_from_state(&state)?;
        self.adopt(&state)?;
        self.state = state.state;
        Ok(())
    }

    /// The state as JSON; this handle lets go of the VM.
    pub(super) async fn detach_to_grpc(&mut self) -> Result<Vec<u8>> {
        let data = serde_json::to_vec(&self.snapshot()).map_err(QemuError::Grpc)?;
        self.qmp = None;
        self.detached = true;
        // Close the descriptors the devices held (vhost-vsock): QEMU has
        // its own copies.
        self.devices.clear();
        Ok(data)
    }

    pub(super) fn restore_from_state(&mut self, state: &HypervisorState) -> Result<(), QemuError> {
        if state.hypervisor != HypervisorType::Qemu {
            return Err(QemuError::WrongHypervisor(state.hypervisor));
        }
        self.id = state.id.clone();
        self.uuid = state.uuid.clone();
        let storage = state
            .vm_dir
            .parent()
            .map_or_else(|| self.storage.clone(), Path::to_path_buf);
        self.storage = storage;
        let mut paths = VmPaths::new(&self.storage, &self.id);
        if let Some(qmp) = &state.api_socket {
            paths.qmp = qmp.clone();
        }
        if let Some(console) = &state.console_socket {
            paths.console = console.clone();
        }
        self.paths = Some(paths);
        self.spec = Some(QemuSpec::new(&self.config)?);
        let mut hot = HotplugState::new(self.config.default_bridges, state.pcie_root_port);
        hot.restore_devices(&state.hotplugged_devices)?;
        hot.vcpus = state.hotplugged_vcpus.clone();
        hot.memory = state.hotplugged_memory.clone();
        hot.memory_mib = state.hotplugged_memory_mib;
        hot.block_indexes = state.block_index_map.clone();
        self.hot = hot;
        self.host_memory_mib = host_memory_mib()?;
        // The same host resolves `auto` the same way it did at start.
        self.accel = Some(self.resolve_accel()?);
        Ok(())
    }

    pub(super) fn adopt(&mut self, state: &HypervisorState) -> Result<(), QemuError> {
        let qmp_path = self
            .paths
            .as_ref()
            .map(|p| p.qmp.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The helpers first: when QEMU is gone, this load fails, and the
        // cleanup that follows still ends the helpers it knows.
        let (virtiofsd, virtiofsd_adopted) = virtiofsd::adopt(state.virtiofsd_pid);
        self.virtiofsd = virtiofsd;
        let vsock_daemon = self.adopt_vsock_daemon(state);
        self.qemu = Some(Supervised::adopt(state.pid, &qmp_path)?);
        virtiofsd_adopted?;
        vsock_daemon?;
        self.detached = false;
        Ok(())
    }

    /// Adopts the recorded vhost-device-vsock; one that is gone is only
    /// noted, for `check` to report.
    fn adopt_vsock_daemon(&mut self, state: &HypervisorState) -> Result<(), QemuError> {
        self.vsock_daemon = None;
        self.vsock_daemon_lost = None;
        if let (Some(process), Some(paths)) = (state.vsock_daemon, &self.paths) {
            let daemon_paths = super::daemon_paths(paths);
            match VsockDaemon::adopt(process, daemon_paths) {
                Ok(d) => self.vsock_daemon = Some(d),
                // Gone while no one watched: the VM runs on without its
                // agent channel, which `check` reports; stop and cleanup
                // still work.
                Err(
                    VsockDaemonError::Replaced { .. }
                    | VsockDaemonError::Process(ProcessError::NotRunning { .. }),
                ) => {
                    tracing::warn!(
                        pid = process.pid,
                        "vhost-device-vsock is gone: the agent channel is lost"
                    );
                    self.vsock_daemon_lost = Some(process);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
