//! The Cloud Hypervisor backend: every method of [`Hypervisor`], driving a
//! real `cloud-hypervisor` over its REST API.
//!
//! | concern | module |
//! |---|---|
//! | the API: typed bodies, replies, one endpoint per call | [`api`] |
//! | the `vm.create` body, a pure function of config and devices | [`vm_config`] |
//! | what `vm.resize` is asked for | [`resize`] |
//! | errors; start and re-attach; hot-plug and resize | `error`, `launch`, `hotplug` |
//! | supervising CH and virtiofsd, the REST client | `backends::vmm` |
//!
//! # Lifecycle
//!
//! `create_sandbox` validates the config, checks that the VM's socket paths
//! fit and names once, in a warning, the Kata keys CH has no use for;
//! `add_device` collects cold-plugged devices (and refuses at once those CH
//! cannot take). `start_sandbox` makes the VM directory `<storage>/<id>`,
//! starts virtiofsd when a virtio-fs share is configured, spawns
//! `cloud-hypervisor --api-socket` (its own process group, output in
//! `clh.log`), waits for `vmm.ping`, sends `vm.create` and `vm.boot` (or
//! `vm.restore` for a VM booted from a template), and checks that `vm.info`
//! says `Running`, all under the start deadline. A start that fails for any
//! reason kills what it started (virtiofsd included) and removes the
//! directory; its error carries the end of CH's log.
//!
//! # Templates
//!
//! A VM booted to be a template (`boot_to_be_template` with a
//! `memory_path`) has its memory as one zone on the template's memory file,
//! mapped shared, so `save_sandbox` (`vm.snapshot` into
//! `devices_state_path`) leaves guest memory in that file. A failed
//! template snapshot is [`ClhError::TemplateSnapshot`] with CH's text (on a
//! PVM host CH cannot read the vCPUs' nested state) and removes what it
//! wrote; cleanup of a template VM whose snapshot never succeeded removes
//! the memory file too. A clone (`boot_from_template`) restores from
//! `<vm dir>/restore`: the snapshot's files linked, its saved config
//! patched to map the file private (copy on write) and to use the clone's
//! own console and vsock sockets; `vm.restore` resumes it.
//!
//! `stop_sandbox` sends `vm.shutdown` and `vmm.shutdown`, waits, then
//! TERM and KILL; a CH that died on its own is reported by `check` at once
//! and by `stop_sandbox`, as for QEMU.
//!
//! # Drop
//!
//! Dropping a handle that still owns a live CH kills it and virtiofsd and
//! removes the VM directory, unless [`Hypervisor::disconnect`] or
//! [`Hypervisor::to_grpc`] gave the VM away.

pub mod api;
mod error;
mod hotplug;
mod launch;

/// Cloud Hypervisor's command line, for `check`'s posture.
pub(crate) use launch::command_args;
pub mod resize;
pub mod vm_config;

use error::api_err;
pub use error::ClhError;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use self::api::{
    VmInfo, VmInfoGet, VmPause, VmResume, VmRunState, VmShutdown, VmSnapshot, VmSnapshotConfig,
    VmmPing, VmmShutdown,
};
use self::vm_config::VmPaths;
use crate::backends::vmm::process::{self, Exit, ProcessError, Supervised};
use crate::backends::vmm::rest::{Endpoint, RestClient, RestError};
use crate::config::HypervisorConfig;
use crate::defaults::VSOCK_PORT;
use crate::device::{Device, HotplugResult, HybridVsock, MemoryDevice, VcpuThreadIds};
use crate::hypervisor::{
    Capabilities, Error, Hypervisor, HypervisorState, NetworkNamespace, Result, VmState,
};
use crate::hypervisor_type::HypervisorType;
use crate::probe;
use crate::socket::{self, AgentSocket};

const KIND: HypervisorType = HypervisorType::Clh;
const MIB: u64 = 1 << 20;

