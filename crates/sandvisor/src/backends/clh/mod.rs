//! The Cloud Hypervisor backend: every method of [`Hypervisor`], driving a
//! real `cloud-hypervisor` over its REST API.
//!
//! | concern | module |
//! |---|---|
//! | the API: typed bodies, replies, one endpoint per call | [`api`] |
//! | the `vm.create` body, a pure function of config and devices | [`vm_config`] |
//! | what `vm.resize` is asked for | [`resize`] |
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
pub mod resize;
pub mod vm_config;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use self::api::{
    PciDeviceInfo, RestoreConfig, VmAddDevice, VmAddDisk, VmAddFs, VmAddNet, VmBoot, VmCreate,
    VmInfo, VmInfoGet, VmPause, VmRemoveDevice, VmRemoveDevicePut, VmResize, VmResizePut,
    VmRestore, VmResume, VmRunState, VmShutdown, VmSnapshot, VmSnapshotConfig, VmmPing,
    VmmShutdown,
};
use self::resize::ResizeError;
use self::vm_config::{VmConfigError, VmPaths, VmSpec};
use crate::backends::vmm::process::{self, Exit, ProcessError, Spawn, Supervised};
use crate::backends::vmm::rest::{Endpoint, Flavour, RestClient, RestError};
use crate::backends::vmm::virtiofsd::{self, VirtiofsdError};
use crate::config::HypervisorConfig;
use crate::defaults::VSOCK_PORT;
use crate::device::{
    BlockDrive, Device, HotplugResult, HybridVsock, MemoryDevice, NetDevice, SharedFsVolume,
    VcpuThreadIds, VfioDevice,
};
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

