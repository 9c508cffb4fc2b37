//! What a cache server holds, on disk, so that `sandvisor factory destroy`
//! can stop it and its VMs even after the server was killed.
//!
//! ```text
//! <ledger dir>/            (<runtime>/factory/cache-<endpoint hash>, mode 0700)
//!     server.json          the server: pid and start time, endpoint
//!     boot-<id>.json       one VM being booted: its backend and directory
//!     vm-<id>.json         one VM the server holds: its backend's save()
//! ```
//!
//! A VM's `boot-` file is written before its VMM starts and replaced by
//! its `vm-` file once the VM is booted and paused; that is removed when
//! the VM is handed out (it is the receiver's from then on) or stopped by
//! the server. A server killed mid-boot leaves a `boot-` file: `destroy`
//! tells that VM's QEMU to quit on its QMP socket.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::CacheError;
use crate::backends::new_hypervisor;
use crate::hypervisor::HypervisorState;
use crate::hypervisor_type::HypervisorType;
use crate::process::{ProcessRef, Stoppable};

/// The server's file.
const SERVER_FILE: &str = "server.json";
/// How long a VM left behind may take to go after SIGTERM.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The ledger's directory for the server of `endpoint`, under the
/// runtime directory: `factory/cache-<hash of the endpoint>`, so that
/// servers on two endpoints never take each other's VMs for their own.
pub fn default_dir(runtime_dir: &Path, endpoint: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(endpoint.as_os_str().as_encoded_bytes());
    runtime_dir
        .join("factory")
        .join(format!("cache-{}", &hex::encode(digest)[..12]))
}

/// `server.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerEntry {
    /// The server process.
    pub process: ProcessRef,
    /// The socket it serves.
    pub endpoint: PathBuf,
}

/// `vm-<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmEntry {
    /// The backend.
    pub hypervisor: HypervisorType,
    /// The VMM, with its start time, so that a reused pid is not killed.
    pub vmm: ProcessRef,
    /// The backend's state, to re-attach and clean up.
    pub state: HypervisorState,
}

/// `boot-<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootEntry {
    /// The backend.
    pub hypervisor: HypervisorType,
    /// The VM directory the backend will make.
    pub vm_dir: PathBuf,
}

/// The files of one cache server.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

/// What [`Ledger::destroy`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destroyed {
    /// The server's pid, when one was still running and was killed.
    pub server_killed: Option<u32>,
    /// The VMMs of the VMs the server held, stopped.
    pub vms_stopped: Vec<u32>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Ledger {
    /// The ledger in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Ledger { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn vm_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("vm-{id}.json"))
    }

    fn boot_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("boot-{id}.json"))
    }

    /// Records a VM about to boot.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn record_boot(&self, id: &str, entry: &BootEntry) -> Result<(), CacheError> {
        self.write(&self.boot_file(id), entry)
    }

    /// Forgets a VM that booted (its `vm-` file follows) or failed to.
    pub fn forget_boot(&self, id: &str) {
        remove(&self.boot_file(id));
    }

    /// The VMs recorded as booting, by id.
    pub fn boots(&self) -> Vec<(String, BootEntry)> {
        self.entries("boot-")
    }

    fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), CacheError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("create", &self.dir))?;
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| CacheError::Decode {
            what: "ledger entry",
            source,
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err("rename", path))
    }

    /// Records this process as the server of `endpoint`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn record_server(&self, endpoint: &Path) -> Result<(), CacheError> {
        let entry = ServerEntry {
            process: ProcessRef::current(),
            endpoint: endpoint.to_path_buf(),
        };
        self.write(&self.dir.join(SERVER_FILE), &entry)
    }

    /// The recorded server, when one is recorded.
    pub fn server(&self) -> Option<ServerEntry> {
        let bytes = std::fs::read(self.dir.join(SERVER_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records a VM the server holds.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn record_vm(&self, id: &str, entry: &VmEntry) -> Result<(), CacheError> {
        self.write(&self.vm_file(id), entry)
    }

    /// Forgets VM `id`: handed out, or stopped.
    pub fn forget_vm(&self, id: &str) {
        remove(&self.vm_file(id));
    }

    /// The VMs recorded, by id.
    pub fn vms(&self) -> Vec<(String, VmEntry)> {
        self.entries("vm-")
    }

    fn entries<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Vec<(String, T)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut vms: Vec<_> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name
                    .strip_prefix(prefix)?
                    .strip_suffix(".json")?
                    .to_string();
                let bytes = std::fs::read(e.path()).ok()?;
                match serde_json::from_slice::<T>(&bytes) {
                    Ok(entry) => Some((id, entry)),
                    Err(err) => {
                        tracing::warn!("skipping {:?}: {err}", e.path());
                        None
                    }
                }
            })
            .collect();
        vms.sort_by(|a, b| a.0.cmp(&b.0));
        vms
    }

    /// Removes the server's file and the directory (and its parent, the
    /// runtime directory's `factory`), when empty.
    pub fn close(&self) {
        let _ = std::fs::remove_file(self.dir.join(SERVER_FILE));
        if std::fs::remove_dir(&self.dir).is_ok() {
            if let Some(parent) = self.dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    /// Kills a recorded server that still runs (SIGTERM, then SIGKILL),
    /// stops every VM it still held and removes their files and the
    /// ledger: what `destroy` does when the server does not answer, and
    /// after it quit, for what a crash left.
    pub async fn destroy(&self) -> Destroyed {
        let mut done = Destroyed::default();
        if let Some(server) = self.server() {
            if server.process.pid != std::process::id() && server.process.is_alive() {
                tracing::warn!(pid = server.process.pid, "killing the VM cache server");
                server.process.terminate(KILL_GRACE).await;
                done.server_killed = Some(server.process.pid);
            }
        }
        for (id, entry) in self.vms() {
            stop_left_behind(&id, &entry).await;
            done.vms_stopped.push(entry.vmm.pid);
            self.forget_vm(&id);
        }
        for (id, entry) in self.boots() {
            if let Some(pid) = quit_booting(&id, &entry).await {
                done.vms_stopped.push(pid);
            }
            self.forget_boot(&id);
        }
        self.close();
        done
    }
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {path:?}: {e}");
        }
    }
}

