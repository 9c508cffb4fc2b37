//! Building the guest assets: a kernel (`vmlinuz`) and an initrd
//! (`initrd.img`) whose `/init` is the sandvisor agent.
//!
//! [`build`] takes Debian's cloud kernel (or one given), picks the modules
//! the guest needs with their dependencies ([`modules`]), and packs them with
//! busybox-static and the statically linked agent into a compressed cpio
//! archive ([`cpio`]). A manifest (`manifest.json`) records the identity of
//! every input; when none changed and the outputs are intact, nothing is
//! rewritten.
//!
//! Progress is reported as one line per step through a callback, so the
//! command line prints it and the library stays quiet.

pub mod cpio;
pub mod elf;
pub mod kernel;
pub mod modules;
pub mod tiny_guest;
pub mod vmlinux;

use std::collections::BTreeMap;
use std::env;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::paths::{BZIMAGE_FILE, INITRD_FILE, KERNEL_FILE};
use cpio::{Archive, Entry};
use elf::Linkage;

/// Version of the initrd layout and manifest. Bump it when the builder
/// would produce something different from the same inputs.
pub const FORMAT_VERSION: u32 = 2;

/// File name of the manifest in the output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The environment variable naming the agent binary.
pub const AGENT_ENV: &str = "SANDVISOR_AGENT";

/// Where busybox-static puts its binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// In the initrd: where busybox's `modprobe` is, away from the kernel's
/// default `/sbin/modprobe` (the agent's `init::MODPROBE` must match).
pub const MODPROBE_PATH: &str = "/usr/sbin/modprobe";

/// In the initrd: the modules the agent loads before it serves (its
/// channel's drivers), in load order. The others it loads for the devices
/// the guest has, by the aliases in `lib/modules/<release>/modules.alias`.
pub const MODULES_EARLY: &str = "etc/sandvisor/modules.early";

/// How the agent is built statically; quoted in errors.
pub const AGENT_BUILD_COMMAND: &str = "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release -p sandvisor-agent --target x86_64-unknown-linux-gnu";

/// Errors from building guest assets.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A program failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// apt does not know the package: its lists are missing or stale.
    #[error("apt cannot find {package} ({detail}); run apt-get update")]
    AptListsMissing {
        /// The package.
        package: String,
        /// What apt said.
        detail: String,
    },
    /// The kernel package is not as expected.
    #[error("kernel package {path:?} is unusable: {reason}")]
    KernelPackage {
        /// The package file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The modules directory is not one.
    #[error("modules directory {dir:?} is unusable: {reason}")]
    BadModulesDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A required module is missing.
    #[error("kernel module {name}{} is neither built in nor in {dir:?}", needed_by.as_ref().map(|n| format!(" (needed by {n})")).unwrap_or_default())]
    ModuleMissing {
        /// The module.
        name: String,
        /// The module that depends on it.
        needed_by: Option<String>,
        /// The modules directory.
        dir: PathBuf,
    },
    /// A module file cannot be used.
    #[error("kernel module {path:?} is unusable: {reason}")]
    BadModule {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `--modules` without `--kernel`.
    #[error("a modules directory ({0:?}) was given without a kernel: pass --kernel too")]
    ModulesWithoutKernel(PathBuf),
    /// busybox-static is not installed.
    #[error(
        "{path:?} is missing or not statically linked; install it: apt-get install busybox-static"
    )]
    Busybox {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The agent binary was not found.
    #[error("no statically linked sandvisor-agent found (looked at {}{}); build it: {AGENT_BUILD_COMMAND}", list(searched), dynamic_note(dynamic))]
    AgentNotFound {
        /// Paths looked at.
        searched: Vec<PathBuf>,
        /// Candidates that exist but are dynamically linked.
        dynamic: Vec<PathBuf>,
    },
    /// The agent given is not a static executable.
    #[error("agent {path:?} is {what}; build a static one: {AGENT_BUILD_COMMAND}")]
    AgentNotStatic {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// Reading or writing a file failed.
    #[error("i/o error on {path:?}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn dynamic_note(dynamic: &[PathBuf]) -> String {
    if dynamic.is_empty() {
        String::new()
    } else {
        format!("; dynamically linked, so unusable: {}", list(dynamic))
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the initrd is compressed.
///
/// None is the default: the initrd is read from the host's page cache, so
/// its size costs nothing at boot, while the guest decompressing it does.
/// Measured here with Debian's 6.1 cloud kernel under QEMU 7.2 TCG (q35,
/// PVH boot), 6.6 MiB of cpio, QEMU start to the agent serving its port,
/// two runs each: uncompressed 2.42-2.45 s; gzip -1 (2.8 MiB) 2.50-2.52 s;
/// zstd -19 (1.9 MiB) 2.53-2.72 s. Compress when the initrd travels or
/// lives on slow storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain cpio archive.
    #[default]
    None,
    /// gzip, which every kernel reads.
    Gzip,
    /// zstd (`CONFIG_RD_ZSTD`).
    Zstd,
}

impl Compression {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!(
                "unknown compression {other:?}: expected none, gzip or zstd"
            )),
        }
    }
}

