//! Building the guest assets: a kernel (`vmlinuz`) and an initrd
//! (`initrd.img`) whose `/init` is the sandvisor agent.
//!
//! [`build`] takes the sandbox kernel, built from Debian's source with the
//! project's configuration ([`source`], [`KernelFrom::Source`], the
//! default), or Debian's cloud kernel ([`KernelFrom::Cloud`]), or a kernel
//! file given; picks the modules the guest needs with their dependencies
//! ([`modules`]; the sandbox kernel has none: everything is built in), and
//! packs them with
//! busybox-static and the statically linked agent into a compressed cpio
//! archive ([`cpio`]). A manifest (`manifest.json`) records the identity of
//! every input; when none changed and the outputs are intact, nothing is
//! rewritten.
//!
//! Progress is reported as one line per step through a callback, so the
//! command line prints it and the library stays quiet.

mod agent;
pub mod cpio;
pub mod elf;
mod initrd;
pub mod kernel;
mod manifest;
pub mod modules;
pub mod source;
pub mod tiny_guest;
pub mod vmlinux;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use self::agent::{agent_candidates, locate_agent};
use self::manifest::{modules_identity, sha256, sha256_file, up_to_date, write_atomic};
pub use self::manifest::{Inputs, Manifest, OutputFile};
use crate::paths::{BZIMAGE_FILE, INITRD_FILE, KERNEL_FILE};

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
    /// The sandbox kernel's configuration lost options of the fragment.
    #[error("kernel configuration {config:?} lacks options of the fragment (a dependency is missing; fix x86_64-sandbox.config): {}", mismatches.join(", "))]
    KernelConfig {
        /// The `.config` after `olddefconfig`.
        config: PathBuf,
        /// `CONFIG_X=wanted (got value)`, one per option.
        mismatches: Vec<String>,
    },
    /// The sandbox kernel's build failed.
    #[error("kernel build failed ({status}); see {log:?}, which ends:\n{tail}")]
    KernelBuild {
        /// make's output.
        log: PathBuf,
        /// make's exit status.
        status: String,
        /// The end of the log.
        tail: String,
    },
    /// A kernel file was given along with another kernel origin.
    #[error("a kernel file ({file:?}) and --kernel-from {from} were both given: pass one")]
    KernelConflict {
        /// The kernel file.
        file: PathBuf,
        /// The origin also asked for.
        from: KernelFrom,
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

/// Which kernel the guest gets when no kernel file is given.
///
/// The sandbox kernel is the default. Measured on a 2-core TCG host (see
/// BENCHMARKS.md) it reaches the agent in 40-43% of the cloud kernel's time
/// and its guest uses a fifth of the memory; its first build takes about
/// 6.5 minutes there when the machine is idle, and is cached after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelFrom {
    /// Debian's `linux-image-cloud-amd64`, with its modules.
    Cloud,
    /// The sandbox kernel built from Debian's `linux-source-6.1` with
    /// `x86_64-sandbox.config`: no modules ([`source`]).
    #[default]
    Source,
}

impl KernelFrom {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelFrom::Cloud => "cloud",
            KernelFrom::Source => "source",
        }
    }
}

impl fmt::Display for KernelFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KernelFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cloud" => Ok(KernelFrom::Cloud),
            "source" => Ok(KernelFrom::Source),
            other => Err(format!(
                "unknown kernel origin {other:?}: expected cloud or source"
            )),
        }
    }
}

/// What to build, and where.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Where the kernel comes from; unset: the file in
    /// [`BuildOptions::kernel`] when one is given, else
    /// [`KernelFrom::default`]. Set together with a kernel file, it is an
    /// error ([`ImageError::KernelConflict`]).
    pub kernel_from: Option<KernelFrom>,
    /// Downloads, the kernel source and its builds;
    /// `<asset dir>/cache` when unset.
    pub cache: Option<PathBuf>,
    /// A kernel image to use instead of one of [`KernelFrom`].
    pub kernel: Option<PathBuf>,
    /// The modules directory (`lib/modules/<release>`) of `kernel`. Without
    /// it, the kernel must have what the guest needs built in.
    pub modules: Option<PathBuf>,
    /// The agent binary; found by [`locate_agent`] when unset.
    pub agent: Option<PathBuf>,
    /// Output directory; [`crate::paths::build_asset_dir`] when unset.
    pub output: Option<PathBuf>,
    /// Initrd compression.
    pub compression: Compression,
    /// Rebuild even when the manifest says the outputs are up to date.
    pub force: bool,
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

/// Where the kernel and its modules come from.
enum KernelSource {
    Debian(kernel::KernelPackage),
    Source(source::SourcePackage),
    File {
        kernel: PathBuf,
        modules: Option<PathBuf>,
    },
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
    let out_dir = opts
        .output
        .clone()
        .unwrap_or_else(crate::paths::build_asset_dir);

    let source = kernel_source(opts, progress)?;
    let kernel_identity = match &source {
        KernelSource::Debian(pkg) => pkg.identity(),
        KernelSource::Source(pkg) => pkg.identity(),
        KernelSource::File { kernel, .. } => format!("file:{}", sha256_file(kernel)?),
    };
    progress(&format!("kernel: {kernel_identity}"));
    let (agent, agent_hash) = agent::read_agent(opts.agent.as_deref(), progress)?;
    let (busybox, busybox_hash) = initrd::read_busybox(progress)?;

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

