//! Reading Kata's `configuration.toml`.
//!
//! sandvisor reads the files of both Kata generations: Kata 1.x
//! (`kata-containers/runtime`, `cli/config/configuration-*.toml.in`) and
//! current Kata (`kata-containers/kata-containers`,
//! `src/runtime/config/configuration-*.toml.in`).
//!
//! # What is read
//!
//! - **`[hypervisor.NAME]`**, with NAME one of `qemu`, `clh`, `firecracker`,
//!   `acrn` (and `mock`). The section present picks the hypervisor; when the
//!   file has several, `--hypervisor` chooses (Kata would take whichever its
//!   map iteration gave last). Any other NAME is an error, as in Kata.
//!   Every key is checked against [`super::vocabulary`]:
//!   - a key sandvisor implements sets its [`HypervisorConfig`] field, its
//!     value parsed into the library's type (paths, enums, parameters);
//!   - a Kata key sandvisor does not implement (`valid_entropy_sources`,
//!     `sgx_epc_size`, ...) is ignored with exactly one warning
//!     naming the key and the file, in [`RuntimeConfig::warnings`] and in
//!     the log;
//!   - any other key is an error naming the key, the section and the file,
//!     with the closest known key as a hint.
//! - **`[factory]`**: `enable_template`, `template_path`, `vm_cache_number`,
//!   `vm_cache_endpoint`, into [`FactoryConfig`].
//! - Every other section (`[runtime]`, `[agent.*]`, `[shim.*]`,
//!   `[proxy.*]`, `[netmon]`, `[image]`, ...) belongs to other layers and is
//!   skipped without a word.
//!
//! # Meanings taken from Kata's loader (`pkg/katautils/config.go`)
//!
//! - An empty string for a path (`firmware = ""`) means unset.
//! - `default_vcpus`: negative or above the host's CPU count means the host's
//!   count; 0 means the default (1); current Kata's fractions round up.
//! - `default_maxvcpus`: 0 or at least the host's CPU count means the host's
//!   count, capped at what the VMM supports.
//! - `default_bridges` is capped at 5.
//! - `machine_accelerators` and `cpu_features` are comma lists, trimmed.
//! - `kernel_params` is one space-separated string.
//! - `enable_swap` (Kata 1.x) is the opposite of `mlock`.
//! - Kata 1.x templates set both `image` and `initrd`, and Kata keeps the one
//!   whose file exists; so does sandvisor. When both exist, validation
//!   refuses them.
//! - For `firecracker` and `clh`, Kata forces `use_vsock = true` and
//!   `disable_vhost_net = true`; so does sandvisor.
//! - For `qemu`, `use_vsock = true` uses the kernel's vhost-vsock when
//!   `/dev/vhost-vsock` opens. Where Kata falls back to virtio-serial with
//!   a warning, sandvisor gives the guest a hybrid vsock served by
//!   vhost-device-vsock when that daemon is found (see
//!   [`crate::backends::vmm::vsock_daemon`]), and refuses the config,
//!   naming both, when it is not: the config asked for vsock, and silently
//!   getting virtio-serial instead is not what it asked for.
//! - `[factory]`: `template_path` defaults to `/run/vc/vm/template` and
//!   `vm_cache_endpoint` to `/var/run/kata-containers/cache.sock`. A template
//!   VM boots with `boot_to_be_template`, `memory_path =
//!   <template_path>/memory` and `devices_state_path =
//!   <template_path>/state`; VMs made from it boot with `boot_from_template`
//!   and the same two paths (see [`FactoryConfig::template_vm_config`]).
//!
//! Where sandvisor departs from Kata:
//! - `default_memory` below 256 MiB is an error at validation; current Kata
//!   silently replaces it with 2048.
//! - A key that is not in the vocabulary is an error; Kata's TOML decoder
//!   ignores it, so a typo silently does nothing there.
//! - A section naming what its hypervisor cannot honour is an error
//!   naming the key, the value and what that hypervisor takes (see
//!   [`check_backend_keys`]); Kata's loader takes it and its driver
//!   ignores it (virtio-fs on Firecracker) or fails later.
//! - `enable_template` is refused with virtio-fs, `file_mem_backend`, a
//!   hybrid vsock, vhost-user storage or a hypervisor other than QEMU,
//!   where Kata's loader checks only the initrd (see
//!   [`check_template_rules`]).
//!
//! # sandvisor additions
//!
//! In the hypervisor section:
//! - `accel = "auto" | "kvm" | "tcg"` (default `auto`): how QEMU runs guest
//!   code. `auto` takes KVM when stock guest kernels run at full speed on it
//!   here, else TCG (see [`crate::probe::resolve_accel`]).
//! - `vhost_user_vsock_daemon = "<path>"` (QEMU, with `use_vsock = true`):
//!   the vhost-device-vsock binary to serve the guest's vsock as a hybrid
//!   vsock, even where `/dev/vhost-vsock` works. Unset, the loader looks for
//!   one only when `/dev/vhost-vsock` cannot be used.
//!
//! Keys left unset take sandvisor's defaults: for `qemu`, `path` is the QEMU
//! binary found (see [`default_qemu_path`]) and `machine_type` is `q35`;
//! `kernel` is `vmlinuz` in the asset directory, and when neither `image` nor
//! `initrd` is set, `initrd` is `initrd.img` there. `shared_fs` and
//! `block_device_driver` default to values the backend honours (virtio-9p
//! and virtio-scsi where it has them; `none` and virtio-mmio for
//! Firecracker, virtio-fs and virtio-blk for Cloud Hypervisor, `none` and
//! virtio-blk for ACRN), so what `sandvisor env` prints loads back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::config::vocabulary::{self, HostFacts, KeyStatus, ValueError, FACTORY_KEYS};
use crate::config::{ConfigError, HypervisorConfig};
use crate::hypervisor_type::HypervisorType;

