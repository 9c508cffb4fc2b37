//! The Firecracker backend: every method of [`Hypervisor`], driving a real
//! Firecracker over its REST API, optionally inside its jailer.
//!
//! | concern | module |
//! |---|---|
//! | typed request and reply bodies, one endpoint per call | [`api`] |
//! | the pre-boot requests, a pure function of the config | [`vm_config`] |
//! | the jailer's command line and the jail's layout | [`jailer`] |
//! | placing files in the jail and removing it | [`jail_fs`] |
//! | starting: files, process, API, pre-boot requests | `launch` |
//! | pause, resume, snapshot create, booting from a template's snapshot | `snapshot` |
//! | stopping the process; removing the VM directory, jail and cgroups | `stop` |
//! | what `save` keeps; re-attaching (`load`, `from_grpc`); `check` | `persist` |
//! | hot-plug and what `save` keeps of it | `hotplug` |
//! | what the backend can do | `caps` |
//! | vCPU thread ids | [`vcpu_threads`] |
//! | the backend's errors | [`FcError`] |
//!
//! # Lifecycle
//!
//! `create_sandbox` validates the config and checks the ids and socket
//! paths (the jailer's 64 characters, unix sockets' 107 bytes).
//! `start_sandbox` makes the VM directory `<storage>/<id>` (Firecracker's
//! stdout and stderr go to `firecracker.out` there), and with a jailer the
//! jail `<chroot base>/firecracker/<id>/root` with every file Firecracker
//! needs placed in it; spawns Firecracker (or the jailer, which execs it:
//! the pid is the same; with `--new-pid-ns` it is read from the pid file);
//! waits for `GET /`; sends the pre-boot requests of [`vm_config`] and
//! `InstanceStart`, or, booting from a template, `PUT /snapshot/load` into
//! the fresh process. Configuration goes through the API, never
//! `--config-file`. A start that fails for any reason kills what it started
//! and removes the VM directory and the jail.
//!
//! `stop_sandbox` sends `SendCtrlAltDel` to a running guest (a Linux guest
//! reboots, which ends Firecracker), then SIGTERM and SIGKILL under
//! deadlines; a Firecracker that is the init of its own pid namespace
//! ignores SIGTERM, so it gets SIGKILL at once. A Firecracker that died on
//! its own is reported by `check` at once and by `stop_sandbox` with its
//! exit status, as for QEMU. `cleanup` removes the VM directory and the
//! jail (mounts under it detached first), and the jailer's cgroups.
//!
//! # Hot-plug
//!
//! [`HotplugMode::Pci`] (the default) runs Firecracker with
//! `--enable-pci`: a drive or network interface is `PUT` after boot and
//! `DELETE`d to unplug; the guest must rescan PCI (`/sys/bus/pci/rescan`)
//! and write `remove` before an unplug, as Firecracker does not notify it.
//! [`HotplugMode::Mmio`] makes placeholder drives before boot, as Kata
//! does, and hot-plugs a drive by swapping a placeholder's backing file
//! (`PATCH /drives/{id}`; the guest sees a capacity change); network
//! interfaces cannot be hot-plugged then. Placeholders can be added in
//! either mode ([`FcOptions::placeholders`]).
//!
//! Memory grows with virtio-mem (`enable_virtio_mem`): the region is
//! configured before boot and `resize_memory` asks for a size; shrinking is
//! the same request with a smaller size (no balloon). Firecracker cannot
//! hot-plug vCPUs.
//!
//! # Drop
//!
//! Dropping a handle that still owns a live Firecracker kills it and
//! removes its VM directory and jail, unless `disconnect`/`to_grpc` gave
//! the VM away for a later `load`/`from_grpc`.

pub mod api;
mod caps;
mod error;
mod hotplug;
pub mod jail_fs;
pub mod jailer;
mod launch;
mod persist;
mod snapshot;
mod stop;
mod threads;
pub mod vm_config;

use self::caps::no_vcpu_hotplug;
pub use self::error::FcError;
use self::hotplug::Hot;
pub use self::threads::{parse_vcpu_comm, vcpu_threads};

