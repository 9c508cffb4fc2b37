//! The sandbox kernel: Debian's kernel source (`linux-source-6.1`) built
//! with the project's configuration fragment
//! ([`FRAGMENT`], `kernel/x86_64-sandbox.config`): everything a sandbox
//! needs built in, no modules.
//!
//! Steps, each reported through the progress callback:
//!
//! 1. **resolve**: the source package's version, the cloud kernel's when
//!    apt has it ([`choose_version`]), so both kernels come from the same
//!    Debian upload;
//! 2. **fetch**: `apt-get download` into the cache;
//! 3. **unpack**: the `.deb` holds `usr/src/linux-source-6.1.tar.xz`,
//!    unpacked into `<cache>/kernel/linux-source-6.1` (one version at a
//!    time: a new version replaces the tree and its build directory);
//! 4. **configure**: `make tinyconfig`, the fragment merged with
//!    `scripts/kconfig/merge_config.sh`, `make olddefconfig`, then
//!    [`check_config`]: an option Kconfig dropped (a missing dependency)
//!    fails the build, named;
//! 5. **build**: `make bzImage` (which links `vmlinux` first) with the
//!    host compiler, under `nice`, in `<cache>/kernel/build`, kept between
//!    builds so a changed fragment rebuilds only what it touches. A line
//!    every [`PROGRESS_EVERY`] says the elapsed time and make's last step.
//!
//! The result is cached in `<cache>/kernel/out/<key>`, `key` being the hash
//! of the source package, its version, the fragment and [`RECIPE_VERSION`]:
//! the same inputs never build twice. A new build removes the older ones.

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::kernel::{self, KernelPackage};
use super::manifest::sha256;
use super::{io_err, ImageError};

/// Debian's kernel source package for the cloud kernel's series.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";

/// The directory the source tarball unpacks to.
const SOURCE_DIR: &str = "linux-source-6.1";

/// Where the package keeps the tarball.
const TARBALL_IN_DEB: &str = "./usr/src/linux-source-6.1.tar.xz";

/// The configuration fragment, applied on top of `make tinyconfig`.
pub const FRAGMENT: &str = include_str!("kernel/x86_64-sandbox.config");

/// Bump when the build recipe (targets, make variables, configure steps)
/// changes, so that cached kernels built the old way are not reused.
pub const RECIPE_VERSION: u32 = 1;

/// How often a running build reports.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The release suffix the fragment sets (`CONFIG_LOCALVERSION`): `uname -r`
/// of the sandbox kernel ends with it.
pub const LOCALVERSION: &str = "-sandvisor";

/// The source package to build and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePackage {
    /// The package: [`SOURCE_PACKAGE`].
    pub package: KernelPackage,
    /// Whether its version is the cloud kernel's.
    pub matches_cloud: bool,
}

impl SourcePackage {
    /// The `.deb` file `apt-get download` writes (the package is
    /// architecture-independent).
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_all.deb",
            self.package.name,
            self.package.version.replace(':', "%3a")
        )
    }

    /// The cache key of a kernel built from it with [`FRAGMENT`].
    pub fn key(&self) -> String {
        cache_key(&self.package.name, &self.package.version, FRAGMENT)
    }

    /// How the manifest names the kernel: the package, its version, and
    /// the fragment's hash.
    pub fn identity(&self) -> String {
        format!(
            "source:{}={};config:{}",
            self.package.name,
            self.package.version,
            &sha256(FRAGMENT.as_bytes())[..16]
        )
    }
}

/// The cache key of a kernel from `package` at `version` with `fragment`.
pub fn cache_key(package: &str, version: &str, fragment: &str) -> String {
    let text = format!("recipe {RECIPE_VERSION}\n{package}={version}\n{fragment}");
    sha256(text.as_bytes())[..16].to_string()
}

