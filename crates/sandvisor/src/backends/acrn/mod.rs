//! The ACRN backend: `acrn-dm` as a supervised child, driven by its
//! command line and by `acrnctl`.
//!
//! | concern | module |
//! |---|---|
//! | the `acrn-dm` command line, a pure function | [`cmdline`] |
//! | the pool of UUIDs ACRN accepts, shared through a locked file | [`uuid`] |
//! | the backend's errors | [`AcrnError`] |
//!
//! # Lifecycle
//!
//! `create_sandbox` checks that this is an ACRN Service VM (its
//! `/dev/acrn_hsm`, or the older `/dev/acrn_vhm`), validates the config and
//! takes a UUID from the pool. `start_sandbox` makes the VM directory,
//! spawns `acrn-dm` (output to `acrn-dm.log` there), hands the UUID to it
//! and polls until its console socket appears, under the start deadline.
//! `stop_sandbox` sends SIGTERM, then SIGKILL, and frees the UUID once
//! `acrn-dm` has exited. Pause and resume are `acrnctl pause|resume`.
//!
//! # Hot-plug
//!
//! ACRN has no device hot-plug: placeholder drives (`virtio-blk,nodisk`)
//! are made at boot, and a drive of index `i` (1 to the number of
//! placeholders; 0 is the root image) is plugged by `acrnctl blkrescan
//! sandbox-<id> <slot>,<file>` into the `i`-th placeholder and unplugged by
//! rescanning it back to `nodisk`. Nothing else hot-plugs, and devices
//! ACRN cannot take are refused by `add_device`, not dropped.

pub mod cmdline;
mod error;
pub mod uuid;

pub use self::error::AcrnError;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use self::cmdline::{LaunchSpec, NODISK};
use self::uuid::UuidPool;
use crate::assets::AssetType;
use crate::backends::vmm::lookup::{self, Binary};
use crate::backends::vmm::process::{self as vmm_process, Spawn, Supervised};
use crate::config::HypervisorConfig;
use crate::device::{
    BlockDrive, Device, HotplugResult, MemoryDevice, NetDevice, UnixSocket, VcpuThreadIds,
};
use crate::hypervisor::{
    Capabilities, Error, Hypervisor, HypervisorState, NetworkNamespace, Result, VmState,
};
use crate::hypervisor_type::HypervisorType;
use crate::process::ProcessRef;
use crate::socket::{self, AgentSocket};

const ACRN: HypervisorType = HypervisorType::Acrn;

/// The ACRN devices, newest first: either one makes a Service VM.
pub const ACRN_DEVICES: [&str; 2] = ["/dev/acrn_hsm", "/dev/acrn_vhm"];
/// How long `stop_sandbox` waits after SIGTERM.
pub const TERM_GRACE: Duration = Duration::from_secs(5);
/// How long an `acrnctl` call may take.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `start_sandbox` looks for the console socket.
const POLL: Duration = Duration::from_millis(20);

/// File names in the VM directory.
mod names {
    pub const CONSOLE: &str = "console.sock";
    pub const LOG: &str = "acrn-dm.log";
}

/// Choices of the ACRN backend that Kata's config has no key for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcrnOptions {
    /// The UUIDs ACRN accepts (Kata's eight by default).
    pub uuids: Vec<String>,
    /// How many VMs the platform runs; caps the pool. `None`: the whole
    /// pool (see [`uuid`] on the platform-info ioctl).
    pub max_vms: Option<u32>,
    /// The pool file (`<runtime dir>/acrn/uuids.json`).
    pub pool_file: PathBuf,
    /// The ACRN devices looked for ([`ACRN_DEVICES`]).
    pub devices: Vec<PathBuf>,
    /// Placeholder drives made for hot-plug (Kata makes 8).
    pub placeholders: u32,
}

impl Default for AcrnOptions {
    fn default() -> Self {
        AcrnOptions {
            uuids: uuid::KATA_UUIDS.iter().map(|s| s.to_string()).collect(),
            max_vms: None,
            pool_file: crate::paths::runtime_dir().join("acrn").join("uuids.json"),
            devices: ACRN_DEVICES.iter().map(PathBuf::from).collect(),
            placeholders: 8,
        }
    }
}

