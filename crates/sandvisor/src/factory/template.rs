//! VM templates (Kata's `factory/template`): making one, finding it,
//! cloning it, and removing it.
//!
//! `init` mounts a tmpfs at the template directory, sized the guest's
//! memory plus [`STATE_ROOM_MIB`] and mode 0700, boots the template VM
//! with its RAM in `memory` there (`memory-backend-file,share=on`), waits
//! for its agent, asks the agent to end its session ([`AgentClient::quiesce`]:
//! no fixed sleep), pauses it and migrates its device state to `state`
//! with `x-ignore-shared`, then stops it and writes the record
//! (`template.json`) last: a directory without a record is no template.
//!
//! A template is tied to its config and its guest assets: the record
//! holds the config (without the template's own keys) and, for the
//! kernel, initrd or image, firmware and VMM binary, each file's size,
//! modification time, inode and device, hashed together with the config
//! ([`config_hash`]). File metadata rather than contents keeps the check
//! off the start path (hashing a VMM binary and kernel costs more than a
//! tenth of a clone's start); rebuilding or replacing an asset changes its
//! metadata.
//!
//! [`AgentClient::quiesce`]: crate::agent::AgentClient::quiesce

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{boot_with, FactoryError, FactoryVm, Origin};
use crate::config::kata::FactoryConfig;
use crate::config::HypervisorConfig;
use crate::hypervisor_type::HypervisorType;

/// Room in the tmpfs beyond the guest's memory, for the device state and
/// the record (Kata's `templateDeviceStateSize`), in MiB.
pub const STATE_ROOM_MIB: u32 = 8;
/// The record's file name in the template directory.
pub const RECORD_FILE: &str = "template.json";
/// The record's format.
pub const RECORD_FORMAT: u32 = 1;

/// The record file of the template in `dir`.
pub fn record_path(dir: &Path) -> PathBuf {
    dir.join(RECORD_FILE)
}

/// One guest asset as the template saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetStamp {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub len: u64,
    /// Its modification time, in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Its inode.
    pub ino: u64,
    /// Its device.
    pub dev: u64,
}

impl AssetStamp {
    /// The stamp of `path` now.
    ///
    /// # Errors
    /// When `path` cannot be looked at.
    pub fn of(path: &Path) -> std::io::Result<AssetStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(AssetStamp {
            path: path.to_path_buf(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        })
    }
}

/// What `template.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// The hypervisor.
    pub hypervisor: HypervisorType,
    /// The config the template VM booted with, without the template's own
    /// keys (see [`base_config`]).
    pub config: HypervisorConfig,
    /// The guest assets.
    pub assets: Vec<AssetStamp>,
    /// [`config_hash`] of the above.
    pub config_hash: String,
    /// When it was made, in seconds since the epoch.
    pub created_unix_secs: u64,
}

/// `config` without the keys that make a VM a template or a clone
/// (`boot_to_be_template`, `boot_from_template`, `memory_path`,
/// `devices_state_path`): what a template and a request are compared on.
pub fn base_config(config: &HypervisorConfig) -> HypervisorConfig {
    HypervisorConfig {
        boot_to_be_template: false,
        boot_from_template: false,
        memory_path: None,
        devices_state_path: None,
        ..config.clone()
    }
}