/// Kata's default `template_path`.
pub const DEFAULT_TEMPLATE_PATH: &str = "/run/vc/vm/template";
/// Kata's default `vm_cache_endpoint`.
pub const DEFAULT_VM_CACHE_ENDPOINT: &str = "/var/run/kata-containers/cache.sock";
/// Where QEMU is looked for first.
pub const DEFAULT_QEMU_PATH: &str = "/usr/bin/qemu-system-x86_64";
/// The QEMU machine type when the config names none.
pub const DEFAULT_MACHINE_TYPE: &str = "q35";
/// Machine options of the built-in default: q35 without its AHCI and SMBus
/// controllers, which a sandbox never uses. Each is attack surface in the
/// VMM and a device the guest kernel enumerates at every boot (about
/// 80 ms under TCG). Kata's `machine_accelerators` key carries them.
pub const DEFAULT_MACHINE_OPTIONS: &str = "sata=off,smbus=off";
/// Memory of the built-in default, in MiB. Kata's files say 2048; under
/// TCG here the guest kernel's memory map, page tables and hash tables for
/// 2 GiB cost 0.18 s of every boot against 1 GiB (QEMU start to the agent
/// answering, 2.06 s and 1.88 s, five runs each), and half again buys only
/// 0.03 s. A sandbox that needs more says `--memory`, or gets it hot-plugged
/// into one of its DIMM slots.
pub const BUILTIN_MEMORY_MIB: u32 = 1024;
/// DIMM slots Kata's loader gives a VM whose file sets no `memory_slots`.
pub const KATA_DEFAULT_MEM_SLOTS: u32 = 10;
/// qboot, the minimal firmware QEMU ships (Debian: `qemu-system-data`).
pub const QBOOT_PATH: &str = "/usr/share/qemu/qboot.rom";

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

impl FactoryConfig {
    /// The factory with Kata's defaults for the paths left unset.
    pub fn with_defaults(mut self) -> Self {
        self.template_path
            .get_or_insert_with(|| PathBuf::from(DEFAULT_TEMPLATE_PATH));
        self.vm_cache_endpoint
            .get_or_insert_with(|| PathBuf::from(DEFAULT_VM_CACHE_ENDPOINT));
        self
    }

    /// The template directory: `template_path`, or Kata's default.
    pub fn template_dir(&self) -> PathBuf {
        self.template_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TEMPLATE_PATH))
    }

    /// The template's guest memory file: `<template_path>/memory`.
    pub fn template_memory_path(&self) -> PathBuf {
        self.template_dir().join("memory")
    }

    /// The template's device state file: `<template_path>/state`.
    pub fn template_devices_state_path(&self) -> PathBuf {
        self.template_dir().join("state")
    }

    /// The config of the VM that becomes the template (Kata's
    /// `createTemplateVM`): `base` booted to be a template, its memory and
    /// device state in the template directory.
    pub fn template_vm_config(&self, base: &HypervisorConfig) -> HypervisorConfig {
        HypervisorConfig {
            boot_to_be_template: true,
            boot_from_template: false,
            memory_path: Some(self.template_memory_path()),
            devices_state_path: Some(self.template_devices_state_path()),
            ..base.clone()
        }
    }

    /// The config of a VM made from the template (Kata's
    /// `createFromTemplateVM`).
    pub fn from_template_vm_config(&self, base: &HypervisorConfig) -> HypervisorConfig {
        HypervisorConfig {
            boot_to_be_template: false,
            boot_from_template: true,
            memory_path: Some(self.template_memory_path()),
            devices_state_path: Some(self.template_devices_state_path()),
            ..base.clone()
        }
    }
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

/// The effective configuration as `sandvisor env` prints it: Kata's key
/// names, the hypervisor, and the factory.
#[derive(Debug, Clone, Serialize)]
pub struct EffectiveConfig<'a> {
    /// The hypervisor.
    pub hypervisor: HypervisorType,
    /// Its config.
    #[serde(flatten)]
    pub config: &'a HypervisorConfig,
    /// The `[factory]` section.
    pub factory: &'a FactoryConfig,
}

impl RuntimeConfig {
    /// Validates the hypervisor config (filling in its defaults), then the
    /// factory as Kata's `checkFactoryConfig` does.
    ///
    /// # Errors
    /// [`KataConfigError::Invalid`] naming the file, or a factory error.
    pub fn validate(&mut self) -> Result<(), KataConfigError> {
        let file = self.source_name();
        self.config
            .validate()
            .map_err(|source| KataConfigError::Invalid {
                file: file.clone(),
                source,
            })?;
        if self.factory.enable_template {
            check_template_rules(self.hypervisor, &self.config).map_err(|rule| {
                KataConfigError::Template {
                    file: file.clone(),
                    rule,
                }
            })?;
        }
        if self.factory.vm_cache_number > 0 && self.hypervisor != HypervisorType::Qemu {
            return Err(KataConfigError::VmCacheNeedsQemu {
                file,
                hypervisor: self.hypervisor,
            });
        }
        Ok(())
    }

