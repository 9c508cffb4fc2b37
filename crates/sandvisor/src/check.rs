//! `sandvisor check`: what this host can run, and whether a configuration
//! can start a sandbox here.
//!
//! Every fact is probed, never assumed: KVM through [`probe::probe_kvm`] and
//! [`probe::resolve_accel`], vhost-vsock, nesting and memory through the
//! other probes, the VMM by running `<path> --version`. The host paths come
//! in [`HostPaths`] so tests feed fixtures.
//!
//! A sandbox can start when the config loads and validates, sandvisor drives
//! its hypervisor, the VMM binary runs, the kernel and the initrd or image
//! exist, and guest code can run: KVM usable, or `accel` allowing TCG. Each
//! failing item says what to do.

pub mod posture;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::kata::{KataConfigError, RuntimeConfig};
use crate::config::Accel;
use crate::hypervisor_type::HypervisorType;
use crate::probe::{self, KvmProbe};

/// Host files the check reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// The KVM device.
    pub dev_kvm: PathBuf,
    /// The vhost-vsock device.
    pub dev_vhost_vsock: PathBuf,
    /// `/proc/cpuinfo`.
    pub cpuinfo: PathBuf,
    /// `/proc/meminfo`.
    pub meminfo: PathBuf,
    /// `/sys/module`, where `kvm_pvm` shows when loaded.
    pub sys_module: PathBuf,
    /// The ACRN devices, one of which makes an ACRN Service VM.
    pub acrn_devices: Vec<PathBuf>,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            dev_kvm: probe::DEV_KVM.into(),
            dev_vhost_vsock: probe::DEV_VHOST_VSOCK.into(),
            cpuinfo: probe::PROC_CPUINFO.into(),
            meminfo: probe::PROC_MEMINFO.into(),
            sys_module: "/sys/module".into(),
            acrn_devices: crate::backends::acrn::ACRN_DEVICES
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

/// How the check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Host files to read.
    pub paths: HostPaths,
    /// How long `<vmm> --version` may take.
    pub vmm_timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            paths: HostPaths::default(),
            vmm_timeout: Duration::from_secs(10),
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckItem {
    /// What was checked, such as `kernel`.
    pub name: &'static str,
    /// Whether it is fine.
    pub ok: bool,
    /// Whether a sandbox needs it to be fine.
    pub required: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it is not fine.
    pub fix: Option<String>,
}

impl CheckItem {
    fn ok(name: &'static str, required: bool, detail: impl Into<String>) -> Self {
        CheckItem {
            name,
            ok: true,
            required,
            detail: detail.into(),
            fix: None,
        }
    }

    fn no(
        name: &'static str,
        required: bool,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        CheckItem {
            name,
            ok: false,
            required,
            detail: detail.into(),
            fix,
        }
    }

    /// Whether this item stops a sandbox from starting.
    pub fn blocks(&self) -> bool {
        self.required && !self.ok
    }
}

/// The report of `sandvisor check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The config file, or `None` for the built-in default.
    pub config_source: Option<PathBuf>,
    /// The hypervisor configured, when the config loaded.
    pub hypervisor: Option<HypervisorType>,
    /// What KVM can do here.
    pub kvm: KvmProbe,
    /// The `accel` asked for.
    pub accel_requested: Accel,
    /// The accelerator that would run guest code, or `None` when none can.
    pub accel: Option<Accel>,
    /// The accelerator's verdict, in words.
    pub accel_conclusion: String,
    /// Whether `/dev/vhost-vsock` opens.
    pub vhost_vsock: bool,
    /// Whether this host is itself a VM, when it can be told.
    pub running_on_vmm: Option<bool>,
    /// The host's MemTotal in kB, when it can be read.
    pub mem_total_kb: Option<u64>,
    /// The VMM's `--version`, first line.
    pub vmm_version: Option<String>,
    /// Every item, in order.
    pub items: Vec<CheckItem>,
    /// Whether a sandbox can start with this config here.
    pub startable: bool,
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// The verdict on running guest code: the accelerator to use (or `None`)
/// and the reason in words.
pub fn accel_verdict(requested: Accel, kvm: &KvmProbe) -> (Option<Accel>, String) {
    let resolved = probe::resolve_accel(requested, kvm);
    match (&kvm.reason, requested, resolved) {
        (Some(reason), Accel::Kvm, _) => (
            None,
            format!("KVM cannot run stock guests here ({reason}), and accel = \"kvm\" forbids TCG"),
        ),
        (Some(reason), _, _) => (
            Some(Accel::Tcg),
            format!("KVM cannot run stock guests here ({reason}); TCG will be used"),
        ),
        (None, Accel::Tcg, _) => (
            Some(Accel::Tcg),
            "KVM usable; TCG will be used, as accel = \"tcg\" asks".to_string(),
        ),
        (None, _, _) => (Some(Accel::Kvm), "KVM usable".to_string()),
    }
}

