//! The QEMU backend: every method of [`Hypervisor`], driving a real QEMU.
//!
//! | concern | module |
//! |---|---|
//! | the command line, a pure function of config and devices | [`cmdline`] |
//! | the QMP client: typed commands, replies, events | [`qmp`] |
//! | supervising QEMU and virtiofsd, adopting them after a re-attach | [`crate::backends::vmm::process`] |
//! | hot-plug: slots and the QMP sequences | [`hotplug`] |
//! | virtiofsd | [`crate::backends::vmm::virtiofsd`] |
//! | vhost-device-vsock, behind a hybrid vsock | [`crate::backends::vmm::vsock_daemon`] |
//! | the config parsed once into QEMU terms | [`QemuSpec`] |
//! | the error, and its mapping onto the shared one | `error` |
//! | starting QEMU and undoing a failed start | `launch` |
//! | saving device state, restoring a template | `migration` |
//! | `save`/`load`, `to_grpc`/`from_grpc`, re-adopting processes | `persist` |
//!
//! # Lifecycle
//!
//! `create_sandbox` validates the config, parses it once into a
//! [`QemuSpec`] and checks that the VM's socket paths fit; `add_device`
//! collects cold-plugged devices; `start_sandbox`
//! makes the VM directory `<storage>/<id>`, starts virtiofsd when needed,
//! starts vhost-device-vsock for a hybrid vsock and waits for its socket,
//! spawns QEMU (its own process group, output in `qemu.log`) and waits for
//! QMP. A start that fails for any reason kills what it started and removes
//! the directory, and its error carries the end of QEMU's log.
//! `stop_sandbox` asks QEMU to `quit`, waits, then SIGKILLs; `cleanup`
//! removes the directory. A QEMU that died on its own (a crash, the OOM
//! killer, `kill -9`) is reported: by `check` at once, and by
//! `stop_sandbox`, which still reaps and tidies everything but returns
//! [`QemuError::Exited`] instead of pretending to a clean stop.
//!
//! # Hybrid vsock
//!
//! With `use_vsock` and no usable `/dev/vhost-vsock`, the config loader
//! sets `vhost_user_vsock_daemon`, and the agent socket is a
//! [`AgentSocket::HybridVsock`] on `<vm dir>/hvsock.sock`, served by
//! vhost-device-vsock through a `vhost-user-vsock-pci` device on shared
//! guest memory. The daemon is started before QEMU, is listed in `pids()`
//! after it, and is stopped (its sockets removed) on every path that stops
//! QEMU. Its death while the VM runs is the agent channel lost for good,
//! which `check` reports ([`QemuError::AgentChannelLost`]): QEMU itself
//! notices nothing. QEMU cannot migrate the device, so such a VM cannot be
//! saved or be a template.
//!
//! # Drop
//!
//! Dropping a handle that still owns a live QEMU kills it (SIGKILL to its
//! process group), stops virtiofsd and removes the VM directory, so that
//! an early return or a panic in the caller leaks nothing. A handle gives
//! up ownership with [`Hypervisor::disconnect`] or [`Hypervisor::to_grpc`]:
//! then the VM outlives it, for another process to re-attach with
//! [`Hypervisor::load`] or [`Hypervisor::from_grpc`].
pub mod cmdline;
mod error;
pub mod hotplug;
mod launch;
mod migration;
mod persist;
pub mod qmp;
pub mod rootless;
mod spec;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::RngCore;

use self::cmdline::{Accelerator, MachineType, VmPaths};
use self::hotplug::HotplugState;
use self::launch::{host_memory_mib, remove_dir};
use self::qmp::{Qmp, QmpError};
use crate::backends::vmm::process::{self, Exit, Supervised};
use crate::backends::vmm::vsock_daemon::{self, VsockDaemon};
use crate::config::{HypervisorConfig, SharedFs};
use crate::device::{Device, HotplugResult, MemoryDevice, VcpuThreadIds};
use crate::hypervisor::{
    Capabilities, Error, Hypervisor, HypervisorState, NetworkNamespace, Result, VmState,
};
use crate::hypervisor_type::HypervisorType;
use crate::socket::{self, AgentSocket};