    /// The view `sandvisor env` prints.
    pub fn effective(&self) -> EffectiveConfig<'_> {
        EffectiveConfig {
            hypervisor: self.hypervisor,
            config: &self.config,
            factory: &self.factory,
        }
    }

    fn source_name(&self) -> String {
        self.source.as_ref().map_or_else(
            || "the built-in config".to_string(),
            |p| p.display().to_string(),
        )
    }
}

fn did_you_mean(hint: &Option<&'static str>) -> String {
    hint.map_or_else(
        || ": remove it (`sandvisor env` prints the keys that are read)".to_string(),
        |h| format!(": did you mean {h:?}?"),
    )
}

/// What to do about a config file that cannot be read.
fn read_fix(source: &std::io::Error) -> &'static str {
    match source.kind() {
        std::io::ErrorKind::NotFound => {
            "; check the path, or leave out --config for the built-in default"
        }
        std::io::ErrorKind::IsADirectory => {
            "; it is a directory: name the configuration.toml in it"
        }
        std::io::ErrorKind::PermissionDenied => "; make it readable to this user",
        std::io::ErrorKind::InvalidData => "; it must be UTF-8 text",
        _ => "",
    }
}

/// Errors from reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum KataConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path:?}{}", read_fix(.source))]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("TOML syntax error in {file} at line {line}, column {column}: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// A key that is neither Kata's nor sandvisor's.
    #[error("unknown key {key:?} in [{section}] of {file}{}", did_you_mean(.hint))]
    UnknownKey {
        /// The key.
        key: String,
        /// The section, such as `hypervisor.qemu`.
        section: String,
        /// The file.
        file: String,
        /// The closest known key.
        hint: Option<&'static str>,
    },
    /// A value of the wrong type or out of range.
    #[error("key {key:?} in [{section}] of {file}: {problem}")]
    BadValue {
        /// The key.
        key: String,
        /// The section.
        section: String,
        /// The file.
        file: String,
        /// What is wrong with the value.
        problem: ValueError,
    },
    /// A section that should be a table is not.
    #[error("[{section}] in {file} must be a table")]
    NotATable {
        /// The section.
        section: String,
        /// The file.
        file: String,
    },
    /// No `[hypervisor.*]` section.
    #[error("no [hypervisor.*] section in {file}: add one, such as [hypervisor.qemu]")]
    NoHypervisorSection {
        /// The file.
        file: String,
    },
    /// A hypervisor section for a hypervisor sandvisor does not know.
    #[error("unknown hypervisor section [hypervisor.{name}] in {file}: expected one of qemu, clh, firecracker, acrn")]
    UnknownHypervisor {
        /// The section's name.
        name: String,
        /// The file.
        file: String,
    },
    /// Several hypervisor sections and no `--hypervisor`.
    #[error("{file} has several hypervisor sections ({}): choose one with --hypervisor", .found.join(", "))]
    SeveralHypervisors {
        /// The file.
        file: String,
        /// The sections found.
        found: Vec<String>,
    },
    /// `--hypervisor` names a section the file does not have.
    #[error("--hypervisor {requested} names no section of {file}, which has [hypervisor.{}]", .found.join("], [hypervisor."))]
    HypervisorNotInFile {
        /// The hypervisor asked for.
        requested: HypervisorType,
        /// The file.
        file: String,
        /// The sections it has.
        found: Vec<String>,
    },
    /// The hypervisor config does not validate.
    #[error("invalid hypervisor config in {file}")]
    Invalid {
        /// The file.
        file: String,
        /// The rule broken.
        #[source]
        source: ConfigError,
    },
    /// `enable_template` with a hypervisor config that templates cannot
    /// use.
    #[error("[factory] enable_template in {file}: {rule}")]
    Template {
        /// The file.
        file: String,
        /// The rule broken.
        rule: TemplateRule,
    },
    /// `use_vsock` on QEMU, with neither vhost-vsock nor vhost-device-vsock.
    #[error("use_vsock = true in [hypervisor.qemu] of {file} needs /dev/vhost-vsock or vhost-device-vsock, and neither is usable: {no_vhost_vsock}; {no_daemon}. Load the vhost_vsock module, install the daemon (scripts/setup.sh, or cargo install --locked vhost-device-vsock), or set use_vsock = false")]
    NoVsock {
        /// The file.
        file: String,
        /// Why `/dev/vhost-vsock` cannot be used.
        no_vhost_vsock: String,
        /// Why vhost-device-vsock was not found.
        no_daemon: String,
    },
    /// A key, or a value of it, that the section's hypervisor cannot
    /// honour (see [`check_backend_keys`]). The section is
    /// `[hypervisor.<hypervisor>]`.
    #[error("{key} = {value} in [hypervisor.{hypervisor}] of {file}: {hypervisor} cannot honour it; {fix}")]
    NotForHypervisor {
        /// The key.
        key: &'static str,
        /// The value, as TOML.
        value: String,
        /// The file.
        file: String,
        /// The section's hypervisor.
        hypervisor: HypervisorType,
        /// What to write instead.
        fix: String,
    },
    /// A VM cache for another hypervisor than QEMU.
    #[error("[factory] vm_cache_number in {file} needs hypervisor qemu, not {hypervisor}")]
    VmCacheNeedsQemu {
        /// The file.
        file: String,
        /// The hypervisor configured.
        hypervisor: HypervisorType,
    },
}

