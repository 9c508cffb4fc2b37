//! The Firecracker backend: every method of [`Hypervisor`], driving a real
//! Firecracker over its REST API, optionally inside its jailer.
//!
//! | concern | module |
//! |---|---|
//! | typed request and reply bodies, one endpoint per call | [`api`] |
//! | the pre-boot requests, a pure function of the config | [`vm_config`] |
//! | the jailer's command line and the jail's layout | [`jailer`] |
//! | placing files in the jail and removing it | [`jail_fs`] |
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
pub mod jail_fs;
pub mod jailer;
pub mod vm_config;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::Signal;

use self::api::{
    ActionType, DeleteDrive, DeleteNetworkInterface, GetInstanceInfo, InstanceActionInfo,
    InstanceState, MemoryBackend, MemoryBackendType, MemoryHotplugSizeUpdate, PartialDrive,
    PatchDrive, PatchMemoryHotplug, PatchVm, PutAction, PutDrive, PutNetworkInterface,
    PutSnapshotCreate, PutSnapshotLoad, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
    VmRunState, VmStateUpdate, VsockOverride,
};
use self::jailer::{CgroupVersion, Jail, JailError, JailSpec, Placement};
pub use self::vm_config::HotplugMode;
use self::vm_config::{BootPlan, PreBoot, VmConfigError};
use crate::assets::AssetType;
use crate::backends::vmm::process::{self as vmm_process, ProcessError, Spawn, Supervised};
use crate::backends::vmm::rest::{Endpoint, Flavour, RestClient, RestError};
use crate::config::HypervisorConfig;
use crate::device::{BlockDrive, Device, HotplugResult, HybridVsock, MemoryDevice, VcpuThreadIds};
use crate::hypervisor::{
    Capabilities, Error, Hypervisor, HypervisorState, NetworkNamespace, Result, VmState,
};
use crate::hypervisor_type::HypervisorType;
use crate::process::{Exit, REAP_TIMEOUT};
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