/// Runs `<vmm> --version` and returns its first line
/// ([`crate::backends::vmm::lookup::version`]).
///
/// # Errors
/// A description of what failed: spawn, exit status, or the timeout.
pub async fn vmm_version(vmm: &Path, timeout: Duration) -> Result<String, String> {
    crate::backends::vmm::lookup::version(vmm, timeout)
        .await
        .map_err(|e| error_chain(&e))
}

/// Why `p`, which should be a file, is not: it is missing, or it is
/// something else (a directory given for a binary is a common slip).
fn not_a_file(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => format!("{} is a directory, not a file", p.display()),
        Ok(_) => format!("{} is not a regular file", p.display()),
        Err(_) => format!("{} is missing", p.display()),
    }
}

fn file_item(name: &'static str, key: &str, path: Option<&Path>, fix_missing: &str) -> CheckItem {
    match path {
        None => CheckItem::no(
            name,
            true,
            format!("not configured (key `{key}`)"),
            Some(format!("set `{key}`")),
        ),
        Some(p) if p.is_file() => CheckItem::ok(name, true, p.display().to_string()),
        Some(p) => CheckItem::no(name, true, not_a_file(p), Some(fix_missing.to_string())),
    }
}

/// The VMM binaries of every backend that runs here, where the lookup finds
/// them and their versions: information, never a blocker (the `vmm` item
/// judges the configured one).
async fn vmm_inventory(timeout: Duration) -> Vec<CheckItem> {
    use crate::backends::vmm::lookup::{self, Binary};

    let binaries = [
        (Binary::QEMU, HypervisorType::Qemu),
        (Binary::CLOUD_HYPERVISOR, HypervisorType::Clh),
        (Binary::FIRECRACKER, HypervisorType::Firecracker),
        (Binary::JAILER, HypervisorType::Firecracker),
    ];
    let mut items = Vec::new();
    for (binary, kind) in binaries {
        items.push(match lookup::find(&binary, None) {
            Ok(found) => match vmm_version(&found.path, timeout).await {
                Ok(v) => CheckItem::ok(
                    binary.name,
                    false,
                    format!("{v} at {} (from {})", found.path.display(), found.source),
                ),
                Err(why) => CheckItem::no(binary.name, false, why, Some(vmm_fix(kind))),
            },
            Err(lookup::LookupError::NotFound { .. }) => CheckItem::no(
                binary.name,
                false,
                format!(
                    "not found in ${}, PATH or {}",
                    lookup::VMM_DIR_ENV,
                    binary.kata_paths.join(", ")
                ),
                Some(vmm_fix(kind)),
            ),
            Err(e) => CheckItem::no(binary.name, false, error_chain(&e), Some(vmm_fix(kind))),
        });
    }
    items
}