/// A rule of VM templates that a hypervisor config breaks (see
/// [`check_template_rules`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TemplateRule {
    /// No initrd: the guest boots from an image (Kata's rule).
    #[error("templates need an initrd: set `initrd`, not `image`")]
    NeedsInitrd,
    /// `shared_fs` is a virtio-fs flavour, whose vhost-user daemon maps
    /// guest memory shared.
    #[error("templates cannot use shared_fs = \"{0}\": virtio-fs needs shared guest memory and clones map the template's memory private; set shared_fs = \"virtio-9p\" or \"none\"")]
    VirtioFs(&'static str),
    /// `file_mem_backend` is set: guest memory is already a shared file.
    #[error("templates cannot use file_mem_backend: the template's memory file is the backend; unset file_mem_backend")]
    FileBackedMemory,
    /// A hybrid vsock (vhost-device-vsock), which needs shared memory and
    /// which QEMU cannot migrate.
    #[error("templates cannot use a hybrid vsock (vhost-device-vsock): it needs shared guest memory and does not migrate; set use_vsock = false")]
    HybridVsock,
    /// vhost-user storage, which needs shared memory.
    #[error("templates cannot use enable_vhost_user_store: vhost-user needs shared guest memory")]
    VhostUserStore,
    /// A hypervisor without templates in this build.
    #[error("templates need hypervisor qemu or firecracker, not {0}")]
    NoTemplates(HypervisorType),
    /// Firecracker without a jail, with drive placeholders: a clone's
    /// snapshot names the template VM's placeholder files, which are gone
    /// with its directory; a jail gives each clone them again.
    #[error("firecracker templates with {0} drive placeholders (hotplug_transport = \"mmio\") need the jailer: a clone's snapshot names the template VM's placeholder files, which only a jail recreates; remove jailer_path = \"\", or set hotplug_transport = \"pci\"")]
    FirecrackerPlaceholders(u32),
    /// Cloud Hypervisor: its backend makes templates (a shared memory
    /// zone and `vm.snapshot`), but the factory does not route to it.
    #[error("templates on clh are refused: they rest on vm.snapshot, which cloud hypervisor cannot do on a PVM-backed KVM host (it cannot read the vCPUs' nested state), so the path is unproven; use hypervisor qemu or firecracker")]
    ClhSnapshot,
}

/// Kata's `checkFactoryConfig` for `enable_template`, and the rules Kata
/// leaves to its QEMU driver, checked here at load time.
///
/// Kata's loader checks only that an initrd is set. Its QEMU driver backs
/// a template's memory with the template file and ignores virtio-fs or
/// `file_mem_backend` where they conflict, so the clone comes up without
/// a working shared file system; sandvisor refuses those configs instead,
/// naming the rule. A vhost-vsock is allowed (on restore the guest gets a
/// transport reset and reads its new CID), as in current Kata; Kata 1.x
/// refused vsock with a factory. A hybrid vsock is refused: it needs
/// shared memory and cannot be migrated. Templates run on QEMU and, beyond
/// Kata (whose Cloud Hypervisor and Firecracker drivers have none), on
/// Firecracker: a full snapshot to the template's files, loaded by each
/// clone into a fresh process with the memory file mapped private and
/// `vsock_override` to its own socket. Cloud Hypervisor is refused with
/// the reason ([`TemplateRule::ClhSnapshot`]).
///
/// # Errors
/// The first [`TemplateRule`] `config` breaks.
pub fn check_template_rules(
    hypervisor: HypervisorType,
    config: &HypervisorConfig,
) -> Result<(), TemplateRule> {
    match hypervisor {
        HypervisorType::Qemu | HypervisorType::Firecracker => {}
        HypervisorType::Clh => return Err(TemplateRule::ClhSnapshot),
        other => return Err(TemplateRule::NoTemplates(other)),
    }
    if config.initrd_path.is_none() {
        return Err(TemplateRule::NeedsInitrd);
    }
    if hypervisor == HypervisorType::Firecracker && config.unjailed {
        use crate::backends::firecracker::{HotplugMode, MMIO_PLACEHOLDERS};
        let mmio = config.hotplug_transport == Some(HotplugMode::Mmio);
        let placeholders =
            config
                .drive_placeholders
                .unwrap_or(if mmio { MMIO_PLACEHOLDERS } else { 0 });
        if placeholders > 0 {
            return Err(TemplateRule::FirecrackerPlaceholders(placeholders));
        }
    }
    if config.shared_fs.is_virtio_fs() {
        return Err(TemplateRule::VirtioFs(config.shared_fs.as_str()));
    }
    if config.file_backed_mem_root_dir.is_some() {
        return Err(TemplateRule::FileBackedMemory);
    }
    // Firecracker's vsock is its own hybrid one, which a clone re-points
    // with `vsock_override`; the rule is QEMU's vhost-device-vsock.
    if hypervisor == HypervisorType::Qemu
        && config.use_vsock
        && config.vhost_user_vsock_daemon.is_some()
    {
        return Err(TemplateRule::HybridVsock);
    }
    if config.enable_vhost_user_store {
        return Err(TemplateRule::VhostUserStore);
    }
    Ok(())
}