/// The guest assets of `config` a template depends on: kernel, image,
/// initrd, firmware and the VMM binary.
pub fn asset_paths(config: &HypervisorConfig) -> Vec<PathBuf> {
    [
        &config.kernel_path,
        &config.image_path,
        &config.initrd_path,
        &config.firmware_path,
        &config.hypervisor_path,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect()
}

/// The stamps of `config`'s assets now.
///
/// # Errors
/// [`FactoryError::Io`] naming an asset that cannot be looked at.
pub fn stamps(config: &HypervisorConfig) -> Result<Vec<AssetStamp>, FactoryError> {
    asset_paths(config)
        .iter()
        .map(|p| {
            AssetStamp::of(p).map_err(|source| FactoryError::Io {
                action: "look at guest asset",
                path: p.clone(),
                source,
            })
        })
        .collect()
}

/// SHA-256, in hex, of the hypervisor, the base config and the asset
/// stamps, as JSON.
pub fn config_hash(
    kind: HypervisorType,
    config: &HypervisorConfig,
    assets: &[AssetStamp],
) -> String {
    #[derive(Serialize)]
    struct Hashed<'a> {
        hypervisor: HypervisorType,
        config: &'a HypervisorConfig,
        assets: &'a [AssetStamp],
    }
    // serde_json's maps are sorted: the same inputs give the same bytes.
    let bytes = serde_json::to_vec(&Hashed {
        hypervisor: kind,
        config: &base_config(config),
        assets,
    })
    .unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// The keys (Kata's names) in which `request` differs from a template of
/// `template`, other than more vCPUs and more memory; empty when a clone
/// can become `request`.
pub fn differences(template: &HypervisorConfig, request: &HypervisorConfig) -> Vec<String> {
    let to_map = |c: &HypervisorConfig| match serde_json::to_value(base_config(c)) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (t, r) = (to_map(template), to_map(request));
    let mut keys: Vec<String> = t
        .keys()
        .chain(r.keys().filter(|k| !t.contains_key(*k)))
        .filter(|k| {
            !matches!(
                k.as_str(),
                "default_vcpus" | "default_memory" | "default_maxvcpus"
            )
        })
        .filter(|k| t.get(*k) != r.get(*k))
        .cloned()
        .collect();
    if request.num_vcpus < template.num_vcpus {
        keys.push("default_vcpus (fewer than the template's)".into());
    }
    if request.memory_size < template.memory_size {
        keys.push("default_memory (less than the template's)".into());
    }
    if request.default_max_vcpus > template.default_max_vcpus
        || request.num_vcpus > template.default_max_vcpus
    {
        keys.push("default_maxvcpus (more than the template's)".into());
    }
    keys.sort();
    keys.dedup();
    keys
}

/// A template found on the host.
#[derive(Debug, Clone)]
pub struct Template {
    dir: PathBuf,
    record: TemplateRecord,
}

impl Template {
    /// The template in `dir`, or `None` when `dir` has no record.
    ///
    /// # Errors
    /// [`FactoryError::Record`] for a record that does not parse.
    pub fn open(dir: &Path) -> Result<Option<Template>, FactoryError> {
        let path = record_path(dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(FactoryError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let record: TemplateRecord =
            serde_json::from_slice(&text).map_err(|e| FactoryError::Record {
                path: path.clone(),
                source: Box::new(e),
            })?;
        if record.format != RECORD_FORMAT {
            return Err(FactoryError::Record {
                path,
                source: format!(
                    "record format {} is not {RECORD_FORMAT}: run `sandvisor factory init`",
                    record.format
                )
                .into(),
            });
        }
        Ok(Some(Template {
            dir: dir.to_path_buf(),
            record,
        }))
    }

    /// The template directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its record.
    pub fn record(&self) -> &TemplateRecord {
        &self.record
    }

    /// Whether the template still matches its assets and was made for
    /// `kind`.
    ///
    /// # Errors
    /// What changed, for [`FactoryError::StaleTemplate`].
    pub fn check_fresh(&self, kind: HypervisorType) -> Result<(), String> {
        if self.record.hypervisor != kind {
            return Err(format!(
                "the hypervisor ({} then, {kind} now)",
                self.record.hypervisor
            ));
        }
        for then in &self.record.assets {
            match AssetStamp::of(&then.path) {
                Ok(now) if now == *then => {}
                Ok(_) => return Err(format!("guest asset {}", then.path.display())),
                Err(e) => return Err(format!("guest asset {} ({e})", then.path.display())),
            }
        }
        let hash = config_hash(kind, &self.record.config, &self.record.assets);
        if hash != self.record.config_hash {
            return Err("the record (its hash does not match)".into());
        }
        for name in ["memory", "state"] {
            if !self.dir.join(name).is_file() {
                return Err(format!("its {name} file (missing)"));
            }
        }
        Ok(())
    }

    /// Restores a clone of the template as VM `id`, its agent connected.
    ///
    /// # Errors
    /// [`FactoryError::Boot`]; the clone is gone.
    pub async fn clone_vm(
        &self,
        factory: &FactoryConfig,
        kind: HypervisorType,
        id: &str,
        boot_timeout: Duration,
    ) -> Result<FactoryVm, FactoryError> {
        let factory = FactoryConfig {
            template_path: Some(self.dir.clone()),
            ..factory.clone()
        };
        let config = factory.from_template_vm_config(&self.record.config);
        boot_with(id, kind, &config, boot_timeout, Origin::Template).await
    }
}

/// What `factory status` shows of a template.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateStatus {
    /// The template directory.
    pub path: PathBuf,
    /// Whether a tmpfs is mounted there.
    pub mounted: bool,
    /// The record, when there is a template.
    pub record: Option<TemplateRecord>,
    /// Bytes the template's files take.
    pub size_bytes: u64,
    /// Seconds since it was made.
    pub age_secs: Option<u64>,
    /// Why it is stale, when it is.
    pub stale: Option<String>,
}

/// What is at `factory`'s template path.
///
/// # Errors
/// [`FactoryError::Record`] for a record that does not parse.
pub fn status(factory: &FactoryConfig) -> Result<TemplateStatus, FactoryError> {
    let path = factory.template_dir();
    let template = Template::open(&path)?;
    let size_bytes = ["memory", "state", RECORD_FILE]
        .iter()
        .filter_map(|n| {
            use std::os::unix::fs::MetadataExt;
            // Blocks in use: the memory file is sparse.
            std::fs::metadata(path.join(n))
                .ok()
                .map(|m| m.blocks() * 512)
        })
        .sum();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(TemplateStatus {
        mounted: is_mount_point(&path),
        size_bytes,
        age_secs: template
            .as_ref()
            .map(|t| now.saturating_sub(t.record.created_unix_secs)),
        stale: template
            .as_ref()
            .and_then(|t| t.check_fresh(t.record.hypervisor).err()),
        record: template.map(|t| t.record),
        path,
    })
}

/// Whether `path` is a mount point, from `/proc/self/mountinfo`.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) if b[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What [`init`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// A template was made.
    Made,
    /// A stale template was removed and a new one made.
    Remade,
    /// The template there is current: nothing was done.
    Current,
}

/// Makes the template of `base` for `kind` at `factory`'s template path
/// (Kata's `template.New` + `prepareTemplateFiles` + `createTemplateVM`),
/// unless a current one is there; a stale one is removed first.
///
/// # Errors
/// [`FactoryError::Rule`] for a config templates cannot use; the step
/// that failed otherwise, after which nothing of the template is left.
pub async fn init(
    factory: &FactoryConfig,
    base: &HypervisorConfig,
    kind: HypervisorType,
    boot_timeout: Duration,
) -> Result<InitOutcome, FactoryError> {
    crate::config::kata::check_template_rules(kind, base).map_err(FactoryError::Rule)?;
    let dir = factory.template_dir();
    let _lock = InitLock::acquire(&dir)?;
    let base = base_config(base);
    let mut outcome = InitOutcome::Made;
    if let Some(t) = Template::open(&dir).ok().flatten() {
        let same = t.record.config == base && t.record.hypervisor == kind;
        match t.check_fresh(kind) {
            Ok(()) if same => return Ok(InitOutcome::Current),
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "the config changed: remaking the template")
            }
            Err(what) => tracing::info!(dir = %dir.display(), what, "stale template: remaking it"),
        }
        outcome = InitOutcome::Remade;
    }
    // This init holds the lock: what it removes, it removes unlocked.
    if dir.exists() {
        remove_template(&dir)?;
    }
    mount_tmpfs(&dir, base.memory_size.saturating_add(STATE_ROOM_MIB))?;
    match make(factory, &base, kind, boot_timeout).await {
        Ok(()) => Ok(outcome),
        Err(e) => {
            if let Err(undo) = remove_template(&dir) {
                tracing::warn!(error = %undo, "cannot remove the failed template");
            }
            Err(e)
        }
    }
}