/// The guest context id of the hybrid vsock (Kata's for CH).
pub const VSOCK_CID: u64 = 3;
/// How long `stop_sandbox` waits after `vmm.shutdown` before TERM, and
/// after TERM before KILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long `check` waits for `vmm.ping`.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an API call on a running VM may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `vm.snapshot` may take (it writes guest memory).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a process to go after SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the last start went, step by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartTimings {
    /// From spawning CH to `vmm.ping` answering.
    pub vmm_ready: Duration,
    /// `vm.create` and `vm.boot` (or `vm.restore`), both acknowledged.
    pub create_boot: Duration,
    /// The whole start, `vm.info` included.
    pub total: Duration,
}

/// The Cloud Hypervisor backend.
#[derive(Debug)]
pub struct Clh {
    storage: PathBuf,
    id: String,
    config: HypervisorConfig,
    state: VmState,
    netns: NetworkNamespace,
    devices: Vec<Device>,
    paths: Option<VmPaths>,
    host_memory_mib: u64,
    clh: Option<Supervised>,
    virtiofsd: Option<Supervised>,
    api: Option<Arc<RestClient>>,
    /// Hot-plugged devices: id to guest PCI address.
    hot: BTreeMap<String, String>,
    block_indexes: BTreeSet<u32>,
    hot_memory_mib: u32,
    snapshot: Option<PathBuf>,
    timings: Option<StartTimings>,
    start_timeout: Duration,
    detached: bool,
}

impl Default for Clh {
    fn default() -> Self {
        Clh::new()
    }
}

impl Drop for Clh {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(p) = self.clh.as_ref().filter(|p| p.exited().is_none()) {
            tracing::warn!(
                pid = p.pid(),
                id = self.id,
                "dropping a handle that owns a running VM: killing it (call disconnect() to keep it)"
            );
            p.kill();
            if let Some(v) = &self.virtiofsd {
                v.kill();
            }
            if let Some(paths) = &self.paths {
                let _ = std::fs::remove_dir_all(&paths.dir);
            }
        }
    }
}

impl Clh {
    /// A backend keeping VMs under [`crate::paths::vm_storage_dir`].
    pub fn new() -> Self {
        Clh::with_storage(crate::paths::vm_storage_dir())
    }