/// What the loader knows about the host's vsock: whether the kernel's
/// vhost-vsock can be used, and else where vhost-device-vsock is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockHost {
    /// Why `/dev/vhost-vsock` cannot be used; `None` when it opens.
    pub no_vhost_vsock: Option<String>,
    /// vhost-device-vsock, or why it was not found.
    pub daemon: Result<PathBuf, String>,
}

impl VsockHost {
    /// A host whose `/dev/vhost-vsock` opens.
    pub fn vhost_vsock() -> Self {
        VsockHost {
            no_vhost_vsock: None,
            daemon: Err("not looked for: vhost-vsock opens".into()),
        }
    }

    /// This host: `/dev/vhost-vsock` probed, and when it cannot be used,
    /// vhost-device-vsock looked for ([`crate::backends::vmm::lookup`]).
    pub fn probe() -> Self {
        use crate::backends::vmm::lookup;
        match crate::probe::probe_vhost_vsock(Path::new(crate::probe::DEV_VHOST_VSOCK)) {
            Ok(()) => Self::vhost_vsock(),
            Err(why) => VsockHost {
                no_vhost_vsock: Some(why),
                daemon: lookup::find(&lookup::Binary::VHOST_DEVICE_VSOCK, None)
                    .map(|found| found.path)
                    .map_err(|e| e.to_string()),
            },
        }
    }
}

