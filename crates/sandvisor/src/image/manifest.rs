//! `manifest.json`: the identity of every input of a build and the
//! outputs it made, which decide whether a build can be skipped; and the
//! atomic writes of those outputs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{io_err, modules, Compression, ImageError, KernelSource, MANIFEST_FILE};
use crate::paths::INITRD_FILE;

/// The identities of a build's inputs: equal inputs give equal outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// [`FORMAT_VERSION`](super::FORMAT_VERSION).
    pub builder: u32,
    /// `debian:<package>=<version>` or `file:<sha256>`.
    pub kernel: String,
    /// The wanted module list and where modules come from.
    pub modules: String,
    /// SHA-256 of busybox.
    pub busybox: String,
    /// SHA-256 of the agent.
    pub agent: String,
    /// Initrd compression.
    pub compression: Compression,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// `manifest.json`: what a build used and made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The inputs.
    pub inputs: Inputs,
    /// The kernel release, when known.
    pub kernel_release: Option<String>,
    /// Modules in the initrd, in load order.
    pub modules: Vec<String>,
    /// Output files by name.
    pub outputs: BTreeMap<String, OutputFile>,
}

/// The SHA-256 of a file, in hex.
pub(super) fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    io::copy(&mut f, &mut hasher).map_err(io_err(path))?;
    Ok(hex::encode(hasher.finalize()))
}

pub(super) fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub(super) fn modules_identity(source: &KernelSource) -> Result<String, ImageError> {
    let wanted: Vec<String> = modules::WANTED
        .iter()
        .map(|w| format!("{}{}", w.name, if w.required { "" } else { "?" }))
        .collect();
    let origin = match source {
        KernelSource::Debian(_) => "package".to_string(),
        // Everything is built in.
        KernelSource::Source(_) => "none".to_string(),
        KernelSource::File { modules: None, .. } => "none".to_string(),
        KernelSource::File {
            modules: Some(dir), ..
        } => {
            // The directory's module set: modules.dep when there is one,
            // else the list of module files with their sizes.
            let dep = dir.join("modules.dep");
            if dep.is_file() {
                format!("dir:{}", sha256_file(&dep)?)
            } else {
                let mut listing = Vec::new();
                let mut stack = vec![dir.clone()];
                while let Some(d) = stack.pop() {
                    for e in fs::read_dir(&d).map_err(io_err(&d))?.flatten() {
                        let p = e.path();
                        if p.is_dir() {
                            stack.push(p);
                        } else if let Ok(m) = e.metadata() {
                            listing.push(format!("{} {}", p.display(), m.len()));
                        }
                    }
                }
                listing.sort();
                format!("dir:{}", sha256(listing.join("\n").as_bytes()))
            }
        }
    };
    Ok(format!("{origin};{}", wanted.join(",")))
}

/// Whether `dir` holds outputs matching `manifest` and built from `inputs`.
pub(super) fn up_to_date(dir: &Path, inputs: &Inputs) -> Option<Manifest> {
    let text = fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    let manifest: Manifest = serde_json::from_str(&text).ok()?;
    if &manifest.inputs != inputs {
        return None;
    }
    if !manifest.outputs.contains_key(INITRD_FILE) {
        return None;
    }
    for (name, recorded) in &manifest.outputs {
        let path = dir.join(name);
        let meta = fs::metadata(&path).ok()?;
        if meta.len() != recorded.size || sha256_file(&path).ok()? != recorded.sha256 {
            return None;
        }
    }
    Some(manifest)
}

/// Writes `data` to `dir/name` through a temporary file and a rename, so a
/// reader never sees half a file.
pub(super) fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf, ImageError> {
    let dest = dir.join(name);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    tmp.write_all(data).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    let mut perms = tmp
        .as_file()
        .metadata()
        .map_err(io_err(tmp.path()))?
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(tmp.path(), perms).map_err(io_err(tmp.path()))?;
    tmp.persist(&dest).map_err(|e| ImageError::Io {
        path: dest.clone(),
        source: e.error,
    })?;
    Ok(dest)
}