/// Whether one of `devices` exists: this is an ACRN Service VM.
///
/// # Errors
/// [`AcrnError::NoServiceVm`] naming them all.
pub fn service_vm(devices: &[PathBuf]) -> Result<&Path, AcrnError> {
    devices
        .iter()
        .find(|d| d.exists())
        .map(PathBuf::as_path)
        .ok_or_else(|| AcrnError::NoServiceVm {
            devices: devices
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The ACRN backend.
#[derive(Debug)]
pub struct Acrn {
    storage: PathBuf,
    options: AcrnOptions,
    pool: UuidPool,
    id: String,
    config: HypervisorConfig,
    state: VmState,
    uuid: Option<String>,
    image: Option<PathBuf>,
    drives: Vec<BlockDrive>,
    agent: Option<UnixSocket>,
    nets: Vec<NetDevice>,
    dm: Option<Supervised>,
    dm_ref: Option<ProcessRef>,
    placeholder_slots: Vec<u32>,
    /// Hot-plugged drives: index to drive id.
    plugged: BTreeMap<u32, String>,
    detached: bool,
}

impl Default for Acrn {
    fn default() -> Self {
        Acrn::new()
    }
}

impl Drop for Acrn {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(p) = self.dm.as_ref().filter(|p| p.exited().is_none()) {
            tracing::warn!(
                pid = p.pid(),
                id = self.id,
                "dropping a handle that owns a running VM: killing it (call disconnect() to keep it)"
            );
            p.kill();
        }
    }
}

fn io_dir<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AcrnError + 'a {
    move |source| AcrnError::VmDir {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn be(e: AcrnError) -> Error {
    Error::backend(ACRN, e)
}

impl Acrn {
    /// A backend keeping VMs under [`crate::paths::vm_storage_dir`].
    pub fn new() -> Self {
        Acrn::with_options(crate::paths::vm_storage_dir(), AcrnOptions::default())
    }

    /// A backend keeping VMs under `storage`, with `options`.
    pub fn with_options(storage: impl Into<PathBuf>, options: AcrnOptions) -> Self {
        let pool = UuidPool::new(&options.pool_file, &options.uuids, options.max_vms);
        Acrn {
            storage: storage.into(),
            options,
            pool,
            id: String::new(),
            config: HypervisorConfig::default(),
            state: VmState::New,
            uuid: None,
            image: None,
            drives: Vec::new(),
            agent: None,
            nets: Vec::new(),
            dm: None,
            dm_ref: None,
            placeholder_slots: Vec::new(),
            plugged: BTreeMap::new(),
            detached: false,
        }
    }

    /// The VM state as this handle knows it.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// The UUID the VM holds, once created.
    pub fn uuid(&self) -> Option<&str> {
        self.uuid.as_deref()
    }

    fn vm_dir(&self) -> PathBuf {
        self.storage.join(&self.id)
    }

    fn console(&self) -> PathBuf {
        self.vm_dir().join(names::CONSOLE)
    }

    fn log(&self) -> PathBuf {
        self.vm_dir().join(names::LOG)
    }

    fn name(&self) -> String {
        cmdline::vm_name(&self.id)
    }

    fn binary(&self, kind: AssetType, which: &Binary) -> PathBuf {
        self.config
            .asset_path(kind)
            .map(Path::to_path_buf)
            .or_else(|| lookup::find(which, None).ok().map(|f| f.path))
            .unwrap_or_else(|| PathBuf::from(which.name))
    }

    fn dm_binary(&self) -> PathBuf {
        self.binary(AssetType::Hypervisor, &Binary::ACRN_DM)
    }

    fn ctl_binary(&self) -> PathBuf {
        self.binary(AssetType::HypervisorCtl, &Binary::ACRNCTL)
    }

    fn require(&self, op: &'static str, states: &[VmState]) -> Result<()> {
        if states.contains(&self.state) {
            Ok(())
        } else {
            Err(Error::InvalidState {
                op,
                state: self.state,
            })
        }
    }

    /// The command line the VM starts with.
    ///
    /// # Errors
    /// [`AcrnError::NoKernel`] without a kernel.
    pub fn launch_spec(&self) -> Result<LaunchSpec, AcrnError> {
        let c = &self.config;
        Ok(LaunchSpec {
            id: self.id.clone(),
            uuid: self.uuid.clone().unwrap_or_default(),
            memory_mib: c.memory_size,
            max_vcpus: c.default_max_vcpus,
            kernel: c
                .asset_path(AssetType::Kernel)
                .ok_or(AcrnError::NoKernel)?
                .to_path_buf(),
            image: self
                .image
                .clone()
                .or_else(|| c.asset_path(AssetType::Image).map(Path::to_path_buf)),
            console: self.console(),
            placeholders: self.options.placeholders,
            drives: self.drives.clone(),
            agent: self.agent.clone(),
            nets: self.nets.clone(),
            debug: c.debug,
            kernel_params: c.kernel_params.clone(),
        })
    }

    /// Runs `acrnctl args…`; its exit status and stderr make the error.
    async fn ctl(&self, args: &[String]) -> Result<(), AcrnError> {
        let program = self.ctl_binary();
        let joined = args.join(" ");
        let run = tokio::process::Command::new(&program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(CTL_TIMEOUT, run)
            .await
            .map_err(|_| AcrnError::CtlTimeout {
                args: joined.clone(),
                timeout: CTL_TIMEOUT,
            })?
            .map_err(|source| AcrnError::CtlRun {
                program: program.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(AcrnError::Ctl {
            args: joined,
            status: crate::process::Exit::from_status(out.status).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    fn release_uuid(&mut self) {
        if let Some(u) = self.uuid.take() {
            if let Err(e) = self.pool.release(&u, &self.id) {
                tracing::warn!(error = %e, uuid = u, "cannot free the ACRN UUID");
            }
        }
    }

    fn exited_error(&self, starting: bool) -> Option<Error> {
        let p = self.dm.as_ref()?;
        p.exited().map(|exit| Error::VmmExited {
            hypervisor: ACRN,
            binary: self.dm_binary(),
            pid: p.pid(),
            exit,
            starting,
            log_tail: vmm_process::log_tail(&self.log()),
        })
    }

    async fn wait_started(&self, p: &Supervised, timeout: Duration) -> Result<()> {
        let console = self.console();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if p.exited().is_some() {
                return Err(self.exited_error(true).unwrap_or_else(|| {
                    be(AcrnError::Process(vmm_process::ProcessError::NotRunning {
                        pid: p.pid(),
                    }))
                }));
            }
            if console.exists() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::StartTimeout {
                    hypervisor: ACRN,
                    what: format!("make its console socket {console:?}"),
                    timeout,
                    log_tail: vmm_process::log_tail(&self.log()),
                    last: None,
                });
            }
            // Wakes early when the process ends.
            let _ = p.wait(POLL).await;
        }
    }

    async fn start(&mut self, timeout: Duration) -> Result<()> {
        let dir = self.vm_dir();
        crate::private::create_dir_all(&dir).map_err(|e| be(io_dir("create", &dir)(e)))?;
        let launch = cmdline::launch(&self.launch_spec().map_err(be)?);
        let program = self.dm_binary();
        let log = self.log();
        let p = Supervised::spawn(Spawn {
            program: &program,
            args: &launch.args,
            fds: Vec::new(),
            log: &log,
            netns: None,
            run_as: None,
        })
        .map_err(|e| be(e.into()))?;
        let r = ProcessRef::of(p.pid());
        self.placeholder_slots = launch.placeholder_slots;
        self.dm_ref = Some(r);
        if let Some(u) = &self.uuid {
            self.pool.hand_over(u, &self.id, r).map_err(be)?;
        }
        let waited = self.wait_started(&p, timeout).await;
        self.dm = Some(p);
        waited
    }

    fn plug_slot(&self, drive: &BlockDrive) -> Result<u32, AcrnError> {
        let n = self.options.placeholders;
        if drive.index == 0 || drive.index > n {
            return Err(AcrnError::NoPlaceholder {
                index: drive.index,
                placeholders: n,
            });
        }
        if let Some(holder) = self.plugged.get(&drive.index) {
            return Err(AcrnError::PlaceholderBusy {
                index: drive.index,
                holder: holder.clone(),
            });
        }
        // Index i sits in the i-th placeholder.
        self.placeholder_slots
            .get(drive.index as usize - 1)
            .copied()
            .ok_or(AcrnError::NoPlaceholder {
                index: drive.index,
                placeholders: n,
            })
    }

    fn refuse(&self, op: &'static str, device: &Device) -> Error {
        Error::unsupported(
            op,
            ACRN,
            format!("ACRN cannot take a {:?} device", device.device_type()),
        )
    }
}

/// `/dev/vd<letter>` of drive index `i`.
fn virt_path(index: u32) -> Option<String> {
    let letter = char::from_u32(u32::from(b'a') + index).filter(char::is_ascii_lowercase)?;
    Some(format!("/dev/vd{letter}"))
}

#[async_trait]
impl Hypervisor for Acrn {
    fn hypervisor_type(&self) -> HypervisorType {
        ACRN
    }

    async fn create_sandbox(
        &mut self,
        id: &str,
        network_ns: &NetworkNamespace,
        config: &HypervisorConfig,
        _stateful: bool,
    ) -> Result<()> {
        self.require("create_sandbox", &[VmState::New])?;
        service_vm(&self.options.devices).map_err(be)?;
        if network_ns.path.is_some() {
            return Err(Error::unsupported(
                "create_sandbox",
                ACRN,
                "acrn-dm runs in the caller's network namespace",
            ));
        }
        let mut config = config.clone();
        config.validate()?;
        self.config = config;
        self.id = id.to_string();
        let pool = self.pool.clone();
        let owner = ProcessRef::current();
        let sid = id.to_string();
        let uuid = tokio::task::spawn_blocking(move || pool.allocate(&sid, owner))
            .await
            .map_err(|e| {
                be(AcrnError::UuidPool {
                    path: self.options.pool_file.clone(),
                    source: std::io::Error::other(e),
                })
            })?
            .map_err(be)?;
        self.uuid = Some(uuid);
        self.state = VmState::Created;
        Ok(())
    }

    async fn start_sandbox(&mut self, timeout: Duration) -> Result<()> {
        self.require("start_sandbox", &[VmState::Created])?;
        if let Err(e) = self.start(timeout).await {
            if let Some(p) = self.dm.take() {
                p.terminate(Duration::ZERO).await;
            }
            self.dm_ref = None;
            let _ = std::fs::remove_dir_all(self.vm_dir());
            // The UUID goes back to the creator until cleanup frees it.
            if let Some(u) = &self.uuid {
                let _ = self.pool.hand_over(u, &self.id, ProcessRef::current());
            }
            return Err(e);
        }
        self.state = VmState::Running;
        Ok(())
    }

    async fn stop_sandbox(&mut self) -> Result<()> {
        self.require(
            "stop_sandbox",
            &[VmState::Running, VmState::Paused, VmState::Stopped],
        )?;
        let crashed = self
            .dm
            .as_ref()
            .and_then(|p| p.exited())
            .filter(|e| !e.success())
            .and_then(|_| self.exited_error(false));
        let gone = match &self.dm {
            Some(p) => p.terminate(TERM_GRACE).await.is_some(),
            None => true,
        };
        if !gone {
            return Err(Error::StartTimeout {
                hypervisor: ACRN,
                what: "exit after SIGKILL".into(),
                timeout: crate::process::REAP_TIMEOUT,
                log_tail: vmm_process::log_tail(&self.log()),
                last: None,
            });
        }
        // Only now that acrn-dm is gone may another VM take the UUID.
        self.release_uuid();
        self.state = VmState::Stopped;
        match crashed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn pause_sandbox(&mut self) -> Result<()> {
        self.require("pause_sandbox", &[VmState::Running])?;
        self.ctl(&["pause".into(), self.name()]).await.map_err(be)?;
        self.state = VmState::Paused;
        Ok(())
    }

    async fn save_sandbox(&mut self) -> Result<()> {
        Err(Error::unsupported(
            "save_sandbox",
            ACRN,
            "acrn-dm cannot save a VM's state",
        ))
    }

    async fn resume_sandbox(&mut self) -> Result<()> {
        self.require("resume_sandbox", &[VmState::Paused])?;
        self.ctl(&["resume".into(), self.name()])
            .await
            .map_err(be)?;
        self.state = VmState::Running;
        Ok(())
    }

    async fn add_device(&mut self, device: Device) -> Result<()> {
        self.require("add_device", &[VmState::New, VmState::Created])?;
        match device {
            Device::Image(d) => self.image = Some(d.file),
            Device::Block(d) => self.drives.push(d),
            Device::SerialPort(s) => self.agent = Some(s),
            Device::Net(n) if n.queues > 1 => {
                return Err(Error::unsupported(
                    "add_device",
                    ACRN,
                    format!("ACRN cannot take multi-queue interface {:?}", n.id),
                ))
            }
            Device::Net(n) => self.nets.push(n),
            other => return Err(self.refuse("add_device", &other)),
        }
        Ok(())
    }

    async fn hotplug_add_device(&mut self, device: Device) -> Result<HotplugResult> {
        self.require("hotplug_add_device", &[VmState::Running, VmState::Paused])?;
        let Device::Block(mut drive) = device else {
            return Err(self.refuse("hotplug_add_device", &device));
        };
        let slot = self.plug_slot(&drive).map_err(be)?;
        self.ctl(&[
            "blkrescan".into(),
            self.name(),
            format!("{slot},{}", drive.file.display()),
        ])
        .await
        .map_err(be)?;
        self.plugged.insert(drive.index, drive.id.clone());
        drive.pci_path = None;
        drive.virt_path = virt_path(drive.index);
        Ok(HotplugResult::Attached(Some(drive)))
    }

    async fn hotplug_remove_device(&mut self, device: Device) -> Result<HotplugResult> {
        self.require(
            "hotplug_remove_device",
            &[VmState::Running, VmState::Paused],
        )?;
        let Device::Block(drive) = device else {
            return Err(self.refuse("hotplug_remove_device", &device));
        };
        let index = self
            .plugged
            .iter()
            .find(|(_, id)| **id == drive.id)
            .map(|(i, _)| *i)
            .ok_or_else(|| {
                be(AcrnError::NotPlugged {
                    id: drive.id.clone(),
                })
            })?;
        let slot = self
            .placeholder_slots
            .get(index as usize - 1)
            .copied()
            .ok_or_else(|| {
                be(AcrnError::NoPlaceholder {
                    index,
                    placeholders: self.options.placeholders,
                })
            })?;
        self.ctl(&["blkrescan".into(), self.name(), format!("{slot},{NODISK}")])
            .await
            .map_err(be)?;
        self.plugged.remove(&index);
        Ok(HotplugResult::Attached(None))
    }

    async fn resize_memory(&mut self, _m: u32, _b: u32, _p: bool) -> Result<(u32, MemoryDevice)> {
        Err(Error::unsupported(
            "resize_memory",
            ACRN,
            "ACRN cannot hot-plug memory",
        ))
    }

    async fn resize_vcpus(&mut self, _vcpus: u32) -> Result<(u32, u32)> {
        Err(Error::unsupported(
            "resize_vcpus",
            ACRN,
            "ACRN cannot hot-plug vCPUs",
        ))
    }

    async fn sandbox_console(&self, id: &str) -> Result<Option<PathBuf>> {
        Ok(Some(socket::build_socket_path(&[
            &self.storage,
            Path::new(id),
            Path::new(names::CONSOLE),
        ])?))
    }

    async fn disconnect(&mut self) {
        self.detached = true;
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_device: true,
            block_device_hotplug: self.options.placeholders > 0,
            pause: true,
            reattach: true,
            ..Capabilities::default()
        }
    }

    fn hypervisor_config(&self) -> HypervisorConfig {
        self.config.clone()
    }

    async fn thread_ids(&mut self) -> Result<VcpuThreadIds> {
        // acrn-dm runs no vCPU threads: the hypervisor schedules them.
        Ok(VcpuThreadIds::default())
    }

    async fn cleanup(&mut self) -> Result<()> {
        if self.dm.as_ref().is_some_and(|p| p.exited().is_none()) {
            return Err(Error::InvalidState {
                op: "cleanup",
                state: self.state,
            });
        }
        self.release_uuid();
        if !self.id.is_empty() {
            let dir = self.vm_dir();
            crate::backends::vmm::remove_dir_if_present(&dir)
                .map_err(|e| be(io_dir("remove", &dir)(e)))?;
        }
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.dm.iter().map(Supervised::pid).collect()
    }

    async fn from_grpc(&mut self, _config: &HypervisorConfig, _data: &[u8]) -> Result<()> {
        Err(Error::unsupported(
            "from_grpc",
            ACRN,
            "ACRN VMs cannot be cached",
        ))
    }

    async fn to_grpc(&mut self) -> Result<Vec<u8>> {
        Err(Error::unsupported(
            "to_grpc",
            ACRN,
            "ACRN VMs cannot be cached",
        ))
    }

    async fn check(&mut self) -> Result<()> {
        if let Some(e) = self.exited_error(false) {
            return Err(e);
        }
        match &self.dm {
            Some(_) => Ok(()),
            None => Err(Error::InvalidState {
                op: "check",
                state: self.state,
            }),
        }
    }

    fn save(&self) -> HypervisorState {
        HypervisorState {
            hypervisor: ACRN,
            id: self.id.clone(),
            pid: self.dm_ref.map_or(0, |r| r.pid),
            vmm_start_time: self.dm_ref.map_or(0, |r| r.start_time),
            uuid: self.uuid.clone().unwrap_or_default(),
            state: self.state,
            vm_dir: self.vm_dir(),
            console_socket: Some(self.console()),
            hotplugged_devices: self
                .plugged
                .iter()
                .map(|(i, id)| format!("{i}={id}"))
                .collect(),
            config: self.config.clone(),
            ..HypervisorState::default()
        }
    }

    async fn load(&mut self, state: HypervisorState) -> Result<()> {
        let r = ProcessRef {
            pid: state.pid,
            start_time: state.vmm_start_time,
        };
        let name = cmdline::vm_name(&state.id);
        let p = Supervised::adopt(state.pid, &name).map_err(|e| be(e.into()))?;
        if !r.is_alive() {
            return Err(be(AcrnError::Reused { pid: state.pid }));
        }
        self.id = state.id;
        self.config = state.config;
        self.uuid = Some(state.uuid).filter(|u| !u.is_empty());
        self.state = state.state;
        self.plugged = state
            .hotplugged_devices
            .iter()
            .filter_map(|s| {
                let (i, id) = s.split_once('=')?;
                Some((i.parse().ok()?, id.to_string()))
            })
            .collect();
        // The slots are a function of the config and the boot devices.
        self.placeholder_slots = self
            .launch_spec()
            .map(|s| cmdline::launch(&s).placeholder_slots)
            .unwrap_or_default();
        self.dm_ref = Some(r);
        self.dm = Some(p);
        self.detached = false;
        Ok(())
    }

    fn generate_socket(&self, id: &str, use_vsock: bool) -> Result<AgentSocket> {
        if use_vsock {
            return Err(Error::unsupported(
                "generate_socket",
                ACRN,
                "ACRN has no vsock: the agent talks over a virtio-console port",
            ));
        }
        Ok(socket::generate_vm_socket(id, false, &self.storage)?)
    }
}

#[cfg(test)]
mod tests;
