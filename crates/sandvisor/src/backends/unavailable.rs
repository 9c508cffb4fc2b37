//! Backends sandvisor names but does not drive yet: Firecracker, Cloud
//! Hypervisor and ACRN. They validate and keep their config, so `env` and
//! `check` work with their Kata sections, and answer every VM operation with
//! a typed [`Error::Unsupported`]; their [`Capabilities`] are all false.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::HypervisorConfig;
use crate::device::{Device, HotplugResult, MemoryDevice, VcpuThreadIds};
use crate::hypervisor::{
    Capabilities, Error, Hypervisor, HypervisorState, NetworkNamespace, Result,
};
use crate::hypervisor_type::HypervisorType;
use crate::socket::AgentSocket;

/// A backend with a config and no VMM driver.
#[derive(Debug, Clone, PartialEq)]
pub struct Unavailable {
    kind: HypervisorType,
    config: HypervisorConfig,
}

impl Unavailable {
    /// The backend for `kind`.
    pub fn new(kind: HypervisorType) -> Self {
        Unavailable {
            kind,
            config: HypervisorConfig::default(),
        }
    }

    fn no(&self, op: &'static str) -> Error {
        Error::unsupported(
            op,
            self.kind,
            format!(
                "sandvisor does not drive {} yet; use hypervisor = \"qemu\"",
                self.kind
            ),
        )
    }
}

#[async_trait]
impl Hypervisor for Unavailable {
    fn hypervisor_type(&self) -> HypervisorType {
        self.kind
    }

    async fn create_sandbox(
        &mut self,
        _id: &str,
        _network_ns: &NetworkNamespace,
        config: &HypervisorConfig,
        _stateful: bool,
    ) -> Result<()> {
        let mut config = config.clone();
        config.validate()?;
        self.config = config;
        Ok(())
    }
    async fn start_sandbox(&mut self, _timeout: Duration) -> Result<()> {
        Err(self.no("start_sandbox"))
    }
    async fn stop_sandbox(&mut self) -> Result<()> {
        Err(self.no("stop_sandbox"))
    }
    async fn pause_sandbox(&mut self) -> Result<()> {
        Err(self.no("pause_sandbox"))
    }
    async fn save_sandbox(&mut self) -> Result<()> {
        Err(self.no("save_sandbox"))
    }
    async fn resume_sandbox(&mut self) -> Result<()> {
        Err(self.no("resume_sandbox"))
    }
    async fn add_device(&mut self, _device: Device) -> Result<()> {
        Err(self.no("add_device"))
    }
    async fn hotplug_add_device(&mut self, _device: Device) -> Result<HotplugResult> {
        Err(self.no("hotplug_add_device"))
    }
    async fn hotplug_remove_device(&mut self, _device: Device) -> Result<HotplugResult> {
        Err(self.no("hotplug_remove_device"))
    }
    async fn resize_memory(&mut self, _m: u32, _b: u32, _p: bool) -> Result<(u32, MemoryDevice)> {
        Err(self.no("resize_memory"))
    }
    async fn resize_vcpus(&mut self, _vcpus: u32) -> Result<(u32, u32)> {
        Err(self.no("resize_vcpus"))
    }
    async fn sandbox_console(&self, _id: &str) -> Result<Option<PathBuf>> {
        Err(self.no("sandbox_console"))
    }
    async fn disconnect(&mut self) {}
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    fn hypervisor_config(&self) -> HypervisorConfig {
        self.config.clone()
    }
    async fn thread_ids(&mut self) -> Result<VcpuThreadIds> {
        Err(self.no("thread_ids"))
    }
    async fn cleanup(&mut self) -> Result<()> {
        Ok(())
    }
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    async fn from_grpc(&mut self, _config: &HypervisorConfig, _data: &[u8]) -> Result<()> {
        Err(self.no("from_grpc"))
    }
    async fn to_grpc(&mut self) -> Result<Vec<u8>> {
        Err(self.no("to_grpc"))
    }
    async fn check(&mut self) -> Result<()> {
        Err(self.no("check"))
    }
    fn save(&self) -> HypervisorState {
        HypervisorState {
            hypervisor: self.kind,
            config: self.config.clone(),
            ..HypervisorState::default()
        }
    }
    async fn load(&mut self, _state: HypervisorState) -> Result<()> {
        Err(self.no("load"))
    }
    fn generate_socket(&self, _id: &str, _use_vsock: bool) -> Result<AgentSocket> {
        Err(self.no("generate_socket"))
    }
}