/// An ACRN Service VM: one of its devices, and `acrnctl`.
fn acrn_items(c: &crate::config::HypervisorConfig, devices: &[PathBuf]) -> Vec<CheckItem> {
    let fix = "run on an ACRN Service VM, or use qemu";
    let device = match crate::backends::acrn::service_vm(devices) {
        Ok(d) => CheckItem::ok("acrn", true, format!("{} present", d.display())),
        Err(e) => CheckItem::no("acrn", true, e.to_string(), Some(fix.into())),
    };
    let ctl = match &c.hypervisor_ctl_path {
        Some(p) if p.is_file() => CheckItem::ok("acrnctl", true, p.display().to_string()),
        Some(p) => CheckItem::no("acrnctl", true, not_a_file(p), Some(fix.into())),
        None => CheckItem::no(
            "acrnctl",
            true,
            "no acrnctl configured (key `ctlpath`)",
            Some(fix.into()),
        ),
    };
    vec![device, ctl]
}

fn vmm_fix(kind: HypervisorType) -> String {
    crate::backends::facts(kind).install_hint.to_string()
}

/// Checks this host and `loaded` (what [`crate::config::kata::load_config`]
/// returned).
pub async fn run_check(
    loaded: Result<RuntimeConfig, KataConfigError>,
    options: &CheckOptions,
) -> CheckReport {
    let paths = &options.paths;
    let mut items = Vec::new();

    let (runtime, config_source) = match loaded {
        Ok(mut rc) => {
            let source = rc.source.clone();
            let name = source.as_ref().map_or_else(
                || "built-in default".to_string(),
                |p| p.display().to_string(),
            );
            // Validate a copy: the report shows the config as given.
            let mut validated = rc.clone();
            // What `create` refuses beyond validation, checked the same way.
            let checked = validated
                .validate()
                .map_err(|e| error_chain(&e))
                .and_then(|()| {
                    crate::backends::preflight(validated.hypervisor, &validated.config)
                        .map_err(|e| format!("{name}: {}", error_chain(&e)))
                });
            match checked {
                Ok(()) => {
                    items.push(CheckItem::ok("config", true, format!("{name} is valid")));
                    rc = validated;
                }
                Err(why) => items.push(CheckItem::no(
                    "config",
                    true,
                    why,
                    Some("fix the config as the message says".into()),
                )),
            }
            (Some(rc), source)
        }
        Err(e) => {
            let source = match &e {
                KataConfigError::Read { path, .. } => Some(path.clone()),
                _ => None,
            };
            items.push(CheckItem::no(
                "config",
                true,
                error_chain(&e),
                Some("fix the config as the message says".into()),
            ));
            (None, source)
        }
    };

    if let Some(rc) = &runtime {
        // QEMU, Firecracker and Cloud Hypervisor are backends sandvisor
        // drives VMs with; the others only read and validate their config.
        if matches!(
            rc.hypervisor,
            HypervisorType::Qemu
                | HypervisorType::Firecracker
                | HypervisorType::Clh
                | HypervisorType::Acrn
        ) {
            items.push(CheckItem::ok(
                "backend",
                true,
                format!("sandvisor drives {}", rc.hypervisor),
            ));
        } else {
            items.push(CheckItem::no(
                "backend",
                true,
                format!("sandvisor does not drive {} yet", rc.hypervisor),
                Some("use a [hypervisor.qemu] section".into()),
            ));
        }
    }

    let kvm = probe::probe_kvm(&paths.dev_kvm, &paths.cpuinfo, &paths.sys_module);
    let kvm_detail = format!(
        "{} {}, {}; CPU {} vmx/svm; {}",
        paths.dev_kvm.display(),
        if kvm.present { "present" } else { "absent" },
        if kvm.openable {
            "openable"
        } else {
            "not openable"
        },
        if kvm.hardware_virt { "has" } else { "lacks" },
        if kvm.pvm {
            "PVM (kvm_pvm) loaded"
        } else {
            "no PVM"
        }
    );
    items.push(CheckItem {
        name: "kvm",
        ok: kvm.usable(),
        required: false,
        detail: kvm_detail,
        fix: None,
    });

    let accel_requested = runtime
        .as_ref()
        .map_or(Accel::default(), |rc| rc.config.accel);
    let (accel, accel_conclusion) = accel_verdict(accel_requested, &kvm);
    // Cloud Hypervisor and Firecracker have no software emulation: KVM
    // that runs stock guests, or nothing.
    let kvm_only = runtime
        .as_ref()
        .map(|rc| crate::backends::facts(rc.hypervisor))
        .filter(|f| f.kvm_only);
    items.push(match accel {
        _ if kvm_only.is_some() => {
            let name = kvm_only.map_or("", |f| f.display_name);
            match &kvm.reason {
                None => CheckItem::ok("accel", true, format!("KVM usable by {name}")),
                Some(reason) => CheckItem::no(
                    "accel",
                    true,
                    format!(
                        "KVM cannot run stock guests under {name} here ({reason}), \
                         and {name} has no TCG: its API answers, a Linux guest barely advances"
                    ),
                    Some(
                        "run on a host with hardware virtualisation (vmx/svm), or use qemu".into(),
                    ),
                ),
            }
        }
        Some(_) => CheckItem::ok("accel", true, accel_conclusion.clone()),
        None => CheckItem::no(
            "accel",
            true,
            accel_conclusion.clone(),
            Some("set accel = \"auto\" or \"tcg\"".into()),
        ),
    });

    // A hybrid vsock (vhost-device-vsock) needs no vhost-vsock.
    let hybrid = runtime
        .as_ref()
        .and_then(|rc| rc.config.vhost_user_vsock_daemon.clone());
    let use_vsock = runtime.as_ref().is_some_and(|rc| {
        rc.hypervisor == HypervisorType::Qemu && rc.config.use_vsock && hybrid.is_none()
    });
    let vsock = probe::probe_vhost_vsock(&paths.dev_vhost_vsock);
    items.push(match &vsock {
        Ok(()) => CheckItem::ok(
            "vhost-vsock",
            use_vsock,
            format!("{} opens", paths.dev_vhost_vsock.display()),
        ),
        Err(why) => CheckItem::no(
            "vhost-vsock",
            use_vsock,
            match (&hybrid, use_vsock) {
                (Some(daemon), _) => format!(
                    "{why}; not needed: the agent uses a hybrid vsock served by {}",
                    daemon.display()
                ),
                (None, true) => why.clone(),
                (None, false) => match runtime.as_ref().map(|rc| rc.hypervisor) {
                    Some(HypervisorType::Firecracker) => {
                        format!("{why}; not needed: the agent uses firecracker's hybrid vsock")
                    }
                    Some(HypervisorType::Clh) => {
                        format!("{why}; not needed: the agent uses cloud hypervisor's hybrid vsock")
                    }
                    _ => format!("{why}; not needed: the agent uses virtio-serial"),
                },
            },
            use_vsock.then(|| "load vhost_vsock, or set use_vsock = false".to_string()),
        ),
    });

    let running_on_vmm = probe::running_on_vmm(&paths.cpuinfo).ok();
    items.push(CheckItem::ok(
        "nested",
        false,
        match running_on_vmm {
            Some(true) => "this host is a VM (the CPU flags have `hypervisor`)".to_string(),
            Some(false) => "this host is not a VM".to_string(),
            None => format!("cannot tell: no CPU flags in {}", paths.cpuinfo.display()),
        },
    ));

    let mem_total_kb = probe::host_memory_size_kb(&paths.meminfo).ok();
    let want_mib = runtime.as_ref().map_or(0, |rc| rc.config.memory_size);
    items.push(match mem_total_kb {
        Some(kb) if u64::from(want_mib) * 1024 > kb => CheckItem::no(
            "memory",
            false,
            format!("MemTotal {} MiB, below the VM's {want_mib} MiB", kb / 1024),
            Some("lower default_memory".into()),
        ),
        Some(kb) => CheckItem::ok(
            "memory",
            false,
            format!(
                "MemTotal {} MiB; the VM boots with {want_mib} MiB",
                kb / 1024
            ),
        ),
        None => CheckItem::no(
            "memory",
            false,
            format!("no MemTotal in {}", paths.meminfo.display()),
            None,
        ),
    });

    let mut vmm_version_line = None;
    if let Some(rc) = &runtime {
        let c = &rc.config;
        items.push(match &c.hypervisor_path {
            None => CheckItem::no(
                "vmm",
                true,
                "no VMM configured (key `path`)",
                Some(vmm_fix(rc.hypervisor)),
            ),
            Some(p) if !p.is_file() => {
                CheckItem::no("vmm", true, not_a_file(p), Some(vmm_fix(rc.hypervisor)))
            }
            Some(p) => match vmm_version(p, options.vmm_timeout).await {
                Ok(v) => {
                    let item = CheckItem::ok("vmm", true, format!("{}: {v}", p.display()));
                    vmm_version_line = Some(v);
                    item
                }
                Err(why) => CheckItem::no("vmm", true, why, Some(vmm_fix(rc.hypervisor))),
            },
        });
        if rc.hypervisor == HypervisorType::Acrn {
            items.extend(acrn_items(c, &paths.acrn_devices));
        }
        if let Some(j) = &c.jailer_path {
            let fix = "install Firecracker's jailer (scripts/setup.sh), or unset `jailer_path`";
            items.push(match vmm_version(j, options.vmm_timeout).await {
                _ if !j.is_file() => {
                    CheckItem::no("jailer_path", true, not_a_file(j), Some(fix.to_string()))
                }
                Ok(v) => CheckItem::ok("jailer_path", true, format!("{}: {v}", j.display())),
                Err(why) => CheckItem::no("jailer_path", true, why, Some(fix.to_string())),
            });
        }
        let build = "run `sandvisor image build`, or point the key at an existing file";
        items.push(file_item(
            "kernel",
            "kernel",
            c.kernel_path.as_deref(),
            build,
        ));
        match (&c.initrd_path, &c.image_path) {
            (Some(_), _) | (None, None) => items.push(file_item(
                "initrd",
                "initrd",
                c.initrd_path.as_deref(),
                build,
            )),
            _ => {}
        }
        if c.image_path.is_some() {
            items.push(file_item(
                "image",
                "image",
                c.image_path.as_deref(),
                "build a guest image, or point `image` at an existing file",
            ));
        }
        if let Some(fw) = &c.firmware_path {
            items.push(file_item(
                "firmware",
                "firmware",
                Some(fw),
                "install the firmware, or unset `firmware`",
            ));
        }
        if let Some(daemon) = c
            .virtio_fs_daemon
            .as_deref()
            .filter(|_| c.shared_fs.is_virtio_fs())
        {
            items.push(file_item(
                "virtiofsd",
                "virtio_fs_daemon",
                Some(daemon),
                "install virtiofsd (scripts/setup.sh), or point `virtio_fs_daemon` at it",
            ));
        }
    }

    items.extend(vmm_inventory(options.vmm_timeout).await);
    items.extend(posture::items(runtime.as_ref()));

    let startable = !items.iter().any(CheckItem::blocks);
    CheckReport {
        config_source,
        hypervisor: runtime.as_ref().map(|rc| rc.hypervisor),
        kvm,
        accel_requested,
        accel,
        accel_conclusion,
        vhost_vsock: vsock.is_ok(),
        running_on_vmm,
        mem_total_kb,
        vmm_version: vmm_version_line,
        items,
        startable,
    }
}

impl CheckReport {
    /// The report as text: one line per item, `ok` or `no`, then the verdict.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for item in &self.items {
            let status = if item.ok { "ok" } else { "no" };
            out.push_str(&format!("{status}  {:<12} {}", item.name, item.detail));
            if let Some(fix) = item.fix.as_ref().filter(|_| !item.ok) {
                out.push_str(&format!(" ({fix})"));
            }
            out.push('\n');
        }
        if self.startable {
            out.push_str(&format!(
                "a sandbox can start here with {}{}\n",
                self.hypervisor.map_or("?", |h| h.as_str()),
                self.accel.map_or(String::new(), |a| format!(" ({a})"))
            ));
        } else {
            let n = self.items.iter().filter(|i| i.blocks()).count();
            out.push_str(&format!(
                "a sandbox cannot start here: {n} problem{} above\n",
                if n == 1 { "" } else { "s" }
            ));
        }
        out
    }
}
