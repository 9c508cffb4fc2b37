//! What `save` keeps of a VM, and re-attaching to a live Firecracker from
//! it (`load`, `from_grpc`); `check`.

use std::time::Duration;

use super::api::{GetInstanceInfo, InstanceState};
use super::hotplug::Hot;
use super::jailer::Jail;
use super::{vm_config, FcError, Firecracker, VmFiles, API_TIMEOUT, CHECK_TIMEOUT, FC};
use crate::backends::vmm::process::Supervised;
use crate::config::HypervisorConfig;
use crate::hypervisor::{HypervisorState, Result, VmState};

impl Firecracker {
    /// What `load` needs to re-attach to this VM.
    pub(super) fn saved_state(&self) -> HypervisorState {
        let f = self.files.as_ref();
        HypervisorState {
            hypervisor: FC,
            id: self.id.clone(),
            pid: self.fc.as_ref().map_or(0, Supervised::pid),
            uuid: String::new(),
            state: self.state,
            vm_dir: f.map(|f| f.dir.clone()).unwrap_or_default(),
            api_socket: f.map(VmFiles::api),
            console_socket: None,
            hotplugged_memory_mib: self.hot.memory_mib,
            hotplugged_devices: self.hot.to_strings(),
            config: self.config.clone(),
            ..HypervisorState::default()
        }
    }

    /// Re-attaches to the live Firecracker `state` describes.
    pub(super) async fn load_state(&mut self, state: HypervisorState) -> Result<()> {
        self.require("load", &[VmState::New])?;
        let mut config = state.config.clone();
        config.validate()?;
        self.config = config;
        self.restore_from_state(&state)?;
        self.adopt(state.pid)?;
        self.state = match self.instance_state(API_TIMEOUT).await? {
            InstanceState::Paused => VmState::Paused,
            InstanceState::Running => VmState::Running,
            InstanceState::NotStarted => VmState::Created,
        };
        tracing::info!(id = self.id, pid = state.pid, state = %self.state, "re-attached to firecracker");
        Ok(())
    }

    /// The VM's state as bytes, and the VM given away.
    pub(super) fn give_away(&mut self) -> Result<Vec<u8>> {
        let data = serde_json::to_vec(&self.saved_state()).map_err(FcError::Grpc)?;
        self.api = None;
        self.detached = true;
        self.devices.clear();
        Ok(data)
    }

    /// Re-attaches to the VM `data` (from `to_grpc`) describes.
    pub(super) async fn reattach_from_grpc(
        &mut self,
        config: &HypervisorConfig,
        data: &[u8],
    ) -> Result<()> {
        self.require("from_grpc", &[VmState::New])?;
        let state: HypervisorState = serde_json::from_slice(data).map_err(FcError::Grpc)?;
        let mut config = config.clone();
        config.validate()?;
        self.config = config;
        self.restore_from_state(&state)?;
        self.adopt(state.pid)?;
        self.state = state.state;
        Ok(())
    }

    /// Whether Firecracker is alive and answering; the state it reports.
    pub(super) async fn check_vm(&mut self) -> Result<()> {
        if self.fc.is_none() {
            return Err(self.invalid("check"));
        }
        if let Some(e) = self.exited_error() {
            self.api = None;
            self.state = VmState::Stopped;
            return Err(e);
        }
        match self.instance_state(CHECK_TIMEOUT).await? {
            InstanceState::Running => self.state = VmState::Running,
            InstanceState::Paused => self.state = VmState::Paused,
            InstanceState::NotStarted => {}
        }
        Ok(())
    }

    fn restore_from_state(&mut self, state: &HypervisorState) -> Result<(), FcError> {
        if state.hypervisor != FC {
            return Err(FcError::WrongHypervisor(state.hypervisor));
        }
        self.apply_config_options();
        self.id = state.id.clone();
        if let Some(parent) = state.vm_dir.parent() {
            self.storage = parent.to_path_buf();
        }
        let jail = match self.jailer() {
            Some(jailer) => {
                // The jail is where the saved API socket is:
                // `<base>/<exec>/<id>/root/run/firecracker.socket`.
                if let Some(base) = state
                    .api_socket
                    .as_deref()
                    .and_then(|p| p.ancestors().nth(5))
                {
                    self.options.chroot_base = base.to_path_buf();
                }
                let spec = self.jail_spec(&self.binary(), &jailer);
                Some(Jail::new(&spec)?)
            }
            None => None,
        };
        self.files = Some(VmFiles {
            dir: state.vm_dir.clone(),
            jail,
        });
        self.hot = Hot::from_strings(&state.hotplugged_devices, state.hotplugged_memory_mib);
        self.memory_region_mib = if self.config.virtio_mem {
            let host = crate::probe::host_memory_mib().map_err(FcError::HostMemory)?;
            vm_config::memory_hotplug(&self.config, host)?.map_or(0, |m| m.total_size_mib)
        } else {
            0
        };
        Ok(())
    }

    fn adopt(&mut self, pid: u32) -> Result<(), FcError> {
        self.fc = Some(Supervised::adopt(pid, &self.id)?);
        self.detached = false;
        Ok(())
    }

    async fn instance_state(&mut self, timeout: Duration) -> Result<InstanceState> {
        let api = self.api()?;
        let r = api
            .call(&GetInstanceInfo, timeout)
            .await
            .map_err(FcError::from);
        Ok(self.or_exited(r).await?.state)
    }
}