/// The exclusive `flock` that [`init`] holds on `<template_path>.lock`
/// while it checks, removes or makes the template, as the cache server
/// holds its endpoint: a second `init` for the same path fails at once,
/// naming the first by the pid written in the file. The lock file sits
/// beside the template directory, not in it, as that directory is a tmpfs
/// that `init` unmounts and removes. The kernel drops the lock with its
/// holder, so an `init` killed with SIGKILL blocks nothing: the file stays,
/// unlocked, and the next `init` takes it, finds no current template and
/// removes what the killed one left.
#[derive(Debug)]
pub struct InitLock {
    flock: nix::fcntl::Flock<std::fs::File>,
    path: PathBuf,
}

impl InitLock {
    /// The lock file of the template at `template_dir`.
    pub fn path_for(template_dir: &Path) -> PathBuf {
        let mut name = template_dir
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .unwrap_or_default();
        name.push(".lock");
        template_dir.with_file_name(name)
    }

    /// Takes the lock of the template at `template_dir`, without waiting,
    /// and writes this process's pid in it.
    ///
    /// # Errors
    /// [`FactoryError::InitBusy`] when another process holds it;
    /// [`FactoryError::Io`] when the file cannot be made or written.
    pub fn acquire(template_dir: &Path) -> Result<Self, FactoryError> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