/// What `create_sandbox` refuses in a validated config before it touches
/// anything (see [`crate::backends::preflight`]).
///
/// # Errors
/// [`VmConfigError::Vcpus`] above Firecracker's vCPU limit.
pub(crate) fn preflight(config: &HypervisorConfig) -> Result<()> {
    if config.num_vcpus > vm_config::MAX_VCPUS {
        return Err(FcError::from(VmConfigError::Vcpus {
            vcpus: config.num_vcpus,
        })
        .into());
    }
    Ok(())
}

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use self::jailer::{CgroupVersion, Jail, JailSpec};
pub use self::vm_config::HotplugMode;
use self::vm_config::VmConfigError;
use crate::assets::AssetType;
use crate::backends::vmm::process::{self as vmm_process, Supervised};
use crate::backends::vmm::rest::{Endpoint, Flavour, RestClient, RestError};
use crate::config::HypervisorConfig;
use crate::device::{Device, HotplugResult, HybridVsock, MemoryDevice, VcpuThreadIds};
use crate::hypervisor::{
    Capabilities, Error, Hypervisor, HypervisorState, NetworkNamespace, Result, VmState,
};
use crate::hypervisor_type::HypervisorType;
use crate::socket::{self, AgentSocket};

const FC: HypervisorType = HypervisorType::Firecracker;

/// How long an API call may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a snapshot create or load may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `check` waits for `GET /`.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `stop_sandbox` waits after `SendCtrlAltDel`.
pub const CTRL_ALT_DEL_GRACE: Duration = Duration::from_secs(1);
/// How long `stop_sandbox` waits after SIGTERM.
pub const TERM_GRACE: Duration = Duration::from_secs(3);
/// The guest context id of the hybrid vsock (any value from 3 works: the
/// vsock is private to the VM).
pub const GUEST_CID: u32 = 3;
/// The size of a placeholder drive's file.
pub const PLACEHOLDER_BYTES: u64 = 1 << 20;

/// File names in the VM directory, or at the jail's root.
mod names {
    pub const API: &str = "firecracker.socket";
    pub const OUT: &str = "firecracker.out";
    pub const LOG: &str = "firecracker.log";
    pub const METRICS: &str = "metrics.json";
    pub const SERIAL: &str = "console.log";
    pub const VSOCK: &str = "kata.hvsock";
    pub const SNAPSHOT: &str = "vm.snap";
    pub const MEMORY: &str = "vm.mem";
}

/// Choices of the Firecracker backend that Kata's config has no key for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FcOptions {
    /// How drives and interfaces are hot-plugged.
    pub hotplug: HotplugMode,
    /// Placeholder drives made before boot (for MMIO hot-plug; Kata makes
    /// 8). `None`: 8 in MMIO mode, none in PCI mode.
    pub placeholders: Option<u32>,
    /// Where jails are made: `<runtime dir>/jail` by default (so
    /// `/run/sandvisor/jail/firecracker/<id>/root` as root).
    pub chroot_base: PathBuf,
    /// The uid Firecracker runs as in the jail; root only when asked.
    pub jail_uid: u32,
    /// The gid Firecracker runs as in the jail.
    pub jail_gid: u32,
    /// Run the jailed Firecracker as init of a new pid namespace.
    pub new_pid_ns: bool,
    /// The jailer's cgroup hierarchy.
    pub cgroup_version: CgroupVersion,
    /// `<file>=<value>` cgroup settings for the jailer.
    pub cgroups: Vec<String>,
    /// `<resource>=<value>` limits for the jailer.
    pub resource_limits: Vec<String>,
}

impl Default for FcOptions {
    fn default() -> Self {
        FcOptions {
            hotplug: HotplugMode::Pci,
            placeholders: None,
            chroot_base: crate::paths::runtime_dir().join("jail"),
            jail_uid: jailer::DEFAULT_JAIL_ID,
            jail_gid: jailer::DEFAULT_JAIL_ID,
            new_pid_ns: false,
            cgroup_version: CgroupVersion::V1,
            cgroups: Vec::new(),
            resource_limits: Vec::new(),
        }
    }
}

