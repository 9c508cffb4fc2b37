//! Loading Kata `configuration.toml` files: the stock files of Kata 1.x and
//! current Kata (as they are, and with every commented key uncommented), and
//! each way a file can be wrong.
//!
//! The fixtures in `data/kata/` hold the sections, keys and default values of
//! Kata's generated files (see `data/kata/README.md`); path placeholders
//! (`@QEMUPATH@`, ...) are filled here with files in a temp directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sandvisor::config::kata::{
    load_config, parse_config, KataConfigError, RuntimeConfig, VsockHost, DEFAULT_MACHINE_TYPE,
};
use sandvisor::config::vocabulary::{hypervisor_key, HostFacts, KeyStatus, ValueError};
use sandvisor::config::{Accel, BlockDeviceDriver, ConfigError, SharedFs};
use sandvisor::param::Param;
use sandvisor::HypervisorType;

const HOST: HostFacts = HostFacts { cpus: 4 };
const NO_VSOCK: &str = "/dev/vhost-vsock does not exist";
const DAEMON: &str = "/opt/test/vhost-device-vsock";
const NO_DAEMON: &str = "vhost-device-vsock not found; looked at nothing";

/// No vhost-vsock; vhost-device-vsock at [`DAEMON`].
fn hybrid_host() -> VsockHost {
    VsockHost {
        no_vhost_vsock: Some(NO_VSOCK.into()),
        daemon: Ok(DAEMON.into()),
    }
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/kata")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces every `@NAME@` with a file under `dir`. Each file is created,
/// except the image when the fixture also names an initrd: a Kata 1.x
/// install ships one of the two, and Kata keeps the one that exists.
fn fill(text: &str, dir: &Path) -> String {
    let has_initrd = text.contains("@INITRDPATH@");
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('@') {
        let Some(len) = rest[start + 1..].find('@') else {
            break;
        };
        let name = &rest[start + 1..start + 1 + len];
        let path = dir.join(name.to_lowercase());
        if !(name == "IMAGEPATH" && has_initrd) {
            std::fs::write(&path, name).expect("write placeholder file");
        }
        out.push_str(&rest[..start]);
        out.push_str(&path.display().to_string());
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Turns every `# key = value` line into `key = value`.
fn uncomment(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(kv)
                if kv.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                }) =>
            {
                kv
            }
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn parse(text: &str, file: &Path) -> Result<RuntimeConfig, KataConfigError> {
    parse_config(text, file, None, HOST, &hybrid_host())
}

/// The keys of the `[hypervisor.*]` section of `text`.
fn section_keys(text: &str) -> BTreeSet<String> {
    let table: toml::Table = text.parse().expect("fixture is TOML");
    let hyp = table["hypervisor"].as_table().expect("a hypervisor table");
    let (_, section) = hyp.iter().next().expect("one section");
    section
        .as_table()
        .expect("a table")
        .keys()
        .cloned()
        .collect()
}

struct StockCase {
    fixture: &'static str,
    hypervisor: HypervisorType,
    uncommented: bool,
    /// `Ok` or the validation error expected.
    expected: Result<(), &'static str>,
}

const STOCK: &[StockCase] = &[
    StockCase {
        fixture: "1.x/configuration-qemu.toml",
        hypervisor: HypervisorType::Qemu,
        uncommented: false,
        expected: Ok(()),
    },
    // Uncommented, it has `enable_template = true` and `use_vsock = true`,
    // which on a host with only vhost-device-vsock is a hybrid vsock, which
    // templates cannot use (Kata 1.x refuses vsock with a factory too).
    StockCase {
        fixture: "1.x/configuration-qemu.toml",
        hypervisor: HypervisorType::Qemu,
        uncommented: true,
        expected: Err("templates cannot use a hybrid vsock"),
    },
    StockCase {
        fixture: "1.x/configuration-clh.toml",
        hypervisor: HypervisorType::Clh,
        uncommented: false,
        expected: Ok(()),
    },
    StockCase {
        fixture: "1.x/configuration-clh.toml",
        hypervisor: HypervisorType::Clh,
        uncommented: true,
        expected: Ok(()),
    },
    StockCase {
        fixture: "1.x/configuration-fc.toml",
        hypervisor: HypervisorType::Firecracker,
        uncommented: false,
        expected: Ok(()),
    },
    // Uncommenting `enable_template = true` with an image: Kata 1.x refuses it too.
    StockCase {
        fixture: "1.x/configuration-fc.toml",
        hypervisor: HypervisorType::Firecracker,
        uncommented: true,
        expected: Err("enable_template"),
    },
    StockCase {
        fixture: "1.x/configuration-acrn.toml",
        hypervisor: HypervisorType::Acrn,
        uncommented: false,
        expected: Ok(()),
    },
    StockCase {
        fixture: "1.x/configuration-acrn.toml",
        hypervisor: HypervisorType::Acrn,
        uncommented: true,
        expected: Ok(()),
    },
    StockCase {
        fixture: "current/configuration-qemu.toml",
        hypervisor: HypervisorType::Qemu,
        uncommented: false,
        expected: Ok(()),
    },
    StockCase {
        fixture: "current/configuration-qemu.toml",
        hypervisor: HypervisorType::Qemu,
        uncommented: true,
        expected: Ok(()),
    },
    StockCase {
        fixture: "current/configuration-clh.toml",
        hypervisor: HypervisorType::Clh,
        uncommented: false,
        expected: Ok(()),
    },
    StockCase {
        fixture: "current/configuration-clh.toml",
        hypervisor: HypervisorType::Clh,
        uncommented: true,
        expected: Ok(()),
    },
    StockCase {
        fixture: "current/configuration-fc.toml",
        hypervisor: HypervisorType::Firecracker,
        uncommented: false,
        expected: Ok(()),
    },
    StockCase {
        fixture: "current/configuration-fc.toml",
        hypervisor: HypervisorType::Firecracker,
        uncommented: true,
        expected: Ok(()),
    },
];

#[test]
fn stock_kata_files_load() {
    for case in STOCK {
        let what = format!("{} (uncommented: {})", case.fixture, case.uncommented);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = fixture(case.fixture);
        if case.uncommented {
            text = uncomment(&text);
        }
        let text = fill(&text, dir.path());
        let file = dir.path().join("configuration.toml");
        let mut rc = parse(&text, &file).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(rc.hypervisor, case.hypervisor, "{what}");
        assert_eq!(rc.source.as_deref(), Some(file.as_path()), "{what}");

        // Exactly one warning per unimplemented Kata key, each naming key
        // and file.
        let unimplemented: BTreeSet<String> = section_keys(&text)
            .into_iter()
            .filter(|k| {
                matches!(
                    hypervisor_key(k).map(|s| s.status),
                    Some(KeyStatus::Unimplemented)
                )
            })
            .collect();
        assert_eq!(
            rc.warnings.len(),
            unimplemented.len(),
            "{what}: {:#?} {unimplemented:?}",
            rc.warnings
        );
        for key in &unimplemented {
            let hits = rc
                .warnings
                .iter()
                .filter(|w| w.contains(&format!("{key:?}")))
                .count();
            assert_eq!(hits, 1, "{what}: {key}");
        }
        assert!(
            rc.warnings
                .iter()
                .all(|w| w.contains(&file.display().to_string())),
            "{what}"
        );

        let kernel = rc.config.kernel_path.clone().expect("kernel set");
        assert!(kernel.starts_with(dir.path()), "{what}: kernel {kernel:?}");
        assert_eq!(rc.config.memory_size, 2048, "{what}");

        match (rc.validate(), case.expected) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{what}: {e}"),
            (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn kata_1x_qemu_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = fill(&fixture("1.x/configuration-qemu.toml"), dir.path());
    let mut rc = parse(&text, &dir.path().join("c.toml")).expect("loads");
    rc.validate().expect("valid");
    let c = &rc.config;
    assert_eq!(c.hypervisor_path, Some(dir.path().join("qemupath")));
    assert_eq!(
        c.initrd_path,
        Some(dir.path().join("initrdpath")),
        "the initrd exists"
    );
    assert_eq!(c.image_path, None, "the image does not");
    assert_eq!(c.hypervisor_machine_type, "pc");
    assert_eq!(c.cpu_features, "pmu=off");
    assert_eq!(c.block_device_driver, Some(BlockDeviceDriver::VirtioScsi));
    assert_eq!(c.shared_fs, SharedFs::Virtio9p);
    assert_eq!(c.num_vcpus, 1);
    assert_eq!(c.default_max_vcpus, HOST.cpus, "0 means the host's CPUs");
    assert_eq!(c.default_bridges, 1);
    assert_eq!(c.msize_9p, 8192);
    assert_eq!(c.firmware_path, None, "an empty path is unset");
    assert_eq!(c.enable_annotations, [".*"]);
    assert_eq!(c.accel, Accel::Auto);
    assert!(!rc.factory.enable_template);
    assert_eq!(
        rc.factory.template_path.as_deref(),
        Some(Path::new("/run/vc/vm/template"))
    );
}

#[test]
fn current_qemu_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = fill(&fixture("current/configuration-qemu.toml"), dir.path());
    let mut rc = parse(&text, &dir.path().join("c.toml")).expect("loads");
    rc.validate().expect("valid");
    let c = &rc.config;
    assert_eq!(c.image_path, Some(dir.path().join("imagepath")));
    assert_eq!(c.initrd_path, None);
    assert_eq!(c.hypervisor_machine_type, "q35");
    assert_eq!(c.shared_fs, SharedFs::VirtioFs);
    assert_eq!(c.msize_9p, 8192);
    assert!(c.disable_block_device_use);
    assert_eq!(
        c.kernel_params,
        [
            Param::new("cgroup_no_v1", "all"),
            Param::new("systemd.unified_cgroup_hierarchy", "1")
        ]
    );
    assert_eq!(
        c.virtio_fs_extra_args,
        ["--thread-pool-size=1", "--announce-submounts"]
    );
    assert_eq!(c.entropy_source.as_deref(), Some(Path::new("/dev/urandom")));
    assert!(rc.warnings.iter().any(|w| w.contains("\"rootfs_type\"")));
    assert!(
        !rc.warnings.iter().any(|w| w.contains("\"rootless\"")),
        "rootless is implemented: {:?}",
        rc.warnings
    );
    assert!(!c.rootless);
}

#[test]
fn firecracker_and_clh_get_kata_forced_settings() {
    for name in [
        "current/configuration-fc.toml",
        "current/configuration-clh.toml",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = fill(&fixture(name), dir.path());
        let rc = parse(&text, &dir.path().join("c.toml")).expect("loads");
        assert!(rc.config.use_vsock && rc.config.disable_vhost_net, "{name}");
    }
}

fn file_in(dir: &Path) -> PathBuf {
    dir.join("configuration.toml")
}

const MINIMAL: &str = "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n";

#[test]
fn unknown_key_is_an_error_with_a_hint() {
    let file = Path::new("/x/y.toml");
    let err = parse(&format!("{MINIMAL}defualt_vcpus = 2\n"), file).expect_err("typo");
    assert_eq!(
        err.to_string(),
        "unknown key \"defualt_vcpus\" in [hypervisor.qemu] of /x/y.toml: did you mean \"default_vcpus\"?"
    );
    let err = parse(&format!("{MINIMAL}frobnicate = 2\n"), file).expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "unknown key \"frobnicate\" in [hypervisor.qemu] of /x/y.toml: remove it (`sandvisor env` prints the keys that are read)"
    );
    let err = parse(
        &format!("{MINIMAL}[factory]\nenable_templat = true\n"),
        file,
    )
    .expect_err("typo");
    assert_eq!(
        err.to_string(),
        "unknown key \"enable_templat\" in [factory] of /x/y.toml: did you mean \"enable_template\"?"
    );
}

#[test]
fn wrong_type_names_key_file_and_type() {
    let file = Path::new("/x/y.toml");
    let cases = [
        (
            "default_vcpus = \"two\"",
            "default_vcpus",
            "expected a number, found a string",
        ),
        (
            "default_memory = 2.5",
            "default_memory",
            "expected an integer, found a float",
        ),
        (
            "default_memory = -1",
            "default_memory",
            "-1 is out of range",
        ),
        (
            "enable_debug = \"yes\"",
            "enable_debug",
            "expected a boolean (true or false), found a string",
        ),
        (
            "kernel_params = [\"a\"]",
            "kernel_params",
            "expected a string, found an array",
        ),
        ("pflashes = [1]", "pflashes", "expected an array of strings"),
    ];
    for (line, key, want) in cases {
        let err = parse(&format!("{MINIMAL}{line}\n"), file).expect_err(line);
        let msg = err.to_string();
        assert!(
            matches!(err, KataConfigError::BadValue { .. }),
            "{line}: {err:?}"
        );
        assert!(
            msg.contains(&format!("{key:?}")) && msg.contains("/x/y.toml") && msg.contains(want),
            "{line}: {msg}"
        );
    }
    let err = parse(
        &format!("{MINIMAL}[factory]\nvm_cache_number = \"3\"\n"),
        file,
    )
    .expect_err("factory type");
    assert!(err.to_string().contains("[factory]"), "{err}");
}

#[test]
fn bad_enum_value_lists_the_allowed_ones() {
    let file = Path::new("/x/y.toml");
    let err = parse(
        &format!("{MINIMAL}block_device_driver = \"floppy\"\n"),
        file,
    )
    .expect_err("floppy");
    match &err {
        KataConfigError::BadValue {
            key,
            problem: ValueError::Enum { value, allowed },
            ..
        } => {
            assert_eq!(key, "block_device_driver");
            assert_eq!(value, "floppy");
            assert_eq!(
                allowed,
                "virtio-scsi, virtio-blk, virtio-blk-ccw, virtio-mmio, nvdimm"
            );
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("\"floppy\"") && msg.contains("virtio-blk"),
        "{msg}"
    );

    let err = parse(&format!("{MINIMAL}shared_fs = \"nfs\"\n"), file).expect_err("nfs");
    assert!(err.to_string().contains("virtio-9p, virtio-fs"), "{err}");
    let err = parse(&format!("{MINIMAL}accel = \"fast\"\n"), file).expect_err("fast");
    assert!(err.to_string().contains("auto, kvm, tcg"), "{err}");
}

#[test]
fn unimplemented_kata_key_gives_exactly_one_warning() {
    let file = Path::new("/x/y.toml");
    for key_line in [
        "rootfs_type = \"ext4\"",
        "valid_entropy_sources = [\"/dev/urandom\"]",
        "sgx_epc_size = 0",
        "guest_memory_dump_path = \"/d\"",
    ] {
        let rc = parse(&format!("{MINIMAL}{key_line}\n"), file).expect(key_line);
        let key = key_line.split(' ').next().expect("a key");
        assert_eq!(rc.warnings.len(), 1, "{key_line}: {:?}", rc.warnings);
        assert!(
            rc.warnings[0].contains(&format!("{key:?}")) && rc.warnings[0].contains("/x/y.toml"),
            "{}",
            rc.warnings[0]
        );
    }
}

#[test]
fn syntax_error_names_file_and_line() {
    let err = parse(
        "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = /i\n",
        Path::new("/x/y.toml"),
    )
    .expect_err("bad TOML");
    match &err {
        KataConfigError::Syntax { line, .. } => assert_eq!(*line, 3),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("TOML syntax error in /x/y.toml at line 3"),
        "{err}"
    );
}

#[test]
fn other_sections_are_ignored() {
    let text = format!(
        "{MINIMAL}[runtime]\nanything = 1\n[agent.kata]\nwhatever = true\n[shim.kata]\npath = \"/s\"\n[proxy.kata]\nx = 1\n[netmon]\ny = 2\n[image]\nservice_offload = false\n"
    );
    let rc = parse(&text, Path::new("/x/y.toml")).expect("other sections are skipped");
    assert!(rc.warnings.is_empty(), "{:?}", rc.warnings);
}

#[test]
fn hypervisor_section_choice() {
    let file = Path::new("/x/y.toml");
    let two = "[hypervisor.qemu]\nkernel = \"/k\"\n[hypervisor.clh]\nkernel = \"/k2\"\n";
    let err = parse(two, file).expect_err("two sections");
    assert_eq!(
        err.to_string(),
        "/x/y.toml has several hypervisor sections (clh, qemu): choose one with --hypervisor"
    );

    let rc = parse_config(
        two,
        file,
        Some(HypervisorType::Clh),
        HOST,
        &VsockHost::vhost_vsock(),
    )
    .expect("clh chosen");
    assert_eq!(rc.hypervisor, HypervisorType::Clh);
    assert_eq!(rc.config.kernel_path.as_deref(), Some(Path::new("/k2")));

    let err = parse_config(
        MINIMAL,
        file,
        Some(HypervisorType::Firecracker),
        HOST,
        &VsockHost::vhost_vsock(),
    )
    .expect_err("absent");
    assert_eq!(
        err.to_string(),
        "--hypervisor firecracker names no section of /x/y.toml, which has [hypervisor.qemu]"
    );

    let err = parse("[hypervisor.stratovirt]\npath = \"/s\"\n", file).expect_err("unknown");
    assert!(err.to_string().contains("[hypervisor.stratovirt]"), "{err}");
    let err = parse("[runtime]\nx = 1\n", file).expect_err("none");
    assert!(matches!(err, KataConfigError::NoHypervisorSection { .. }));
    let err = parse("hypervisor = 1\n", file).expect_err("not a table");
    assert!(matches!(err, KataConfigError::NotATable { .. }));
}

#[test]
fn unset_keys_take_sandvisor_defaults() {
    let rc = parse("[hypervisor.qemu]\n", Path::new("/x/y.toml")).expect("loads");
    let assets = sandvisor::paths::asset_dir();
    // The PVH vmlinux, or the bzImage when only that was built (see the
    // unit tests of `paths::kernel_in`).
    assert_eq!(
        rc.config.kernel_path,
        Some(sandvisor::paths::kernel_in(&assets))
    );
    assert_eq!(rc.config.initrd_path, Some(assets.join("initrd.img")));
    assert_eq!(rc.config.hypervisor_machine_type, DEFAULT_MACHINE_TYPE);
    assert_eq!(
        rc.config.hypervisor_path,
        Some(sandvisor::config::kata::default_qemu_path())
    );
    assert_eq!(rc.config.accel, Accel::Auto);
    // Kata's loader: unset memory_slots means 10 DIMM slots.
    assert_eq!(rc.config.mem_slots, 10);
    let rc = parse(
        "[hypervisor.qemu]\nmemory_slots = 3\n",
        Path::new("/x/y.toml"),
    )
    .expect("loads");
    assert_eq!(rc.config.mem_slots, 3);

    let rc = parse(
        "[hypervisor.qemu]\nimage = \"/img\"\n",
        Path::new("/x/y.toml"),
    )
    .expect("loads");
    assert_eq!(
        rc.config.initrd_path, None,
        "an image excludes the default initrd"
    );
}

#[test]
fn vcpu_keys_follow_kata() {
    let file = Path::new("/x/y.toml");
    let cases: &[(&str, u32, u32)] = &[
        ("default_vcpus = 2", 2, 4),
        ("default_vcpus = -1", 4, 4),
        ("default_vcpus = 64", 4, 4),
        ("default_vcpus = 1.5", 2, 4),
        ("default_vcpus = 0", 1, 4),
        ("default_vcpus = 1\ndefault_maxvcpus = 2", 1, 2),
        ("default_vcpus = 1\ndefault_maxvcpus = 99", 1, 4),
    ];
    for (lines, vcpus, max) in cases {
        let mut rc = parse(&format!("{MINIMAL}{lines}\n"), file).expect(lines);
        rc.validate().expect(lines);
        assert_eq!(
            (rc.config.num_vcpus, rc.config.default_max_vcpus),
            (*vcpus, *max),
            "{lines}"
        );
    }
}

#[test]
fn sandvisor_accel_key() {
    for (value, want) in [
        ("auto", Accel::Auto),
        ("kvm", Accel::Kvm),
        ("tcg", Accel::Tcg),
    ] {
        let rc = parse(&format!("{MINIMAL}accel = \"{value}\"\n"), Path::new("/x")).expect(value);
        assert_eq!(rc.config.accel, want);
    }
}

#[test]
fn memory_below_minimum_fails_validation() {
    let mut rc = parse(
        &format!("{MINIMAL}default_memory = 128\n"),
        Path::new("/x/y.toml"),
    )
    .expect("loads");
    let err = rc.validate().expect_err("too small");
    assert!(matches!(
        err,
        KataConfigError::Invalid {
            source: ConfigError::MemoryTooSmall {
                memory_mib: 128,
                ..
            },
            ..
        }
    ));
}

#[test]
fn image_and_initrd_kept_by_existence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("kata.img");
    let initrd = dir.path().join("kata-initrd.img");
    let text = format!(
        "[hypervisor.qemu]\nkernel = \"/k\"\nimage = \"{}\"\ninitrd = \"{}\"\n",
        image.display(),
        initrd.display()
    );
    let file = file_in(dir.path());

    // Neither exists: both stay, validation names both.
    let mut rc = parse(&text, &file).expect("loads");
    assert!(matches!(
        rc.validate(),
        Err(KataConfigError::Invalid {
            source: ConfigError::ImageAndInitrd { .. },
            ..
        })
    ));

    std::fs::write(&image, "img").expect("write image");
    let rc = parse(&text, &file).expect("loads");
    assert_eq!(
        (
            rc.config.image_path.as_deref(),
            rc.config.initrd_path.as_deref()
        ),
        (Some(image.as_path()), None)
    );

    std::fs::write(&initrd, "initrd").expect("write initrd");
    let mut rc = parse(&text, &file).expect("loads");
    assert!(rc.validate().is_err(), "both exist: refused");

    std::fs::remove_file(&image).expect("remove image");
    let rc = parse(&text, &file).expect("loads");
    assert_eq!(
        (
            rc.config.image_path.as_deref(),
            rc.config.initrd_path.as_deref()
        ),
        (None, Some(initrd.as_path()))
    );
}

#[test]
fn use_vsock_without_vhost_vsock_is_a_hybrid_vsock_or_an_error() {
    let file = Path::new("/x/y.toml");
    let text = format!("{MINIMAL}use_vsock = true\n");
    // The kernel's vhost-vsock opens: used, no daemon.
    let rc = parse_config(&text, file, None, HOST, &VsockHost::vhost_vsock()).expect("loads");
    assert!(rc.config.use_vsock);
    assert_eq!(rc.config.vhost_user_vsock_daemon, None);
    assert!(rc.warnings.is_empty());
    // No vhost-vsock, the daemon found: a hybrid vsock, no warning.
    let rc = parse(&text, file).expect("loads");
    assert!(rc.config.use_vsock, "still vsock, never virtio-serial");
    assert_eq!(
        rc.config.vhost_user_vsock_daemon.as_deref(),
        Some(Path::new(DAEMON))
    );
    assert!(rc.warnings.is_empty(), "{:?}", rc.warnings);
    // Neither: an error naming both.
    let neither = VsockHost {
        no_vhost_vsock: Some(NO_VSOCK.into()),
        daemon: Err(NO_DAEMON.into()),
    };
    let err = parse_config(&text, file, None, HOST, &neither).expect_err("no vsock at all");
    assert!(matches!(err, KataConfigError::NoVsock { .. }), "{err:?}");
    let msg = err.to_string();
    for needle in [
        "/x/y.toml",
        "/dev/vhost-vsock",
        "vhost-device-vsock",
        NO_VSOCK,
        NO_DAEMON,
        "use_vsock = false",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    // Named in the file, the daemon is used even where vhost-vsock opens.
    let named = format!("{text}vhost_user_vsock_daemon = \"/srv/vdv\"\n");
    let rc = parse_config(&named, file, None, HOST, &VsockHost::vhost_vsock()).expect("loads");
    assert_eq!(
        rc.config.vhost_user_vsock_daemon.as_deref(),
        Some(Path::new("/srv/vdv"))
    );
    // Without use_vsock nothing is looked at.
    let rc = parse_config(MINIMAL, file, None, HOST, &neither).expect("loads");
    assert!(!rc.config.use_vsock);
    assert_eq!(rc.config.vhost_user_vsock_daemon, None);
}

#[test]
fn factory_template_maps_to_template_paths() {
    let text = format!("{MINIMAL}[factory]\nenable_template = true\ntemplate_path = \"/run/tpl\"\nvm_cache_number = 0\n");
    let mut rc = parse(&text, Path::new("/x/y.toml")).expect("loads");
    rc.validate().expect("valid: an initrd is set");
    let f = &rc.factory;
    assert!(f.enable_template);
    assert_eq!(f.template_memory_path(), Path::new("/run/tpl/memory"));
    assert_eq!(f.template_devices_state_path(), Path::new("/run/tpl/state"));

    let mut tpl = f.template_vm_config(&rc.config);
    assert!(tpl.boot_to_be_template && !tpl.boot_from_template);
    assert_eq!(
        tpl.memory_path.as_deref(),
        Some(Path::new("/run/tpl/memory"))
    );
    tpl.validate().expect("a template VM config is valid");

    let mut from = f.from_template_vm_config(&rc.config);
    assert!(from.boot_from_template && !from.boot_to_be_template);
    assert_eq!(
        from.devices_state_path.as_deref(),
        Some(Path::new("/run/tpl/state"))
    );
    from.validate().expect("a VM from the template is valid");

    let text =
        "[hypervisor.clh]\nkernel = \"/k\"\nimage = \"/i\"\n[factory]\nvm_cache_number = 2\n";
    let mut rc = parse(text, Path::new("/x/y.toml")).expect("loads");
    assert!(matches!(
        rc.validate(),
        Err(KataConfigError::VmCacheNeedsQemu { .. })
    ));
}

#[test]
fn runtime_rs_template_keys_set_fields() {
    let text = format!(
        "{MINIMAL}boot_to_be_template = true\nmemory_path = \"/m\"\ndevice_state_path = \"/s\"\n"
    );
    let mut rc = parse(&text, Path::new("/x")).expect("loads");
    rc.validate().expect("valid");
    assert!(rc.config.boot_to_be_template);
    assert_eq!(
        rc.config.devices_state_path.as_deref(),
        Some(Path::new("/s"))
    );
}

#[test]
fn load_config_reads_files_and_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    let err = load_config(Some(&missing), None).expect_err("no file");
    assert!(matches!(err, KataConfigError::Read { .. }));

    let file = file_in(dir.path());
    std::fs::write(&file, MINIMAL).expect("write");
    let rc = load_config(Some(&file), None).expect("loads");
    assert_eq!(rc.source.as_deref(), Some(file.as_path()));

    let rc = load_config(None, None).expect("built-in");
    assert_eq!(rc.source, None);
    assert_eq!(rc.hypervisor, HypervisorType::Qemu);
    assert_eq!(rc.config.hypervisor_machine_type, "q35");
}

#[test]
fn effective_config_serialises_under_kata_names() {
    let mut rc = parse(MINIMAL, Path::new("/x")).expect("loads");
    rc.validate().expect("valid");
    let json = serde_json::to_value(rc.effective()).expect("serialises");
    assert_eq!(json["hypervisor"], "qemu");
    assert_eq!(json["default_vcpus"], 1);
    assert_eq!(json["default_memory"], 2048);
    assert_eq!(json["kernel"], "/k");
    assert_eq!(json["factory"]["template_path"], "/run/vc/vm/template");

    // What env prints reads back.
    let text = toml::to_string(&rc.effective()).expect("TOML");
    // Fields Kata fills in at run time are not file keys.
    let runtime_only = ["hypervisor_params =", "vm_id =", "realtime =", "mlock ="];
    let text: String = text
        .lines()
        .filter(|l| !runtime_only.iter().any(|k| l.starts_with(k)))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = text.replace("hypervisor = \"qemu\"\n", "").replacen(
        "default_vcpus",
        "[hypervisor.qemu]\ndefault_vcpus",
        1,
    );
    let back = parse(&text, Path::new("/x")).expect("env output loads back");
    assert_eq!(back.config.kernel_path, rc.config.kernel_path);
}

#[test]
fn firecracker_keys_of_sandvisor_set_the_hot_plug_mode_and_the_jails_ids() {
    let file = Path::new("/etc/fc.toml");
    let text = r#"
[hypervisor.firecracker]
path = "/usr/bin/firecracker"
jailer_path = "/usr/bin/jailer"
kernel = "/k"
initrd = "/i"
hotplug_transport = "mmio"
drive_placeholders = 4
jailer_uid = 1000
jailer_gid = 1001
"#;
    let rc = parse(text, file).expect("loads");
    assert_eq!(rc.hypervisor, HypervisorType::Firecracker);
    assert_eq!(
        rc.config.hotplug_transport,
        Some(sandvisor::config::HotplugMode::Mmio)
    );
    assert_eq!(rc.config.drive_placeholders, Some(4));
    assert_eq!(
        (rc.config.jailer_uid, rc.config.jailer_gid),
        (Some(1000), Some(1001))
    );
    assert!(rc.warnings.is_empty(), "{:?}", rc.warnings);

    let bad = text.replace("\"mmio\"", "\"isa\"");
    let e = parse(&bad, file).expect_err("isa is no transport");
    assert!(e.to_string().contains("hotplug_transport"), "{e}");
}

#[test]
fn a_key_or_value_the_sections_hypervisor_cannot_honour_is_refused() {
    let file = Path::new("/etc/k.toml");
    let cases: &[(&str, &str, Option<&str>)] = &[
        // (section, line, the key refused; None: it loads)
        (
            "firecracker",
            "shared_fs = \"virtio-fs\"",
            Some("shared_fs"),
        ),
        ("firecracker", "shared_fs = \"none\"", None),
        ("firecracker", "block_device_driver = \"virtio-mmio\"", None),
        ("firecracker", "block_device_driver = \"virtio-blk\"", None),
        (
            "firecracker",
            "block_device_driver = \"nvdimm\"",
            Some("block_device_driver"),
        ),
        (
            "firecracker",
            "virtio_fs_daemon = \"/v\"",
            Some("virtio_fs_daemon"),
        ),
        ("firecracker", "virtio_fs_daemon = \"\"", None),
        ("firecracker", "hotplug_transport = \"mmio\"", None),
        ("firecracker", "hotplug_vfio_on_root_bus = true", None),
        ("clh", "shared_fs = \"virtio-9p\"", Some("shared_fs")),
        ("clh", "shared_fs = \"virtio-fs\"", None),
        (
            "clh",
            "block_device_driver = \"virtio-scsi\"",
            Some("block_device_driver"),
        ),
        ("clh", "jailer_uid = 1000", Some("jailer_uid")),
        ("clh", "virtio_fs_cache = \"auto\"", None),
        ("acrn", "shared_fs = \"virtio-9p\"", Some("shared_fs")),
        (
            "acrn",
            "virtio_fs_extra_args = [\"-d\"]",
            Some("virtio_fs_extra_args"),
        ),
        ("acrn", "block_device_driver = \"virtio-blk\"", None),
        ("qemu", "shared_fs = \"virtio-fs-nydus\"", Some("shared_fs")),
        (
            "qemu",
            "block_device_driver = \"virtio-mmio\"",
            Some("block_device_driver"),
        ),
        ("qemu", "block_device_driver = \"nvdimm\"", None),
        ("qemu", "drive_placeholders = 0", None),
        ("qemu", "drive_placeholders = 3", Some("drive_placeholders")),
        (
            "qemu",
            "jailer_path = \"/usr/bin/jailer\"",
            Some("jailer_path"),
        ),
        ("mock", "shared_fs = \"virtio-fs-nydus\"", None),
    ];
    for (section, line, refused) in cases {
        let text = format!("[hypervisor.{section}]\nkernel = \"/k\"\ninitrd = \"/i\"\n{line}\n");
        match (parse(&text, file), refused) {
            (Ok(_), None) => {}
            (
                Err(KataConfigError::NotForHypervisor {
                    key, hypervisor, ..
                }),
                Some(want),
            ) => {
                assert_eq!(&key, want, "{section}: {line}");
                assert_eq!(hypervisor.as_str(), *section, "{line}");
            }
            (other, _) => panic!("{section}: {line}: {other:?}"),
        }
    }
    let err = parse(
        "[hypervisor.firecracker]\nshared_fs = \"virtio-fs\"\n",
        file,
    )
    .expect_err("no virtio-fs on firecracker");
    assert_eq!(
        err.to_string(),
        "shared_fs = \"virtio-fs\" in [hypervisor.firecracker] of /etc/k.toml: \
         firecracker cannot honour it; expected one of none"
    );
}

#[test]
fn an_empty_jailer_path_means_unjailed_and_an_absent_one_means_the_default_jailer() {
    let file = Path::new("/x/fc.toml");
    let fc = "[hypervisor.firecracker]\nkernel = \"/k\"\ninitrd = \"/i\"\n";
    let absent = parse(fc, file).expect("no jailer_path");
    assert_eq!(absent.config.jailer_path, None);
    assert!(
        !absent.config.unjailed,
        "absent: the jailer the lookup finds"
    );
    let empty = parse(&format!("{fc}jailer_path = \"\"\n"), file).expect("empty");
    assert_eq!(empty.config.jailer_path, None);
    assert!(empty.config.unjailed, "\"\": unjailed on purpose");
    let set = parse(&format!("{fc}jailer_path = \"/j/jailer\"\n"), file).expect("set");
    assert_eq!(
        set.config.jailer_path.as_deref(),
        Some(Path::new("/j/jailer"))
    );
    assert!(!set.config.unjailed);
}

#[test]
fn rootless_is_read_from_the_qemu_section() {
    let file = Path::new("/x/q.toml");
    let rc = parse(&format!("{MINIMAL}rootless = true\n"), file).expect("rootless");
    assert!(rc.config.rootless);
    assert!(rc.warnings.is_empty(), "{:?}", rc.warnings);
    let err = parse(&format!("{MINIMAL}rootless = \"yes\"\n"), file).expect_err("a string");
    assert!(err.to_string().contains("rootless"), "{err}");
}