/// Errors of the Firecracker backend.
#[derive(Debug, thiserror::Error)]
pub enum FcError {
    /// An API call failed (a fault keeps Firecracker's `fault_message`).
    #[error(transparent)]
    Api(#[from] RestError),
    /// Firecracker or the jailer could not be spawned or adopted.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The jail could not be planned.
    #[error(transparent)]
    Jail(#[from] JailError),
    /// The jail's files could not be placed or removed.
    #[error(transparent)]
    JailFs(#[from] jail_fs::JailFsError),
    /// The boot could not be planned.
    #[error(transparent)]
    VmConfig(#[from] VmConfigError),
    /// The VM directory could not be made or removed.
    #[error("cannot {action} VM directory {path:?}")]
    VmDir {
        /// `create` or `remove`.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The host's memory could not be read.
    #[error("cannot read the host's memory size")]
    HostMemory(#[source] crate::probe::ProbeError),
    /// The jailer did not leave a pid file (`--new-pid-ns`).
    #[error("the jailer left no readable pid file {path:?}")]
    PidFile {
        /// The file.
        path: PathBuf,
    },
    /// A snapshot file could not be moved where the config wants it.
    #[error("cannot move snapshot file {from:?} to {to:?}")]
    SnapshotFile {
        /// Where Firecracker wrote it.
        from: PathBuf,
        /// Where it goes.
        to: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A kernel, initrd or image that is not there.
    #[error("{what} {path:?} does not exist")]
    MissingAsset {
        /// `kernel`, `initrd` or `image`.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// Booting from a template needs both snapshot files.
    #[error("boot_from_template needs memory_path and devices_state_path")]
    NoTemplateFiles,
    /// A device id already attached.
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
    /// Every placeholder drive is in use.
    #[error("no free placeholder drive for {id:?}: all {count} are in use")]
    NoFreePlaceholder {
        /// The drive.
        id: String,
        /// How many there are.
        count: usize,
    },
    /// Memory asked for outside the virtio-mem region.
    #[error("cannot resize memory to {requested_mib} MiB: the VM boots with {boot_mib} MiB and may grow by at most {max_extra_mib} MiB")]
    MemoryRange {
        /// Asked for.
        requested_mib: u32,
        /// Boot memory.
        boot_mib: u32,
        /// The region's size.
        max_extra_mib: u32,
    },
    /// `to_grpc` output or saved state that does not decode.
    #[error("cannot decode the saved firecracker state")]
    Grpc(#[source] serde_json::Error),
    /// A state for another hypervisor.
    #[error("the state is for {0}, not firecracker")]
    WrongHypervisor(HypervisorType),
    /// A thread list that cannot be read.
    #[error("cannot read the threads of pid {pid}")]
    Threads {
        /// Firecracker's pid.
        pid: u32,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

impl From<FcError> for Error {
    fn from(e: FcError) -> Self {
        Error::backend(FC, e)
    }
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

impl FcOptions {
    fn placeholder_count(&self) -> u32 {
        self.placeholders.unwrap_or(match self.hotplug {
            HotplugMode::Mmio => 8,
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

/// What was hot-plugged, for unplug and for `save`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Hot {
    /// PCI-plugged drives: id to the in-jail file placed (if any).
    drives: BTreeMap<String, Option<PathBuf>>,
    /// Placeholder ids, in order.
    placeholders: Vec<String>,
    /// Swapped placeholders: placeholder id to the drive id in it.
    swapped: BTreeMap<String, String>,
    /// PCI-plugged interfaces.
    nets: Vec<String>,
    /// virtio-mem MiB asked for.
    memory_mib: u32,
}

impl Hot {
    fn to_strings(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (id, f) in &self.drives {
            let f = f
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            v.push(format!("drive:{id}={f}"));
        }
        for p in &self.placeholders {
            match self.swapped.get(p) {
                Some(d) => v.push(format!("placeholder:{p}={d}")),
                None => v.push(format!("placeholder:{p}=")),
            }
        }
        for n in &self.nets {
            v.push(format!("net:{n}"));
        }
        v
    }

    fn from_strings(items: &[String], memory_mib: u32) -> Hot {
        let mut h = Hot {
            memory_mib,
            ..Hot::default()
        };
        for s in items {
            if let Some(rest) = s.strip_prefix("drive:") {
                let (id, f) = rest.split_once('=').unwrap_or((rest, ""));
                h.drives.insert(
                    id.to_string(),
                    Some(PathBuf::from(f)).filter(|_| !f.is_empty()),
                );
            } else if let Some(rest) = s.strip_prefix("placeholder:") {
                let (p, d) = rest.split_once('=').unwrap_or((rest, ""));
                h.placeholders.push(p.to_string());
                if !d.is_empty() {
                    h.swapped.insert(p.to_string(), d.to_string());
                }
            } else if let Some(n) = s.strip_prefix("net:") {
                h.nets.push(n.to_string());
            }
        }
        h
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
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_dir("remove", dir)(e)),
    }
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

    /// The path Firecracker is given for the caller's file `host`: the file
    /// itself, or its place in the jail, which is made.
    fn hand_over(
        &self,
        host: &Path,
        dir: &str,
        placement: Placement,
        writable: bool,
    ) -> Result<PathBuf, FcError> {
        let Some(jail) = self.files.as_ref().and_then(|f| f.jail.as_ref()) else {
            return Ok(host.to_path_buf());
        };
        let f = jail.place(host, dir, placement)?;
        let (uid, gid) = (self.options.jail_uid, self.options.jail_gid);
        jail_fs::place(&f, writable, uid, gid)?;
        Ok(f.inside)
    }

    /// The boot plan, with every file placed where Firecracker reads it.
    fn boot_plan(&self, host_memory_mib: u64) -> Result<BootPlan<'_>, FcError> {
        let f = self
            .files
            .as_ref()
            .expect("create_sandbox set the files before the state became Created");
        let c = &self.config;
        for (what, kind) in [
            ("kernel", AssetType::Kernel),
            ("initrd", AssetType::Initrd),
            ("image", AssetType::Image),
        ] {
            if let Some(path) = c.asset_path(kind).filter(|p| !p.is_file()) {
                return Err(FcError::MissingAsset {
                    what,
                    path: path.to_path_buf(),
                });
            }
        }
        let kernel = c
            .asset_path(AssetType::Kernel)
            .ok_or(VmConfigError::NoKernel)?;
        let kernel = self.hand_over(kernel, "boot", Placement::LinkOrCopy, false)?;
        let initrd = match c.asset_path(AssetType::Initrd) {
            Some(p) => Some(self.hand_over(p, "boot", Placement::LinkOrCopy, false)?),
            None => None,
        };
        let image = match c.asset_path(AssetType::Image) {
            Some(p) => Some(self.hand_over(p, "boot", Placement::LinkOrCopy, false)?),
            None => None,
        };
        let mut drives = Vec::new();
        let mut nets = Vec::new();
        let mut vsock = None;
        for d in &self.devices {
            match d {
                Device::Block(b) | Device::Image(b) => {
                    let placement = if b.read_only {
                        Placement::LinkOrCopy
                    } else {
                        Placement::LinkOrBind
                    };
                    let p = self.hand_over(&b.file, "drives", placement, !b.read_only)?;
                    drives.push((b.clone(), p));
                }
                Device::Net(n) => nets.push(n.clone()),
                Device::HybridVsock(h) => {
                    let cid = u32::try_from(h.context_id).unwrap_or(GUEST_CID);
                    vsock = Some((cid, f.inside(names::VSOCK)));
                }
                _ => {}
            }
        }
        let (uid, gid) = self.owner();
        let mut placeholders = Vec::new();
        for id in &self.hot.placeholders {
            let host = f.host(&format!("{id}.img"));
            jail_fs::make_placeholder(&host, PLACEHOLDER_BYTES, uid, gid)?;
            placeholders.push((id.clone(), f.inside(&format!("{id}.img"))));
        }
        for name in [names::LOG, names::METRICS, names::SERIAL] {
            jail_fs::make_file(&f.host(name), uid, gid)?;
        }
        Ok(BootPlan {
            config: c,
            hotplug: self.options.hotplug,
            host_memory_mib,
            log: f.inside(names::LOG),
            metrics: f.inside(names::METRICS),
            serial: f.inside(names::SERIAL),
            kernel,
            initrd,
            image,
            drives,
            nets,
            vsock,
            placeholders,
        })
    }

    /// Makes the VM directory and the jail's root, before the jailer runs,
    /// so that every file (and bind mount) is in place when it pivots.
    fn make_dirs(&self) -> Result<(), FcError> {
        let f = self
            .files
            .as_ref()
            .expect("create_sandbox set the files before the state became Created");
        std::fs::create_dir_all(&f.dir).map_err(io_dir("create", &f.dir))?;
        if let Some(jail) = &f.jail {
            let (uid, gid) = self.owner();
            jail_fs::make_dir(jail.root(), uid, gid)?;
            jail_fs::make_dir(&jail.root().join("run"), uid, gid)?;
        }
        Ok(())
    }

    /// Spawns Firecracker (or the jailer).
    fn spawn(&mut self) -> Result<(), FcError> {
        let f = self
            .files
            .clone()
            .expect("create_sandbox set the files before the state became Created");
        let fc = self.binary();
        let mut fc_args = Vec::new();
        if self.options.hotplug == HotplugMode::Pci {
            fc_args.push("--enable-pci".to_string());
        }
        let (program, args, netns) = match (&f.jail, self.jailer()) {
            (Some(_), Some(jailer)) => {
                let spec = self.jail_spec(&fc, &jailer);
                // The jailer gives Firecracker --id itself.
                let (program, args) = jailer::command(&spec, &fc_args);
                (program, args, None)
            }
            _ => {
                let mut args = vec![
                    "--api-sock".to_string(),
                    f.api().display().to_string(),
                    "--id".to_string(),
                    self.id.clone(),
                ];
                args.extend(fc_args);
                (fc, args, self.netns.path.clone())
            }
        };
        let _ = std::fs::remove_file(f.api());
        tracing::info!(id = self.id, program = %program.display(), ?args, "starting firecracker");
        self.fc = Some(Supervised::spawn(Spawn {
            program: &program,
            args: &args,
            fds: Vec::new(),
            log: &f.out(),
            netns: netns.as_deref(),
        })?);
        Ok(())
    }

    /// With `--new-pid-ns` the jailer exits once Firecracker runs; adopt
    /// Firecracker from the pid file it left.
    async fn adopt_from_pid_file(&mut self, timeout: Duration) -> Result<(), Error> {
        let Some(jail) = self.files.as_ref().and_then(|f| f.jail.clone()) else {
            return Ok(());
        };
        let Some(jailer) = self.fc.take() else {
            return Ok(());
        };
        let exit = jailer.wait(timeout).await;
        match exit {
            Some(e) if e.success() => {}
            Some(exit) => {
                return Err(Error::VmmExited {
                    hypervisor: FC,
                    binary: self.jailer().unwrap_or_default(),
                    pid: jailer.pid(),
                    exit,
                    starting: true,
                    log_tail: self.log_tail(),
                })
            }
            None => {
                self.fc = Some(jailer);
                return Err(Error::StartTimeout {
                    hypervisor: FC,
                    what: "start firecracker in a new pid namespace (the jailer did not exit)"
                        .into(),
                    timeout,
                    log_tail: self.log_tail(),
                    last: None,
                });
            }
        }
        let path = jail.pid_file();
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or(FcError::PidFile { path })?;
        self.fc = Some(Supervised::adopt(pid, &self.id).map_err(FcError::from)?);
        Ok(())
    }

    /// Waits for `GET /` on a Firecracker that is starting.
    async fn wait_api(&mut self, timeout: Duration) -> Result<(), Error> {
        let api = self.api()?;
        let Some(p) = &self.fc else {
            return Err(self.invalid("wait for"));
        };
        let mut exit = p.exit_watch();
        let answered = tokio::select! {
            r = api.call_when_ready(&GetInstanceInfo, timeout) => r,
            _ = exit.wait_for(Option::is_some) => {
                return Err(self.start_exit());
            }
        };
        match answered {
            Ok(info) => {
                tracing::info!(
                    id = self.id,
                    version = info.vmm_version,
                    "firecracker answers"
                );
                Ok(())
            }
            Err(e) => {
                if let Some(p) = &self.fc {
                    if p.wait(Duration::from_millis(200)).await.is_some() {
                        return Err(self.start_exit());
                    }
                }
                if e.is_transient() || matches!(e, RestError::Timeout { .. }) {
                    return Err(Error::StartTimeout {
                        hypervisor: FC,
                        what: format!("answer on API socket {:?}", api.socket()),
                        timeout,
                        log_tail: self.log_tail(),
                        last: Some(Box::new(e)),
                    });
                }
                Err(FcError::from(e).into())
            }
        }
    }

    fn start_exit(&self) -> Error {
        let p = self.fc.as_ref();
        Error::VmmExited {
            hypervisor: FC,
            binary: self.binary(),
            pid: p.map_or(0, Supervised::pid),
            exit: p.and_then(Supervised::exited).unwrap_or(Exit::Unknown),
            starting: true,
            log_tail: self.log_tail(),
        }
    }

    async fn launch(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let host_mib = crate::probe::host_memory_size_kb(Path::new(crate::probe::PROC_MEMINFO))
            .map(|kb| kb / 1024)
            .map_err(FcError::HostMemory)?;
        let from_template = self.config.boot_from_template;
        self.make_dirs()?;
        // Placed before the spawn: a jail's files and mounts must exist
        // when the jailer pivots into it.
        let requests = if from_template {
            None
        } else {
            let plan = self.boot_plan(host_mib)?;
            let reqs = vm_config::pre_boot_requests(&plan).map_err(FcError::from)?;
            Some(reqs)
        };
        self.spawn()?;
        if self.options.new_pid_ns && self.files.as_ref().is_some_and(|f| f.jail.is_some()) {
            self.adopt_from_pid_file(deadline.saturating_duration_since(Instant::now()))
                .await?;
        }
        self.wait_api(deadline.saturating_duration_since(Instant::now()))
            .await?;
        let api = self.api()?;
        match requests {
            Some(reqs) => {
                for r in &reqs {
                    let res = send_pre_boot(&api, r).await;
                    self.or_exited(res).await?;
                    if let PreBoot::MemoryHotplug(m) = r {
                        self.memory_region_mib = m.0.total_size_mib;
                    }
                }
                let start = PutAction(InstanceActionInfo {
                    action_type: ActionType::InstanceStart,
                });
                let res = api.call(&start, API_TIMEOUT).await.map_err(FcError::from);
                self.or_exited(res).await?;
            }
            None => self.restore_template(&api).await?,
        }
        Ok(())
    }

    /// Loads the template's snapshot into the fresh process and resumes it.
    async fn restore_template(&mut self, api: &RestClient) -> Result<()> {
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

    /// Kills whatever a failed start left and removes the VM's files.
    async fn abort_start(&mut self) {
        self.api = None;
        if let Some(p) = self.fc.take() {
            p.kill();
            if p.wait(REAP_TIMEOUT).await.is_none() {
                tracing::error!(pid = p.pid(), "firecracker did not die after SIGKILL");
            }
        }
        if let Err(e) = self.remove_files() {
            tracing::warn!(error = %e, "cannot remove the VM's files after a failed start");
        }
    }

    fn remove_files(&self) -> Result<(), FcError> {
        let Some(f) = &self.files else {
            return Ok(());
        };
        let mut first = None;
        if let Some(j) = &f.jail {
            if let Err(e) = jail_fs::remove_jail(j.dir()) {
                first = Some(FcError::from(e));
            }
            // The jailer's parent directory, `<base>/firecracker`, when empty.
            if let Some(parent) = j.dir().parent() {
                let _ = std::fs::remove_dir(parent);
            }
            self.remove_cgroups();
        }
        if let Err(e) = remove_dir(&f.dir) {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Removes the cgroups the jailer made (`<controller
    /// mount>/firecracker/<id>` for each controller set).
    fn remove_cgroups(&self) {
        if self.options.cgroups.is_empty() {
            return;
        }
        let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
            return;
        };
        for setting in &self.options.cgroups {
            let controller = setting.split('.').next().unwrap_or_default();
            for line in mounts.lines() {
                let mut f = line.split_whitespace();
                let (Some(_), Some(dir), Some(fs), Some(opts)) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    continue;
                };
                let matches = match self.options.cgroup_version {
                    CgroupVersion::V1 => fs == "cgroup" && opts.split(',').any(|o| o == controller),
                    CgroupVersion::V2 => fs == "cgroup2",
                };
                if matches {
                    let cg = Path::new(dir).join("firecracker").join(&self.id);
                    let _ = std::fs::remove_dir(&cg);
                }
            }
        }
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
            let host = crate::probe::host_memory_size_kb(Path::new(crate::probe::PROC_MEMINFO))
                .map(|kb| kb / 1024)
                .map_err(FcError::HostMemory)?;
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

    fn drive_path_inside(&self, d: &BlockDrive, writable: bool) -> Result<PathBuf, FcError> {
        let placement = if writable {
            Placement::LinkOrBind
        } else {
            Placement::LinkOrCopy
        };
        self.hand_over(&d.file, "drives", placement, writable)
    }

    async fn hotplug_add_block(
        &mut self,
        api: &RestClient,
        d: BlockDrive,
    ) -> Result<HotplugResult, FcError> {
        if self.hot.drives.contains_key(&d.id) || self.hot.swapped.values().any(|v| *v == d.id) {
            return Err(FcError::DeviceExists { id: d.id });
        }
        let path = self.drive_path_inside(&d, !d.read_only)?;
        let jailed = self.files.as_ref().is_some_and(|f| f.jail.is_some());
        let placed = jailed.then(|| path.clone());
        if self.options.hotplug == HotplugMode::Pci {
            let put = PutDrive(vm_config::drive(&self.config, &d, path));
            if let Err(e) = api.call(&put, API_TIMEOUT).await {
                self.unplace(placed.as_deref());
                return Err(e.into());
            }
            self.hot.drives.insert(d.id.clone(), placed);
        } else {
            let Some(slot) = self
                .hot
                .placeholders
                .iter()
                .find(|p| !self.hot.swapped.contains_key(*p))
                .cloned()
            else {
                self.unplace(placed.as_deref());
                return Err(FcError::NoFreePlaceholder {
                    id: d.id,
                    count: self.hot.placeholders.len(),
                });
            };
            let patch = PatchDrive(PartialDrive {
                drive_id: slot.clone(),
                path_on_host: Some(path),
            });
            if let Err(e) = api.call(&patch, API_TIMEOUT).await {
                self.unplace(placed.as_deref());
                return Err(e.into());
            }
            self.hot.swapped.insert(slot, d.id.clone());
        }
        tracing::info!(id = self.id, drive = d.id, mode = ?self.options.hotplug, "drive hot-plugged");
        Ok(HotplugResult::Attached(Some(d)))
    }

    fn unplace(&self, inside: Option<&Path>) {
        let (Some(inside), Some(jail)) =
            (inside, self.files.as_ref().and_then(|f| f.jail.as_ref()))
        else {
            return;
        };
        if let Ok(target) = jail.host_path(inside) {
            jail_fs::unplace(&target);
        }
    }

    async fn hotplug_remove_block(
        &mut self,
        api: &RestClient,
        d: BlockDrive,
    ) -> Result<HotplugResult, FcError> {
        if let Some(placed) = self.hot.drives.get(&d.id).cloned() {
            api.call(
                &DeleteDrive {
                    drive_id: d.id.clone(),
                },
                API_TIMEOUT,
            )
            .await?;
            self.hot.drives.remove(&d.id);
            self.unplace(placed.as_deref());
            return Ok(HotplugResult::Attached(Some(d)));
        }
        let slot = self
            .hot
            .swapped
            .iter()
            .find(|(_, v)| **v == d.id)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| FcError::UnknownDevice { id: d.id.clone() })?;
        let f = self.files.clone().expect("a running VM has its files");
        let patch = PatchDrive(PartialDrive {
            drive_id: slot.clone(),
            path_on_host: Some(f.inside(&format!("{slot}.img"))),
        });
        api.call(&patch, API_TIMEOUT).await?;
        self.hot.swapped.remove(&slot);
        if f.jail.is_some() {
            self.unplace(Some(
                &Path::new("/drives").join(d.file.file_name().unwrap_or_default()),
            ));
        }
        Ok(HotplugResult::Attached(Some(d)))
    }

    async fn resize_memory_inner(
        &mut self,
        api: &RestClient,
        mem_mib: u32,
    ) -> Result<(u32, MemoryDevice), FcError> {
        let boot = self.config.memory_size;
        let extra = mem_mib.saturating_sub(boot);
        if mem_mib < boot || extra > self.memory_region_mib {
            return Err(FcError::MemoryRange {
                requested_mib: mem_mib,
                boot_mib: boot,
                max_extra_mib: self.memory_region_mib,
            });
        }
        let block = vm_config::MEMORY_BLOCK_MIB;
        let extra = extra.div_ceil(block) * block;
        api.call(
            &PatchMemoryHotplug(MemoryHotplugSizeUpdate {
                requested_size_mib: extra,
            }),
            API_TIMEOUT,
        )
        .await?;
        let added = extra.saturating_sub(self.hot.memory_mib);
        self.hot.memory_mib = extra;
        Ok((
            boot + extra,
            MemoryDevice {
                slot: 0,
                size_mib: added,
                addr: 0,
                probe: false,
            },
        ))
    }
}

async fn send_pre_boot(api: &RestClient, r: &PreBoot) -> Result<(), FcError> {
    let t = API_TIMEOUT;
    match r {
        PreBoot::Logger(e) => api.call(e, t).await,
        PreBoot::Metrics(e) => api.call(e, t).await,
        PreBoot::Machine(e) => api.call(e, t).await,
        PreBoot::Boot(e) => api.call(e, t).await,
        PreBoot::Drive(e) => api.call(e, t).await,
        PreBoot::Net(e) => api.call(e, t).await,
        PreBoot::Vsock(e) => api.call(e, t).await,
        PreBoot::Entropy(e) => api.call(e, t).await,
        PreBoot::Serial(e) => api.call(e, t).await,
        PreBoot::MemoryHotplug(e) => api.call(e, t).await,
    }
    .map_err(FcError::from)
}

/// vCPU threads of `pid`: Firecracker names them `fc_vcpu <N>` (with a
/// space, which Kata's parser misses).
pub fn vcpu_threads(pid: u32) -> std::io::Result<VcpuThreadIds> {
    let mut ids = VcpuThreadIds::default();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if let Some(n) = parse_vcpu_comm(&comm) {
            ids.vcpus.insert(n, tid);
        }
    }
    Ok(ids)
}

/// The vCPU index in a thread name `fc_vcpu <N>`.
pub fn parse_vcpu_comm(comm: &str) -> Option<u32> {
    comm.trim_end()
        .strip_prefix("fc_vcpu")
        .map(str::trim_start)
        .and_then(|n| n.parse().ok())
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
        if config.num_vcpus > vm_config::MAX_VCPUS {
            return Err(FcError::from(VmConfigError::Vcpus {
                vcpus: config.num_vcpus,
            })
            .into());
        }
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
        let Some(p) = self.fc.take() else {
            if matches!(self.state, VmState::Running | VmState::Paused) {
                self.state = VmState::Stopped;
            }
            return Ok(());
        };
        let died_alone = p.exited();
        if died_alone.is_none() {
            if self.state == VmState::Running {
                if let Some(api) = &self.api {
                    let ctrl_alt_del = PutAction(InstanceActionInfo {
                        action_type: ActionType::SendCtrlAltDel,
                    });
                    if let Err(e) = api.call(&ctrl_alt_del, CTRL_ALT_DEL_GRACE).await {
                        tracing::debug!(error = %e, "SendCtrlAltDel");
                    }
                }
            }
            if p.wait(CTRL_ALT_DEL_GRACE).await.is_none() {
                let pid_ns_init = self.options.new_pid_ns
                    && self.files.as_ref().is_some_and(|f| f.jail.is_some());
                if pid_ns_init {
                    // The init of a pid namespace ignores SIGTERM.
                    p.kill();
                } else {
                    p.signal(Signal::SIGTERM);
                    if p.wait(TERM_GRACE).await.is_none() {
                        tracing::warn!(pid = p.pid(), "firecracker ignored SIGTERM: SIGKILL");
                        p.kill();
                    }
                }
                if p.wait(REAP_TIMEOUT).await.is_none() {
                    tracing::error!(pid = p.pid(), "firecracker did not die after SIGKILL");
                }
            }
        }
        self.api = None;
        self.state = VmState::Stopped;
        match died_alone {
            Some(exit) if !matches!(exit, Exit::Unknown) && !exit.success() => {
                let e = Error::VmmExited {
                    hypervisor: FC,
                    binary: self.binary(),
                    pid: p.pid(),
                    exit,
                    starting: false,
                    log_tail: self.log_tail(),
                };
                tracing::error!(id = self.id, error = %e, "firecracker had died before stop");
                Err(e)
            }
            Some(exit) => {
                tracing::info!(id = self.id, %exit, "firecracker had exited before stop");
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

    async fn save_sandbox(&mut self) -> Result<()> {
        self.require("save_sandbox", &[VmState::Running, VmState::Paused])?;
        if self.state == VmState::Running {
            self.pause_sandbox().await?;
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

    async fn resume_sandbox(&mut self) -> Result<()> {
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
        self.require("hotplug_add_device", &[VmState::Running, VmState::Paused])?;
        let api = self.api()?;
        let result = match device {
            Device::Block(d) => self.hotplug_add_block(&api, d).await,
            Device::Net(n) if self.options.hotplug == HotplugMode::Pci => {
                if self.hot.nets.contains(&n.id) {
                    Err(FcError::DeviceExists { id: n.id })
                } else {
                    let put = PutNetworkInterface(vm_config::network_interface(&n));
                    match api.call(&put, API_TIMEOUT).await {
                        Ok(()) => {
                            self.hot.nets.push(n.id);
                            Ok(HotplugResult::Attached(None))
                        }
                        Err(e) => Err(e.into()),
                    }
                }
            }
            Device::Cpu(_) => return Err(no_vcpu_hotplug("hotplug_add_device")),
            Device::Memory(m) => {
                let target = self.config.memory_size + self.hot.memory_mib + m.size_mib;
                self.resize_memory_inner(&api, target)
                    .await
                    .map(|(_, d)| HotplugResult::MemoryMib(d.size_mib))
            }
            other => {
                return Err(Error::unsupported(
                    "hotplug_add_device",
                    FC,
                    format!(
                        "{} devices cannot be hot-plugged into firecracker{}",
                        other.device_type(),
                        if matches!(other, Device::Net(_)) {
                            " in MMIO mode (hot-plug mode pci can)"
                        } else {
                            ""
                        }
                    ),
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
        let api = self.api()?;
        let result = match device {
            Device::Block(d) => self.hotplug_remove_block(&api, d).await,
            Device::Net(n) if self.hot.nets.contains(&n.id) => {
                match api
                    .call(
                        &DeleteNetworkInterface {
                            iface_id: n.id.clone(),
                        },
                        API_TIMEOUT,
                    )
                    .await
                {
                    Ok(()) => {
                        self.hot.nets.retain(|x| *x != n.id);
                        Ok(HotplugResult::Attached(None))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Device::Net(n) => Err(FcError::UnknownDevice { id: n.id }),
            Device::Cpu(_) => return Err(no_vcpu_hotplug("hotplug_remove_device")),
            other => {
                return Err(Error::unsupported(
                    "hotplug_remove_device",
                    FC,
                    format!(
                        "{} devices cannot be hot-unplugged from firecracker",
                        other.device_type()
                    ),
                ))
            }
        };
        self.or_exited(result).await
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
        let pci = self.options.hotplug == HotplugMode::Pci;
        let placeholders = self.options.placeholder_count() > 0;
        Capabilities {
            block_device: true,
            block_device_hotplug: pci || placeholders,
            multi_queue: false,
            fs_sharing: false,
            hybrid_vsock: true,
            cpu_hotplug: false,
            memory_hotplug: self.config.virtio_mem,
            net_hotplug: pci,
            vfio: false,
            pause: true,
            save: true,
            vm_template: true,
            vm_cache: true,
            reattach: true,
        }
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
        if self.fc.as_ref().is_some_and(|p| p.exited().is_none()) {
            return Err(self.invalid("cleanup"));
        }
        self.api = None;
        self.fc = None;
        self.devices.clear();
        self.remove_files()?;
        tracing::debug!(id = self.id, "VM files removed");
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.fc.iter().map(Supervised::pid).collect()
    }

    async fn from_grpc(&mut self, config: &HypervisorConfig, data: &[u8]) -> Result<()> {
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

    async fn to_grpc(&mut self) -> Result<Vec<u8>> {
        let data = serde_json::to_vec(&self.save()).map_err(FcError::Grpc)?;
        self.api = None;
        self.detached = true;
        self.devices.clear();
        Ok(data)
    }

    async fn check(&mut self) -> Result<()> {
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

    fn save(&self) -> HypervisorState {
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

    async fn load(&mut self, state: HypervisorState) -> Result<()> {
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

fn no_vcpu_hotplug(op: &'static str) -> Error {
    Error::unsupported(
        op,
        FC,
        "firecracker cannot hot-plug vCPUs: boot with the vCPUs needed (default_vcpus)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_thread_names_have_a_space() {
        assert_eq!(parse_vcpu_comm("fc_vcpu 0\n"), Some(0));
        assert_eq!(parse_vcpu_comm("fc_vcpu 11"), Some(11));
        assert_eq!(parse_vcpu_comm("fc_api"), None);
        assert_eq!(parse_vcpu_comm("firecracker"), None);
    }

    #[test]
    fn hot_plug_state_survives_save_and_load() {
        let mut h = Hot {
            placeholders: vec!["drive_0".into(), "drive_1".into()],
            memory_mib: 128,
            ..Hot::default()
        };
        h.drives.insert("d1".into(), Some("/drives/d1.img".into()));
        h.drives.insert("d2".into(), None);
        h.swapped.insert("drive_1".into(), "d3".into());
        h.nets.push("eth1".into());
        assert_eq!(Hot::from_strings(&h.to_strings(), 128), h);
    }

    #[tokio::test]
    async fn capabilities_follow_the_hot_plug_mode() {
        let pci = Firecracker::with_storage("/tmp/x");
        let c = pci.capabilities();
        assert!(c.block_device_hotplug && c.net_hotplug && !c.cpu_hotplug && c.pause);
        let mmio = Firecracker::with_options(
            "/tmp/x",
            FcOptions {
                hotplug: HotplugMode::Mmio,
                ..FcOptions::default()
            },
        );
        let c = mmio.capabilities();
        assert!(c.block_device_hotplug && !c.net_hotplug);
        let mut none = Firecracker::with_options(
            "/tmp/x",
            FcOptions {
                hotplug: HotplugMode::Mmio,
                placeholders: Some(0),
                ..FcOptions::default()
            },
        );
        assert!(!none.capabilities().block_device_hotplug);
        let e = none.resize_vcpus(2).await.expect_err("no vcpu hot-plug");
        assert!(e.is_unsupported(), "{e}");
        assert!(e.to_string().contains("cannot hot-plug vCPUs"), "{e}");
    }
}