/// Drive placeholders in MMIO hot-plug mode when neither the options nor
/// the config give a number.
pub const MMIO_PLACEHOLDERS: u32 = 8;

impl FcOptions {
    fn placeholder_count(&self) -> u32 {
        self.placeholders.unwrap_or(match self.hotplug {
            HotplugMode::Mmio => MMIO_PLACEHOLDERS,
            HotplugMode::Pci => 0,
        })
    }
}

/// Where the VM's files are: on the host, and as Firecracker names them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VmFiles {
    /// `<storage>/<id>`: Firecracker's stdout, and everything when unjailed.
    dir: PathBuf,
    /// The jail, when there is one.
    jail: Option<Jail>,
}

impl VmFiles {
    /// The host path of `name` (a file Firecracker makes or writes).
    fn host(&self, name: &str) -> PathBuf {
        match &self.jail {
            Some(j) => j.root().join(name),
            None => self.dir.join(name),
        }
    }

    /// The path Firecracker is given for `name`.
    fn inside(&self, name: &str) -> PathBuf {
        match &self.jail {
            Some(_) => Path::new("/").join(name),
            None => self.dir.join(name),
        }
    }

    fn api(&self) -> PathBuf {
        match &self.jail {
            Some(j) => j.api_socket(),
            None => self.dir.join(names::API),
        }
    }

    fn out(&self) -> PathBuf {
        self.dir.join(names::OUT)
    }
}

/// The Firecracker backend.
#[derive(Debug)]
pub struct Firecracker {
    storage: PathBuf,
    options: FcOptions,
    id: String,
    config: HypervisorConfig,
    state: VmState,
    netns: NetworkNamespace,
    devices: Vec<Device>,
    files: Option<VmFiles>,
    fc: Option<Supervised>,
    api: Option<Arc<RestClient>>,
    hot: Hot,
    memory_region_mib: u32,
    detached: bool,
}

impl Default for Firecracker {
    fn default() -> Self {
        Firecracker::new()
    }
}

impl Drop for Firecracker {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(p) = self.fc.as_ref().filter(|p| p.exited().is_none()) {
            tracing::warn!(
                pid = p.pid(),
                id = self.id,
                "dropping a handle that owns a running VM: killing it (call disconnect() to keep it)"
            );
            p.kill();
            if let Err(e) = self.remove_files() {
                tracing::warn!(error = %e, "cannot remove the VM's files");
            }
        }
    }
}