/// Errors of the Cloud Hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum ClhError {
    /// The `vm.create` body could not be built.
    #[error(transparent)]
    VmConfig(#[from] VmConfigError),
    /// A resize was refused.
    #[error(transparent)]
    Resize(#[from] ResizeError),
    /// An API call failed; the source keeps CH's message.
    #[error("cloud hypervisor could not {op}")]
    Api {
        /// What was asked, in words.
        op: &'static str,
        /// The failure, with CH's reply.
        #[source]
        source: RestError,
    },
    /// A process could not be spawned or adopted.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// virtiofsd could not be started.
    #[error(transparent)]
    Virtiofsd(#[from] VirtiofsdError),
    /// The host's memory could not be read.
    #[error("cannot read the host's memory size")]
    HostMemory(#[source] probe::ProbeError),
    /// A directory of the VM could not be made or removed.
    #[error("cannot {action} directory {path:?}")]
    Dir {
        /// `create` or `remove`.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// CH exited while starting.
    #[error("cloud hypervisor exited while starting")]
    EarlyExit {
        /// The binary.
        binary: PathBuf,
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// The end of its log.
        log_tail: String,
    },
    /// CH exited without being asked to.
    #[error("cloud hypervisor exited on its own")]
    Exited {
        /// The binary.
        binary: PathBuf,
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
        /// The end of its log.
        log_tail: String,
    },
    /// CH did not get the VM running in time.
    #[error("cloud hypervisor did not {what} in time")]
    StartTimeout {
        /// What it did not do.
        what: String,
        /// How long it had.
        timeout: Duration,
        /// The end of its log.
        log_tail: String,
        /// The last error (boxed: errors stay small to move).
        last: Option<Box<RestError>>,
    },
    /// `vm.boot` answered, but the VM does not run.
    #[error("the VM is {state:?} after vm.boot, not Running")]
    NotRunning {
        /// What `vm.info` said.
        state: VmRunState,
    },
    /// virtiofsd has exited.
    #[error("virtiofsd (pid {pid}) exited: {exit}")]
    VirtiofsdExited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: Exit,
    },
    /// A tap could not be opened for a network device.
    #[error("cannot open tap {name:?}")]
    Tap {
        /// The tap.
        name: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A device id already in use.
    #[error("device {id:?} is already attached")]
    DeviceExists {
        /// The id.
        id: String,
    },
    /// A device that was not hot-plugged.
    #[error("device {id:?} was not hot-plugged into this VM")]
    UnknownDevice {
        /// The id.
        id: String,
    },
    /// `to_grpc` output that does not decode.
    #[error("cannot decode the VM cache state")]
    Grpc(#[source] serde_json::Error),
    /// A state for another hypervisor.
    #[error("the state is for {0}, not clh")]
    WrongHypervisor(HypervisorType),
}

impl ClhError {
    /// CH's HTTP status and message, when an API call got an error reply.
    pub fn fault(&self) -> Option<(u16, &str)> {
        match self {
            ClhError::Api {
                source: RestError::Fault {
                    status, message, ..
                },
                ..
            } => Some((*status, message.as_str())),
            _ => None,
        }
    }
}

impl From<ClhError> for Error {
    /// CH's exits and start timeouts become the shared variants every
    /// backend reports them with; the rest is [`Error::Backend`].
    fn from(e: ClhError) -> Self {
        match e {
            ClhError::EarlyExit {
                binary,
                pid,
                exit,
                log_tail,
            } => Error::VmmExited {
                hypervisor: KIND,
                binary,
                pid,
                exit,
                starting: true,
                log_tail,
            },
            ClhError::Exited {
                binary,
                pid,
                exit,
                log_tail,
            } => Error::VmmExited {
                hypervisor: KIND,
                binary,
                pid,
                exit,
                starting: false,
                log_tail,
            },
            ClhError::StartTimeout {
                what,
                timeout,
                log_tail,
                last,
            } => Error::StartTimeout {
                hypervisor: KIND,
                what,
                timeout,
                log_tail,
                last: last.map(|e| e as crate::hypervisor::BackendError),
            },
            other => Error::backend(KIND, other),
        }
    }
}

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

/// `result`'s error as an API failure of `op`.
fn api_err<T>(op: &'static str, result: std::result::Result<T, RestError>) -> Result<T, ClhError> {
    result.map_err(|source| ClhError::Api { op, source })
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

    /// Runs a step of the start, under `deadline`, racing CH's exit.
    async fn starting<T>(
        &self,
        what: &str,
        deadline: Instant,
        step: impl Future<Output = std::result::Result<T, RestError>>,
    ) -> Result<T, ClhError> {
        let Some(p) = &self.clh else {
            return Err(ProcessError::NotRunning { pid: 0 }.into());
        };
        let early = |exit| ClhError::EarlyExit {
            binary: self.binary(),
            pid: p.pid(),
            exit,
            log_tail: self.log_tail(),
        };
        let mut exit = p.exit_watch();
        let result = tokio::select! {
            r = step => r,
            _ = exit.wait_for(Option::is_some) => {
                return Err(early(p.exited().unwrap_or(Exit::Unknown)));
            }
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                // CH dying mid-request shows as a connection error first.
                if let Some(exit) = p.wait(Duration::from_millis(200)).await {
                    return Err(early(exit));
                }
                if Instant::now() >= deadline || matches!(e, RestError::Timeout { .. }) {
                    return Err(ClhError::StartTimeout {
                        what: what.to_string(),
                        timeout: self.start_timeout,
                        log_tail: self.log_tail(),
                        last: Some(Box::new(e)),
                    });
                }
                Err(ClhError::Api {
                    op: "start the VM",
                    source: e,
                })
            }
        }
    }

    fn vm_config(&self, devices: &[Device]) -> Result<api::VmConfig, VmConfigError> {
        let paths = self
            .paths
            .clone()
            .unwrap_or_else(|| VmPaths::new(&self.storage, &self.id));
        vm_config::build(&VmSpec {
            config: &self.config,
            devices,
            paths: &paths,
            host_memory_mib: self.host_memory_mib,
        })
    }

    async fn launch(&mut self, timeout: Duration) -> Result<(), ClhError> {
        let started = Instant::now();
        let deadline = started + timeout;
        self.start_timeout = timeout;
        let paths = self
            .paths
            .clone()
            .expect("create_sandbox set the paths before the state became Created");
        std::fs::create_dir_all(&paths.dir).map_err(|source| ClhError::Dir {
            action: "create",
            path: paths.dir.clone(),
            source,
        })?;
        for stale in [&paths.api, &paths.console, &paths.vsock] {
            let _ = std::fs::remove_file(stale);
        }
        let vm = self.vm_config(&self.devices)?;

        if !vm.fs.is_empty() && self.config.shared_fs.is_virtio_fs() {
            let share = self.devices.iter().find_map(|d| match d {
                Device::Fs(v) => Some(v.host_path.clone()),
                _ => None,
            });
            if let Some(source) = share {
                self.virtiofsd = Some(virtiofsd::start(
                    &self.config,
                    &source,
                    &paths.virtiofs,
                    &paths.virtiofsd_log,
                )?);
            }
        }

        let binary = self.binary();
        let mut args = vec![
            "--api-socket".to_string(),
            format!("path={}", paths.api.display()),
        ];
        if self.config.debug {
            args.push("-v".to_string());
        }
        tracing::info!(id = self.id, binary = %binary.display(), ?args, "starting cloud hypervisor");
        self.clh = Some(Supervised::spawn(Spawn {
            program: &binary,
            args: &args,
            fds: Vec::new(),
            log: &paths.log,
            netns: self.netns.path.as_deref(),
        })?);
        let api = Arc::new(RestClient::new(&paths.api, Flavour::CloudHypervisor));
        self.api = Some(Arc::clone(&api));

        let left = || deadline.saturating_duration_since(Instant::now());
        let what = format!("answer vmm.ping on {:?}", paths.api);
        let ping = self
            .starting(&what, deadline, api.call_when_ready(&VmmPing, left()))
            .await?;
        tracing::info!(
            id = self.id,
            version = ping.version,
            "cloud hypervisor answers"
        );
        let vmm_ready = started.elapsed();

        if self.config.boot_from_template {
            let dir = self
                .config
                .devices_state_path
                .clone()
                .unwrap_or_else(|| paths.snapshot.clone());
            let restore = VmRestore(RestoreConfig {
                source_url: api::file_url(&dir),
                prefault: None,
                resume: Some(true),
            });
            self.starting(
                "restore the VM (vm.restore)",
                deadline,
                api.call(&restore, left()),
            )
            .await?;
        } else {
            self.starting(
                "create the VM (vm.create)",
                deadline,
                api.call(&VmCreate(vm), left()),
            )
            .await?;
            self.starting("boot the VM (vm.boot)", deadline, api.call(&VmBoot, left()))
                .await?;
        }
        let create_boot = started.elapsed() - vmm_ready;
        let info = self
            .starting(
                "report the VM (vm.info)",
                deadline,
                api.call(&VmInfoGet, left()),
            )
            .await?;
        if info.state != VmRunState::Running {
            return Err(ClhError::NotRunning { state: info.state });
        }
        self.timings = Some(StartTimings {
            vmm_ready,
            create_boot,
            total: started.elapsed(),
        });
        tracing::info!(
            id = self.id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cloud hypervisor runs the VM"
        );
        Ok(())
    }

    /// Kills whatever a failed start left and removes the VM directory.
    async fn abort_start(&mut self) {
        self.api = None;
        if let Some(p) = self.clh.take() {
            p.kill();
            if p.wait(REAP_TIMEOUT).await.is_none() {
                tracing::error!(pid = p.pid(), "cloud hypervisor did not die after SIGKILL");
            }
        }
        if let Some(v) = self.virtiofsd.take() {
            v.terminate(REAP_TIMEOUT).await;
        }
        if let Some(paths) = &self.paths {
            if let Err(e) = remove_dir(&paths.dir) {
                tracing::warn!(error = %e, "cannot remove VM directory after a failed start");
            }
        }
    }

    fn restore_from_state(&mut self, state: &HypervisorState) -> Result<(), ClhError> {
        if state.hypervisor != KIND {
            return Err(ClhError::WrongHypervisor(state.hypervisor));
        }
        self.id = state.id.clone();
        if let Some(parent) = state.vm_dir.parent() {
            self.storage = parent.to_path_buf();
        }
        let mut paths = VmPaths::new(&self.storage, &self.id);
        if let Some(api) = &state.api_socket {
            paths.api = api.clone();
        }
        if let Some(console) = &state.console_socket {
            paths.console = console.clone();
        }
        self.api = Some(Arc::new(RestClient::new(
            &paths.api,
            Flavour::CloudHypervisor,
        )));
        self.paths = Some(paths);
        self.hot = state
            .hotplugged_devices
            .iter()
            .map(|d| match d.split_once('@') {
                Some((id, bdf)) => (id.to_string(), bdf.to_string()),
                None => (d.clone(), String::new()),
            })
            .collect();
        self.block_indexes = state.block_index_map.clone();
        self.hot_memory_mib = state.hotplugged_memory_mib;
        self.snapshot = state.snapshot_dir.clone();
        self.host_memory_mib = host_memory_mib()?;
        Ok(())
    }

    fn adopt(&mut self, state: &HypervisorState) -> Result<(), ClhError> {
        let api = self
            .paths
            .as_ref()
            .map(|p| p.api.to_string_lossy().into_owned())
            .unwrap_or_default();
        let clh = Supervised::adopt(state.pid, &api)?;
        let now = crate::process::ProcessRef::of(state.pid).start_time;
        if state.vmm_start_time != 0 && now != state.vmm_start_time {
            return Err(ProcessError::NotOurs {
                pid: state.pid,
                expected: format!("start time {}", state.vmm_start_time),
            }
            .into());
        }
        self.clh = Some(clh);
        self.virtiofsd = match state.virtiofsd_pid {
            Some(pid) => Some(Supervised::adopt(pid, "virtiofsd")?),
            None => None,
        };
        self.detached = false;
        Ok(())
    }

    fn record_hotplug(&mut self, info: &PciDeviceInfo) {
        tracing::info!(id = info.id, bdf = info.bdf, "device hot-plugged");
        self.hot.insert(info.id.clone(), info.bdf.clone());
    }

    fn hot_id_free(&self, id: &str) -> Result<(), ClhError> {
        if self.hot.contains_key(id) {
            return Err(ClhError::DeviceExists { id: id.to_string() });
        }
        Ok(())
    }

    async fn hotplug_block(&mut self, d: BlockDrive) -> Result<HotplugResult, ClhError> {
        let disk = vm_config::disk(&self.config, &d)?;
        let id = vm_config::drive_id(d.index);
        self.hot_id_free(&id)?;
        let info = self
            .call("add the disk (vm.add-disk)", &VmAddDisk(disk), API_TIMEOUT)
            .await?;
        self.record_hotplug(&info);
        self.block_indexes.insert(d.index);
        Ok(HotplugResult::Attached(Some(BlockDrive {
            pci_path: info.pci_path(),
            id,
            ..d
        })))
    }

    async fn hotplug_net(&mut self, n: &NetDevice) -> Result<HotplugResult, ClhError> {
        let id = vm_config::net_id(n);
        self.hot_id_free(&id)?;
        // The tap's descriptors go with the request; CH keeps its copies.
        let fds = open_tap(&n.tap_name, n.queues.max(1), self.netns.path.as_deref())
            .await
            .map_err(|source| ClhError::Tap {
                name: n.tap_name.clone(),
                source,
            })?;
        let body = vm_config::net(&self.config, n, fds.len());
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        let api = self.client()?;
        let info = api_err(
            "add the network device (vm.add-net)",
            api.call_with_fds(&VmAddNet(body), &borrowed, API_TIMEOUT)
                .await,
        )?;
        self.record_hotplug(&info);
        Ok(HotplugResult::Attached(None))
    }

    async fn hotplug_vfio(&mut self, v: &VfioDevice) -> Result<HotplugResult, ClhError> {
        let body = vm_config::vfio(&self.config, v);
        self.hot_id_free(body.id.as_deref().unwrap_or_default())?;
        let info = self
            .call(
                "add the VFIO device (vm.add-device)",
                &VmAddDevice(body),
                API_TIMEOUT,
            )
            .await?;
        self.record_hotplug(&info);
        Ok(HotplugResult::Attached(None))
    }

    async fn hotplug_fs(&mut self, v: SharedFsVolume) -> Result<HotplugResult, ClhError> {
        // The rules of a boot-time share: virtio-fs only, one share.
        let mut shares: Vec<Device> = self
            .devices
            .iter()
            .filter(|d| matches!(d, Device::Fs(_)))
            .cloned()
            .collect();
        shares.push(Device::Fs(v.clone()));
        self.vm_config(&shares)?;
        self.hot_id_free(vm_config::FS_ID)?;
        let paths = self.paths.clone().expect("a running VM has paths");
        if self.virtiofsd.is_none() {
            self.virtiofsd = Some(virtiofsd::start(
                &self.config,
                &v.host_path,
                &paths.virtiofs,
                &paths.virtiofsd_log,
            )?);
        }
        let body = vm_config::fs(&v.mount_tag, &paths.virtiofs);
        let info = self
            .call(
                "add the virtio-fs device (vm.add-fs)",
                &VmAddFs(body),
                API_TIMEOUT,
            )
            .await?;
        self.record_hotplug(&info);
        Ok(HotplugResult::Attached(None))
    }

    async fn add_vcpus(&mut self, n: u32) -> Result<HotplugResult, ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let current = info.config.cpus.boot_vcpus;
        let (old, new) = self.resize_vcpus_inner(current.saturating_add(n)).await?;
        Ok(HotplugResult::Cpus(new.saturating_sub(old)))
    }

    async fn remove_vcpus(&mut self, n: u32) -> Result<HotplugResult, ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let current = info.config.cpus.boot_vcpus;
        let (old, new) = self
            .resize_vcpus_inner(current.saturating_sub(n).max(1))
            .await?;
        Ok(HotplugResult::Cpus(old.saturating_sub(new)))
    }

    async fn add_memory(&mut self, m: MemoryDevice) -> Result<HotplugResult, ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let current = u32::try_from(info.memory_bytes() / MIB).unwrap_or(u32::MAX);
        let (_, dev) = self
            .resize_memory_inner(current.saturating_add(m.size_mib), 0, m.probe)
            .await?;
        Ok(HotplugResult::MemoryMib(dev.size_mib))
    }

    async fn unplug(&mut self, id: String) -> Result<HotplugResult, ClhError> {
        if !self.hot.contains_key(&id) {
            return Err(ClhError::UnknownDevice { id });
        }
        self.call(
            "remove the device (vm.remove-device)",
            &VmRemoveDevicePut(VmRemoveDevice { id: id.clone() }),
            API_TIMEOUT,
        )
        .await?;
        self.hot.remove(&id);
        tracing::info!(id, "device hot-unplugged");
        Ok(HotplugResult::Attached(None))
    }

    async fn resize_vcpus_inner(&mut self, vcpus: u32) -> Result<(u32, u32), ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let current = info.config.cpus.boot_vcpus;
        let max = info.config.cpus.max_vcpus;
        let target = resize::vcpus(vcpus, max)?;
        if target < vcpus {
            tracing::warn!(requested = vcpus, max, "vCPUs clamped to max_vcpus");
        }
        if target != current {
            let body = VmResizePut(VmResize {
                desired_vcpus: Some(target),
                ..VmResize::default()
            });
            self.call("resize vCPUs (vm.resize)", &body, API_TIMEOUT)
                .await?;
        }
        Ok((current, target))
    }

    async fn resize_memory_inner(
        &mut self,
        mem_mib: u32,
        block_size_mib: u32,
        probe: bool,
    ) -> Result<(u32, MemoryDevice), ClhError> {
        let info = self
            .call("read the VM info", &VmInfoGet, API_TIMEOUT)
            .await?;
        let plan = resize::memory(
            &info,
            u64::from(self.config.memory_size),
            u64::from(mem_mib),
            block_size_mib,
        )?;
        let added = plan.target_mib - plan.current_mib;
        if added > 0 {
            let body = VmResizePut(VmResize {
                desired_ram: Some(plan.target_mib * MIB),
                ..VmResize::default()
            });
            self.call("resize memory (vm.resize)", &body, API_TIMEOUT)
                .await?;
            self.hot_memory_mib += added as u32;
        } else if u64::from(mem_mib) < plan.current_mib {
            tracing::warn!(
                current = plan.current_mib,
                requested = mem_mib,
                "memory does not shrink: keeping the current size"
            );
        }
        Ok((
            plan.target_mib as u32,
            MemoryDevice {
                size_mib: added as u32,
                probe,
                ..MemoryDevice::default()
            },
        ))
    }
}