/// What to build, and where.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// A kernel image to use instead of Debian's cloud kernel.
    pub kernel: Option<PathBuf>,
    /// The modules directory (`lib/modules/<release>`) of `kernel`. Without
    /// it, the kernel must have what the guest needs built in.
    pub modules: Option<PathBuf>,
    /// The agent binary; found by [`locate_agent`] when unset.
    pub agent: Option<PathBuf>,
    /// Output directory; [`crate::paths::asset_dir`] when unset.
    pub output: Option<PathBuf>,
    /// Initrd compression.
    pub compression: Compression,
    /// Rebuild even when the manifest says the outputs are up to date.
    pub force: bool,
}

/// The identities of a build's inputs: equal inputs give equal outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// [`FORMAT_VERSION`].
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

/// What [`build`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// Nothing changed; nothing was written.
    pub up_to_date: bool,
    /// The kernel written.
    pub kernel: PathBuf,
    /// The initrd written.
    pub initrd: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

/// The SHA-256 of a file, in hex.
fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    io::copy(&mut f, &mut hasher).map_err(io_err(path))?;
    Ok(hex::encode(hasher.finalize()))
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn check_static(path: &Path) -> Result<Linkage, ImageError> {
    let data = fs::read(path).map_err(io_err(path))?;
    Ok(elf::linkage(&data))
}

/// Where `image build` looks for the agent, in order, when neither
/// `--agent` nor `SANDVISOR_AGENT` names it: next to the running
/// executable, then in cargo's `--target x86_64-unknown-linux-gnu` output
/// beside it (same profile first, then release).
pub fn agent_candidates(exe: &Path) -> Vec<PathBuf> {
    let Some(exe_dir) = exe.parent() else {
        return Vec::new();
    };
    let mut out = vec![exe_dir.join("sandvisor-agent")];
    let profile = exe_dir.file_name().and_then(|p| p.to_str());
    if let Some(target_dir) = exe_dir.parent() {
        let triple = target_dir.join("x86_64-unknown-linux-gnu");
        let mut profiles = Vec::new();
        if let Some(p) = profile {
            profiles.push(p.to_string());
        }
        for p in ["release", "debug"] {
            if !profiles.iter().any(|q| q == p) {
                profiles.push(p.to_string());
            }
        }
        out.extend(
            profiles
                .iter()
                .map(|p| triple.join(p).join("sandvisor-agent")),
        );
    }
    out
}