/// How long `stop_sandbox` waits after `quit` before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long `check` waits for QMP.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a migration (save, or a boot from a template) may take.
pub const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a QMP connection to a VM that runs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a process to go after SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// The name QEMU holds the agent connection's copy under
/// ([`Hypervisor::hold_agent_connection`]).
pub const AGENT_CONNECTION_FD: &str = "sv-agent-connection";
pub use self::error::QemuError;
#[cfg(test)]
use self::migration::fd_uri;
pub use self::spec::QemuSpec;
/// The QEMU backend.
#[derive(Debug)]
pub struct Qemu {
    storage: PathBuf,
    id: String,
    config: HypervisorConfig,
    state: VmState,
    uuid: String,
    netns: NetworkNamespace,
    devices: Vec<Device>,
    paths: Option<VmPaths>,
    host_memory_mib: u64,
    qemu: Option<Supervised>,
    virtiofsd: Option<Supervised>,
    vsock_daemon: Option<VsockDaemon>,
    /// A vhost-device-vsock found gone at re-attach: the agent channel is
    /// lost, and `check` says so.
    vsock_daemon_lost: Option<crate::process::ProcessRef>,
    qmp: Option<Arc<Qmp>>,
    hot: HotplugState,
    accel: Option<Accelerator>,
    /// The config parsed into QEMU terms, once created or re-attached.
    spec: Option<QemuSpec>,
    detached: bool,
}

impl Default for Qemu {
    fn default() -> Self {
        Qemu::new()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        let live = self.qemu.as_ref().filter(|p| p.exited().is_none());
        if let Some(p) = live {
            tracing::warn!(
                pid = p.pid(),
                id = self.id,
                "dropping a handle that owns a running VM: killing it (call disconnect() to keep it)"
            );
            p.kill();
            if let Some(v) = &self.virtiofsd {
                v.kill();
            }
            if let Some(d) = &self.vsock_daemon {
                d.kill();
            }
            if let Some(paths) = &self.paths {
                let _ = std::fs::remove_dir_all(&paths.dir);
            }
        }
    }
}

/// Where the VM's vhost-device-vsock keeps its sockets and log.
fn daemon_paths(paths: &VmPaths) -> vsock_daemon::DaemonPaths {
    vsock_daemon::DaemonPaths {
        vhost_user: paths.vsock_vhost_user.clone(),
        uds: paths.hvsock.clone(),
        log: paths.vsock_daemon_log.clone(),
    }
}