        use nix::fcntl::{Flock, FlockArg};

        let path = Self::path_for(template_dir);
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| FactoryError::Io {
                action,
                path,
                source,
            }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io("create the directory of"))?;
        }
        // A `factory destroy` may unlink the file between its open and its
        // lock here: the lock then holds a name no one else sees, so the
        // file is opened again.
        let mut held = loop {
            // Not truncated when opened: the holder's pid is in it.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(crate::private::FILE_MODE)
                .open(&path)
                .map_err(io("open"))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(held) if same_file(&held, &path) => break held,
                Ok(_) => continue,
                Err((mut file, nix::Error::EWOULDBLOCK)) => {
                    let mut text = String::new();
                    let pid = file
                        .read_to_string(&mut text)
                        .ok()
                        .and_then(|_| text.trim().parse().ok());
                    return Err(FactoryError::InitBusy {
                        path: template_dir.to_path_buf(),
                        lock: path,
                        pid,
                    });
                }
                Err((_, errno)) => return Err(io("lock")(errno.into())),
            }
        };
        held.set_len(0).map_err(io("truncate"))?;
        held.rewind().map_err(io("rewind"))?;
        writeln!(held, "{}", std::process::id()).map_err(io("write"))?;
        Ok(InitLock { flock: held, path })
    }

    /// Removes the lock file, then lets the lock go (for `factory
    /// destroy`, which holds it while it removes the template). An `init`
    /// that opened the file meanwhile sees it unlinked and opens it anew.
    ///
    /// # Errors
    /// [`FactoryError::Io`] when it cannot be removed.
    pub fn remove(self) -> Result<(), FactoryError> {
        match std::fs::remove_file(&self.path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(FactoryError::Io {
                action: "remove",
                path: self.path.clone(),
                source,
            }),
            _ => {
                drop(self.flock);
                Ok(())
            }
        }
    }
}

fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Boots the template VM, quiesces its agent, pauses and saves it, stops
/// it, and writes the record.
async fn make(
    factory: &FactoryConfig,
    base: &HypervisorConfig,
    kind: HypervisorType,
    boot_timeout: Duration,
) -> Result<(), FactoryError> {
    let dir = factory.template_dir();
    // Asset stamps before the boot: a file replaced while the template
    // boots makes it stale, not wrongly current.
    let assets = stamps(base)?;
    let config = factory.template_vm_config(base);
    let id = format!("sv-template-{}", std::process::id());
    let started = std::time::Instant::now();
    let vm = boot_with(&id, kind, &config, boot_timeout, Origin::Template).await?;
    let FactoryVm {
        mut hypervisor,
        agent,
        ..
    } = vm;
    let saved = async {
        agent
            .quiesce()
            .await
            .map_err(FactoryError::new_request("quiesce", &id, &agent))?;
        drop(agent);
        hypervisor
            .pause_sandbox()
            .await
            .map_err(FactoryError::hv("pause", &id))?;
        hypervisor
            .save_sandbox()
            .await
            .map_err(FactoryError::hv("save", &id))
    }
    .await;
    let stopped = hypervisor.stop_sandbox().await;
    if let Err(e) = hypervisor.cleanup().await {
        tracing::warn!(id, error = %e, "cleaning up the template VM failed");
    }
    saved?;
    stopped.map_err(FactoryError::hv("stop", &id))?;
    let record = TemplateRecord {
        format: RECORD_FORMAT,
        hypervisor: kind,
        config_hash: config_hash(kind, base, &assets),
        config: base.clone(),
        assets,
        created_unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    write_record(&dir, &record)?;
    tracing::info!(dir = %dir.display(), elapsed = ?started.elapsed(), hash = record.config_hash, "template made");
    Ok(())
}

/// Writes the record through a temporary file and a rename: a reader sees
/// no record or a whole one.
fn write_record(dir: &Path, record: &TemplateRecord) -> Result<(), FactoryError> {
    let path = record_path(dir);
    let tmp = dir.join(format!(".{RECORD_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| FactoryError::Record {
        path: path.clone(),
        source: Box::new(e),
    })?;
    std::fs::write(&tmp, bytes).map_err(|source| FactoryError::Io {
        action: "write",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| FactoryError::Io {
        action: "rename into place",
        path,
        source,
    })
}

/// Creates `dir` (mode 0700) and mounts a tmpfs of `size_mib` there, mode
/// 0700, as Kata's `prepareTemplateFiles`.
fn mount_tmpfs(dir: &Path, size_mib: u32) -> Result<(), FactoryError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| FactoryError::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
    let data = format!("size={size_mib}M,mode=0700");
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|source| FactoryError::Mount {
        action: "mount",
        path: dir.to_path_buf(),
        source,
    })
}

/// Removes the template at `factory`'s template path: unmounts its tmpfs
/// and removes the directory and its init lock. Returns whether there was
/// anything.
///
/// # Errors
/// [`FactoryError::InitBusy`] while a `factory init` makes the template;
/// [`FactoryError::Mount`] or [`FactoryError::Io`].
pub fn destroy(factory: &FactoryConfig) -> Result<bool, FactoryError> {
    let dir = factory.template_dir();
    // An `init` making this template holds its lock: removing the tmpfs
    // under it would pull the memory from its template VM. Where even the
    // parent is missing there is neither a template nor a lock.
    let lock = match dir.parent() {
        Some(parent) if parent.exists() => Some(InitLock::acquire(&dir)?),
        _ => None,
    };
    let found = remove_template(&dir)?;
    if let Some(lock) = lock {
        lock.remove()?;
    }
    Ok(found)
}

/// Unmounts and removes the template directory `dir`; whether there was
/// anything.
fn remove_template(dir: &Path) -> Result<bool, FactoryError> {
    let dir = dir.to_path_buf();
    let mut found = false;
    while is_mount_point(&dir) {
        found = true;
        nix::mount::umount2(&dir, nix::mount::MntFlags::empty()).map_err(|source| {
            FactoryError::Mount {
                action: "unmount",
                path: dir.clone(),
                source,
            }
        })?;
    }
    // Only the template's own files: a template_path that names a
    // directory holding anything else is left alone, and saying so.
    for name in TEMPLATE_FILES {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => found = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FactoryError::Io {
                    action: "remove",
                    path,
                    source,
                })
            }
        }
    }
    match std::fs::remove_dir(&dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(found),
        Err(source) => Err(FactoryError::Io {
            action: "remove the template directory (it holds other files than a template's)",
            path: dir,
            source,
        }),
    }
}