/// Finds the agent: `explicit`, else `$SANDVISOR_AGENT`, else the first
/// statically linked one among [`agent_candidates`] of the running
/// executable.
///
/// # Errors
/// [`ImageError::AgentNotStatic`] when the agent named is not a static
/// executable; [`ImageError::AgentNotFound`] when no candidate is.
pub fn locate_agent(explicit: Option<&Path>) -> Result<PathBuf, ImageError> {
    let named = explicit.map(Path::to_path_buf).or_else(|| {
        env::var_os(AGENT_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(path) = named {
        return match check_static(&path)? {
            Linkage::Static => Ok(path),
            Linkage::Dynamic => Err(ImageError::AgentNotStatic {
                path,
                what: "dynamically linked",
            }),
            Linkage::NotElf => Err(ImageError::AgentNotStatic {
                path,
                what: "not an ELF executable",
            }),
        };
    }
    let exe = env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    let searched = agent_candidates(&exe);
    let mut dynamic = Vec::new();
    for c in &searched {
        if !c.is_file() {
            continue;
        }
        match check_static(c)? {
            Linkage::Static => return Ok(c.clone()),
            _ => dynamic.push(c.clone()),
        }
    }
    Err(ImageError::AgentNotFound { searched, dynamic })
}

/// busybox applets as `busybox --list-full` prints them (`bin/sh`, ...).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, ImageError> {
    let out = kernel::run(&busybox.to_string_lossy(), &["--list-full"], None)?;
    Ok(out
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox" && l != "init" && l != "linuxrc")
        .collect())
}

/// Where the kernel and its modules come from.
enum KernelSource {
    Debian(kernel::KernelPackage),
    File {
        kernel: PathBuf,
        modules: Option<PathBuf>,
    },
}

fn modules_identity(source: &KernelSource) -> Result<String, ImageError> {
    let wanted: Vec<String> = modules::WANTED
        .iter()
        .map(|w| format!("{}{}", w.name, if w.required { "" } else { "?" }))
        .collect();
    let origin = match source {
        KernelSource::Debian(_) => "package".to_string(),
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
fn up_to_date(dir: &Path, inputs: &Inputs) -> Option<Manifest> {
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
fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf, ImageError> {
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

/// Compresses a cpio archive.
fn compress(data: &[u8], how: Compression) -> Result<Vec<u8>, io::Error> {
    match how {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(data)?;
            enc.finish()
        }
        Compression::Zstd => zstd::encode_all(data, 19),
    }
}

/// Everything the initrd holds.
fn assemble(
    agent: &[u8],
    busybox: &[u8],
    applets: &[String],
    modules_dir: Option<&Path>,
    release: Option<&str>,
    resolution: &modules::Resolution,
) -> Result<Archive, ImageError> {
    let mut a = Archive::new();
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev", "run", "tmp",
        "mnt", "var", "lib",
    ] {
        a.add(dir, Entry::Dir { mode: 0o755 });
    }
    a.add("tmp", Entry::Dir { mode: 0o1777 });
    a.add("root", Entry::Dir { mode: 0o700 });
    // The kernel opens /dev/console for init before /dev is mounted.
    a.add(
        "dev/console",
        Entry::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    );
    a.add(
        "init",
        Entry::File {
            mode: 0o755,
            data: agent.to_vec(),
        },
    );
    a.add(
        "bin/busybox",
        Entry::File {
            mode: 0o755,
            data: busybox.to_vec(),
        },
    );
    for applet in applets {
        // The kernel runs /sbin/modprobe for every module request, and the
        // crypto self-tests at boot make two for built-in algorithms: two
        // execs of busybox, 0.1 s under TCG, to load nothing. modprobe
        // lives elsewhere; the agent points kernel.modprobe at it.
        let applet = if applet == "sbin/modprobe" {
            MODPROBE_PATH.trim_start_matches('/')
        } else {
            applet.as_str()
        };
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        if !a.contains(applet) {
            a.add(applet, Entry::Symlink { target });
        }
    }
    a.add(
        "etc/passwd",
        Entry::File {
            mode: 0o644,
            data: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        },
    );
    a.add(
        "etc/group",
        Entry::File {
            mode: 0o644,
            data: b"root:x:0:\ntty:x:5:\n".to_vec(),
        },
    );
    let mut early = String::new();
    if let (Some(dir), Some(release)) = (modules_dir, release) {
        let root = Path::new("lib/modules").join(release);
        let mut aliases = Vec::new();
        for m in &resolution.load_order {
            let data = modules::read_module(&dir.join(&m.rel_path))?;
            let info = elf::modinfo(&data).unwrap_or_default();
            aliases.push((m.name.as_str(), info.aliases));
            let stored = root.join(m.stored_rel_path());
            let stored = stored.to_string_lossy().into_owned();
            if resolution.early.contains(&m.name) {
                early.push('/');
                early.push_str(&stored);
                early.push('\n');
            }
            a.add(&stored, Entry::File { mode: 0o644, data });
        }
        // depmod's files, where modprobe (busybox's too) looks for them:
        // the agent loads drivers for devices by these aliases.
        let dep = modules::depmod_dep(&resolution.load_order);
        let alias = modules::depmod_alias(aliases.iter().map(|(n, a)| (*n, a.as_slice())));
        for (name, text) in [("modules.dep", dep), ("modules.alias", alias)] {
            a.add(
                &root.join(name).to_string_lossy(),
                Entry::File {
                    mode: 0o644,
                    data: text.into_bytes(),
                },
            );
        }
    }
    a.add(
        MODULES_EARLY,
        Entry::File {
            mode: 0o644,
            data: early.into_bytes(),
        },
    );
    Ok(a)
}

/// The kernel files to write, by asset name: a bzImage with a PVH entry
/// gives both the uncompressed ELF ([`KERNEL_FILE`], which boots without
/// decompressing itself) and the bzImage ([`BZIMAGE_FILE`]); a PVH ELF
/// gives itself; anything else is kept as given, under [`BZIMAGE_FILE`],
/// for the VMM to judge.
fn boot_kernels(data: Vec<u8>, progress: &mut dyn FnMut(&str)) -> Vec<(&'static str, Vec<u8>)> {
    match vmlinux::format(&data) {
        vmlinux::KernelFormat::BzImage => match vmlinux::extract(&data) {
            Ok(elf) => {
                progress(&format!(
                    "kernel: extracted the {} KiB PVH ELF from the bzImage",
                    elf.len() / 1024
                ));
                vec![(KERNEL_FILE, elf), (BZIMAGE_FILE, data)]
            }
            Err(e) => {
                progress(&format!(
                    "kernel: no PVH image ({e}); guests boot the bzImage"
                ));
                vec![(BZIMAGE_FILE, data)]
            }
        },
        vmlinux::KernelFormat::PvhElf => vec![(KERNEL_FILE, data)],
        vmlinux::KernelFormat::Other => vec![(BZIMAGE_FILE, data)],
    }
}

/// Builds the guest assets. `progress` gets one line per step.
///
/// # Errors
/// See [`ImageError`]: missing tools or packages say what to install or
/// run.
pub fn build(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildReport, ImageError> {
    let started = Instant::now();
    let out_dir = opts.output.clone().unwrap_or_else(crate::paths::asset_dir);

    let source = match (&opts.kernel, &opts.modules) {
        (None, Some(m)) => return Err(ImageError::ModulesWithoutKernel(m.clone())),
        (Some(k), m) => KernelSource::File {
            kernel: k.clone(),
            modules: m.clone(),
        },
        (None, None) => {
            progress(&format!("resolving {}", kernel::CLOUD_KERNEL_META));
            KernelSource::Debian(kernel::resolve(kernel::CLOUD_KERNEL_META)?)
        }
    };
    let kernel_identity = match &source {
        KernelSource::Debian(pkg) => pkg.identity(),
        KernelSource::File { kernel, .. } => format!("file:{}", sha256_file(kernel)?),
    };
    progress(&format!("kernel: {kernel_identity}"));

    let agent_path = locate_agent(opts.agent.as_deref())?;
    let agent = fs::read(&agent_path).map_err(io_err(&agent_path))?;
    let agent_hash = sha256(&agent);
    progress(&format!(
        "agent: {} (static, sha256 {})",
        agent_path.display(),
        &agent_hash[..12]
    ));

    let busybox_path = Path::new(BUSYBOX_PATH);
    let busybox = fs::read(busybox_path).map_err(|_| ImageError::Busybox {
        path: busybox_path.to_path_buf(),
    })?;
    if elf::linkage(&busybox) != Linkage::Static {
        return Err(ImageError::Busybox {
            path: busybox_path.to_path_buf(),
        });
    }
    let busybox_hash = sha256(&busybox);
    progress(&format!(
        "busybox: {BUSYBOX_PATH} (sha256 {})",
        &busybox_hash[..12]
    ));

    let inputs = Inputs {
        builder: FORMAT_VERSION,
        kernel: kernel_identity,
        modules: modules_identity(&source)?,
        busybox: busybox_hash,
        agent: agent_hash,
        compression: opts.compression,
    };
    if !opts.force {
        if let Some(manifest) = up_to_date(&out_dir, &inputs) {
            progress(&format!("up to date: {}", out_dir.display()));
            return Ok(BuildReport {
                up_to_date: true,
                kernel: crate::paths::kernel_in(&out_dir),
                initrd: out_dir.join(INITRD_FILE),
                manifest,
            });
        }
    }
    fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;

    // Keeps the unpacked package alive until the initrd is written.
    let unpacked;
    let (vmlinuz, modules_dir, release) = match &source {
        KernelSource::Debian(pkg) => {
            let cache = out_dir.join("cache");
            progress(&format!("fetching {} {}", pkg.name, pkg.version));
            let (deb, downloaded) = kernel::download(pkg, &cache)?;
            progress(&format!(
                "{} {}",
                if downloaded { "downloaded" } else { "cached" },
                deb.display()
            ));
            progress("unpacking with dpkg-deb -x");
            unpacked = kernel::unpack(&deb)?;
            (
                unpacked.vmlinuz.clone(),
                Some(unpacked.modules.clone()),
                Some(unpacked.release.clone()),
            )
        }
        KernelSource::File { kernel, modules } => {
            let release = match modules {
                Some(dir) => Some(
                    dir.file_name()
                        .and_then(|n| n.to_str())
                        .map(str::to_string)
                        .ok_or_else(|| ImageError::BadModulesDir {
                            dir: dir.clone(),
                            reason: "its name is not a kernel release".into(),
                        })?,
                ),
                None => None,
            };
            (kernel.clone(), modules.clone(), release)
        }
    };

    let resolution = match &modules_dir {
        Some(dir) => {
            progress(&format!("resolving modules in {}", dir.display()));
            let r = modules::resolve_split(dir, modules::WANTED, modules::EARLY)?;
            progress(&format!(
                "modules: {} to load, {} of them before the agent serves ({}), {} built in, absent: {}",
                r.load_order.len(),
                r.early.len(),
                if r.from_modules_dep {
                    "modules.dep"
                } else {
                    ".modinfo"
                },
                r.builtin.len(),
                if r.missing_optional.is_empty() {
                    "none".to_string()
                } else {
                    r.missing_optional.join(" ")
                }
            ));
            r
        }
        None => {
            progress("no modules directory: the kernel must have virtio built in");
            modules::Resolution::default()
        }
    };

    let applets = busybox_applets(busybox_path)?;
    let archive = assemble(
        &agent,
        &busybox,
        &applets,
        modules_dir.as_deref(),
        release.as_deref(),
        &resolution,
    )?;
    let mut cpio = Vec::new();
    archive
        .write_to(&mut cpio)
        .map_err(io_err(&out_dir.join(INITRD_FILE)))?;
    progress(&format!(
        "initrd: {} entries, {} KiB uncompressed; compressing with {}",
        archive.len(),
        cpio.len() / 1024,
        opts.compression
    ));
    let initrd = compress(&cpio, opts.compression).map_err(io_err(&out_dir.join(INITRD_FILE)))?;

    let kernel_data = fs::read(&vmlinuz).map_err(io_err(&vmlinuz))?;
    let kernels = boot_kernels(kernel_data, progress);
    let initrd_path = write_atomic(&out_dir, INITRD_FILE, &initrd)?;
    let mut outputs = BTreeMap::new();
    outputs.insert(
        INITRD_FILE.to_string(),
        OutputFile {
            sha256: sha256(&initrd),
            size: initrd.len() as u64,
        },
    );
    let mut kernel_bytes = 0;
    for name in [KERNEL_FILE, BZIMAGE_FILE] {
        match kernels.iter().find(|(n, _)| *n == name) {
            Some((_, data)) => {
                write_atomic(&out_dir, name, data)?;
                outputs.insert(
                    name.to_string(),
                    OutputFile {
                        sha256: sha256(data),
                        size: data.len() as u64,
                    },
                );
                kernel_bytes += data.len();
            }
            // A kernel from an earlier build must not be booted instead.
            None => match fs::remove_file(out_dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&out_dir.join(name))(e)),
            },
        }
    }
    let kernel_path = crate::paths::kernel_in(&out_dir);
    let manifest = Manifest {
        inputs,
        kernel_release: release,
        modules: resolution
            .load_order
            .iter()
            .map(|m| m.name.clone())
            .collect(),
        outputs,
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("the manifest is plain data");
    write_atomic(&out_dir, MANIFEST_FILE, &text)?;
    progress(&format!(
        "wrote {} ({} KiB of kernels) and {} ({} KiB) in {:.1}s",
        kernel_path.display(),
        kernel_bytes / 1024,
        initrd_path.display(),
        initrd.len() / 1024,
        started.elapsed().as_secs_f64()
    ));
    Ok(BuildReport {
        up_to_date: false,
        kernel: kernel_path,
        initrd: initrd_path,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_candidates_cover_the_target_dir() {
        let c = agent_candidates(Path::new("/w/target/debug/sandvisor"));
        assert_eq!(
            c,
            [
                PathBuf::from("/w/target/debug/sandvisor-agent"),
                PathBuf::from("/w/target/x86_64-unknown-linux-gnu/debug/sandvisor-agent"),
                PathBuf::from("/w/target/x86_64-unknown-linux-gnu/release/sandvisor-agent"),
            ]
        );
    }

    #[test]
    fn a_dynamic_agent_is_refused_with_the_build_command() {
        let exe = env::current_exe().expect("exe");
        // Test binaries are dynamically linked.
        if check_static(&exe).expect("readable") != Linkage::Dynamic {
            return;
        }
        let err = locate_agent(Some(&exe)).expect_err("dynamic");
        assert!(matches!(err, ImageError::AgentNotStatic { .. }));
        assert!(err.to_string().contains("crt-static"), "{err}");
    }

    #[test]
    fn not_an_elf_agent_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("agent");
        fs::write(&f, "#!/bin/sh\n").expect("write");
        let err = locate_agent(Some(&f)).expect_err("script");
        assert!(matches!(
            err,
            ImageError::AgentNotStatic {
                what: "not an ELF executable",
                ..
            }
        ));
    }

    #[test]
    fn assembled_initrd_has_init_console_and_load_order() {
        let a = assemble(
            b"agent",
            b"bb",
            &[
                "bin/sh".into(),
                "usr/bin/env".into(),
                "sbin/modprobe".into(),
            ],
            None,
            None,
            &modules::Resolution::default(),
        )
        .expect("assembles");
        for p in [
            "init",
            "dev/console",
            "bin/busybox",
            "bin/sh",
            "usr/bin/env",
            "usr/sbin/modprobe",
            MODULES_EARLY,
            "tmp",
        ] {
            assert!(a.contains(p), "{p}");
        }
        assert!(
            !a.contains("sbin/modprobe"),
            "the kernel's default path stays empty"
        );
    }

    #[test]
    fn compressions_round_trip() {
        let data = b"hello hello hello hello".repeat(100);
        let gz = compress(&data, Compression::Gzip).expect("gzip");
        let mut back = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut back)
            .expect("gunzip");
        assert_eq!(back, data);
        let zs = compress(&data, Compression::Zstd).expect("zstd");
        assert_eq!(zstd::decode_all(zs.as_slice()).expect("unzstd"), data);
        assert_eq!(compress(&data, Compression::None).expect("none"), data);
        assert_eq!("none".parse::<Compression>(), Ok(Compression::None));
        assert!("lz4"
            .parse::<Compression>()
            .is_err_and(|e| e.contains("none, gzip or zstd")));
    }

    #[test]
    fn rebuilds_only_when_an_input_changes() {
        // busybox-static stands in for the agent: any static executable
        // will do for the builder.
        let busybox = Path::new(BUSYBOX_PATH);
        match fs::read(busybox) {
            Ok(data) if elf::linkage(&data) == Linkage::Static => {}
            _ => return, // The builder's own error covers a missing busybox.
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("bzImage");
        fs::write(&kernel, b"kernel one").expect("write");
        let opts = BuildOptions {
            kernel: Some(kernel.clone()),
            agent: Some(busybox.to_path_buf()),
            output: Some(dir.path().join("out")),
            compression: Compression::Gzip,
            ..BuildOptions::default()
        };
        let mut steps = Vec::new();
        let first = build(&opts, &mut |s| steps.push(s.to_string())).expect("first build");
        assert!(!first.up_to_date);
        assert!(
            steps.iter().any(|s| s.contains("no modules directory")),
            "{steps:?}"
        );
        let initrd_mtime = fs::metadata(&first.initrd)
            .and_then(|m| m.modified())
            .expect("mtime");

        let second = build(&opts, &mut |_| {}).expect("second build");
        assert!(second.up_to_date);
        assert_eq!(second.manifest, first.manifest);
        assert_eq!(
            fs::metadata(&second.initrd)
                .and_then(|m| m.modified())
                .expect("mtime"),
            initrd_mtime,
            "nothing rewritten"
        );

        fs::write(&kernel, b"kernel two").expect("write");
        let third = build(&opts, &mut |_| {}).expect("third build");
        assert!(!third.up_to_date);
        assert_eq!(fs::read(&third.kernel).expect("read"), b"kernel two");

        // A damaged output is rebuilt too.
        fs::write(&third.initrd, b"junk").expect("write");
        assert!(!build(&opts, &mut |_| {}).expect("fourth build").up_to_date);
    }

    #[test]
    fn a_pvh_bzimage_gives_vmlinux_and_a_later_kernel_replaces_it() {
        let busybox = Path::new(BUSYBOX_PATH);
        match fs::read(busybox) {
            Ok(data) if elf::linkage(&data) == Linkage::Static => {}
            _ => return,
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let elf_image = vmlinux::tests::elf_with_note(b"Xen", 18);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&elf_image).expect("in memory");
        let bz = vmlinux::tests::bzimage(&gz.finish().expect("in memory"), 0x020f);
        let kernel = dir.path().join("bzImage");
        fs::write(&kernel, &bz).expect("write");
        let opts = BuildOptions {
            kernel: Some(kernel.clone()),
            agent: Some(busybox.to_path_buf()),
            output: Some(out.clone()),
            compression: Compression::Gzip,
            ..BuildOptions::default()
        };
        let mut steps = Vec::new();
        let first = build(&opts, &mut |s| steps.push(s.to_string())).expect("build");
        assert_eq!(first.kernel, out.join(KERNEL_FILE));
        assert_eq!(fs::read(out.join(KERNEL_FILE)).expect("vmlinux"), elf_image);
        assert_eq!(fs::read(out.join(BZIMAGE_FILE)).expect("vmlinuz"), bz);
        assert!(first.manifest.outputs.contains_key(KERNEL_FILE));
        assert!(first.manifest.outputs.contains_key(BZIMAGE_FILE));
        assert!(steps.iter().any(|s| s.contains("PVH ELF")), "{steps:?}");
        assert!(build(&opts, &mut |_| {}).expect("again").up_to_date);

        // A kernel without PVH: the old vmlinux must go, or it would boot.
        fs::write(&kernel, b"not a bzImage").expect("write");
        let second = build(&opts, &mut |_| {}).expect("rebuild");
        assert!(!out.join(KERNEL_FILE).exists());
        assert_eq!(second.kernel, out.join(BZIMAGE_FILE));
        assert_eq!(crate::paths::kernel_in(&out), out.join(BZIMAGE_FILE));
        assert!(!second.manifest.outputs.contains_key(KERNEL_FILE));
    }

    #[test]
    fn modules_without_kernel_is_refused() {
        let opts = BuildOptions {
            modules: Some("/lib/modules/x".into()),
            ..BuildOptions::default()
        };
        let err = build(&opts, &mut |_| {}).expect_err("no kernel");
        assert!(matches!(err, ImageError::ModulesWithoutKernel(_)));
    }
}
