//! The guest kernel: Debian's `linux-image-cloud-amd64`, fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x`, never installed.
//! (The sandbox kernel built from Debian's source is [`super::source`].)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ImageError;

/// The metapackage whose dependency names the current cloud kernel.
pub const CLOUD_KERNEL_META: &str = "linux-image-cloud-amd64";

/// A versioned kernel package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    /// Such as `linux-image-6.1.0-56-cloud-amd64`.
    pub name: String,
    /// Such as `6.1.192-2`.
    pub version: String,
}

impl KernelPackage {
    /// How the manifest names it.
    pub fn identity(&self) -> String {
        format!("debian:{}={}", self.name, self.version)
    }

    /// The file `apt-get download` writes: the epoch's colon is escaped.
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_amd64.deb",
            self.name,
            self.version.replace(':', "%3a")
        )
    }
}

/// Runs a command and returns its stdout.
pub(super) fn run(program: &str, args: &[&str], cwd: Option<&Path>) -> Result<String, ImageError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().map_err(|source| ImageError::Spawn {
        program: program.to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(ImageError::CommandFailed {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first `Depends: linux-image-...` in `apt-cache depends` output.
pub fn parse_depends(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let dep = dep.trim_start_matches('<').trim_end_matches('>');
        dep.starts_with("linux-image-").then(|| dep.to_string())
    })
}

/// The `Version:` field of `apt-cache show` output.
pub fn parse_version(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
}

fn lists_missing(meta: &str, detail: String) -> ImageError {
    ImageError::AptListsMissing {
        package: meta.to_string(),
        detail,
    }
}

/// Resolves the metapackage to its versioned kernel package.
///
/// # Errors
/// [`ImageError::AptListsMissing`] when apt knows neither (no package
/// lists), else the failing command.
pub fn resolve(meta: &str) -> Result<KernelPackage, ImageError> {
    let depends = match run("apt-cache", &["depends", meta], None) {
        Ok(out) => out,
        Err(ImageError::CommandFailed { stderr, .. }) => return Err(lists_missing(meta, stderr)),
        Err(e) => return Err(e),
    };
    let name = parse_depends(&depends).ok_or_else(|| {
        lists_missing(
            meta,
            "apt-cache depends names no linux-image package".into(),
        )
    })?;
    let show = match run("apt-cache", &["show", "--no-all-versions", &name], None) {
        Ok(out) => out,
        Err(ImageError::CommandFailed { stderr, .. }) => return Err(lists_missing(&name, stderr)),
        Err(e) => return Err(e),
    };
    let version = parse_version(&show)
        .ok_or_else(|| lists_missing(&name, "apt-cache show gives no version".into()))?;
    Ok(KernelPackage { name, version })
}

/// Downloads `pkg` into `cache` unless it is there already. Returns the
/// `.deb` path and whether it was downloaded.
///
/// # Errors
/// [`ImageError::AptListsMissing`] when apt cannot find the package, else
/// the failing command.
pub fn download(pkg: &KernelPackage, cache: &Path) -> Result<(PathBuf, bool), ImageError> {
    download_file(
        &format!("{}={}", pkg.name, pkg.version),
        &pkg.deb_file_name(),
        cache,
    )
}

/// Downloads the package `spec` (`name=version`), which apt writes as
/// `file`, into `cache` unless it is there already. Returns the `.deb`
/// path and whether it was downloaded.
///
/// # Errors
/// As [`download`].
pub fn download_file(spec: &str, file: &str, cache: &Path) -> Result<(PathBuf, bool), ImageError> {
    let deb = cache.join(file);
    if deb.is_file() {
        return Ok((deb, false));
    }
    fs::create_dir_all(cache).map_err(|source| ImageError::Io {
        path: cache.to_path_buf(),
        source,
    })?;
    match run("apt-get", &["download", "-q", spec], Some(cache)) {
        Ok(_) => {}
        Err(ImageError::CommandFailed { stderr, .. })
            if stderr.contains("Unable to locate")
                || stderr.contains("candidate")
                || stderr.contains("not found") =>
        {
            return Err(lists_missing(spec, stderr))
        }
        Err(e) => return Err(e),
    }
    if !deb.is_file() {
        return Err(ImageError::KernelPackage {
            path: deb,
            reason: "apt-get download succeeded but wrote no such file".into(),
        });
    }
    Ok((deb, true))
}

/// A kernel package unpacked in a temporary directory.
#[derive(Debug)]
pub struct Unpacked {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The kernel image (bzImage).
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
    /// The kernel release.
    pub release: String,
}

/// Unpacks `deb` with `dpkg-deb -x` into a temporary directory.
///
/// # Errors
/// When dpkg-deb fails or the package holds no kernel image or modules.
pub fn unpack(deb: &Path) -> Result<Unpacked, ImageError> {
    let dir = tempfile::Builder::new()
        .prefix("sandvisor-kernel-")
        .tempdir()
        .map_err(|source| ImageError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let deb_str = deb.to_string_lossy();
    let dest = dir.path().to_string_lossy().into_owned();
    run("dpkg-deb", &["-x", &deb_str, &dest], None)?;
    let bad = |reason: &str| ImageError::KernelPackage {
        path: deb.to_path_buf(),
        reason: reason.to_string(),
    };
    // Merged-/usr packages put modules under usr/lib.
    let modules_root = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|p| dir.path().join(p))
        .find(|p| p.is_dir())
        .ok_or_else(|| bad("it has no lib/modules directory"))?;
    let mut releases: Vec<_> = fs::read_dir(&modules_root)
        .map_err(|source| ImageError::Io {
            path: modules_root.clone(),
            source,
        })?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    releases.sort();
    let release = match releases.as_slice() {
        [one] => one.clone(),
        _ => return Err(bad("it does not hold exactly one lib/modules/<release>")),
    };
    let vmlinuz = dir.path().join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(bad(&format!("it has no boot/vmlinuz-{release}")));
    }
    Ok(Unpacked {
        modules: modules_root.join(&release),
        vmlinuz,
        release,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_output() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
        assert_eq!(parse_depends("x\n  Depends: libc6\n"), None);
    }

    #[test]
    fn show_output() {
        let out =
            "Package: linux-image-6.1.0-56-cloud-amd64\nVersion: 6.1.192-2\nArchitecture: amd64\n";
        assert_eq!(parse_version(out).as_deref(), Some("6.1.192-2"));
    }

    #[test]
    fn deb_file_names_escape_the_epoch() {
        let p = KernelPackage {
            name: "linux-image-x".into(),
            version: "1:6.1-2".into(),
        };
        assert_eq!(p.deb_file_name(), "linux-image-x_1%3a6.1-2_amd64.deb");
        assert_eq!(p.identity(), "debian:linux-image-x=1:6.1-2");
    }
}