/// Opens `queues` descriptors of tap `name`, inside network namespace
/// `netns` when one is given (on a thread of its own, which enters it and
/// ends).
async fn open_tap(name: &str, queues: u32, netns: Option<&Path>) -> std::io::Result<Vec<OwnedFd>> {
    let name = name.to_string();
    let netns = netns.map(Path::to_path_buf);
    let open = move || -> std::io::Result<Vec<OwnedFd>> {
        if let Some(ns) = &netns {
            let f = std::fs::File::open(ns)?;
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
        }
        (0..queues)
            .map(|_| crate::sys::open_tap_queue(&name, queues > 1))
            .collect()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("clh-tap".into())
        .spawn(move || {
            let _ = tx.send(open());
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the tap thread ended without an answer",
        ))
    })
}

fn host_memory_mib() -> Result<u64, ClhError> {
    probe::host_memory_size_kb(Path::new(probe::PROC_MEMINFO))
        .map(|kb| kb / 1024)
        .map_err(ClhError::HostMemory)
}

fn remove_dir(dir: &Path) -> Result<(), ClhError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ClhError::Dir {
            action: "remove",
            path: dir.to_path_buf(),
            source,
        }),
    }
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
        std::fs::create_dir_all(&dir).map_err(|source| {
            Error::from(ClhError::Dir {
                action: "create",
                path: dir.clone(),
                source,
            })
        })?;
        let body = VmSnapshot(VmSnapshotConfig {
            destination_url: api::file_url(&dir),
        });
        let r = self
            .call("snapshot the VM (vm.snapshot)", &body, SNAPSHOT_TIMEOUT)
            .await;
        if let Err(e) = self.or_exited(r).await {
            if dir == paths.snapshot {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(e);
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
            // Restoring a template (vm.restore) is here; the factory that
            // makes CH templates is not.
            vm_template: false,
            vm_cache: true,
            reattach: true,
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