/// The version to build: the cloud kernel's (`cloud`) when apt offers it
/// (`available`), so the two kernels differ only in configuration; else
/// apt's `candidate`. Returns the version and whether it matched.
pub fn choose_version(
    cloud: Option<&str>,
    available: &[String],
    candidate: &str,
) -> (String, bool) {
    match cloud {
        Some(v) if available.iter().any(|a| a == v) => (v.to_string(), true),
        _ => (candidate.to_string(), false),
    }
}

/// Every `Version:` of `apt-cache show` output, first (the candidate)
/// first.
pub fn parse_versions(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .collect()
}

/// Resolves [`SOURCE_PACKAGE`]'s version against the cloud kernel's.
///
/// # Errors
/// [`ImageError::AptListsMissing`] when apt does not know the package.
pub fn resolve(progress: &mut dyn FnMut(&str)) -> Result<SourcePackage, ImageError> {
    let cloud = kernel::resolve(kernel::CLOUD_KERNEL_META).ok();
    let missing = |detail: String| ImageError::AptListsMissing {
        package: SOURCE_PACKAGE.to_string(),
        detail,
    };
    let candidate = match kernel::run(
        "apt-cache",
        &["show", "--no-all-versions", SOURCE_PACKAGE],
        None,
    ) {
        Ok(out) => kernel::parse_version(&out)
            .ok_or_else(|| missing("apt-cache show gives no version".into()))?,
        Err(ImageError::CommandFailed { stderr, .. }) => return Err(missing(stderr)),
        Err(e) => return Err(e),
    };
    let all = kernel::run("apt-cache", &["show", SOURCE_PACKAGE], None)
        .map(|out| parse_versions(&out))
        .unwrap_or_default();
    let (version, matches_cloud) =
        choose_version(cloud.as_ref().map(|c| c.version.as_str()), &all, &candidate);
    progress(&format!(
        "kernel source: {SOURCE_PACKAGE} {version} ({})",
        match (&cloud, matches_cloud) {
            (Some(c), true) => format!("the version of {}", c.name),
            (Some(c), false) => format!(
                "apt's candidate; {} {} has no source package here",
                c.name, c.version
            ),
            (None, _) => "apt's candidate; the cloud kernel is unknown to apt".into(),
        }
    ));
    Ok(SourcePackage {
        package: KernelPackage {
            name: SOURCE_PACKAGE.to_string(),
            version,
        },
        matches_cloud,
    })
}

/// What a fragment line asks for: `(CONFIG_NAME, value)`, `n` for
/// `# CONFIG_NAME is not set`.
fn config_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        let name = rest.strip_suffix(" is not set")?;
        return name.starts_with("CONFIG_").then_some((name, "n"));
    }
    let (name, value) = line.split_once('=')?;
    name.starts_with("CONFIG_").then_some((name, value))
}

/// The options a config file sets, in order.
pub fn parse_config(text: &str) -> Vec<(&str, &str)> {
    text.lines().filter_map(config_line).collect()
}

/// One option the final configuration does not have as the fragment asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `CONFIG_...`.
    pub option: String,
    /// What the fragment asks for.
    pub wanted: String,
    /// What the configuration has (`n` when absent).
    pub got: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={} (got {})", self.option, self.wanted, self.got)
    }
}

/// Every option of `fragment` that `config` (a `.config` after
/// `olddefconfig`) does not have with the value asked for. An option
/// missing from `config` counts as `n`, as Kconfig reads it.
pub fn check_config(fragment: &str, config: &str) -> Vec<Mismatch> {
    let have: std::collections::HashMap<&str, &str> = parse_config(config).into_iter().collect();
    parse_config(fragment)
        .into_iter()
        .filter_map(|(option, wanted)| {
            let got = have.get(option).copied().unwrap_or("n");
            (got != wanted).then(|| Mismatch {
                option: option.to_string(),
                wanted: wanted.to_string(),
                got: got.to_string(),
            })
        })
        .collect()
}

/// A built sandbox kernel in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The bzImage (its payload is the PVH ELF `vmlinux`).
    pub bzimage: PathBuf,
    /// `make kernelrelease`: `6.1.192-sandvisor`.
    pub release: String,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// The kernel's directories in the cache.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<cache>/kernel`.
    pub root: PathBuf,
}

