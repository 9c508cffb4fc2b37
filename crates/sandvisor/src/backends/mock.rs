//! The mock backend: no VM, the seed's answers. For testing the layers above.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::HypervisorConfig;
use crate::device::{Device, HotplugResult, MemoryDevice, UnixSocket, VcpuThreadIds};
use crate::hypervisor::{
    Capabilities, Error, Hypervisor, HypervisorState, NetworkNamespace, Result,
};
use crate::hypervisor_type::HypervisorType;
use crate::socket::AgentSocket;

/// A hypervisor that validates its config and otherwise succeeds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MockHypervisor {
    config: HypervisorConfig,
}

impl MockHypervisor {
    /// A new mock.
    pub fn new() -> Self {
        Self::default()
    }

    fn vm_cache_unsupported(op: &'static str) -> Error {
        Error::unsupported(op, HypervisorType::Mock, "not supported by VM cache")
    }
}

#[async_trait]
impl Hypervisor for MockHypervisor {
    fn hypervisor_type(&self) -> HypervisorType {
        HypervisorType::Mock
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
        Ok(())
    }

    async fn stop_sandbox(&mut self) -> Result<()> {
        Ok(())
    }

    async fn pause_sandbox(&mut self) -> Result<()> {
        Ok(())
    }

    async fn save_sandbox(&mut self) -> Result<()> {
        Ok(())
    }

    async fn resume_sandbox(&mut self) -> Result<()> {
        Ok(())
    }

    async fn add_device(&mut self, _device: Device) -> Result<()> {
        Ok(())
    }

    async fn hotplug_add_device(&mut self, device: Device) -> Result<HotplugResult> {
        Ok(match device {
            Device::Cpu(n) => HotplugResult::Cpus(n),
            Device::Memory(m) => HotplugResult::MemoryMib(m.size_mib),
            _ => HotplugResult::Attached(None),
        })
    }

    async fn hotplug_remove_device(&mut self, device: Device) -> Result<HotplugResult> {
        Ok(match device {
            Device::Cpu(n) => HotplugResult::Cpus(n),
            Device::Memory(_) => HotplugResult::MemoryMib(0),
            _ => HotplugResult::Attached(None),
        })
    }

    async fn resize_memory(
        &mut self,
        _mem_mib: u32,
        _block: u32,
        _probe: bool,
    ) -> Result<(u32, MemoryDevice)> {
        Ok((0, MemoryDevice::default()))
    }

    async fn resize_vcpus(&mut self, _vcpus: u32) -> Result<(u32, u32)> {
        Ok((0, 0))
    }

    async fn sandbox_console(&self, _id: &str) -> Result<Option<PathBuf>> {
        Ok(None)
    }

    async fn disconnect(&mut self) {}

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn hypervisor_config(&self) -> HypervisorConfig {
        self.config.clone()
    }

    async fn thread_ids(&mut self) -> Result<VcpuThreadIds> {
        let mut ids = VcpuThreadIds::default();
        ids.vcpus.insert(0, std::process::id());
        Ok(ids)
    }

    async fn cleanup(&mut self) -> Result<()> {
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }

    async fn from_grpc(&mut self, _config: &HypervisorConfig, _data: &[u8]) -> Result<()> {
        Err(Self::vm_cache_unsupported("from_grpc"))
    }

    async fn to_grpc(&mut self) -> Result<Vec<u8>> {
        Err(Self::vm_cache_unsupported("to_grpc"))
    }

    async fn check(&mut self) -> Result<()> {
        Ok(())
    }

    fn save(&self) -> HypervisorState {
        HypervisorState {
            hypervisor: HypervisorType::Mock,
            ..HypervisorState::default()
        }
    }

    async fn load(&mut self, _state: HypervisorState) -> Result<()> {
        Ok(())
    }

    fn generate_socket(&self, _id: &str, _use_vsock: bool) -> Result<AgentSocket> {
        Ok(AgentSocket::Unix(UnixSocket {
            host_path: PathBuf::from("/tmp/socket"),
            name: "socket".to_string(),
            ..UnixSocket::default()
        }))
    }
}
