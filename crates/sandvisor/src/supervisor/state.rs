//! The persisted state of a sandbox: `<runtime>/<id>/state.json`.
//!
//! The record holds the sandbox's metadata and the backend's
//! [`Hypervisor::save`](crate::Hypervisor::save) output, so that a new
//! supervisor can [`load`](crate::Hypervisor::load) it and re-attach to a
//! VMM that outlived the old one. It is written whole, to a temporary file
//! that is then renamed over the old one, so a reader never sees half a
//! record.
//!
//! Who writes it: the live supervisor, after every state change; or, when
//! no supervisor lives, the CLI command that holds the sandbox lock.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::agent::AgentAddress;
use super::id::SandboxId;
use super::proto::RemoteError;
use crate::config::HypervisorConfig;
use crate::hypervisor::HypervisorState;
use crate::hypervisor_type::HypervisorType;
use crate::process::{Exit, ProcessRef};

/// The version of the record's layout. A supervisor refuses records of
/// another version rather than misread them.
pub const STATE_VERSION: u32 = 1;

/// Errors from reading or writing a record.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read or written.
    #[error("cannot {op} sandbox state {path:?}")]
    Io {
        /// `read` or `write`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid record.
    #[error(
        "sandbox state {path:?} is corrupt; stop its VMM if one runs, then remove the file's directory"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The record has another layout version.
    #[error(
        "sandbox state {path:?} has version {found}, this sandvisor reads version {STATE_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// `create` is setting it up; its supervisor has not answered yet.
    Creating,
    /// Created: the backend prepared the VM; the VMM does not run yet.
    Created,
    /// The guest runs.
    Running,
    /// The guest is paused.
    Paused,
    /// `stop` stopped the VMM.
    Stopped,
    /// The VMM ended without being asked to (a crash, a kill), or the
    /// sandbox was lost with its supervisor.
    Dead,
}

impl SandboxStatus {
    /// Whether no VMM runs and none will: only `state` and `delete` apply.
    pub fn is_final(self) -> bool {
        matches!(self, SandboxStatus::Stopped | SandboxStatus::Dead)
    }

    /// Whether a VMM process runs in this state.
    pub fn vmm_runs(self) -> bool {
        matches!(self, SandboxStatus::Running | SandboxStatus::Paused)
    }
}

impl fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SandboxStatus::Creating => "creating",
            SandboxStatus::Created => "created",
            SandboxStatus::Running => "running",
            SandboxStatus::Paused => "paused",
            SandboxStatus::Stopped => "stopped",
            SandboxStatus::Dead => "dead",
        })
    }
}

/// A device hot-plugged into the sandbox, so `--remove` can name it again
/// and `state` can show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PluggedDevice {
    /// A block device.
    Block {
        /// Host file or device.
        path: PathBuf,
        /// Drive id inside the VM.
        drive_id: String,
        /// Drive index.
        index: u32,
        /// Guest device node, when the backend reported it.
        guest_path: Option<String>,
    },
    /// A network interface on a host tap device.
    Net {
        /// Host tap name.
        tap: String,
        /// Device id inside the VM.
        device_id: String,
        /// Guest MAC address.
        mac: String,
    },
    /// A memory region.
    Memory {
        /// Memory slot.
        slot: u32,
        /// Size in MiB.
        size_mib: u32,
    },
}

/// A helper process that died under a running sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperExit {
    /// Its name: `virtiofsd`, `vhost-device-vsock`.
    pub helper: String,
    /// Its pid.
    pub pid: u32,
    /// How it ended ([`Exit::Unknown`] when its parent reaped it first).
    pub exit: Exit,
}

/// The record of one sandbox, as `state.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// Layout version, [`STATE_VERSION`].
    pub version: u32,
    /// The sandbox id.
    pub id: SandboxId,
    /// The backend.
    pub hypervisor: HypervisorType,
    /// When `create` ran, RFC 3339 in UTC.
    pub created: String,
    /// Where the sandbox is in its life.
    pub status: SandboxStatus,
    /// The supervisor that owns the sandbox, while one was started.
    pub supervisor: Option<ProcessRef>,
    /// The VMM process, once started (none for backends without one, such
    /// as the mock).
    pub vmm: Option<ProcessRef>,
    /// How the VMM ended, once it has.
    pub vmm_exit: Option<Exit>,
    /// The helper whose death ended the sandbox (virtiofsd,
    /// vhost-device-vsock): the supervisor then stopped the VMM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper_exit: Option<HelperExit>,
    /// vCPUs the guest has now.
    pub vcpus: u32,
    /// Memory the guest has now, in MiB.
    pub memory_mib: u32,
    /// Hot-plugged devices that are still attached.
    pub devices: Vec<PluggedDevice>,
    /// The control socket of the supervisor.
    pub control_socket: PathBuf,
    /// The VM console socket, when the backend has one.
    pub console_socket: Option<PathBuf>,
    /// Where the guest agent listens, once the channel is made.
    pub agent: Option<AgentAddress>,
    /// The last failure of a supervisor that it could not answer to a
    /// client: a failed create or re-attach, a start whose agent did not
    /// answer.
    pub last_error: Option<RemoteError>,
    /// The validated config the sandbox was created with.
    pub config: HypervisorConfig,
    /// The backend's [`Hypervisor::save`](crate::Hypervisor::save) output,
    /// once the backend created the VM.
    pub hypervisor_state: Option<HypervisorState>,
    /// For a VM cloned from a template: the config it was asked for, which
    /// the start makes it into ([`crate::factory::finish_parts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_template: Option<HypervisorConfig>,
}