impl Layout {
    /// The layout under `cache`.
    pub fn new(cache: &Path) -> Layout {
        Layout {
            root: cache.join("kernel"),
        }
    }

    /// The unpacked source tree.
    pub fn source(&self) -> PathBuf {
        self.root.join(SOURCE_DIR)
    }

    /// Names the package and version the tree was unpacked from.
    pub fn stamp(&self) -> PathBuf {
        self.root.join("source.stamp")
    }

    /// The build directory (`make O=`).
    pub fn build(&self) -> PathBuf {
        self.root.join("build")
    }

    /// The cached result for `key`.
    pub fn out(&self, key: &str) -> PathBuf {
        self.root.join("out").join(key)
    }
}

const BZIMAGE: &str = "bzImage";
const RELEASE: &str = "release";

/// The kernel for `pkg`: from the cache, or built.
///
/// # Errors
/// A failing step: download, unpack, configure (with the options that did
/// not stick), or the build (with the end of its log).
pub fn build(
    pkg: &SourcePackage,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, ImageError> {
    let layout = Layout::new(cache);
    let key = pkg.key();
    let out = layout.out(&key);
    if let (true, Ok(release)) = (
        out.join(BZIMAGE).is_file(),
        fs::read_to_string(out.join(RELEASE)),
    ) {
        progress(&format!("kernel: cached build {}", out.display()));
        return Ok(Built {
            bzimage: out.join(BZIMAGE),
            release: release.trim().to_string(),
            cached: true,
        });
    }
    let started = Instant::now();
    progress(&format!(
        "kernel: fetching {} {}",
        pkg.package.name, pkg.package.version
    ));
    let (deb, downloaded) = kernel::download_file(
        &format!("{}={}", pkg.package.name, pkg.package.version),
        &pkg.deb_file_name(),
        cache,
    )?;
    progress(&format!(
        "kernel: {} {}",
        if downloaded { "downloaded" } else { "cached" },
        deb.display()
    ));
    unpack(pkg, &deb, &layout, progress)?;
    configure(&layout, progress)?;
    let release = make_kernel(&layout, progress)?;
    fs::create_dir_all(&out).map_err(io_err(&out))?;
    let built = layout.build().join("arch/x86/boot/bzImage");
    copy(&built, &out.join(BZIMAGE))?;
    copy(&layout.build().join(".config"), &out.join("config"))?;
    fs::write(out.join(RELEASE), format!("{release}\n")).map_err(io_err(&out))?;
    for old in prune_other_builds(&layout, &key) {
        progress(&format!(
            "kernel: removed the older build {}",
            old.display()
        ));
    }
    progress(&format!(
        "kernel: {release} ready in {:.0}s: {}",
        started.elapsed().as_secs_f64(),
        out.display()
    ));
    Ok(Built {
        bzimage: out.join(BZIMAGE),
        release,
        cached: false,
    })
}

/// Removes cached builds other than `keep`'s: the build directory holds
/// only the newest configuration, so an older result could not be rebuilt
/// incrementally anyway. Returns what was removed; what cannot be removed
/// stays, to be tried again next time.
fn prune_other_builds(layout: &Layout, keep: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(layout.root.join("out")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str() != Some(keep))
        .map(|e| e.path())
        .filter(|p| p.is_dir() && fs::remove_dir_all(p).is_ok())
        .collect()
}

fn copy(from: &Path, to: &Path) -> Result<(), ImageError> {
    fs::copy(from, to).map(|_| ()).map_err(io_err(from))
}

/// Unpacks the tarball in `deb` unless the tree is from this package.
fn unpack(
    pkg: &SourcePackage,
    deb: &Path,
    layout: &Layout,
    progress: &mut dyn FnMut(&str),
) -> Result<(), ImageError> {
    let wanted = format!("{}={}", pkg.package.name, pkg.package.version);
    let stamp = layout.stamp();
    if fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == wanted) && layout.source().is_dir() {
        progress(&format!(
            "kernel: source tree of {wanted} in {}",
            layout.source().display()
        ));
        return Ok(());
    }
    for dir in [layout.source(), layout.build()] {
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
    }
    let _ = fs::remove_file(&stamp);
    fs::create_dir_all(&layout.root).map_err(io_err(&layout.root))?;
    progress(&format!(
        "kernel: unpacking {} into {}",
        TARBALL_IN_DEB,
        layout.root.display()
    ));
    let started = Instant::now();
    // dpkg-deb --fsys-tarfile | tar -xO <tarball> | tar -xJ: the tarball
    // never lands on disk whole.
    let spawn = |cmd: &mut Command, program: &str| {
        cmd.spawn().map_err(|source| ImageError::Spawn {
            program: program.to_string(),
            source,
        })
    };
    let mut deb_tar = spawn(
        Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(deb)
            .stdout(Stdio::piped()),
        "dpkg-deb",
    )?;
    let outer = deb_tar.stdout.take().map_or_else(Stdio::null, Stdio::from);
    let mut pick = spawn(
        Command::new("tar")
            .args(["-xO", TARBALL_IN_DEB])
            .stdin(outer)
            .stdout(Stdio::piped()),
        "tar",
    )?;
    let inner = pick.stdout.take().map_or_else(Stdio::null, Stdio::from);
    let mut extract = spawn(
        Command::new("tar")
            .arg("-xJ")
            .arg("-C")
            .arg(&layout.root)
            .stdin(inner),
        "tar",
    )?;
    let statuses = [
        ("dpkg-deb --fsys-tarfile", deb_tar.wait()),
        ("tar -xO", pick.wait()),
        ("tar -xJ", extract.wait()),
    ];
    for (command, status) in statuses {
        let status = status.map_err(|source| ImageError::Spawn {
            program: command.to_string(),
            source,
        })?;
        if !status.success() {
            return Err(ImageError::CommandFailed {
                command: format!("{command} (unpacking {})", deb.display()),
                status: status.to_string(),
                stderr: String::new(),
            });
        }
    }
    if !layout.source().join("Makefile").is_file() {
        return Err(ImageError::KernelPackage {
            path: deb.to_path_buf(),
            reason: format!("its tarball has no {SOURCE_DIR}/Makefile"),
        });
    }
    fs::write(&stamp, format!("{wanted}\n")).map_err(io_err(&stamp))?;
    progress(&format!(
        "kernel: unpacked in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `make` in the source tree with the build directory and architecture.
fn make(layout: &Layout) -> Command {
    let mut cmd = Command::new("make");
    cmd.current_dir(layout.source())
        .arg("ARCH=x86_64")
        .arg(format!("O={}", layout.build().display()));
    cmd
}

fn run_quiet(mut cmd: Command, what: &str) -> Result<String, ImageError> {
    let out = cmd.output().map_err(|source| ImageError::Spawn {
        program: what.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(ImageError::CommandFailed {
            command: what.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// tinyconfig, the fragment, olddefconfig, and the check that every option
/// of the fragment survived.
fn configure(layout: &Layout, progress: &mut dyn FnMut(&str)) -> Result<(), ImageError> {
    let build = layout.build();
    fs::create_dir_all(&build).map_err(io_err(&build))?;
    progress("kernel: configuring: tinyconfig + x86_64-sandbox.config + olddefconfig");
    let mut tiny = make(layout);
    tiny.arg("-s").arg("tinyconfig");
    run_quiet(tiny, "make tinyconfig")?;
    let fragment = build.join("sandvisor.config");
    fs::write(&fragment, FRAGMENT).map_err(io_err(&fragment))?;
    let mut merge = Command::new(layout.source().join("scripts/kconfig/merge_config.sh"));
    merge
        .current_dir(layout.source())
        .env("ARCH", "x86_64")
        .arg("-m")
        .arg("-O")
        .arg(&build)
        .arg(build.join(".config"))
        .arg(&fragment);
    run_quiet(merge, "scripts/kconfig/merge_config.sh")?;
    let mut old = make(layout);
    old.arg("-s").arg("olddefconfig");
    run_quiet(old, "make olddefconfig")?;
    let config_path = build.join(".config");
    let config = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
    let mismatches = check_config(FRAGMENT, &config);
    if !mismatches.is_empty() {
        return Err(ImageError::KernelConfig {
            config: config_path,
            mismatches: mismatches.iter().map(ToString::to_string).collect(),
        });
    }
    progress(&format!(
        "kernel: configuration has all {} options of the fragment",
        parse_config(FRAGMENT).len()
    ));
    Ok(())
}

/// The last line of `log` that names a build step.
fn last_step(log: &Path) -> Option<String> {
    let file = File::open(log).ok()?;
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("  "))
        .last()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Builds the bzImage; returns the kernel release.
fn make_kernel(layout: &Layout, progress: &mut dyn FnMut(&str)) -> Result<String, ImageError> {
    let jobs = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let log_path = layout.build().join("build.log");
    let log = File::create(&log_path).map_err(io_err(&log_path))?;
    let log2 = log.try_clone().map_err(io_err(&log_path))?;
    progress(&format!(
        "kernel: building bzImage with make -j{jobs} under nice (log: {})",
        log_path.display()
    ));
    // nice: the build takes minutes of every core; it yields to the work
    // the machine is there for.
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "19", "make"])
        .current_dir(layout.source())
        .arg("ARCH=x86_64")
        .arg(format!("O={}", layout.build().display()))
        .arg(format!("-j{jobs}"))
        .arg("bzImage")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| ImageError::Spawn {
        program: "make".into(),
        source,
    })?;
    let mut next_report = PROGRESS_EVERY;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => {
                return Err(ImageError::Spawn {
                    program: "make".into(),
                    source,
                })
            }
        }
        if started.elapsed() >= next_report {
            progress(&format!(
                "kernel: building, {:.0}s: {}",
                started.elapsed().as_secs_f64(),
                last_step(&log_path).unwrap_or_default()
            ));
            next_report += PROGRESS_EVERY;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !status.success() {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        return Err(ImageError::KernelBuild {
            log: log_path,
            status: status.to_string(),
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    progress(&format!(
        "kernel: built in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    let mut rel = make(layout);
    rel.arg("-s").arg("kernelrelease");
    Ok(run_quiet(rel, "make kernelrelease")?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_asks_for_what_a_sandbox_needs() {
        let wanted: std::collections::HashMap<_, _> = parse_config(FRAGMENT).into_iter().collect();
        for (option, value) in [
            ("CONFIG_MODULES", "n"),
            ("CONFIG_PVH", "y"),
            ("CONFIG_ACPI", "y"),
            ("CONFIG_VIRTIO_PCI", "y"),
            ("CONFIG_VIRTIO_MMIO", "y"),
            ("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y"),
            ("CONFIG_VIRTIO_BLK", "y"),
            ("CONFIG_VIRTIO_NET", "y"),
            ("CONFIG_VIRTIO_CONSOLE", "y"),
            ("CONFIG_HW_RANDOM_VIRTIO", "y"),
            ("CONFIG_VIRTIO_VSOCKETS", "y"),
            ("CONFIG_VIRTIO_FS", "y"),
            ("CONFIG_VIRTIO_MEM", "y"),
            ("CONFIG_VIRTIO_BALLOON", "y"),
            ("CONFIG_EXT4_FS", "y"),
            ("CONFIG_OVERLAY_FS", "y"),
            ("CONFIG_FUSE_FS", "y"),
            ("CONFIG_SERIAL_8250_CONSOLE", "y"),
            ("CONFIG_DEVTMPFS", "y"),
            ("CONFIG_DRM", "n"),
            ("CONFIG_SOUND", "n"),
            ("CONFIG_USB_SUPPORT", "n"),
            ("CONFIG_WLAN", "n"),
            ("CONFIG_LOCALVERSION", "\"-sandvisor\""),
        ] {
            assert_eq!(wanted.get(option), Some(&value), "{option}");
        }
        assert_eq!(wanted["CONFIG_LOCALVERSION"], format!("\"{LOCALVERSION}\""));
    }

    #[test]
    fn the_fragment_sets_each_option_once() {
        let mut seen = std::collections::HashSet::new();
        for (option, _) in parse_config(FRAGMENT) {
            assert!(seen.insert(option), "{option} is set twice");
        }
    }

    #[test]
    fn a_dropped_option_is_named_and_absent_means_n() {
        let fragment = "# why\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\nCONFIG_D=y\n";
        let config = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=\"x\"\n# CONFIG_D is not set\n";
        let m = check_config(fragment, config);
        assert_eq!(
            m.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["CONFIG_B=n (got y)", "CONFIG_D=y (got n)"]
        );
        // Absent from .config is n, which a "not set" request accepts.
        assert!(check_config("# CONFIG_E is not set\n", "CONFIG_A=y\n").is_empty());
        assert_eq!(
            check_config("CONFIG_E=y\n", "")[0].to_string(),
            "CONFIG_E=y (got n)"
        );
    }

    #[test]
    fn comments_are_not_options() {
        assert_eq!(
            parse_config("# CONFIG_X: a remark\n# plain words\nnot=config\nCONFIG_Y=m\n"),
            [("CONFIG_Y", "m")]
        );
    }

    #[test]
    fn the_cloud_kernels_version_wins_when_apt_has_its_source() {
        let available = vec!["6.1.192-3".to_string(), "6.1.192-2".to_string()];
        assert_eq!(
            choose_version(Some("6.1.192-2"), &available, "6.1.192-3"),
            ("6.1.192-2".to_string(), true)
        );
        assert_eq!(
            choose_version(Some("6.1.150-1"), &available, "6.1.192-3"),
            ("6.1.192-3".to_string(), false)
        );
        assert_eq!(
            choose_version(None, &available, "6.1.192-3"),
            ("6.1.192-3".to_string(), false)
        );
        assert_eq!(
            parse_versions("Package: x\nVersion: 2\n\nPackage: x\nVersion: 1\n"),
            ["2", "1"]
        );
    }

    #[test]
    fn a_new_build_removes_the_older_ones_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        assert!(prune_other_builds(&layout, "new").is_empty());
        for key in ["old", "new"] {
            fs::create_dir_all(layout.out(key)).expect("mkdir");
            fs::write(layout.out(key).join(BZIMAGE), b"k").expect("write");
        }
        assert_eq!(prune_other_builds(&layout, "new"), [layout.out("old")]);
        assert!(!layout.out("old").exists());
        assert!(layout.out("new").join(BZIMAGE).is_file());
    }

    #[test]
    fn the_key_follows_version_and_fragment() {
        let a = cache_key("linux-source-6.1", "6.1.192-3", "CONFIG_A=y\n");
        assert_eq!(a.len(), 16);
        assert_eq!(
            a,
            cache_key("linux-source-6.1", "6.1.192-3", "CONFIG_A=y\n")
        );
        assert_ne!(
            a,
            cache_key("linux-source-6.1", "6.1.192-2", "CONFIG_A=y\n")
        );
        assert_ne!(
            a,
            cache_key("linux-source-6.1", "6.1.192-3", "CONFIG_A=n\n")
        );
        let p = SourcePackage {
            package: KernelPackage {
                name: SOURCE_PACKAGE.into(),
                version: "6.1.192-3".into(),
            },
            matches_cloud: true,
        };
        assert_eq!(p.deb_file_name(), "linux-source-6.1_6.1.192-3_all.deb");
        assert!(p
            .identity()
            .starts_with("source:linux-source-6.1=6.1.192-3;config:"));
    }
}
