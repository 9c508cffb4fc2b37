//! Custom assets: a kernel, image, initrd, VMM, control binary, jailer or
//! firmware given per sandbox (in Kata, by annotation), optionally pinned by
//! its SHA-512. A custom asset wins over the configured path.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

/// What an asset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssetType {
    /// Guest kernel.
    Kernel,
    /// Guest root image.
    Image,
    /// Guest initrd.
    Initrd,
    /// VMM binary.
    Hypervisor,
    /// VMM control binary.
    HypervisorCtl,
    /// Jailer binary.
    Jailer,
    /// Firmware.
    Firmware,
}

const ANNOTATION_PREFIX: &str = "io.katacontainers.config.hypervisor.";

impl AssetType {
    /// Every asset type.
    pub const ALL: [AssetType; 7] = [
        AssetType::Kernel,
        AssetType::Image,
        AssetType::Initrd,
        AssetType::Hypervisor,
        AssetType::HypervisorCtl,
        AssetType::Jailer,
        AssetType::Firmware,
    ];

    /// The Kata annotations that carry this asset's path and hash.
    pub fn annotations(self) -> (String, String) {
        let (path, hash) = match self {
            AssetType::Kernel => ("kernel", "kernel_hash"),
            AssetType::Image => ("image", "image_hash"),
            AssetType::Initrd => ("initrd", "initrd_hash"),
            AssetType::Hypervisor => ("path", "path_hash"),
            AssetType::HypervisorCtl => ("ctlpath", "ctlpath_hash"),
            AssetType::Jailer => ("jailer_path", "jailer_hash"),
            AssetType::Firmware => ("firmware", "firmware_hash"),
        };
        (
            format!("{ANNOTATION_PREFIX}{path}"),
            format!("{ANNOTATION_PREFIX}{hash}"),
        )
    }
}

impl fmt::Display for AssetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AssetType::Kernel => "kernel",
            AssetType::Image => "image",
            AssetType::Initrd => "initrd",
            AssetType::Hypervisor => "hypervisor",
            AssetType::HypervisorCtl => "hypervisorctl",
            AssetType::Jailer => "jailer",
            AssetType::Firmware => "firmware",
        })
    }
}

/// Why an asset was refused.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// The path is relative.
    #[error("{kind} asset path {path:?} is not absolute")]
    NotAbsolute {
        /// The asset.
        kind: AssetType,
        /// Its path.
        path: PathBuf,
    },
    /// The file could not be read to hash it.
    #[error("cannot read {kind} asset {path:?} to check its hash")]
    Read {
        /// The asset.
        kind: AssetType,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The file's hash is not the one given.
    #[error("{kind} asset {path:?} has SHA-512 {actual}, expected {expected}")]
    HashMismatch {
        /// The asset.
        kind: AssetType,
        /// Its path.
        path: PathBuf,
        /// The hash given.
        expected: String,
        /// The file's hash.
        actual: String,
    },
}

/// A custom asset: a path, and optionally the SHA-512 its file must have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asset {
    kind: AssetType,
    path: PathBuf,
    hash: Option<String>,
}

impl Asset {
    /// An asset of `kind` at `path`, optionally pinned by `sha512` (hex).
    pub fn new(kind: AssetType, path: impl Into<PathBuf>, sha512: Option<String>) -> Self {
        Asset {
            kind,
            path: path.into(),
            hash: sha512.filter(|h| !h.is_empty()).map(|h| h.to_lowercase()),
        }
    }

    /// The asset named by Kata's annotations, when they name one.
    pub fn from_annotations(
        kind: AssetType,
        annotations: &HashMap<String, String>,
    ) -> Option<Self> {
        let (path_key, hash_key) = kind.annotations();
        let path = annotations.get(&path_key).filter(|p| !p.is_empty())?;
        Some(Asset::new(kind, path, annotations.get(&hash_key).cloned()))
    }

    /// What the asset is.
    pub fn kind(&self) -> AssetType {
        self.kind
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its expected SHA-512, when pinned.
    pub fn hash(&self) -> Option<&str> {
        self.hash.as_deref()
    }

    /// Checks that the path is absolute and, when a hash is given, that the
    /// file's SHA-512 matches it.
    ///
    /// # Errors
    /// [`AssetError`] naming the asset, its path and, on a mismatch, both
    /// hashes.
    pub fn validate(&self) -> Result<(), AssetError> {
        if !self.path.is_absolute() {
            return Err(AssetError::NotAbsolute {
                kind: self.kind,
                path: self.path.clone(),
            });
        }
        let Some(expected) = &self.hash else {
            return Ok(());
        };
        let actual = sha512_file(&self.path).map_err(|source| AssetError::Read {
            kind: self.kind,
            path: self.path.clone(),
            source,
        })?;
        if &actual != expected {
            return Err(AssetError::HashMismatch {
                kind: self.kind,
                path: self.path.clone(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// The SHA-512 of a file, in lowercase hex.
pub fn sha512_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha512::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