impl SandboxRecord {
    /// A new record for sandbox `id`, being created.
    pub fn new(
        id: SandboxId,
        hypervisor: HypervisorType,
        config: HypervisorConfig,
        control_socket: PathBuf,
    ) -> Self {
        SandboxRecord {
            version: STATE_VERSION,
            id,
            hypervisor,
            created: rfc3339(SystemTime::now()),
            status: SandboxStatus::Creating,
            supervisor: None,
            vmm: None,
            vmm_exit: None,
            helper_exit: None,
            vcpus: config.num_vcpus,
            memory_mib: config.memory_size,
            devices: Vec::new(),
            control_socket,
            console_socket: None,
            agent: None,
            last_error: None,
            config,
            hypervisor_state: None,
            from_template: None,
        }
    }

    /// The status with its reason, for people: `dead (VMM killed by signal
    /// 9 (SIGKILL))`.
    pub fn status_line(&self) -> String {
        if let (SandboxStatus::Dead, Some(h)) = (self.status, &self.helper_exit) {
            return format!(
                "dead ({} (pid {}) {}; the VMM was stopped)",
                h.helper, h.pid, h.exit
            );
        }
        match (self.status, self.vmm_exit) {
            (SandboxStatus::Dead, Some(exit)) => format!("dead (VMM {exit})"),
            (SandboxStatus::Dead, None) => "dead (lost with its supervisor)".to_string(),
            (status, _) => status.to_string(),
        }
    }

    /// Reads the record at `path`.
    ///
    /// # Errors
    /// [`StateError`]: unreadable, corrupt, or another version. A missing
    /// file is [`StateError::Io`] with [`io::ErrorKind::NotFound`].
    pub async fn load(path: &Path) -> Result<Self, StateError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| StateError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_slice(&bytes, path)
    }

    /// Decodes a record read from `path` (named in errors).
    ///
    /// # Errors
    /// [`StateError::Corrupt`] or [`StateError::Version`].
    pub fn from_slice(bytes: &[u8], path: &Path) -> Result<Self, StateError> {
        let version: VersionOnly =
            serde_json::from_slice(bytes).map_err(|source| StateError::Corrupt {
                path: path.to_path_buf(),
                source,
            })?;
        if version.version != STATE_VERSION {
            return Err(StateError::Version {
                path: path.to_path_buf(),
                found: version.version,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the record to `path` atomically: a temporary file beside it
    /// (mode 0600), flushed to disk, renamed over `path`, and the directory
    /// flushed so the rename itself survives a crash. A crash at any point
    /// leaves the old record or the new one, never a torn one.
    ///
    /// # Errors
    /// [`StateError::Io`] when a step fails; the old record then stays.
    pub async fn store(&self, path: &Path) -> Result<(), StateError> {
        let io_err = |source| StateError::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| io_err(e.into()))?;
        bytes.push(b'\n');
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = async {
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(crate::private::FILE_MODE)
                .open(&tmp)
                .await?;
            file.write_all(&bytes).await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&tmp, path).await?;
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            let dir = tokio::fs::File::open(parent.unwrap_or(Path::new("."))).await?;
            dir.sync_all().await
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io_err(e));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// Formats `time` as RFC 3339 in UTC, to the second: `2024-05-01T12:00:00Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    fn record() -> SandboxRecord {
        SandboxRecord::new(
            "sb1".parse().expect("valid id"),
            HypervisorType::Mock,
            HypervisorConfig::default(),
            PathBuf::from("/run/sandvisor/sb1/control.sock"),
        )
    }

    #[tokio::test]
    async fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        let mut rec = record();
        rec.status = SandboxStatus::Dead;
        rec.vmm_exit = Some(Exit::Signal(9));
        rec.devices.push(PluggedDevice::Memory {
            slot: 0,
            size_mib: 128,
        });
        rec.store(&path).await.expect("stored");
        assert_eq!(SandboxRecord::load(&path).await.expect("loaded"), rec);
        // Nothing but the record is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("readable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        assert_eq!(rec.status_line(), "dead (VMM killed by signal 9 (SIGKILL))");
        // A helper's death is what the line names, and it is stored.
        rec.helper_exit = Some(HelperExit {
            helper: "virtiofsd".into(),
            pid: 42,
            exit: Exit::Signal(9),
        });
        assert_eq!(
            rec.status_line(),
            "dead (virtiofsd (pid 42) killed by signal 9 (SIGKILL); the VMM was stopped)"
        );
        rec.store(&path).await.expect("stored");
        assert_eq!(SandboxRecord::load(&path).await.expect("loaded"), rec);
    }

    #[test]
    fn a_record_without_a_helper_exit_loads() {
        let rec = record();
        let mut json = serde_json::to_value(&rec).expect("serialises");
        assert!(json.get("helper_exit").is_none(), "{json}");
        json.as_object_mut()
            .expect("an object")
            .remove("helper_exit");
        let back: SandboxRecord = serde_json::from_value(json).expect("loads");
        assert_eq!(back.helper_exit, None);
    }

    #[tokio::test]
    async fn other_versions_and_garbage_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, r#"{"version": 7}"#).expect("written");
        assert!(matches!(
            SandboxRecord::load(&path).await,
            Err(StateError::Version { found: 7, .. })
        ));
        std::fs::write(&path, "{").expect("written");
        let err = SandboxRecord::load(&path).await.expect_err("torn record");
        assert!(matches!(err, StateError::Corrupt { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&format!("{path:?}")), "{msg}");
        assert!(msg.contains("remove the file's directory"), "{msg}");
    }

    #[tokio::test]
    async fn a_stored_record_is_private_and_leaves_no_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, "old").expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let rec = record();
        rec.store(&path).await.expect("stored");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
        SandboxRecord::load(&path).await.expect("loads back");
    }
}