/// The files a template directory holds.
const TEMPLATE_FILES: [&str; 4] = ["memory", "state", RECORD_FILE, ".template.json.tmp"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_init_lock_fails_at_once_naming_the_first() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tpl");
        let lock = tmp.path().join("tpl.lock");
        assert_eq!(InitLock::path_for(&dir), lock);
        let first = InitLock::acquire(&dir).expect("first");
        let err = InitLock::acquire(&dir).expect_err("second");
        match &err {
            FactoryError::InitBusy { path, lock: l, pid } => {
                assert_eq!((path, l), (&dir, &lock));
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains(&dir.display().to_string())
                && msg.contains("wait for it to finish"),
            "{msg}"
        );
        // Held: destroy is refused the same way and leaves everything;
        // released: destroy takes it, and removes the lock file too.
        let factory = FactoryConfig {
            enable_template: true,
            template_path: Some(dir.clone()),
            ..FactoryConfig::default()
        };
        std::fs::create_dir(&dir).expect("template dir");
        assert!(matches!(
            destroy(&factory),
            Err(FactoryError::InitBusy { .. })
        ));
        assert!(lock.exists() && dir.exists());
        drop(first);
        assert!(destroy(&factory).expect("destroy after the init ended"));
        assert!(!lock.exists() && !dir.exists());
        let again = InitLock::acquire(&dir).expect("after destroy");
        again.remove().expect("remove");
        assert!(!lock.exists());
    }

    #[test]
    fn an_init_lock_killed_with_its_holder_blocks_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tpl");
        let lock = InitLock::path_for(&dir);
        // Another process holds the lock, as a running init would
        // (flock(1) takes the same kind of lock), and says so once it has.
        let mut holder = std::process::Command::new("flock")
            .args(["--exclusive", "--no-fork"])
            .arg(&lock)
            .args(["sh", "-c", "echo held; exec sleep 600"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("flock(1) runs");
        let mut line = String::new();
        let read = std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().expect("piped")),
            &mut line,
        );
        let busy = InitLock::acquire(&dir);
        let _ = holder.kill();
        let _ = holder.wait();
        assert_eq!((read.ok(), line.as_str()), (Some(5), "held\n"));
        assert!(
            matches!(busy, Err(FactoryError::InitBusy { .. })),
            "{busy:?}"
        );
        // SIGKILL (Child::kill) released it: the next init goes ahead.
        InitLock::acquire(&dir).expect("the killed holder blocks nothing");
    }

    fn base() -> HypervisorConfig {
        HypervisorConfig {
            num_vcpus: 1,
            default_max_vcpus: 2,
            memory_size: 1024,
            kernel_path: Some("/k".into()),
            initrd_path: Some("/i".into()),
            ..HypervisorConfig::default()
        }
    }

    #[test]
    fn more_cpus_and_memory_are_no_difference() {
        let t = base();
        let mut r = base();
        r.num_vcpus = 2;
        r.memory_size = 1536;
        assert!(differences(&t, &r).is_empty(), "{:?}", differences(&t, &r));
        // The template's own keys are not compared.
        let mut r = base();
        r.boot_from_template = true;
        r.memory_path = Some("/tpl/memory".into());
        assert!(differences(&t, &r).is_empty());
    }

    #[test]
    fn other_keys_fewer_cpus_and_more_max_cpus_differ() {
        let t = base();
        let mut r = base();
        r.kernel_path = Some("/other".into());
        assert_eq!(differences(&t, &r), vec!["kernel".to_string()]);
        let mut r = base();
        r.memory_size = 512;
        assert_eq!(differences(&t, &r).len(), 1, "{:?}", differences(&t, &r));
        let mut r = base();
        r.num_vcpus = 4;
        r.default_max_vcpus = 4;
        assert!(differences(&t, &r)[0].starts_with("default_maxvcpus"));
    }

    #[test]
    fn the_hash_follows_config_and_assets_not_template_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let asset = dir.path().join("vmlinux");
        std::fs::write(&asset, b"kernel").expect("write");
        let mut c = base();
        c.kernel_path = Some(asset.clone());
        c.initrd_path = None;
        let stamps1 = stamps(&c).expect("stamps");
        let h = config_hash(HypervisorType::Qemu, &c, &stamps1);
        let mut t = c.clone();
        t.boot_to_be_template = true;
        t.memory_path = Some("/x".into());
        assert_eq!(config_hash(HypervisorType::Qemu, &t, &stamps1), h);
        let mut other = c.clone();
        other.memory_size = 2048;
        assert_ne!(config_hash(HypervisorType::Qemu, &other, &stamps1), h);
        std::fs::remove_file(&asset).expect("rm");
        std::fs::write(&asset, b"kernel, rebuilt").expect("write");
        let stamps2 = stamps(&c).expect("stamps");
        assert_ne!(stamps1, stamps2, "a rebuilt asset has another stamp");
        assert_ne!(config_hash(HypervisorType::Qemu, &c, &stamps2), h);
    }

    #[test]
    fn a_record_whose_asset_changed_is_stale() {
        let dir = tempfile::tempdir().expect("tempdir");
        let asset = dir.path().join("initrd.img");
        std::fs::write(&asset, b"one").expect("write");
        for f in ["memory", "state"] {
            std::fs::write(dir.path().join(f), b"").expect("write");
        }
        let mut c = base();
        c.kernel_path = None;
        c.initrd_path = Some(asset.clone());
        let assets = stamps(&c).expect("stamps");
        let record = TemplateRecord {
            format: RECORD_FORMAT,
            hypervisor: HypervisorType::Qemu,
            config_hash: config_hash(HypervisorType::Qemu, &c, &assets),
            config: c,
            assets,
            created_unix_secs: 0,
        };
        write_record(dir.path(), &record).expect("record");
        let t = Template::open(dir.path())
            .expect("opens")
            .expect("a template");
        assert_eq!(t.check_fresh(HypervisorType::Qemu), Ok(()));
        assert!(t.check_fresh(HypervisorType::Clh).is_err());
        std::fs::remove_file(&asset).expect("rm");
        std::fs::write(&asset, b"two, longer").expect("write");
        let why = t.check_fresh(HypervisorType::Qemu).expect_err("stale");
        assert!(why.contains("initrd.img"), "{why}");
        assert!(Template::open(&dir.path().join("none"))
            .expect("ok")
            .is_none());
    }

    #[test]
    fn the_builtin_config_uses_a_template_only_when_one_was_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tpl = dir.path().join("template");
        let asset = dir.path().join("initrd.img");
        std::fs::write(&asset, b"initrd").expect("write");
        let mut c = base();
        c.kernel_path = None;
        c.initrd_path = Some(asset);
        let fc = FactoryConfig {
            template_path: Some(tpl.clone()),
            ..FactoryConfig::default()
        };
        let kind = HypervisorType::Qemu;
        let f = crate::factory::Factory::for_builtin(&fc, &c, kind).expect("direct");
        assert!(!f.uses_template(), "no template made: direct boots");

        std::fs::create_dir(&tpl).expect("mkdir");
        for name in ["memory", "state"] {
            std::fs::write(tpl.join(name), b"").expect("write");
        }
        let assets = stamps(&c).expect("stamps");
        let record = TemplateRecord {
            format: RECORD_FORMAT,
            hypervisor: kind,
            config_hash: config_hash(kind, &c, &assets),
            config: c.clone(),
            assets,
            created_unix_secs: 0,
        };
        write_record(&tpl, &record).expect("record");
        let f = crate::factory::Factory::for_builtin(&fc, &c, kind).expect("template");
        assert!(f.uses_template(), "a template made: clones");
        let placed = f.place(&c);
        assert!(placed.config.boot_from_template);
        assert_eq!(placed.config.memory_path, Some(tpl.join("memory")));
        assert_eq!(placed.from_template.as_ref(), Some(&c));

        // Made for another hypervisor: refused as stale, never booted.
        let f = crate::factory::Factory::new(
            &FactoryConfig {
                enable_template: true,
                ..fc.clone()
            },
            &c,
            kind,
        );
        assert!(f.is_ok());
        let mut other = record.clone();
        other.hypervisor = HypervisorType::Clh;
        write_record(&tpl, &other).expect("record");
        let err = crate::factory::Factory::for_builtin(&fc, &c, kind).expect_err("stale");
        assert!(err.to_string().contains("sandvisor factory init"), "{err}");

        let removed = destroy(&fc).expect("destroy");
        assert!(removed && !tpl.exists());
    }

    #[test]
    fn destroy_leaves_a_directory_with_other_files_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("memory"), b"").expect("write");
        std::fs::write(dir.path().join("precious"), b"keep").expect("write");
        let fc = FactoryConfig {
            template_path: Some(dir.path().to_path_buf()),
            ..FactoryConfig::default()
        };
        assert!(destroy(&fc).is_err(), "not only a template's files");
        assert!(dir.path().join("precious").is_file());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/no/such/dir")));
    }
}