    /// A backend keeping VMs under `storage` (one directory per VM holding
    /// its sockets: keep it short, socket paths hold at most 107 bytes).
    pub fn with_storage(storage: impl Into<PathBuf>) -> Self {
        Clh {
            storage: storage.into(),
            id: String::new(),
            config: HypervisorConfig::default(),
            state: VmState::New,
            netns: NetworkNamespace::default(),
            devices: Vec::new(),
            paths: None,
            host_memory_mib: 0,
            clh: None,
            virtiofsd: None,
            api: None,
            hot: BTreeMap::new(),
            block_indexes: BTreeSet::new(),
            hot_memory_mib: 0,
            snapshot: None,
            timings: None,
            start_timeout: Duration::ZERO,
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

    /// How the last successful start went, step by step (for the bench).
    pub fn start_timings(&self) -> Option<StartTimings> {
        self.timings
    }

    /// The snapshot directory of the last `save_sandbox`.
    pub fn snapshot_dir(&self) -> Option<&Path> {
        self.snapshot.as_deref()
    }

    /// The `cloud-hypervisor` binary: the config's `path`, or where Kata
    /// installs it.
    pub fn binary(&self) -> PathBuf {
        self.config
            .asset_path(crate::assets::AssetType::Hypervisor)
            .map(Path::to_path_buf)
            .or_else(|| crate::backends::facts(KIND).default_binary())
            .unwrap_or_else(|| PathBuf::from("cloud-hypervisor"))
    }

    /// `vm.info`, for callers that want what CH reports (tests, bench).
    ///
    /// # Errors
    /// [`Error::InvalidState`] without a running VMM; an API error.
    pub async fn vm_info(&mut self) -> Result<VmInfo> {
        let r = self.call("read the VM info", &VmInfoGet, API_TIMEOUT).await;
        self.or_exited(r).await
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

    fn log_tail(&self) -> String {
        self.paths
            .as_ref()
            .map(|p| process::log_tail(&p.log))
            .unwrap_or_default()
    }

    fn exited_error(&self) -> Option<ClhError> {
        let p = self.clh.as_ref()?;
        p.exited().map(|exit| ClhError::Exited {
            binary: self.binary(),
            pid: p.pid(),
            exit,
            log_tail: self.log_tail(),
        })
    }

    /// The API client, or why there is none.
    fn client(&self) -> Result<Arc<RestClient>, ClhError> {
        if let Some(e) = self.exited_error() {
            return Err(e);
        }
        match &self.api {
            Some(a) => Ok(Arc::clone(a)),
            None => {
                let path = self
                    .paths
                    .as_ref()
                    .map(|p| p.api.clone())
                    .unwrap_or_default();
                Err(ClhError::Api {
                    op: "be reached",
                    source: RestError::Connect {
                        socket: path,
                        source: std::io::Error::from(std::io::ErrorKind::NotConnected),
                    },
                })
            }
        }
    }

    async fn call<E: Endpoint + Sync>(
        &self,
        op: &'static str,
        ep: &E,
        timeout: Duration,
    ) -> Result<E::Reply, ClhError> {
        let api = self.client()?;
        api_err(op, api.call(ep, timeout).await)
    }

    /// `result`, unless CH died meanwhile: then its exit and log, which say
    /// more than the connection error it caused.
    async fn or_exited<T>(&mut self, result: Result<T, ClhError>) -> Result<T> {
        let Err(e) = result else {
            return result.map_err(Error::from);
        };
        let gone = matches!(
            &e,
            ClhError::Api {
                source: RestError::Connect { .. }
                    | RestError::Http { .. }
                    | RestError::Timeout { .. },
                ..
            }
        );
        if gone {
            if let Some(p) = &self.clh {
                if p.wait(Duration::from_millis(500)).await.is_some() {
                    if let Some(exited) = self.exited_error() {
                        self.api = None;
                        self.state = VmState::Stopped;
                        return Err(exited.into());
                    }
                }
            }
        }
        Err(e.into())
    }
}

fn host_memory_mib() -> Result<u64, ClhError> {
    probe::host_memory_mib().map_err(ClhError::HostMemory)
}

/// The files `vm.snapshot` writes into a snapshot directory.
const SNAPSHOT_FILES: [&str; 3] = [vm_config::SAVED_CONFIG, "state.json", "memory-ranges"];

/// Removes what a failed template snapshot may have written into `dir`,
/// and `dir` itself when that leaves it empty.
fn remove_snapshot_files(dir: &Path) {
    for name in SNAPSHOT_FILES {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

/// Checks that a template's snapshot saved a config its clones can be
/// restored from (patched per clone at restore).
fn check_saved_config(saved: &Path) -> Result<(), ClhError> {
    let text = std::fs::read_to_string(saved).map_err(|source| ClhError::TemplateConfig {
        path: saved.to_path_buf(),
        source,
    })?;
    let paths = VmPaths::new(Path::new("/"), "check");
    vm_config::template_restore_config(&text, &paths)
        .map(drop)
        .map_err(|e| ClhError::TemplateConfig {
            path: saved.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
}

impl Clh {
    /// Removes the memory file of a template VM that never got its
    /// snapshot written: a half-made template is no template.
    pub(super) fn remove_unmade_template(&self) {
        if !self.config.boot_to_be_template || self.snapshot.is_some() {
            return;
        }
        if let Some(file) = &self.config.memory_path {
            match std::fs::remove_file(file) {
                Ok(()) => tracing::debug!(file = %file.display(), "unmade template memory removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, file = %file.display(), "cannot remove template memory")
                }
            }
        }
    }
}

fn remove_dir(dir: &Path) -> Result<(), ClhError> {
    crate::backends::vmm::remove_dir_if_present(dir).map_err(|source| ClhError::Dir {
        action: "remove",
        path: dir.to_path_buf(),
        source,
    })
}

/// vCPU index to thread id, from `/proc/<pid>/task/*/comm`: CH names its
/// vCPU threads `vcpu<N>`.
pub fn vcpu_threads(pid: u32) -> std::io::Result<VcpuThreadIds> {
    let mut ids = VcpuThreadIds::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread may end between the listing and the read.
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if let Some(n) = comm
            .trim()
            .strip_prefix("vcpu")
            .and_then(|n| n.parse().ok())
        {
            ids.vcpus.insert(n, tid);
        }
    }
    Ok(ids)
}

#[async_trait]
impl Hypervisor for Clh {
    fn hypervisor_type(&self) -> HypervisorType {
        KIND
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
        if config.rootless {
            return Err(Error::unsupported(
                "create_sandbox",
                KIND,
                "rootless = true is implemented for qemu only (cloud hypervisor runs as the caller); set rootless = false",
            ));
        }
        for name in [
            VmPaths::API,
            VmPaths::CONSOLE,
            VmPaths::VSOCK,
            VmPaths::VIRTIOFS,
        ] {
            socket::build_socket_path(&[&self.storage, Path::new(id), Path::new(name)])?;
        }
        let ignored = vm_config::ignored_keys(&config);
        if !ignored.is_empty() {
            tracing::warn!(
                keys = ignored.join(", "),
                "cloud hypervisor has no use for these keys; ignored"
            );
        }
        self.host_memory_mib = host_memory_mib()?;
        self.id = id.to_string();
        self.netns = network_ns.clone();
        self.config = config;
        self.paths = Some(VmPaths::new(&self.storage, id));
        // What cannot be launched is refused now, not at start.
        self.vm_config(&[]).map_err(ClhError::from)?;
        self.state = VmState::Created;
        tracing::debug!(id, "sandbox created");
        Ok(())
    }

    async fn start_sandbox(&mut self, timeout: Duration) -> Result<()> {
        self.require("start_sandbox", &[VmState::Created])?;
        match self.launch(timeout).await {
            Ok(()) => {
                self.state = VmState::Running;
                self.detached = false;
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
        let Some(p) = self.clh.take() else {
            if matches!(self.state, VmState::Running | VmState::Paused) {
                self.state = VmState::Stopped;
            }
            return Ok(());
        };
        let died_alone = p.exited();
        tracing::debug!(id = self.id, pid = p.pid(), "stopping cloud hypervisor");
        if died_alone.is_none() {
            if let Some(api) = self.api.clone() {
                // vmm.shutdown may close the connection before it answers.
                if let Err(e) = api.call(&VmShutdown, Duration::from_secs(2)).await {
                    tracing::debug!(error = %e, "vm.shutdown");
                }
                if let Err(e) = api.call(&VmmShutdown, Duration::from_secs(2)).await {
                    tracing::debug!(error = %e, "vmm.shutdown");
                }
            }
            if p.wait(STOP_GRACE).await.is_none() {
                tracing::warn!(
                    pid = p.pid(),
                    "cloud hypervisor ignored vmm.shutdown: TERM, then KILL"
                );
                if p.terminate(STOP_GRACE).await.is_none() {
                    tracing::error!(pid = p.pid(), "cloud hypervisor did not die after SIGKILL");
                }
            }
        }
        self.api = None;
        if let Some(v) = self.virtiofsd.take() {
            v.terminate(REAP_TIMEOUT).await;
        }
        self.state = VmState::Stopped;
        match died_alone {
            Some(exit) if !matches!(exit, Exit::Unknown) && !exit.success() => {
                let e = ClhError::Exited {
                    binary: self.binary(),
                    pid: p.pid(),
                    exit,
                    log_tail: self.log_tail(),
                };
                tracing::error!(id = self.id, error = %e, "cloud hypervisor had died before stop");
                Err(e.into())
            }
            Some(exit) => {
                tracing::info!(id = self.id, %exit, "cloud hypervisor had exited before stop");
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
        let r = self
            .call("pause the VM (vm.pause)", &VmPause, API_TIMEOUT)
            .await;
        self.or_exited(r).await?;
        self.state = VmState::Paused;
        Ok(())
    }

    async fn save_sandbox(&mut self) -> Result<()> {
        self.require("save_sandbox", &[VmState::Running, VmState::Paused])?;
        if self.state == VmState::Running {
            self.pause_sandbox().await?;
        }
        let paths = self.paths.clone().expect("a running VM has paths");
        let dir = match (
            &self.config.devices_state_path,
            self.config.boot_to_be_template,
        ) {
            (Some(dir), true) => dir.clone(),
            _ => paths.snapshot.clone(),
        };
        crate::private::create_dir_all(&dir).map_err(|source| {
            Error::from(ClhError::Dir {
                action: "create",
                path: dir.clone(),
                source,
            })
        })?;
        let template = self.config.boot_to_be_template && self.config.devices_state_path.is_some();
        let body = VmSnapshot(VmSnapshotConfig {
            destination_url: api::file_url(&dir),
        });
        let r = self
            .call("snapshot the VM (vm.snapshot)", &body, SNAPSHOT_TIMEOUT)
            .await;
        let r = match r {
            Err(e) if template => {
                let fault = e.fault().map(|(s, m)| (s, m.to_string()));
                match fault {
                    Some((status, message)) => Err(ClhError::TemplateSnapshot {
                        dir: dir.clone(),
                        status,
                        message,
                    }),
                    None => Err(e),
                }
            }
            r => r,
        };
        if let Err(e) = self.or_exited(r).await {
            if dir == paths.snapshot {
                let _ = std::fs::remove_dir_all(&dir);
            } else if template {
                remove_snapshot_files(&dir);
            }
            return Err(e);
        }
        if template {
            let saved = dir.join(vm_config::SAVED_CONFIG);
            if let Err(e) = check_saved_config(&saved) {
                remove_snapshot_files(&dir);
                return Err(e.into());
            }
        }
        tracing::info!(id = self.id, dir = %dir.display(), "sandbox saved");
        self.snapshot = Some(dir);
        Ok(())
    }

    async fn resume_sandbox(&mut self) -> Result<()> {
        self.require("resume_sandbox", &[VmState::Paused])?;
        let r = self
            .call("resume the VM (vm.resume)", &VmResume, API_TIMEOUT)
            .await;
        self.or_exited(r).await?;
        self.state = VmState::Running;
        Ok(())
    }

    async fn add_device(&mut self, device: Device) -> Result<()> {
        self.require("add_device", &[VmState::Created])?;
        let mut with = self.devices.clone();
        with.push(device.clone());
        self.vm_config(&with).map_err(ClhError::from)?;
        if let Device::Block(d) | Device::Image(d) = &device {
            self.block_indexes.insert(d.index);
        }
        tracing::debug!(kind = %device.device_type(), "device added");
        self.devices.push(device);
        Ok(())
    }

    async fn hotplug_add_device(&mut self, device: Device) -> Result<HotplugResult> {
        self.require("hotplug_add_device", &[VmState::Running, VmState::Paused])?;
        let result = match device {
            Device::Block(d) => self.hotplug_block(d).await,
            Device::Net(n) => self.hotplug_net(&n).await,
            Device::Vfio(v) => self.hotplug_vfio(&v).await,
            Device::Fs(v) => self.hotplug_fs(v).await,
            Device::Cpu(n) => self.add_vcpus(n).await,
            Device::Memory(m) => self.add_memory(m).await,
            other => {
                return Err(Error::unsupported(
                    "hotplug_add_device",
                    KIND,
                    format!("{} devices cannot be hot-plugged", other.device_type()),
                ))
            }
        };
        self.or_exited(result).await
    }

    async fn hotplug_remove_device(&mut self, device: Device) -> Result<HotplugResult> {
        self.require(
            "hotplug_remove_device",
            &[VmState::Running, VmState::Paused],
        )?;
        let id = match &device {
            Device::Block(d) => vm_config::drive_id(d.index),
            Device::Net(n) => vm_config::net_id(n),
            Device::Vfio(v) => vm_config::vfio_id(v),
            Device::Fs(_) => vm_config::FS_ID.to_string(),
            Device::Cpu(n) => {
                let r = self.remove_vcpus(*n).await;
                return self.or_exited(r).await;
            }
            other => {
                return Err(Error::unsupported(
                    "hotplug_remove_device",
                    KIND,
                    format!(
                        "{} devices cannot be hot-unplugged (memory does not shrink)",
                        other.device_type()
                    ),
                ))
            }
        };
        let r = self.unplug(id).await;
        if r.is_ok() {
            if let Device::Block(d) = &device {
                self.block_indexes.remove(&d.index);
            }
        }
        self.or_exited(r).await
    }

    async fn resize_memory(
        &mut self,
        mem_mib: u32,
        block_size_mib: u32,
        probe: bool,
    ) -> Result<(u32, MemoryDevice)> {
        self.require("resize_memory", &[VmState::Running, VmState::Paused])?;
        let r = self
            .resize_memory_inner(mem_mib, block_size_mib, probe)
            .await;
        self.or_exited(r).await
    }

    async fn resize_vcpus(&mut self, vcpus: u32) -> Result<(u32, u32)> {
        self.require("resize_vcpus", &[VmState::Running, VmState::Paused])?;
        let r = self.resize_vcpus_inner(vcpus).await;
        self.or_exited(r).await
    }

    async fn sandbox_console(&self, id: &str) -> Result<Option<PathBuf>> {
        // A VM made under another name keeps its own directory.
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
        self.api = None;
        self.detached = true;
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_device: true,
            block_device_hotplug: true,
            multi_queue: true,
            fs_sharing: self.config.shared_fs.is_virtio_fs(),
            hybrid_vsock: true,
            cpu_hotplug: true,
            memory_hotplug: self.config.mem_slots > 0 || self.config.virtio_mem,
            net_hotplug: true,
            vfio: true,
            pause: true,
            save: true,
            // A template: a shared memory zone on the template's file and
            // vm.snapshot; clones by vm.restore of a per-clone copy-on-write
            // config (see `launch::clone_snapshot_dir`).
            vm_template: true,
            vm_cache: true,
            reattach: true,
            // Its hybrid vsock is the VMM's own device, not
            // vhost-device-vsock.
            holds_agent_connection: false,
        }
    }

    fn hypervisor_config(&self) -> HypervisorConfig {
        self.config.clone()
    }

    async fn thread_ids(&mut self) -> Result<VcpuThreadIds> {
        self.require("thread_ids", &[VmState::Running, VmState::Paused])?;
        let Some(p) = &self.clh else {
            return Err(self.invalid("thread_ids"));
        };
        let pid = p.pid();
        match vcpu_threads(pid) {
            Ok(ids) => Ok(ids),
            Err(_) => {
                let e = self
                    .exited_error()
                    .unwrap_or(ClhError::Process(ProcessError::NotRunning { pid }));
                Err(e.into())
            }
        }
    }

    async fn cleanup(&mut self) -> Result<()> {
        if self.clh.as_ref().is_some_and(|p| p.exited().is_none()) {
            return Err(self.invalid("cleanup"));
        }
        self.api = None;
        self.clh = None;
        if let Some(v) = self.virtiofsd.take() {
            v.terminate(REAP_TIMEOUT).await;
        }
        self.devices.clear();
        if let Some(paths) = &self.paths {
            remove_dir(&paths.dir)?;
            tracing::debug!(dir = %paths.dir.display(), "VM directory removed");
        }
        self.remove_unmade_template();
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.clh
            .iter()
            .chain(self.virtiofsd.iter())
            .map(Supervised::pid)
            .collect()
    }

    async fn from_grpc(&mut self, config: &HypervisorConfig, data: &[u8]) -> Result<()> {
        self.require("from_grpc", &[VmState::New])?;
        let state: HypervisorState = serde_json::from_slice(data).map_err(ClhError::Grpc)?;
        let mut config = config.clone();
        config.validate()?;
        self.config = config;
        self.restore_from_state(&state)?;
        self.adopt(&state)?;
        self.state = state.state;
        Ok(())
    }

    async fn to_grpc(&mut self) -> Result<Vec<u8>> {
        let data = serde_json::to_vec(&self.save()).map_err(ClhError::Grpc)?;
        self.api = None;
        self.detached = true;
        self.devices.clear();
        Ok(data)
    }

    async fn check(&mut self) -> Result<()> {
        if self.clh.is_none() {
            return Err(self.invalid("check"));
        }
        if let Some(e) = self.exited_error() {
            self.api = None;
            self.state = VmState::Stopped;
            return Err(e.into());
        }
        if let Some(v) = &self.virtiofsd {
            if let Some(exit) = v.exited() {
                return Err(ClhError::VirtiofsdExited { pid: v.pid(), exit }.into());
            }
        }
        let r = self.call("answer vmm.ping", &VmmPing, CHECK_TIMEOUT).await;
        self.or_exited(r).await.map(drop)
    }

    fn save(&self) -> HypervisorState {
        let paths = self.paths.as_ref();
        let pid = self.clh.as_ref().map_or(0, Supervised::pid);
        HypervisorState {
            hypervisor: KIND,
            id: self.id.clone(),
            pid,
            vmm_start_time: crate::process::ProcessRef::of(pid).start_time,
            state: self.state,
            vm_dir: paths.map(|p| p.dir.clone()).unwrap_or_default(),
            api_socket: paths.map(|p| p.api.clone()),
            console_socket: paths.map(|p| p.console.clone()),
            block_index_map: self.block_indexes.clone(),
            hotplugged_memory_mib: self.hot_memory_mib,
            hotplugged_devices: self
                .hot
                .iter()
                .map(|(id, bdf)| format!("{id}@{bdf}"))
                .collect(),
            virtiofsd_pid: self.virtiofsd.as_ref().map(Supervised::pid),
            snapshot_dir: self.snapshot.clone(),
            config: self.config.clone(),
            ..HypervisorState::default()
        }
    }

    async fn load(&mut self, state: HypervisorState) -> Result<()> {
        self.require("load", &[VmState::New])?;
        let mut config = state.config.clone();
        config.validate()?;
        self.config = config;
        self.restore_from_state(&state)?;
        self.adopt(&state)?;
        let info = self.vm_info().await?;
        self.state = match info.state {
            VmRunState::Running => VmState::Running,
            VmRunState::Paused | VmRunState::BreakPoint => VmState::Paused,
            VmRunState::Created => VmState::Created,
            VmRunState::Shutdown => VmState::Stopped,
        };
        tracing::info!(id = self.id, pid = state.pid, state = %self.state, "re-attached to cloud hypervisor");
        Ok(())
    }

    fn generate_socket(&self, id: &str, _use_vsock: bool) -> Result<AgentSocket> {
        let uds_path =
            socket::build_socket_path(&[&self.storage, Path::new(id), Path::new(VmPaths::VSOCK)])?;
        Ok(AgentSocket::HybridVsock(HybridVsock {
            uds_path,
            context_id: VSOCK_CID,
            port: VSOCK_PORT,
        }))
    }
}

#[cfg(test)]
mod tests;