/// A random (version 4) UUID. Sixteen random bytes and two fixed fields do
/// not justify a dependency.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Qemu {
    /// A QEMU backend keeping VMs under [`crate::paths::vm_storage_dir`].
    pub fn new() -> Self {
        Qemu::with_storage(crate::paths::vm_storage_dir())
    }

    /// A QEMU backend keeping VMs under `storage` (one directory per VM,
    /// holding its sockets: keep it short, sockets paths max 107 bytes).
    pub fn with_storage(storage: impl Into<PathBuf>) -> Self {
        Qemu {
            storage: storage.into(),
            id: String::new(),
            config: HypervisorConfig::default(),
            state: VmState::New,
            uuid: String::new(),
            netns: NetworkNamespace::default(),
            devices: Vec::new(),
            paths: None,
            host_memory_mib: 0,
            qemu: None,
            virtiofsd: None,
            vsock_daemon: None,
            vsock_daemon_lost: None,
            qmp: None,
            hot: HotplugState::default(),
            accel: None,
            spec: None,
            detached: false,
        }
    }

    /// The VM's paths, once created.
    pub fn vm_paths(&self) -> Option<&VmPaths> {
        self.paths.as_ref()
    }

    /// The VM state as this handle knows it.
    pub fn state(&self) -> VmState {
        self.state
    }

    fn invalid(&self, op: &'static str) -> Error {
        Error::InvalidState {
            op,
            state: self.state,
        }
    }

    fn require(&self, op: &'static str, states: &[VmState]) -> Result<()> {
        if states.contains(&self.state) {
            Ok(())
        } else {
            Err(self.invalid(op))
        }
    }

    /// The machine type, from the spec `create_sandbox` or a re-attach
    /// made. A handle not created yet has no spec: it answers from its
    /// config as given, and q35 (the default) for a type that does not
    /// parse, which `create_sandbox` would refuse.
    fn machine(&self) -> MachineType {
        match &self.spec {
            Some(spec) => spec.machine,
            None => {
                MachineType::parse(&self.config.hypervisor_machine_type).unwrap_or(MachineType::Q35)
            }
        }
    }

    /// The QEMU binary the config names.
    fn binary(&self) -> PathBuf {
        self.config.hypervisor_path.clone().unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        self.paths
            .as_ref()
            .map(|p| process::log_tail(&p.qemu_log))
            .unwrap_or_default()
    }

    /// The error for a QEMU that exited on its own, if it has.
    fn exited_error(&self) -> Option<QemuError> {
        let p = self.qemu.as_ref()?;
        p.exited().map(|exit| QemuError::Exited {
            binary: self.binary(),
            pid: p.pid(),
            exit,
            log_tail: self.log_tail(),
        })
    }

    /// Whether the agent's vsock is a hybrid vsock served by
    /// vhost-device-vsock.
    fn hybrid_vsock(&self) -> bool {
        match &self.spec {
            Some(spec) => spec.hybrid_vsock.is_some(),
            None => self.config.use_vsock && self.config.vhost_user_vsock_daemon.is_some(),
        }
    }

    /// The error for a vhost-device-vsock that exited, if it has.
    fn vsock_daemon_error(&self) -> Option<QemuError> {
        if let Some(lost) = self.vsock_daemon_lost {
            return Some(QemuError::AgentChannelLost {
                pid: lost.pid,
                exit: Exit::Unknown,
                log_tail: self
                    .paths
                    .as_ref()
                    .map(|p| process::log_tail(&p.vsock_daemon_log))
                    .unwrap_or_default(),
            });
        }
        let d = self.vsock_daemon.as_ref()?;
        d.exited().map(|exit| QemuError::AgentChannelLost {
            pid: d.pid(),
            exit,
            log_tail: d.log_tail(),
        })
    }

    /// Stops vhost-device-vsock, if one runs, and removes its sockets.
    async fn stop_vsock_daemon(&mut self) {
        if let Some(d) = self.vsock_daemon.take() {
            d.stop().await;
        }
    }

    /// `result`, unless QEMU died meanwhile: then its exit and log, which
    /// say more than the QMP error it caused.
    async fn or_exited<T>(&mut self, result: Result<T>) -> Result<T> {
        let Err(e) = result else {
            return result;
        };
        let gone = matches!(
            e.backend_source::<QemuError>(),
            Some(
                QemuError::Qmp(
                    QmpError::Disconnected { .. }
                        | QmpError::Send { .. }
                        | QmpError::Timeout { .. }
                        | QmpError::Connect { .. }
                        | QmpError::Greeting { .. }
                ) | QemuError::UnplugTimeout { .. }
            )
        );
        if gone {
            if let Some(p) = &self.qemu {
                if p.wait(Duration::from_millis(500)).await.is_some() {
                    if let Some(exited) = self.exited_error() {
                        self.qmp = None;
                        self.state = VmState::Stopped;
                        return Err(exited.into());
                    }
                }
            }
        }
        Err(e)
    }

    /// The QMP connection, (re)connected when needed.
    async fn qmp(&mut self) -> Result<Arc<Qmp>, QemuError> {
        if let Some(e) = self.exited_error() {
            self.qmp = None;
            return Err(e);
        }
        if let Some(q) = self.qmp.as_ref().filter(|q| !q.is_closed()) {
            return Ok(Arc::clone(q));
        }
        let path = self
            .paths
            .as_ref()
            .map(|p| p.qmp.clone())
            .unwrap_or_default();
        let q = Arc::new(Qmp::connect(&path, CONNECT_TIMEOUT).await?);
        self.qmp = Some(Arc::clone(&q));
        Ok(q)
    }

    async fn resize_memory_inner(
        &mut self,
        mem_mib: u32,
        block_size_mib: u32,
        probe: bool,
    ) -> Result<(u32, MemoryDevice)> {
        let current = self.config.memory_size + self.hot.memory_mib;
        if self.config.virtio_mem && current != mem_mib {
            let now = self.resize_virtio_mem(mem_mib, block_size_mib).await?;
            return Ok((now, MemoryDevice::default()));
        }
        match current.cmp(&mem_mib) {
            std::cmp::Ordering::Less => {
                let dev = MemoryDevice {
                    size_mib: hotplug::round_up_to_block(mem_mib - current, block_size_mib),
                    probe,
                    ..MemoryDevice::default()
                };
                let dev = self.hotplug_add_memory(dev).await?;
                Ok((current + dev.size_mib, dev))
            }
            std::cmp::Ordering::Greater => {
                // As the seed: DIMMs are not taken back; the size stays.
                let dev = MemoryDevice {
                    size_mib: hotplug::round_up_to_block(current - mem_mib, block_size_mib),
                    probe,
                    ..MemoryDevice::default()
                };
                tracing::warn!(
                    current,
                    requested = mem_mib,
                    "memory hot-unplug is not supported: keeping the current size"
                );
                Ok((current, dev))
            }
            std::cmp::Ordering::Equal => Ok((current, MemoryDevice::default())),
        }
    }

    async fn resize_vcpus_inner(&mut self, vcpus: u32) -> Result<(u32, u32)> {
        let current = self.config.num_vcpus + self.hot.vcpus.len() as u32;
        let new = match current.cmp(&vcpus) {
            std::cmp::Ordering::Less => current + self.hotplug_add_cpus(vcpus - current).await?,
            std::cmp::Ordering::Greater => {
                current - self.hotplug_remove_cpus(current - vcpus).await?
            }
            std::cmp::Ordering::Equal => current,
        };
        Ok((current, new))
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    fn hypervisor_type(&self) -> HypervisorType {
        HypervisorType::Qemu
    }

    async fn create_sandbox(
        &mut self,
        id: &str,
        network_ns: &NetworkNamespace,
        config: &HypervisorConfig,
        _stateful: bool,
    ) -> Result<()> {
        self.require("create_sandbox", &[VmState::New])?;
        let mut config = config.clone();
        config.validate()?;
        // Reject what cannot be launched now, not at start.
        let spec = QemuSpec::new(&config).map_err(QemuError::from)?;
        if config.rootless {
            rootless::check_config(&config).map_err(QemuError::from)?;
        }
        let paths = VmPaths::new(&self.storage, id);
        for name in [
            VmPaths::QMP,
            VmPaths::CONSOLE,
            VmPaths::VIRTIOFS,
            VmPaths::VSOCK_VHOST_USER,
            VmPaths::HVSOCK,
        ] {
            socket::build_socket_path(&[&self.storage, Path::new(id), Path::new(name)])?;
        }
        self.host_memory_mib = host_memory_mib()?;
        self.id = id.to_string();
        self.uuid = new_uuid();
        self.netns = network_ns.clone();
        self.hot = HotplugState::new(config.default_bridges, config.pcie_root_port);
        self.config = config;
        self.spec = Some(spec);
        self.paths = Some(paths);
        self.state = VmState::Created;
        tracing::debug!(id, uuid = self.uuid, "sandbox created");
        Ok(())
    }

    async fn start_sandbox(&mut self, timeout: Duration) -> Result<()> {
        self.require("start_sandbox", &[VmState::Created])?;
        let started = Instant::now();
        match self.launch(timeout).await {
            Ok(()) => {
                self.state = VmState::Running;
                self.detached = false;
                tracing::info!(
                    id = self.id,
                    pid = self.qemu.as_ref().map(Supervised::pid),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox started"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(id = self.id, error = %e, "cannot start sandbox");
                self.abort_start().await;
                Err(e.into())
            }
        }
    }

    async fn stop_sandbox(&mut self) -> Result<()> {
        let Some(p) = self.qemu.take() else {
            if matches!(self.state, VmState::Running | VmState::Paused) {
                self.state = VmState::Stopped;
            }
            return Ok(());
        };
        let died_alone = p.exited();
        if died_alone.is_none() {
            // Ask nicely; a QEMU that cannot be reached gets SIGKILL.
            let asked = match self.qmp.as_ref().filter(|q| !q.is_closed()) {
                Some(q) => q.execute_with(&qmp::Quit {}, STOP_GRACE).await.map(drop),
                None => match Qmp::connect(
                    &self
                        .paths
                        .as_ref()
                        .map(|p| p.qmp.clone())
                        .unwrap_or_default(),
                    Duration::from_secs(2),
                )
                .await
                {
                    Ok(q) => q.execute_with(&qmp::Quit {}, STOP_GRACE).await.map(drop),
                    Err(e) => Err(e),
                },
            };
            // `quit` may close the socket before its reply arrives.
            if let Err(e) = asked {
                tracing::debug!(error = %e, "qmp quit");
            }
            if p.wait(STOP_GRACE).await.is_none() {
                tracing::warn!(pid = p.pid(), "qemu ignored quit: SIGKILL");
                p.kill();
                if p.wait(REAP_TIMEOUT).await.is_none() {
                    tracing::error!(pid = p.pid(), "qemu did not die after SIGKILL");
                }
            }
        }
        self.qmp = None;
        if let Some(v) = self.virtiofsd.take() {
            v.terminate(REAP_TIMEOUT).await;
        }
        self.stop_vsock_daemon().await;
        self.state = VmState::Stopped;
        match died_alone {
            Some(exit) if !matches!(exit, Exit::Unknown) && !exit.success() => {
                let e = QemuError::Exited {
                    binary: self.binary(),
                    pid: p.pid(),
                    exit,
                    log_tail: self.log_tail(),
                };
                tracing::error!(id = self.id, error = %e, "qemu had died before stop");
                Err(e.into())
            }
            // A clean exit before stop is what a guest power-off looks like
            // (`run` shuts the guest down first): nothing to warn about.
            Some(exit) => {
                tracing::info!(id = self.id, %exit, "qemu had exited before stop");
                Ok(())
            }
            None => {
                tracing::info!(id = self.id, "sandbox stopped");
                Ok(())
            }
        }
    }

    async fn pause_sandbox(&mut self) -> Result<()> {
        self.require("pause_sandbox", &[VmState::Running])?;
        self.qmp()
            .await?
            .execute(&qmp::Stop {})
            .await
            .map_err(QemuError::from)?;
        self.state = VmState::Paused;
        Ok(())
    }

    async fn save_sandbox(&mut self) -> Result<()> {
        self.save_to_file().await
    }

    async fn resume_sandbox(&mut self) -> Result<()> {
        self.require("resume_sandbox", &[VmState::Paused])?;
        self.qmp()
            .await?
            .execute(&qmp::Cont {})
            .await
            .map_err(QemuError::from)?;
        self.state = VmState::Running;
        Ok(())
    }

    async fn add_device(&mut self, device: Device) -> Result<()> {
        self.require("add_device", &[VmState::Created])?;
        match &device {
            Device::HybridVsock(_) if !self.hybrid_vsock() => {
                return Err(Error::unsupported(
                    "add_device",
                    HypervisorType::Qemu,
                    "a hybrid vsock needs use_vsock with vhost-device-vsock (vhost_user_vsock_daemon); use the socket generate_socket makes",
                ))
            }
            Device::HybridVsock(_)
                if self
                    .devices
                    .iter()
                    .any(|d| matches!(d, Device::HybridVsock(_))) =>
            {
                return Err(Error::unsupported(
                    "add_device",
                    HypervisorType::Qemu,
                    "a VM has one hybrid vsock, served by one vhost-device-vsock",
                ))
            }
            Device::Cpu(_) | Device::Memory(_) => {
                return Err(Error::unsupported(
                    "add_device",
                    HypervisorType::Qemu,
                    "boot vCPUs and memory come from default_vcpus and default_memory",
                ))
            }
            Device::Fs(v) if self.config.shared_fs == SharedFs::None => {
                return Err(QemuError::Cmdline(cmdline::CmdlineError::SharedFsDisabled {
                    tag: v.mount_tag.clone(),
                })
                .into())
            }
            Device::Fs(v)
                if self.config.shared_fs.is_virtio_fs()
                    && self.devices.iter().any(|d| matches!(d, Device::Fs(_))) =>
            {
                return Err(QemuError::SecondVirtioFs {
                    tag: v.mount_tag.clone(),
                }
                .into())
            }
            Device::Block(d) | Device::Image(d) => {
                self.hot.block_indexes.insert(d.index);
            }
            _ => {}
        }
        tracing::debug!(kind = %device.device_type(), "device added");
        self.devices.push(device);
        Ok(())
    }

    async fn hotplug_add_device(&mut self, device: Device) -> Result<HotplugResult> {
        self.require("hotplug_add_device", &[VmState::Running, VmState::Paused])?;
        let result = match device {
            Device::Block(d) => self.hotplug_add_block(d).await,
            Device::Cpu(n) => Ok(HotplugResult::Cpus(self.hotplug_add_cpus(n).await?)),
            Device::Memory(m) => Ok(HotplugResult::MemoryMib(
                self.hotplug_add_memory(m).await?.size_mib,
            )),
            Device::Net(n) => self.hotplug_add_net(n).await,
            Device::Vfio(v) => self.hotplug_add_vfio(v).await,
            Device::VhostUser(v) => self.hotplug_add_vhost_user(v).await,
            other => Err(Error::unsupported(
                "hotplug_add_device",
                HypervisorType::Qemu,
                format!("{} devices cannot be hot-plugged", other.device_type()),
            )),
        };
        self.or_exited(result).await
    }

    async fn hotplug_remove_device(&mut self, device: Device) -> Result<HotplugResult> {
        self.require(
            "hotplug_remove_device",
            &[VmState::Running, VmState::Paused],
        )?;
        let result = match device {
            Device::Block(d) => self.hotplug_remove_block(d).await,
            Device::Cpu(n) => Ok(HotplugResult::Cpus(self.hotplug_remove_cpus(n).await?)),
            Device::Memory(_) => Err(Error::unsupported(
                "hotplug_remove_device",
                HypervisorType::Qemu,
                "DIMMs cannot be taken back from a guest reliably; enable_virtio_mem and resize_memory shrink memory",
            )),
            Device::Net(n) => self.hotplug_remove_net(n).await,
            Device::Vfio(v) => self.hotplug_remove_vfio(v).await,
            Device::VhostUser(v) => self.hotplug_remove_vhost_user(v).await,
            other => Err(Error::unsupported(
                "hotplug_remove_device",
                HypervisorType::Qemu,
                format!("{} devices cannot be hot-unplugged", other.device_type()),
            )),
        };
        self.or_exited(result).await
    }

    async fn resize_memory(
        &mut self,
        mem_mib: u32,
        block_size_mib: u32,
        probe: bool,
    ) -> Result<(u32, MemoryDevice)> {
        self.require("resize_memory", &[VmState::Running, VmState::Paused])?;
        let result = self
            .resize_memory_inner(mem_mib, block_size_mib, probe)
            .await;
        self.or_exited(result).await
    }

    async fn resize_vcpus(&mut self, vcpus: u32) -> Result<(u32, u32)> {
        self.require("resize_vcpus", &[VmState::Running, VmState::Paused])?;
        let result = self.resize_vcpus_inner(vcpus).await;
        self.or_exited(result).await
    }

    async fn sandbox_console(&self, id: &str) -> Result<Option<PathBuf>> {
        // A VM made under another name (a cached VM adopted by sandbox
        // `id`) keeps its own directory: its paths say where the socket is.
        if let Some(paths) = &self.paths {
            return Ok(Some(paths.console.clone()));
        }
        Ok(Some(socket::build_socket_path(&[
            &self.storage,
            Path::new(id),
            Path::new(VmPaths::CONSOLE),
        ])?))
    }

    async fn disconnect(&mut self) {
        self.qmp = None;
        self.detached = true;
    }

    fn capabilities(&self) -> Capabilities {
        let hotplug = self.machine().supports_hotplug();
        // QEMU blocks migrating vhost-user-vsock: no save, no template.
        let hybrid_vsock = self.hybrid_vsock();
        Capabilities {
            block_device: true,
            block_device_hotplug: hotplug,
            multi_queue: true,
            fs_sharing: self.config.shared_fs != SharedFs::None,
            hybrid_vsock,
            cpu_hotplug: hotplug,
            memory_hotplug: hotplug && (self.config.mem_slots > 0 || self.config.virtio_mem),
            net_hotplug: hotplug,
            vfio: hotplug,
            pause: true,
            save: !hybrid_vsock,
            vm_template: !hybrid_vsock,
            vm_cache: true,
            reattach: true,
            holds_agent_connection: hybrid_vsock,
        }
    }

    fn hypervisor_config(&self) -> HypervisorConfig {
        self.config.clone()
    }

    async fn thread_ids(&mut self) -> Result<VcpuThreadIds> {
        self.require("thread_ids", &[VmState::Running, VmState::Paused])?;
        let cpus = self
            .qmp()
            .await?
            .execute(&qmp::QueryCpusFast {})
            .await
            .map_err(QemuError::from)?;
        Ok(VcpuThreadIds {
            vcpus: cpus
                .into_iter()
                .filter(|c| c.thread_id > 0)
                .map(|c| (c.cpu_index, c.thread_id))
                .collect(),
        })
    }

    async fn cleanup(&mut self) -> Result<()> {
        if self.qemu.as_ref().is_some_and(|p| p.exited().is_none()) {
            return Err(self.invalid("cleanup"));
        }
        self.qmp = None;
        self.qemu = None;
        if let Some(v) = self.virtiofsd.take() {
            v.terminate(REAP_TIMEOUT).await;
        }
        self.stop_vsock_daemon().await;
        // Closes the descriptors the devices held (vhost-vsock).
        self.devices.clear();
        if let Some(paths) = &self.paths {
            remove_dir(&paths.dir)?;
            tracing::debug!(dir = %paths.dir.display(), "VM directory removed");
        }
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.qemu
            .iter()
            .chain(self.virtiofsd.iter())
            .map(Supervised::pid)
            .chain(self.vsock_daemon.iter().map(VsockDaemon::pid))
            .collect()
    }

    async fn from_grpc(&mut self, config: &HypervisorConfig, data: &[u8]) -> Result<()> {
        self.attach_from_grpc(config, data).await
    }

    async fn to_grpc(&mut self) -> Result<Vec<u8>> {
        self.detach_to_grpc().await
    }

    async fn check(&mut self) -> Result<()> {
        if self.qemu.is_none() {
            return Err(self.invalid("check"));
        }
        if let Some(e) = self.exited_error() {
            self.qmp = None;
            self.state = VmState::Stopped;
            return Err(e.into());
        }
        if let Some(v) = &self.virtiofsd {
            if let Some(exit) = v.exited() {
                return Err(QemuError::VirtiofsdExited { pid: v.pid(), exit }.into());
            }
        }
        if let Some(e) = self.vsock_daemon_error() {
            return Err(e.into());
        }
        let qmp = match self.qmp.as_ref().filter(|q| !q.is_closed()) {
            Some(q) => Arc::clone(q),
            None => {
                let path = self
                    .paths
                    .as_ref()
                    .map(|p| p.qmp.clone())
                    .unwrap_or_default();
                match Qmp::connect(&path, CHECK_TIMEOUT).await {
                    Ok(q) => {
                        let q = Arc::new(q);
                        self.qmp = Some(Arc::clone(&q));
                        q
                    }
                    Err(e) => return self.or_exited(Err(QemuError::from(e).into())).await,
                }
            }
        };
        let status = match qmp.execute_with(&qmp::QueryStatus {}, CHECK_TIMEOUT).await {
            Ok(s) => s,
            // A closed socket is usually QEMU dying: its exit, which the
            // reaper reports a moment later, is the better answer.
            Err(e) => return self.or_exited(Err(QemuError::from(e).into())).await,
        };
        match status.status.as_str() {
            "internal-error" | "guest-panicked" => Err(QemuError::GuestFailure {
                status: status.status,
            }
            .into()),
            "running" => {
                self.state = VmState::Running;
                Ok(())
            }
            "paused" | "postmigrate" => {
                self.state = VmState::Paused;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn save(&self) -> HypervisorState {
        self.snapshot()
    }

    async fn load(&mut self, state: HypervisorState) -> Result<()> {
        self.attach(state).await
    }

    /// QMP `getfd` under [`AGENT_CONNECTION_FD`]: QEMU closes the copy it
    /// held under that name and keeps this one until the next, or until
    /// it exits.
    async fn hold_agent_connection(&mut self, connection: BorrowedFd<'_>) -> Result<()> {
        if !self.hybrid_vsock() {
            return Err(Error::unsupported(
                "hold_agent_connection",
                HypervisorType::Qemu,
                "only a hybrid vsock's connection needs a copy held (use_vsock)",
            ));
        }
        self.require("hold_agent_connection", &[VmState::Running])?;
        let getfd = qmp::GetFd {
            fdname: AGENT_CONNECTION_FD.to_string(),
        };
        // QEMU makes each descriptor it receives blocking, and that flag
        // belongs to the socket, which the caller reads without blocking:
        // it is set back at once.
        let flag_error = |action| {
            move |e: nix::errno::Errno| QemuError::ConnectionFlags {
                action,
                source: e.into(),
            }
        };
        let raw = connection.as_raw_fd();
        let flags =
            nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFL).map_err(flag_error("read"))?;
        let held = self
            .qmp()
            .await?
            .execute_with_fd(&getfd, connection, qmp::DEFAULT_TIMEOUT)
            .await
            .map_err(QemuError::from);
        let flags = nix::fcntl::OFlag::from_bits_retain(flags);
        nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(flag_error("restore"))?;
        held?;
        Ok(())
    }

    /// With `use_vsock` on a sandbox created with a hybrid vsock, the
    /// hybrid vsock socket in the VM directory, guest CID
    /// [`vsock_daemon::GUEST_CID`] and the agent's port; otherwise
    /// [`socket::generate_vm_socket`].
    fn generate_socket(&self, id: &str, use_vsock: bool) -> Result<AgentSocket> {
        if use_vsock && self.hybrid_vsock() {
            let uds_path = socket::build_socket_path(&[
                &self.storage,
                Path::new(id),
                Path::new(VmPaths::HVSOCK),
            ])?;
            return Ok(AgentSocket::HybridVsock(crate::device::HybridVsock {
                uds_path,
                context_id: u64::from(vsock_daemon::GUEST_CID),
                port: sandvisor_proto::VSOCK_PORT,
            }));
        }
        Ok(socket::generate_vm_socket(id, use_vsock, &self.storage)?)
    }
}

#[cfg(test)]
mod tests;