/// Tells the QEMU of a VM a server left mid-boot to quit, on the QMP
/// socket in its directory, and removes the directory. Returns the
/// QEMU's pid when one answered.
async fn quit_booting(id: &str, entry: &BootEntry) -> Option<u32> {
    use crate::backends::qemu::qmp;
    let mut pid = None;
    if entry.hypervisor == HypervisorType::Qemu {
        let storage = entry.vm_dir.parent().unwrap_or(Path::new("/"));
        let paths = crate::backends::qemu::cmdline::VmPaths::new(storage, id);
        if let Ok(q) = qmp::Qmp::connect(&paths.qmp, KILL_GRACE).await {
            pid = qemu_pid(&paths.qmp);
            if let Err(e) = q.execute_with(&qmp::Quit {}, KILL_GRACE).await {
                tracing::debug!(id, "quit of a VM left mid-boot: {e}");
            }
            if let Some(p) = pid.map(ProcessRef::of) {
                p.terminate(KILL_GRACE).await;
            }
        }
    }
    if entry.vm_dir.file_name().and_then(|n| n.to_str()) == Some(id) && entry.vm_dir.is_dir() {
        if let Err(e) = std::fs::remove_dir_all(&entry.vm_dir) {
            tracing::warn!("cannot remove {:?}: {e}", entry.vm_dir);
        }
    }
    pid
}

/// The pid of the process that listens on the unix socket `path`, from
/// its peer credentials.
fn qemu_pid(path: &Path) -> Option<u32> {
    let stream = std::os::unix::net::UnixStream::connect(path).ok()?;
    let cred = rustix::net::sockopt::socket_peercred(&stream).ok()?;
    u32::try_from(cred.pid.as_raw_nonzero().get()).ok()
}

/// Stops a VM a server left behind and removes its files.
async fn stop_left_behind(id: &str, entry: &VmEntry) {
    let vm_dir = entry.state.vm_dir.clone();
    let mut hv = new_hypervisor(entry.hypervisor);
    match hv.load(entry.state.clone()).await {
        Ok(()) => {
            if let Err(e) = hv.stop_sandbox().await {
                tracing::warn!(id, "stopping a cached VM left behind: {e}");
            }
        }
        Err(e) => tracing::debug!(id, "cannot re-attach to a cached VM left behind: {e}"),
    }
    if entry.vmm.is_alive() {
        tracing::warn!(id, pid = entry.vmm.pid, "killing a cached VM's VMM");
        entry.vmm.terminate(KILL_GRACE).await;
    }
    if let Err(e) = hv.cleanup().await {
        tracing::debug!(id, "cleanup of a cached VM left behind: {e}");
    }
    // The backend's directory is named after the VM.
    if vm_dir.file_name().and_then(|n| n.to_str()) == Some(id) && vm_dir.is_dir() {
        if let Err(e) = std::fs::remove_dir_all(&vm_dir) {
            tracing::warn!("cannot remove {vm_dir:?}: {e}");
        }
    }
}
