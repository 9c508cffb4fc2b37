//! Choosing the kernel modules the guest needs, with their dependencies,
//! in load order.
//!
//! Dependencies come from the kernel's `modules.dep` when the modules
//! directory has one (an installed kernel: depmod wrote it); a kernel
//! package unpacked with `dpkg-deb -x` has none, since depmod runs at
//! install time, so they then come from each module's `.modinfo`
//! `depends=` field, which is what modpost computed and depmod reads.
//! Modules listed in `modules.builtin` are part of the kernel and need no
//! loading.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::{elf, ImageError};

/// A module the guest wants, and whether the build fails without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Module name, with underscores.
    pub name: &'static str,
    /// Fail the build when the kernel has it neither built in nor as a
    /// module.
    pub required: bool,
}

const fn req(name: &'static str) -> Wanted {
    Wanted {
        name,
        required: true,
    }
}

const fn opt(name: &'static str) -> Wanted {
    Wanted {
        name,
        required: false,
    }
}

/// What the guest needs: PCI and MMIO virtio transports, the agent's
/// virtio-serial port, disks (virtio-blk, virtio-scsi and its disk driver),
/// network, entropy, the vsock agent channel, shared file systems (9p,
/// virtio-fs), ext4, pmem/NVDIMM and memory hot-plug. Kernels differ in
/// what they build (Debian's cloud kernel has no 9p), so only the agent's
/// channel and disks are required.
pub const WANTED: &[Wanted] = &[
    req("virtio_pci"),
    opt("virtio_mmio"),
    req("virtio_console"),
    req("virtio_blk"),
    req("virtio_scsi"),
    req("sd_mod"),
    opt("virtio_net"),
    opt("virtio_rng"),
    opt("virtio_balloon"),
    opt("vsock"),
    opt("vmw_vsock_virtio_transport"),
    opt("9p"),
    opt("9pnet_virtio"),
    opt("virtiofs"),
    req("ext4"),
    opt("nd_pmem"),
    opt("virtio_pmem"),
    opt("virtio_mem"),
];

/// The modules the agent's channel needs, loaded before it serves: the
/// virtio PCI transport and the virtio-serial console driver. The agent
/// adds `virtio_mmio` when the machine has virtio-mmio devices (microvm);
/// drivers for the other devices load while the host says hello.
pub const EARLY: &[Wanted] = &[req("virtio_pci"), req("virtio_console")];

/// A module chosen for the initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name.
    pub name: String,
    /// Path relative to the modules directory, as found (maybe compressed).
    pub rel_path: PathBuf,
    /// The modules it needs loaded first (built-in ones left out).
    pub deps: Vec<String>,
}

impl Module {
    /// Where it goes in the initrd, under `lib/modules/<release>`:
    /// the found path without a compression suffix.
    pub fn stored_rel_path(&self) -> PathBuf {
        let s = self.rel_path.to_string_lossy();
        let stripped = [".xz", ".zst", ".gz"]
            .iter()
            .find_map(|ext| s.strip_suffix(ext))
            .unwrap_or(&s);
        PathBuf::from(stripped)
    }
}

/// The result of resolving [`WANTED`] against one modules directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Modules to load, dependencies first.
    pub load_order: Vec<Module>,
    /// Wanted modules the kernel has built in.
    pub builtin: Vec<String>,
    /// Optional modules the kernel does not have.
    pub missing_optional: Vec<String>,
    /// Whether dependencies came from `modules.dep`.
    pub from_modules_dep: bool,
    /// Names of the modules in `load_order` that [`EARLY`] needs, with
    /// their dependencies; filled by [`resolve_split`].
    pub early: BTreeSet<String>,
}

/// [`resolve`] of `wanted`, with [`Resolution::early`] naming the modules
/// `early` needs.
///
/// # Errors
/// As [`resolve`], for either list.
pub fn resolve_split(
    dir: &Path,
    wanted: &[Wanted],
    early: &[Wanted],
) -> Result<Resolution, ImageError> {
    let mut res = resolve(dir, wanted)?;
    let first = resolve(dir, early)?;
    res.early = first.load_order.into_iter().map(|m| m.name).collect();
    Ok(res)
}