fn io_dir<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FcError + 'a {
    move |source| FcError::VmDir {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn remove_dir(dir: &Path) -> Result<(), FcError> {
    crate::backends::vmm::remove_dir_if_present(dir).map_err(io_dir("remove", dir))
}

impl Firecracker {
    /// A backend keeping VMs under [`crate::paths::vm_storage_dir`].
    pub fn new() -> Self {
        Firecracker::with_storage(crate::paths::vm_storage_dir())
    }

    /// A backend keeping VMs under `storage` (sockets there: keep it short).
    pub fn with_storage(storage: impl Into<PathBuf>) -> Self {
        Firecracker::with_options(storage, FcOptions::default())
    }

    /// A backend with `options`.
    pub fn with_options(storage: impl Into<PathBuf>, options: FcOptions) -> Self {
        Firecracker {
            storage: storage.into(),
            options,
            id: String::new(),
            config: HypervisorConfig::default(),
            state: VmState::New,
            netns: NetworkNamespace::default(),
            devices: Vec::new(),
            files: None,
            fc: None,
            api: None,
            hot: Hot::default(),
            memory_region_mib: 0,
            detached: false,
        }
    }

    /// The VM state as this handle knows it.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// The file the guest's serial console (COM1) is written to.
    pub fn serial_log(&self) -> Option<PathBuf> {
        self.files.as_ref().map(|f| f.host(names::SERIAL))
    }

    /// The jail directory (`<chroot base>/firecracker/<id>`), when jailed.
    pub fn jail_dir(&self) -> Option<PathBuf> {
        self.files
            .as_ref()
            .and_then(|f| f.jail.as_ref())
            .map(|j| j.dir().to_path_buf())
    }

    /// The API socket, once created.
    pub fn api_socket(&self) -> Option<PathBuf> {
        self.files.as_ref().map(VmFiles::api)
    }

    /// Sends one API request to the running Firecracker (for callers that
    /// need a call the trait has no method for, such as `GET /vm/config`).
    ///
    /// # Errors
    /// [`Error::InvalidState`] without a VMM; the call's error otherwise.
    pub async fn call<E: Endpoint + Sync>(&mut self, ep: &E) -> Result<E::Reply> {
        let api = self.api()?;
        let r = api.call(ep, API_TIMEOUT).await.map_err(FcError::from);
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

    /// The config's sandvisor keys for Firecracker win over the options
    /// the backend was built with.
    fn apply_config_options(&mut self) {
        let c = &self.config;
        if let Some(m) = c.hotplug_transport {
            self.options.hotplug = m;
        }
        if let Some(n) = c.drive_placeholders {
            self.options.placeholders = Some(n);
        }
        if let Some(u) = c.jailer_uid {
            self.options.jail_uid = u;
        }
        if let Some(g) = c.jailer_gid {
            self.options.jail_gid = g;
        }
    }

    /// The configured binary, else the one the lookup finds
    /// (`$SANDVISOR_VMM_DIR`, `PATH`, Kata's paths).
    fn binary(&self) -> PathBuf {
        self.config
            .asset_path(AssetType::Hypervisor)
            .map(Path::to_path_buf)
            .or_else(|| {
                crate::backends::vmm::lookup::find(
                    &crate::backends::vmm::lookup::Binary::FIRECRACKER,
                    None,
                )
                .ok()
                .map(|f| f.path)
            })
            .or_else(|| crate::backends::facts(FC).default_binary())
            .unwrap_or_else(|| PathBuf::from("firecracker"))
    }

    /// The jailer, once [`resolve_jailer`] made `jailer_path` final.
    fn jailer(&self) -> Option<PathBuf> {
        self.config
            .asset_path(AssetType::Jailer)
            .map(Path::to_path_buf)
    }

    fn log_tail(&self) -> String {
        let Some(f) = &self.files else {
            return String::new();
        };
        let out = vmm_process::log_tail(&f.out());
        let log = vmm_process::log_tail(&f.host(names::LOG));
        match (out.is_empty(), log.is_empty()) {
            (_, true) => out,
            (true, false) => log,
            (false, false) => format!("{out}\n{log}"),
        }
    }

    fn exited_error(&self) -> Option<Error> {
        let p = self.fc.as_ref()?;
        p.exited().map(|exit| Error::VmmExited {
            hypervisor: FC,
            binary: self.binary(),
            pid: p.pid(),
            exit,
            starting: false,
            log_tail: self.log_tail(),
        })
    }

    fn api(&mut self) -> Result<Arc<RestClient>> {
        if let Some(e) = self.exited_error() {
            self.api = None;
            self.state = VmState::Stopped;
            return Err(e);
        }
        if let Some(a) = &self.api {
            return Ok(Arc::clone(a));
        }
        let Some(f) = &self.files else {
            return Err(self.invalid("reach the API of"));
        };
        let a = Arc::new(RestClient::new(f.api(), Flavour::Firecracker));
        self.api = Some(Arc::clone(&a));
        Ok(a)
    }

    /// `result`, unless Firecracker died meanwhile: then its exit and log.
    async fn or_exited<T>(&mut self, result: Result<T, FcError>) -> Result<T> {
        let Err(e) = result else {
            return result.map_err(Error::from);
        };
        let gone = matches!(
            &e,
            FcError::Api(
                RestError::Connect { .. } | RestError::Http { .. } | RestError::Timeout { .. }
            )
        );
        if gone {
            if let Some(p) = &self.fc {
                if p.wait(Duration::from_millis(500)).await.is_some() {
                    if let Some(exited) = self.exited_error() {
                        self.api = None;
                        self.state = VmState::Stopped;
                        return Err(exited);
                    }
                }
            }
        }
        Err(e.into())
    }

    fn jail_spec(&self, fc: &Path, jailer: &Path) -> JailSpec {
        JailSpec {
            jailer: jailer.to_path_buf(),
            exec_file: fc.to_path_buf(),
            id: self.id.clone(),
            uid: self.options.jail_uid,
            gid: self.options.jail_gid,
            chroot_base: self.options.chroot_base.clone(),
            netns: self.netns.path.clone(),
            cgroup_version: self.options.cgroup_version,
            cgroups: self.options.cgroups.clone(),
            resource_limits: self.options.resource_limits.clone(),
            new_pid_ns: self.options.new_pid_ns,
        }
    }

    fn owner(&self) -> (u32, u32) {
        match self.files.as_ref().and_then(|f| f.jail.as_ref()) {
            Some(_) => (self.options.jail_uid, self.options.jail_gid),
            None => (0, 0),
        }
    }
}

#[async_trait]
impl Hypervisor for Firecracker {
    fn hypervisor_type(&self) -> HypervisorType {
        FC
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
                FC,
                "rootless = true is implemented for qemu only; firecracker's jailer already runs it as jailer_uid (65534 unless set); set rootless = false",
            ));
        }
        preflight(&config)?;
        resolve_jailer(&mut config, || {
            crate::backends::vmm::lookup::find(&crate::backends::vmm::lookup::Binary::JAILER, None)
                .map(|f| f.path)
        })?;
        self.config = config;
        self.apply_config_options();
        self.id = id.to_string();
        self.netns = network_ns.clone();
        let dir = self.storage.join(id);
        let jail = match self.jailer() {
            Some(jailer) => {
                let spec = self.jail_spec(&self.binary(), &jailer);
                let jail = Jail::new(&spec).map_err(FcError::from)?;
                jail.socket_on_host(&Path::new("/").join(names::VSOCK))
                    .map_err(FcError::from)?;
                Some(jail)
            }
            None => {
                jailer::check_id(id).map_err(FcError::from)?;
                for name in [names::API, names::VSOCK] {
                    socket::build_socket_path(&[&self.storage, Path::new(id), Path::new(name)])?;
                }
                None
            }
        };
        self.files = Some(VmFiles { dir, jail });
        self.hot = Hot {
            placeholders: (0..self.options.placeholder_count())
                .map(|i| format!("drive_{i}"))
                .collect(),
            ..Hot::default()
        };
        self.state = VmState::Created;
        tracing::debug!(id, "sandbox created");
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
                    pid = self.fc.as_ref().map(Supervised::pid),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox started"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(id = self.id, error = %e, "cannot start sandbox");
                self.abort_start().await;
                Err(e)
            }
        }
    }

    async fn stop_sandbox(&mut self) -> Result<()> {
        self.stop_vm().await
    }

    async fn pause_sandbox(&mut self) -> Result<()> {
        self.pause_vm().await
    }

    async fn save_sandbox(&mut self) -> Result<()> {
        self.snapshot_vm().await
    }

    async fn resume_sandbox(&mut self) -> Result<()> {
        self.resume_vm().await
    }

    async fn add_device(&mut self, device: Device) -> Result<()> {
        self.require("add_device", &[VmState::Created])?;
        match &device {
            Device::Block(_) | Device::Image(_) | Device::Net(_) | Device::HybridVsock(_) => {}
            other => {
                return Err(Error::unsupported(
                    "add_device",
                    FC,
                    format!(
                        "firecracker has no {} device (it has virtio-blk, virtio-net, a hybrid vsock, virtio-rng and virtio-mem)",
                        other.device_type()
                    ),
                ))
            }
        }
        tracing::debug!(kind = %device.device_type(), "device added");
        self.devices.push(device);
        Ok(())
    }

    async fn hotplug_add_device(&mut self, device: Device) -> Result<HotplugResult> {
        self.hotplug_add(device).await
    }

    async fn hotplug_remove_device(&mut self, device: Device) -> Result<HotplugResult> {
        self.hotplug_remove(device).await
    }

    async fn resize_memory(
        &mut self,
        mem_mib: u32,
        _block_size_mib: u32,
        _probe: bool,
    ) -> Result<(u32, MemoryDevice)> {
        self.require("resize_memory", &[VmState::Running, VmState::Paused])?;
        if self.memory_region_mib == 0 {
            return Err(Error::unsupported(
                "resize_memory",
                FC,
                "firecracker grows memory with virtio-mem only: set enable_virtio_mem",
            ));
        }
        let api = self.api()?;
        let r = self.resize_memory_inner(&api, mem_mib).await;
        self.or_exited(r).await
    }

    async fn resize_vcpus(&mut self, _vcpus: u32) -> Result<(u32, u32)> {
        Err(no_vcpu_hotplug("resize_vcpus"))
    }

    async fn sandbox_console(&self, _id: &str) -> Result<Option<PathBuf>> {
        // Firecracker's serial is output only, written to a file
        // (`serial_log`); there is no socket to attach to.
        Ok(None)
    }

    async fn disconnect(&mut self) {
        self.api = None;
        self.detached = true;
    }

    fn capabilities(&self) -> Capabilities {
        self.caps()
    }

    fn hypervisor_config(&self) -> HypervisorConfig {
        self.config.clone()
    }

    async fn thread_ids(&mut self) -> Result<VcpuThreadIds> {
        self.require("thread_ids", &[VmState::Running, VmState::Paused])?;
        let Some(p) = &self.fc else {
            return Err(self.invalid("thread_ids"));
        };
        let pid = p.pid();
        Ok(vcpu_threads(pid).map_err(|source| FcError::Threads { pid, source })?)
    }

    async fn cleanup(&mut self) -> Result<()> {
        self.cleanup_vm().await
    }

    fn pids(&self) -> Vec<u32> {
        self.fc.iter().map(Supervised::pid).collect()
    }

    async fn from_grpc(&mut self, config: &HypervisorConfig, data: &[u8]) -> Result<()> {
        self.reattach_from_grpc(config, data).await
    }

    async fn to_grpc(&mut self) -> Result<Vec<u8>> {
        self.give_away()
    }

    async fn check(&mut self) -> Result<()> {
        self.check_vm().await
    }

    fn save(&self) -> HypervisorState {
        self.saved_state()
    }

    async fn load(&mut self, state: HypervisorState) -> Result<()> {
        self.load_state(state).await
    }

    fn generate_socket(&self, id: &str, _use_vsock: bool) -> Result<AgentSocket> {
        // Firecracker's only agent channel is its hybrid vsock.
        let uds_path = match self.files.as_ref().filter(|_| id == self.id) {
            Some(f) => f.host(names::VSOCK),
            None => {
                socket::build_socket_path(&[&self.storage, Path::new(id), Path::new(names::VSOCK)])?
            }
        };
        Ok(AgentSocket::HybridVsock(HybridVsock {
            uds_path,
            context_id: u64::from(GUEST_CID),
            port: crate::defaults::VSOCK_PORT,
        }))
    }
}