/// Loads `path`, or the built-in default when `path` is `None`, for
/// `hypervisor` (or the file's only hypervisor section).
///
/// # Errors
/// See [`KataConfigError`].
pub fn load_config(
    path: Option<&Path>,
    hypervisor: Option<HypervisorType>,
) -> Result<RuntimeConfig, KataConfigError> {
    let Some(path) = path else {
        return Ok(default_config(hypervisor.unwrap_or_default()));
    };
    let text = std::fs::read_to_string(path).map_err(|source| KataConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let host = HostFacts::probe();
    let config = parse_config(&text, path, hypervisor, host, &VsockHost::probe())?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

/// Parses the text of a `configuration.toml` read from `path`.
///
/// `host` holds the facts Kata's loader applies (CPU count); `vsock` says
/// which vsock the host can give a QEMU guest. Warnings are returned, not
/// logged.
///
/// # Errors
/// See [`KataConfigError`].
pub fn parse_config(
    text: &str,
    path: &Path,
    hypervisor: Option<HypervisorType>,
    host: HostFacts,
    vsock: &VsockHost,
) -> Result<RuntimeConfig, KataConfigError> {
    let file = path.display().to_string();
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        let (line, column) = e
            .span()
            .map_or((1, 1), |span| line_column(text, span.start));
        KataConfigError::Syntax {
            file: file.clone(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })?;

    let (kind, section) = choose_section(&table, &file, hypervisor)?;
    let section_name = format!("hypervisor.{}", section.0);
    let mut warnings = Vec::new();
    let mut config = HypervisorConfig::default();
    for (key, value) in section.1 {
        match vocabulary::hypervisor_key(key).map(|k| k.status) {
            Some(KeyStatus::Implemented(set)) => {
                set(&mut config, value, host).map_err(|problem| KataConfigError::BadValue {
                    key: key.clone(),
                    section: section_name.clone(),
                    file: file.clone(),
                    problem,
                })?
            }
            Some(KeyStatus::Unimplemented) => warnings.push(format!(
                "key {key:?} in [{section_name}] of {file} is a Kata key sandvisor does not implement; ignored"
            )),
            None => {
                return Err(KataConfigError::UnknownKey {
                    key: key.clone(),
                    section: section_name,
                    file,
                    hint: vocabulary::closest(
                        key,
                        vocabulary::hypervisor_keys().map(|k| k.name),
                    ),
                })
            }
        }
    }
    check_backend_keys(kind, section.1, &config).map_err(|(key, fix)| {
        KataConfigError::NotForHypervisor {
            value: section.1.get(key).map(Value::to_string).unwrap_or_default(),
            key,
            file: file.clone(),
            hypervisor: kind,
            fix,
        }
    })?;
    apply_kata_rules(kind, &mut config, host, vsock, &file)?;
    if !section.1.contains_key("shared_fs") {
        config.shared_fs = crate::backends::facts(kind).default_shared_fs();
    }
    fill_defaults(kind, &mut config);

    let factory = match table.get("factory") {
        None => FactoryConfig::default(),
        Some(Value::Table(t)) => parse_factory(t, &file)?,
        Some(_) => {
            return Err(KataConfigError::NotATable {
                section: "factory".into(),
                file,
            })
        }
    }
    .with_defaults();

    Ok(RuntimeConfig {
        hypervisor: kind,
        config,
        factory,
        warnings,
        source: Some(path.to_path_buf()),
    })
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

type Section<'a> = (&'a str, &'a Table);

fn choose_section<'a>(
    table: &'a Table,
    file: &str,
    requested: Option<HypervisorType>,
) -> Result<(HypervisorType, Section<'a>), KataConfigError> {
    let hypervisors = match table.get("hypervisor") {
        None => {
            return Err(KataConfigError::NoHypervisorSection {
                file: file.to_string(),
            })
        }
        Some(Value::Table(t)) => t,
        Some(_) => {
            return Err(KataConfigError::NotATable {
                section: "hypervisor".into(),
                file: file.to_string(),
            })
        }
    };
    let mut sections = Vec::new();
    for (name, value) in hypervisors {
        let kind: HypervisorType =
            name.parse()
                .map_err(|_| KataConfigError::UnknownHypervisor {
                    name: name.clone(),
                    file: file.to_string(),
                })?;
        let Value::Table(t) = value else {
            return Err(KataConfigError::NotATable {
                section: format!("hypervisor.{name}"),
                file: file.to_string(),
            });
        };
        sections.push((kind, (name.as_str(), t)));
    }
    let found = || sections.iter().map(|(_, (n, _))| n.to_string()).collect();
    match (requested, sections.len()) {
        (_, 0) => Err(KataConfigError::NoHypervisorSection {
            file: file.to_string(),
        }),
        (Some(want), _) => sections
            .iter()
            .find(|(kind, _)| *kind == want)
            .copied()
            .ok_or_else(|| KataConfigError::HypervisorNotInFile {
                requested: want,
                file: file.to_string(),
                found: found(),
            }),
        (None, 1) => Ok(sections[0]),
        (None, _) => Err(KataConfigError::SeveralHypervisors {
            file: file.to_string(),
            found: found(),
        }),
    }
}

/// Keys only some backends read, and which: set to anything but their
/// unset value in another backend's section, they would do nothing.
pub const BACKEND_ONLY_KEYS: [(&str, &[HypervisorType]); 10] = {
    use HypervisorType::{Clh, Firecracker, Mock, Qemu};
    const VIRTIO_FS: &[HypervisorType] = &[Qemu, Clh, Mock];
    const FC: &[HypervisorType] = &[Firecracker, Mock];
    [
        ("virtio_fs_daemon", VIRTIO_FS),
        ("virtio_fs_cache", VIRTIO_FS),
        ("virtio_fs_cache_size", VIRTIO_FS),
        ("virtio_fs_extra_args", VIRTIO_FS),
        ("jailer_path", FC),
        ("hotplug_transport", FC),
        ("drive_placeholders", FC),
        ("jailer_uid", FC),
        ("jailer_gid", FC),
        ("vhost_user_vsock_daemon", &[Qemu, Mock]),
    ]
};

/// Whether `value` leaves its key unset: Kata's empty string, 0, false or
/// an empty list.
fn is_unset(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Integer(n) => *n == 0,
        Value::Boolean(b) => !b,
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Refuses what the section names that `kind` cannot honour: a
/// `shared_fs` or `block_device_driver` outside the backend's lists
/// ([`crate::backends::BackendFacts`]), or a key of
/// [`BACKEND_ONLY_KEYS`] another backend reads. Only keys the file sets
/// are checked: defaults belong to the backend.
///
/// VFIO keys (`hotplug_vfio_on_root_bus`, `pcie_root_port`) are not
/// refused here, as Kata's own Firecracker file suggests one: backends
/// without VFIO say so in `capabilities()` and refuse the device.
///
/// # Errors
/// The key and what to write instead.
pub fn check_backend_keys(
    kind: HypervisorType,
    section: &Table,
    config: &HypervisorConfig,
) -> Result<(), (&'static str, String)> {
    let facts = crate::backends::facts(kind);
    let expected = |names: Vec<&str>| format!("expected one of {}", names.join(", "));
    if section.contains_key("shared_fs") && !facts.shared_fs.contains(&config.shared_fs) {
        let names = facts.shared_fs.iter().map(|f| f.as_str()).collect();
        return Err(("shared_fs", expected(names)));
    }
    if let Some(driver) = config.block_device_driver {
        if !facts.block_drivers.contains(&driver) {
            let names = facts.block_drivers.iter().map(|d| d.as_str()).collect();
            return Err(("block_device_driver", expected(names)));
        }
    }
    for (key, readers) in BACKEND_ONLY_KEYS {
        if section.get(key).is_some_and(|v| !is_unset(v)) && !readers.contains(&kind) {
            let names: Vec<&str> = readers
                .iter()
                .filter(|r| **r != HypervisorType::Mock)
                .map(|r| r.as_str())
                .collect();
            return Err((
                key,
                format!("remove it: it is read by {} only", names.join(" and ")),
            ));
        }
    }
    Ok(())
}

/// What Kata's loader does beyond reading keys.
fn apply_kata_rules(
    kind: HypervisorType,
    config: &mut HypervisorConfig,
    host: HostFacts,
    vsock: &VsockHost,
    file: &str,
) -> Result<(), KataConfigError> {
    config.default_max_vcpus = vocabulary::kata_default_max_vcpus(
        config.default_max_vcpus,
        host.cpus,
        crate::defaults::max_vcpus(),
    );
    // Kata's loader: no `memory_slots` (or 0) means 10.
    if config.mem_slots == 0 {
        config.mem_slots = KATA_DEFAULT_MEM_SLOTS;
    }
    if let (Some(image), Some(initrd)) = (&config.image_path, &config.initrd_path) {
        match (image.exists(), initrd.exists()) {
            (true, false) => {
                tracing::debug!(image = %image.display(), "image and initrd both set; keeping the image, whose file exists");
                config.initrd_path = None;
            }
            (false, true) => {
                tracing::debug!(initrd = %initrd.display(), "image and initrd both set; keeping the initrd, whose file exists");
                config.image_path = None;
            }
            // Both or neither: validation names both.
            _ => {}
        }
    }
    let facts = crate::backends::facts(kind);
    match kind {
        _ if facts.forces_vsock => {
            config.use_vsock = true;
            config.disable_vhost_net = true;
        }
        // Named in the file: a hybrid vsock was asked for.
        HypervisorType::Qemu if config.use_vsock && config.vhost_user_vsock_daemon.is_some() => {}
        HypervisorType::Qemu if config.use_vsock => {
            if let Some(no_vhost_vsock) = &vsock.no_vhost_vsock {
                match &vsock.daemon {
                    Ok(daemon) => {
                        tracing::debug!(daemon = %daemon.display(), "no vhost-vsock; the guest gets a hybrid vsock");
                        config.vhost_user_vsock_daemon = Some(daemon.clone());
                    }
                    Err(no_daemon) => {
                        return Err(KataConfigError::NoVsock {
                            file: file.to_string(),
                            no_vhost_vsock: no_vhost_vsock.clone(),
                            no_daemon: no_daemon.clone(),
                        })
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn fill_defaults(kind: HypervisorType, config: &mut HypervisorConfig) {
    let assets = crate::paths::asset_dir();
    if config.kernel_path.is_none() {
        config.kernel_path = Some(crate::paths::kernel_in(&assets));
    }
    if config.image_path.is_none() && config.initrd_path.is_none() {
        config.initrd_path = Some(assets.join(crate::paths::INITRD_FILE));
    }
    let facts = crate::backends::facts(kind);
    // What `env` prints for them loads back: values this backend honours.
    config
        .block_device_driver
        .get_or_insert(facts.default_block_driver());
    if config.hypervisor_path.is_none() {
        config.hypervisor_path = facts.default_binary();
    }
    if config.hypervisor_machine_type.is_empty() {
        if let Some(machine) = facts.default_machine_type {
            config.hypervisor_machine_type = machine.to_string();
        }
    }
}

fn parse_factory(t: &Table, file: &str) -> Result<FactoryConfig, KataConfigError> {
    use vocabulary::factory as v;
    let mut f = FactoryConfig::default();
    for (key, value) in t {
        let bad = |problem| KataConfigError::BadValue {
            key: key.clone(),
            section: "factory".into(),
            file: file.to_string(),
            problem,
        };
        match key.as_str() {
            "enable_template" => f.enable_template = v::boolean(value).map_err(bad)?,
            "template_path" => f.template_path = v::path(value).map_err(bad)?,
            "vm_cache_number" => f.vm_cache_number = v::uint32(value).map_err(bad)?,
            "vm_cache_endpoint" => f.vm_cache_endpoint = v::path(value).map_err(bad)?,
            _ => {
                return Err(KataConfigError::UnknownKey {
                    key: key.clone(),
                    section: "factory".into(),
                    file: file.to_string(),
                    hint: vocabulary::closest(key, FACTORY_KEYS.iter().copied()),
                })
            }
        }
    }
    Ok(f)
}

/// The QEMU binary: [`DEFAULT_QEMU_PATH`] when it exists, else the first
/// `qemu-system-x86_64` on `PATH`, else [`DEFAULT_QEMU_PATH`] (which
/// `sandvisor check` then reports missing).
pub fn default_qemu_path() -> PathBuf {
    crate::backends::facts(HypervisorType::Qemu)
        .default_binary()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_QEMU_PATH))
}

/// The `kernel_params` of the built-in default, as Kata ships them:
/// `scsi_mod.scan=none` skips the SCSI bus scan at boot (the agent scans
/// when storage is first asked for; hot-plugged disks announce themselves).
pub fn default_kernel_params() -> Vec<crate::param::Param> {
    vec![crate::param::Param::new("scsi_mod.scan", "none")]
}

/// The built-in default for `hypervisor`; for QEMU: the guest assets of
/// [`crate::paths::asset_dir`], machine type `q35`, `accel = "auto"`,
/// qboot as firmware when installed ([`QBOOT_PATH`]: it hands over to the
/// kernel about 0.2 s sooner than SeaBIOS under TCG, as it sets up no
/// option ROMs, boot menu or disk boot, which `-kernel` boots never use), and
/// Kata's shipped `default_maxvcpus = 0`, which its loader turns into the
/// host's CPU count. Reserving the architecture's 240 instead makes the
/// guest kernel set up per-CPU state for 240 CPUs at every boot: 0.4 s
/// under TCG.
pub fn default_config(hypervisor: HypervisorType) -> RuntimeConfig {
    let assets = crate::paths::asset_dir();
    let facts = crate::backends::facts(hypervisor);
    let max_vcpus = vocabulary::kata_default_max_vcpus(
        0,
        HostFacts::probe().cpus,
        crate::defaults::max_vcpus(),
    );
    let mut config = HypervisorConfig {
        kernel_path: Some(crate::paths::kernel_in(&assets)),
        initrd_path: Some(assets.join(crate::paths::INITRD_FILE)),
        hypervisor_path: facts.default_binary(),
        hypervisor_machine_type: facts.default_machine_type.unwrap_or_default().to_string(),
        default_max_vcpus: max_vcpus,
        mem_slots: KATA_DEFAULT_MEM_SLOTS,
        memory_size: BUILTIN_MEMORY_MIB,
        kernel_params: default_kernel_params(),
        use_vsock: facts.forces_vsock,
        disable_vhost_net: facts.forces_vsock,
        shared_fs: facts.default_shared_fs(),
        block_device_driver: Some(facts.default_block_driver()),
        ..HypervisorConfig::default()
    };
    // Firmware and `-machine` options are QEMU's.
    if hypervisor == HypervisorType::Qemu {
        config.firmware_path = Some(PathBuf::from(QBOOT_PATH)).filter(|p| p.is_file());
        config.machine_accelerators = DEFAULT_MACHINE_OPTIONS.to_string();
    }
    RuntimeConfig {
        hypervisor,
        config,
        factory: FactoryConfig::default().with_defaults(),
        ..RuntimeConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SharedFs;

    #[test]
    fn template_rules_name_what_breaks_them() {
        let ok = HypervisorConfig {
            kernel_path: Some("/k".into()),
            initrd_path: Some("/i".into()),
            shared_fs: SharedFs::Virtio9p,
            ..HypervisorConfig::default()
        };
        let q = HypervisorType::Qemu;
        let cases: Vec<(HypervisorType, HypervisorConfig, Result<(), TemplateRule>)> = vec![
            (q, ok.clone(), Ok(())),
            (
                q,
                HypervisorConfig {
                    shared_fs: SharedFs::None,
                    ..ok.clone()
                },
                Ok(()),
            ),
            (
                q,
                HypervisorConfig {
                    initrd_path: None,
                    image_path: Some("/img".into()),
                    ..ok.clone()
                },
                Err(TemplateRule::NeedsInitrd),
            ),
            (
                q,
                HypervisorConfig {
                    shared_fs: SharedFs::VirtioFs,
                    ..ok.clone()
                },
                Err(TemplateRule::VirtioFs("virtio-fs")),
            ),
            (
                q,
                HypervisorConfig {
                    file_backed_mem_root_dir: Some("/dev/shm".into()),
                    ..ok.clone()
                },
                Err(TemplateRule::FileBackedMemory),
            ),
            (
                q,
                HypervisorConfig {
                    use_vsock: true,
                    vhost_user_vsock_daemon: Some("/bin/vhost-device-vsock".into()),
                    ..ok.clone()
                },
                Err(TemplateRule::HybridVsock),
            ),
            (
                HypervisorType::Clh,
                ok.clone(),
                Err(TemplateRule::ClhSnapshot),
            ),
            (
                HypervisorType::Acrn,
                ok.clone(),
                Err(TemplateRule::NoTemplates(HypervisorType::Acrn)),
            ),
            (HypervisorType::Firecracker, ok.clone(), Ok(())),
            (
                HypervisorType::Firecracker,
                HypervisorConfig {
                    hotplug_transport: Some(crate::backends::firecracker::HotplugMode::Mmio),
                    unjailed: true,
                    ..ok.clone()
                },
                Err(TemplateRule::FirecrackerPlaceholders(8)),
            ),
            (
                HypervisorType::Firecracker,
                HypervisorConfig {
                    hotplug_transport: Some(crate::backends::firecracker::HotplugMode::Mmio),
                    drive_placeholders: Some(2),
                    jailer_path: Some("/bin/jailer".into()),
                    ..ok.clone()
                },
                Ok(()),
            ),
            (
                HypervisorType::Firecracker,
                HypervisorConfig {
                    use_vsock: true,
                    vhost_user_vsock_daemon: Some("/bin/vhost-device-vsock".into()),
                    ..ok.clone()
                },
                Ok(()),
            ),
            (
                HypervisorType::Firecracker,
                HypervisorConfig {
                    initrd_path: None,
                    image_path: Some("/i.img".into()),
                    ..ok.clone()
                },
                Err(TemplateRule::NeedsInitrd),
            ),
        ];
        for (kind, config, want) in cases {
            assert_eq!(
                check_template_rules(kind, &config),
                want,
                "{kind} {config:?}"
            );
        }
        let msg = TemplateRule::VirtioFs("virtio-fs").to_string();
        assert!(msg.contains("shared_fs = \"virtio-fs\""), "{msg}");
    }

    #[test]
    fn a_virtio_fs_template_is_refused_at_validation_naming_the_rule() {
        let mut rc = default_config(HypervisorType::Qemu);
        rc.factory.enable_template = true;
        rc.config.shared_fs = crate::config::SharedFs::VirtioFs;
        let err = rc.validate().expect_err("virtio-fs template");
        assert!(
            matches!(
                err,
                KataConfigError::Template {
                    rule: TemplateRule::VirtioFs(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("virtio-fs"), "{err}");
    }
}