    let cache = opts
        .cache
        .clone()
        .unwrap_or_else(|| crate::paths::asset_dir().join("cache"));
    let files = kernel_files(&source, &cache, progress)?;
    let resolution = resolve_modules(files.modules_dir.as_deref(), progress)?;
    let initrd = initrd::pack(
        &agent,
        &busybox,
        &files,
        &resolution,
        opts.compression,
        &out_dir.join(INITRD_FILE),
        progress,
    )?;

    let kernel_data = fs::read(&files.vmlinuz).map_err(io_err(&files.vmlinuz))?;
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
    let kernel_bytes = write_kernels(&out_dir, &kernels, &mut outputs)?;
    let kernel_path = crate::paths::kernel_in(&out_dir);
    let manifest = Manifest {
        inputs,
        kernel_release: files.release,
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

/// Where the kernel comes from: the file given, the sandbox kernel's
/// source package or Debian's cloud kernel package, resolved.
fn kernel_source(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelSource, ImageError> {
    match (&opts.kernel, &opts.modules, opts.kernel_from) {
        (None, Some(m), _) => Err(ImageError::ModulesWithoutKernel(m.clone())),
        (Some(k), _, Some(from)) => Err(ImageError::KernelConflict {
            file: k.clone(),
            from,
        }),
        (Some(k), m, None) => Ok(KernelSource::File {
            kernel: k.clone(),
            modules: m.clone(),
        }),
        (None, None, from) => match from.unwrap_or_default() {
            KernelFrom::Source => {
                progress(&format!("resolving {}", source::SOURCE_PACKAGE));
                Ok(KernelSource::Source(source::resolve(progress)?))
            }
            KernelFrom::Cloud => {
                progress(&format!("resolving {}", kernel::CLOUD_KERNEL_META));
                Ok(KernelSource::Debian(kernel::resolve(
                    kernel::CLOUD_KERNEL_META,
                )?))
            }
        },
    }
}

/// The kernel image, its modules directory and release, on disk.
struct KernelFiles {
    vmlinuz: PathBuf,
    modules_dir: Option<PathBuf>,
    release: Option<String>,
    /// Keeps the unpacked package alive until the initrd is written.
    _unpacked: Option<kernel::Unpacked>,
}

/// Fetches and unpacks the Debian package, builds the sandbox kernel (or
/// takes it from the cache), or takes the files given.
fn kernel_files(
    source: &KernelSource,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<KernelFiles, ImageError> {
    match source {
        KernelSource::Source(pkg) => {
            let built = source::build(pkg, cache, progress)?;
            Ok(KernelFiles {
                vmlinuz: built.bzimage,
                modules_dir: None,
                release: Some(built.release),
                _unpacked: None,
            })
        }
        KernelSource::Debian(pkg) => {
            progress(&format!("fetching {} {}", pkg.name, pkg.version));
            let (deb, downloaded) = kernel::download(pkg, cache)?;
            progress(&format!(
                "{} {}",
                if downloaded { "downloaded" } else { "cached" },
                deb.display()
            ));
            progress("unpacking with dpkg-deb -x");
            let unpacked = kernel::unpack(&deb)?;
            Ok(KernelFiles {
                vmlinuz: unpacked.vmlinuz.clone(),
                modules_dir: Some(unpacked.modules.clone()),
                release: Some(unpacked.release.clone()),
                _unpacked: Some(unpacked),
            })
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
            Ok(KernelFiles {
                vmlinuz: kernel.clone(),
                modules_dir: modules.clone(),
                release,
                _unpacked: None,
            })
        }
    }
}

/// The modules to load from `modules_dir`, in order; none without one.
fn resolve_modules(
    modules_dir: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<modules::Resolution, ImageError> {
    let Some(dir) = modules_dir else {
        progress("no modules directory: the kernel must have virtio built in");
        return Ok(modules::Resolution::default());
    };
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
    Ok(r)
}

/// Writes the kernel files [`boot_kernels`] chose into `out_dir`, records
/// them in `outputs` and removes the one not chosen; returns the bytes
/// written.
fn write_kernels(
    out_dir: &Path,
    kernels: &[(&'static str, Vec<u8>)],
    outputs: &mut BTreeMap<String, OutputFile>,
) -> Result<usize, ImageError> {
    let mut kernel_bytes = 0;
    for name in [KERNEL_FILE, BZIMAGE_FILE] {
        match kernels.iter().find(|(n, _)| *n == name) {
            Some((_, data)) => {
                write_atomic(out_dir, name, data)?;
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
    Ok(kernel_bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::image::elf::Linkage;

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
    fn a_kernel_file_and_a_kernel_origin_are_exclusive() {
        for from in [KernelFrom::Source, KernelFrom::Cloud] {
            let opts = BuildOptions {
                kernel: Some("/boot/vmlinuz".into()),
                kernel_from: Some(from),
                ..BuildOptions::default()
            };
            let err = build(&opts, &mut |_| {}).expect_err("two kernels");
            assert!(
                matches!(&err, ImageError::KernelConflict { from: f, .. } if *f == from),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("--kernel-from {from}")));
        }
        assert_eq!("source".parse::<KernelFrom>(), Ok(KernelFrom::Source));
        assert_eq!("cloud".parse::<KernelFrom>(), Ok(KernelFrom::Cloud));
        assert_eq!(KernelFrom::default().to_string(), "source");
        assert!("tiny".parse::<KernelFrom>().is_err());
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
