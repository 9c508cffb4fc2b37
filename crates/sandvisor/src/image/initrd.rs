//! The initrd: busybox-static, the agent as `/init`, the modules the guest
//! needs with depmod's files, packed into a cpio archive and compressed.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

use super::cpio::{Archive, Entry};
use super::elf::{self, Linkage};
use super::{
    io_err, kernel, manifest::sha256, modules, Compression, ImageError, KernelFiles, BUSYBOX_PATH,
    MODPROBE_PATH, MODULES_EARLY,
};

/// Reads busybox-static; returns it and its SHA-256.
///
/// # Errors
/// [`ImageError::Busybox`] when it is missing or not static.
pub(super) fn read_busybox(
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<u8>, String), ImageError> {
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
    Ok((busybox, busybox_hash))
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

/// The initrd's bytes: the archive [`assemble`] makes, written out and
/// compressed as `how` says; `out` names the initrd in errors.
///
/// # Errors
/// What [`assemble`] reports, and [`ImageError::Io`].
pub(super) fn pack(
    agent: &[u8],
    busybox: &[u8],
    files: &KernelFiles,
    resolution: &modules::Resolution,
    how: Compression,
    out: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<u8>, ImageError> {
    let applets = busybox_applets(Path::new(BUSYBOX_PATH))?;
    let archive = assemble(
        agent,
        busybox,
        &applets,
        files.modules_dir.as_deref(),
        files.release.as_deref(),
        resolution,
    )?;
    let mut cpio = Vec::new();
    archive.write_to(&mut cpio).map_err(io_err(out))?;
    progress(&format!(
        "initrd: {} entries, {} KiB uncompressed; compressing with {}",
        archive.len(),
        cpio.len() / 1024,
        how
    ));
    compress(&cpio, how).map_err(io_err(out))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