/// A module name as the kernel spells it: dashes become underscores.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(file_name: &str) -> Option<String> {
    let base = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))?;
    Some(normalize(base))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a module file, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz`.
///
/// # Errors
/// [`ImageError::Io`] when it cannot be read, [`ImageError::BadModule`] when
/// it does not decompress.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let raw = fs::read(path).map_err(io_err(path))?;
    let bad = |reason: String| ImageError::BadModule {
        path: path.to_path_buf(),
        reason,
    };
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
            .map_err(|e| bad(format!("bad xz data: {e}")))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        zstd::decode_all(raw.as_slice()).map_err(|e| bad(format!("bad zstd data: {e}")))
    } else if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("bad gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Every module file under `dir/kernel`, by name.
fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>, ImageError> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.join("kernel")];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == dir.join("kernel") => {
                return Err(ImageError::BadModulesDir {
                    dir: dir.to_path_buf(),
                    reason: "it has no kernel/ subdirectory".into(),
                })
            }
            Err(e) => return Err(io_err(&d)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io_err(&path))?;
            if ft.is_dir() {
                stack.push(path);
            } else if let Some(name) = entry.file_name().to_str().and_then(module_name) {
                let rel = path
                    .strip_prefix(dir)
                    .expect("walked paths are under the modules dir")
                    .to_path_buf();
                found.insert(name, rel);
            }
        }
    }
    Ok(found)
}

fn read_lines(path: &Path) -> Result<Option<String>, ImageError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// `modules.dep`: module name to the names it depends on.
/// Parses `modules.dep`: each module's direct dependencies.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    let name_of = |p: &str| {
        Path::new(p)
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(module_name)
    };
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().filter_map(name_of).collect();
            Some((name_of(module.trim())?, deps))
        })
        .collect()
}

/// Resolves `wanted` against the modules directory `dir`
/// (`lib/modules/<release>`).
///
/// # Errors
/// [`ImageError::ModuleMissing`] when a required module is neither built in
/// nor present; I/O and parse errors of the files read.
pub fn resolve(dir: &Path, wanted: &[Wanted]) -> Result<Resolution, ImageError> {
    let files = index(dir)?;
    let builtin: BTreeSet<String> = read_lines(&dir.join("modules.builtin"))?
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            Path::new(l.trim())
                .file_name()?
                .to_str()
                .and_then(module_name)
        })
        .collect();
    let modules_dep = read_lines(&dir.join("modules.dep"))?.map(|t| parse_modules_dep(&t));

    let mut res = Resolution {
        from_modules_dep: modules_dep.is_some(),
        ..Resolution::default()
    };
    let mut done = BTreeSet::new();
    let mut visiting = BTreeSet::new();

    struct Walk<'a> {
        dir: &'a Path,
        files: &'a BTreeMap<String, PathBuf>,
        builtin: &'a BTreeSet<String>,
        modules_dep: Option<&'a BTreeMap<String, Vec<String>>>,
    }

    impl Walk<'_> {
        fn deps(&self, name: &str, rel: &Path) -> Result<Vec<String>, ImageError> {
            if let Some(dep) = self.modules_dep {
                return Ok(dep.get(name).cloned().unwrap_or_default());
            }
            let path = self.dir.join(rel);
            let data = read_module(&path)?;
            let info = elf::modinfo(&data).ok_or_else(|| ImageError::BadModule {
                path: path.clone(),
                reason: "no .modinfo section".into(),
            })?;
            let mut deps = info.depends;
            // Soft dependencies are loaded when present, as modprobe does.
            deps.extend(
                info.soft_pre
                    .into_iter()
                    .filter(|d| self.files.contains_key(d) || self.builtin.contains(d)),
            );
            Ok(deps)
        }

        fn visit(
            &self,
            name: &str,
            res: &mut Resolution,
            done: &mut BTreeSet<String>,
            visiting: &mut BTreeSet<String>,
        ) -> Result<bool, ImageError> {
            if done.contains(name) || visiting.contains(name) {
                return Ok(true);
            }
            if self.builtin.contains(name) {
                done.insert(name.to_string());
                return Ok(true);
            }
            let Some(rel) = self.files.get(name) else {
                return Ok(false);
            };
            visiting.insert(name.to_string());
            let deps = self.deps(name, rel)?;
            for dep in &deps {
                if !self.visit(dep, res, done, visiting)? {
                    return Err(ImageError::ModuleMissing {
                        name: dep.clone(),
                        needed_by: Some(name.to_string()),
                        dir: self.dir.to_path_buf(),
                    });
                }
            }
            visiting.remove(name);
            done.insert(name.to_string());
            res.load_order.push(Module {
                name: name.to_string(),
                rel_path: rel.clone(),
                deps: deps
                    .into_iter()
                    .filter(|d| !self.builtin.contains(d))
                    .collect(),
            });
            Ok(true)
        }
    }

    let walk = Walk {
        dir,
        files: &files,
        builtin: &builtin,
        modules_dep: modules_dep.as_ref(),
    };
    for w in wanted {
        if builtin.contains(w.name) {
            res.builtin.push(w.name.to_string());
            continue;
        }
        if !walk.visit(w.name, &mut res, &mut done, &mut visiting)? {
            if w.required {
                return Err(ImageError::ModuleMissing {
                    name: w.name.to_string(),
                    needed_by: None,
                    dir: dir.to_path_buf(),
                });
            }
            res.missing_optional.push(w.name.to_string());
        }
    }
    Ok(res)
}

/// Every module's dependencies, transitively, in load order (a module's
/// dependencies come before it), for `load_order` (which is in load order).
pub fn closures(load_order: &[Module]) -> BTreeMap<String, Vec<String>> {
    let position: BTreeMap<&str, usize> = load_order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name.as_str(), i))
        .collect();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in load_order {
        let mut all = BTreeSet::new();
        for d in &m.deps {
            all.insert(d.clone());
            if let Some(inner) = out.get(d) {
                all.extend(inner.iter().cloned());
            }
        }
        let mut ordered: Vec<String> = all.into_iter().collect();
        ordered.sort_by_key(|n| position.get(n.as_str()).copied().unwrap_or(usize::MAX));
        out.insert(m.name.clone(), ordered);
    }
    out
}

/// `modules.dep` in depmod's format for `load_order`: one line per module,
/// `path: dep dep ...`, paths relative to `lib/modules/<release>`, the
/// dependencies in the order modprobe loads them from the right.
pub fn depmod_dep(load_order: &[Module]) -> String {
    let closures = closures(load_order);
    let path: BTreeMap<&str, String> = load_order
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.stored_rel_path().to_string_lossy().into_owned(),
            )
        })
        .collect();
    let mut text = String::new();
    for m in load_order {
        text.push_str(&path[m.name.as_str()]);
        text.push(':');
        for dep in closures[&m.name].iter().rev() {
            if let Some(p) = path.get(dep.as_str()) {
                text.push(' ');
                text.push_str(p);
            }
        }
        text.push('\n');
    }
    text
}

/// `modules.alias` in depmod's format: `alias <pattern> <module>` for each
/// `(module, aliases)`.
pub fn depmod_alias<'a>(aliases: impl IntoIterator<Item = (&'a str, &'a [String])>) -> String {
    let mut text = String::new();
    for (name, patterns) in aliases {
        for pattern in patterns {
            text.push_str(&format!("alias {pattern} {name}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(module_name("virtio-rng.ko").as_deref(), Some("virtio_rng"));
        assert_eq!(module_name("ext4.ko.xz").as_deref(), Some("ext4"));
        assert_eq!(module_name("modules.dep"), None);
        let m = Module {
            name: "a".into(),
            rel_path: "kernel/a.ko.zst".into(),
            deps: Vec::new(),
        };
        assert_eq!(m.stored_rel_path(), Path::new("kernel/a.ko"));
    }

    fn fake_tree(with_dep: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = dir.path().join("kernel/drivers");
        fs::create_dir_all(&k).expect("mkdir");
        for m in [
            "virtio.ko",
            "virtio_ring.ko",
            "virtio_blk.ko",
            "virtio-rng.ko",
        ] {
            fs::write(k.join(m), b"not really elf").expect("write");
        }
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/ext4/ext4.ko\n",
        )
        .expect("write");
        if with_dep {
            fs::write(
                dir.path().join("modules.dep"),
                "kernel/drivers/virtio_blk.ko: kernel/drivers/virtio_ring.ko kernel/drivers/virtio.ko\n\
                 kernel/drivers/virtio_ring.ko: kernel/drivers/virtio.ko\n\
                 kernel/drivers/virtio.ko:\n\
                 kernel/drivers/virtio-rng.ko: kernel/drivers/virtio_ring.ko kernel/drivers/virtio.ko\n",
            )
            .expect("write");
        }
        dir
    }

    #[test]
    fn run_volumes_and_user_networking_have_their_drivers() {
        // `run -v` mounts virtio-fs (fuse comes in as its dependency) and
        // `run --net user` needs virtio-net: both stay in the initrd.
        for name in ["virtiofs", "virtio_net"] {
            assert!(WANTED.iter().any(|w| w.name == name), "{name}");
        }
    }

    #[test]
    fn resolves_from_modules_dep_dependencies_first() {
        let dir = fake_tree(true);
        let wanted = [req("virtio_blk"), opt("virtio_rng"), req("ext4"), opt("9p")];
        let res = resolve(dir.path(), &wanted).expect("resolves");
        let order: Vec<_> = res.load_order.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(order, ["virtio", "virtio_ring", "virtio_blk", "virtio_rng"]);
        assert_eq!(res.builtin, ["ext4"]);
        assert_eq!(res.missing_optional, ["9p"]);
        assert!(res.from_modules_dep);
    }

    #[test]
    fn depmod_files_list_dependencies_for_modprobe() {
        let m = |name: &str, deps: &[&str]| Module {
            name: name.into(),
            rel_path: format!("kernel/{name}.ko.xz").into(),
            deps: deps.iter().map(|d| d.to_string()).collect(),
        };
        let order = [
            m("virtio", &[]),
            m("virtio_ring", &["virtio"]),
            m("virtio_blk", &["virtio_ring", "virtio"]),
            m("sd_mod", &[]),
        ];
        assert_eq!(
            depmod_dep(&order),
            "kernel/virtio.ko:\n\
             kernel/virtio_ring.ko: kernel/virtio.ko\n\
             kernel/virtio_blk.ko: kernel/virtio_ring.ko kernel/virtio.ko\n\
             kernel/sd_mod.ko:\n"
        );
        let c = closures(&[m("a", &[]), m("b", &["a"]), m("c", &["b"])]);
        assert_eq!(c["c"], ["a", "b"], "transitive, in load order");
        let aliases = ["virtio:d00000002v*".to_string()];
        assert_eq!(
            depmod_alias([("virtio_blk", aliases.as_slice())]),
            "alias virtio:d00000002v* virtio_blk\n"
        );
    }

    #[test]
    fn the_early_set_is_a_closure_of_its_modules() {
        let dir = fake_tree(true);
        let wanted = [req("virtio_blk"), opt("virtio_rng")];
        let res = resolve_split(dir.path(), &wanted, &[req("virtio_rng")]).expect("resolves");
        let early: Vec<_> = res.early.iter().map(String::as_str).collect();
        assert_eq!(early, ["virtio", "virtio_ring", "virtio_rng"]);
        assert_eq!(res.load_order.len(), 4, "the full set is unchanged");
        assert!(resolve_split(dir.path(), &wanted, &[req("virtio_scsi")]).is_err());
    }

    #[test]
    fn missing_required_module_is_an_error() {
        let dir = fake_tree(true);
        let err = resolve(dir.path(), &[req("virtio_scsi")]).expect_err("missing");
        assert!(matches!(err, ImageError::ModuleMissing { ref name, .. } if name == "virtio_scsi"));
    }

    #[test]
    fn without_modules_dep_reads_modinfo() {
        // The fake files are not ELF: reading their .modinfo must fail
        // with the module's path.
        let dir = fake_tree(false);
        let err = resolve(dir.path(), &[req("virtio_blk")]).expect_err("not elf");
        assert!(matches!(err, ImageError::BadModule { .. }), "{err}");
    }
}