/// Makes `jailer_path` final: Firecracker runs jailed by default. A
/// configured jailer stays; `jailer_path = ""` ([`HypervisorConfig::unjailed`])
/// means none, logged once per process; unset, the jailer `find` gives
/// (`$SANDVISOR_VMM_DIR`, `PATH`, Kata's paths).
///
/// # Errors
/// [`FcError::NoJailer`] when none is configured, none is found and
/// unjailed was not asked for.
pub fn resolve_jailer(
    config: &mut HypervisorConfig,
    find: impl FnOnce() -> std::result::Result<PathBuf, crate::backends::vmm::lookup::LookupError>,
) -> std::result::Result<(), FcError> {
    static UNJAILED: std::sync::Once = std::sync::Once::new();
    if config.unjailed {
        config.jailer_path = None;
        UNJAILED.call_once(|| {
            tracing::warn!("jailer_path = \"\": firecracker runs unjailed, as this user");
        });
        return Ok(());
    }
    if config.jailer_path.is_none() {
        config.jailer_path = Some(find().map_err(FcError::NoJailer)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_and_socket_paths_are_refused_at_create_with_the_value() {
        let config = HypervisorConfig {
            kernel_path: Some("/k".into()),
            initrd_path: Some("/i".into()),
            jailer_path: Some("/usr/bin/jailer".into()),
            ..HypervisorConfig::default()
        };
        let ns = NetworkNamespace::default();
        let mut vm = Firecracker::with_options(
            "/tmp/x",
            FcOptions {
                chroot_base: "/tmp/j".into(),
                ..FcOptions::default()
            },
        );
        let long = "a".repeat(65);
        let e = vm
            .create_sandbox(&long, &ns, &config, false)
            .await
            .expect_err("65 characters");
        let chain = format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(chain.contains("65 characters long"), "{chain}");
        assert_eq!(vm.state(), VmState::New);

        let mut vm = Firecracker::with_options(
            "/tmp/x",
            FcOptions {
                chroot_base: format!("/tmp/{}", "d".repeat(40)).into(),
                ..FcOptions::default()
            },
        );
        let e = vm
            .create_sandbox(&"b".repeat(60), &ns, &config, false)
            .await
            .expect_err("the socket path is too long");
        let chain = format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(chain.contains("over the 107-byte limit"), "{chain}");

        // Without a jailer the socket lives in the VM directory.
        let mut vm = Firecracker::with_storage(format!("/tmp/{}", "s".repeat(60)));
        let plain = HypervisorConfig {
            jailer_path: None,
            unjailed: true,
            ..config
        };
        let e = vm
            .create_sandbox(&"c".repeat(50), &ns, &plain, false)
            .await
            .expect_err("too long");
        assert!(matches!(e, Error::Socket(_)), "{e:?}");
    }

    #[tokio::test]
    async fn rootless_is_refused_naming_the_key() {
        let config = HypervisorConfig {
            kernel_path: Some("/k".into()),
            initrd_path: Some("/i".into()),
            rootless: true,
            unjailed: true,
            ..HypervisorConfig::default()
        };
        let mut vm = Firecracker::with_storage("/tmp/x");
        let e = vm
            .create_sandbox("r", &NetworkNamespace::default(), &config, false)
            .await
            .expect_err("rootless");
        assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
        assert!(e.to_string().contains("rootless = true"), "{e}");
        assert_eq!(vm.state(), VmState::New);
    }

    #[test]
    fn the_jailer_is_the_default_and_only_an_empty_path_opts_out() {
        use crate::backends::vmm::lookup::LookupError;
        let found = || Ok(PathBuf::from("/found/jailer"));
        let missing = || {
            Err(LookupError::NotFound {
                name: "jailer",
                looked: Vec::new(),
            })
        };
        let mut c = HypervisorConfig::default();
        resolve_jailer(&mut c, found).expect("found");
        assert_eq!(c.jailer_path.as_deref(), Some(Path::new("/found/jailer")));

        let mut c = HypervisorConfig {
            jailer_path: Some("/mine/jailer".into()),
            ..HypervisorConfig::default()
        };
        resolve_jailer(&mut c, found).expect("configured");
        assert_eq!(c.jailer_path.as_deref(), Some(Path::new("/mine/jailer")));

        let mut c = HypervisorConfig {
            unjailed: true,
            ..HypervisorConfig::default()
        };
        resolve_jailer(&mut c, found).expect("unjailed");
        assert_eq!(c.jailer_path, None);

        let mut c = HypervisorConfig::default();
        let e = resolve_jailer(&mut c, missing).expect_err("required");
        assert!(matches!(e, FcError::NoJailer(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("`jailer_path`") && msg.contains("jailer_path = \"\""),
            "{msg}"
        );
    }
}
