//! The ACRN backend's errors.

use std::path::PathBuf;

use crate::backends::vmm::process::ProcessError;

/// Errors of the ACRN backend.
#[derive(Debug, thiserror::Error)]
pub enum AcrnError {
    /// No ACRN device: this host is not an ACRN Service VM.
    #[error("no ACRN hypervisor: none of {devices} exists (not an ACRN Service VM)")]
    NoServiceVm {
        /// The device paths looked for.
        devices: String,
    },
    /// Every UUID of the pool is held.
    #[error("no free ACRN UUID: all {pool} are in use")]
    NoFreeUuid {
        /// The pool's size.
        pool: usize,
    },
    /// The UUID pool file could not be used.
    #[error("cannot use the ACRN UUID pool {path:?}")]
    UuidPool {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The UUID pool file holds something else.
    #[error("the ACRN UUID pool {path:?} is not valid JSON")]
    UuidPoolFormat {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The config names no kernel.
    #[error("no kernel configured (key `kernel`)")]
    NoKernel,
    /// The VM directory could not be made or removed.
    #[error("cannot {action} the VM directory {path:?}")]
    VmDir {
        /// What was done.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// `acrn-dm` could not be started or adopted.
    #[error("acrn-dm process")]
    Process(#[from] ProcessError),
    /// The process to re-attach to is another one (its start time differs).
    #[error("pid {pid} is not the saved acrn-dm: it started at another time")]
    Reused {
        /// The pid.
        pid: u32,
    },
    /// `acrnctl` could not be run.
    #[error("cannot run {program:?}")]
    CtlRun {
        /// The program.
        program: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// `acrnctl` did not finish in time.
    #[error("acrnctl {args} did not finish within {timeout:?}")]
    CtlTimeout {
        /// Its arguments.
        args: String,
        /// How long it had.
        timeout: std::time::Duration,
    },
    /// `acrnctl` failed.
    #[error("acrnctl {args} failed ({status}): {stderr}")]
    Ctl {
        /// Its arguments.
        args: String,
        /// How it ended.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A drive index with no placeholder.
    #[error("drive index {index} has no placeholder: hot-plugged drives take indexes 1 to {placeholders}")]
    NoPlaceholder {
        /// The drive's index.
        index: u32,
        /// How many placeholders there are.
        placeholders: u32,
    },
    /// The placeholder of a drive index already holds a drive.
    #[error("the placeholder for drive index {index} already holds drive {holder:?}")]
    PlaceholderBusy {
        /// The drive's index.
        index: u32,
        /// The drive there.
        holder: String,
    },
    /// A drive to unplug that was not hot-plugged.
    #[error("drive {id:?} was not hot-plugged")]
    NotPlugged {
        /// Its id.
        id: String,
    },
}
