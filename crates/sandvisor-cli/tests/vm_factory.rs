//! The VM factory end to end: `sandvisor factory init | status | destroy`
//! and `run` from a template, on QEMU under TCG.
//!
//! Every test but the virtio-fs one needs a booted Linux guest: the guest
//! assets of `sandvisor::paths::asset_dir()` (`SANDVISOR_ASSET_DIR`),
//! whose initrd carries an agent that knows `quiesce` and `reseed_rng`
//! (`sandvisor image build` of this tree). Each test makes its own
//! template in a temporary directory (a tmpfs mounted there, so they run
//! as root) and removes it, also when it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sandvisor::config::kata::FactoryConfig;
use sandvisor::factory::template;

static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long a template waits before it is cloned in the clock test.
const TEMPLATE_AGE: Duration = Duration::from_secs(8);

/// A template directory, a config naming it and a runtime directory,
/// all removed on drop (the tmpfs unmounted first).
struct Setup {
    /// Holds the config and the template directory; removed last.
    _root: tempfile::TempDir,
    config: PathBuf,
    template_dir: PathBuf,
    runtime: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let f = FactoryConfig {
            template_path: Some(self.template_dir.clone()),
            ..FactoryConfig::default()
        };
        if let Err(e) = template::destroy(&f) {
            eprintln!("cannot remove the test template: {e}");
        }
        // A failed test may leave a clone behind: it is ours to end.
        for pid in qemus_using(&self.template_dir) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

fn asset(name: &str) -> PathBuf {
    let p = sandvisor::paths::asset_dir().join(name);
    assert!(
        p.is_file(),
        "guest asset {} is missing: run sandvisor image build",
        p.display()
    );
    p
}

/// A config with templates on, over `initrd` (the asset directory's when
/// `None`) and `extra` lines in the hypervisor section.
fn setup(initrd: Option<&Path>, extra: &str) -> Setup {
    let root = tempfile::Builder::new()
        .prefix("sv-factory-")
        .tempdir()
        .expect("tempdir");
    let template_dir = root.path().join("template");
    let initrd = initrd.map_or_else(|| asset(sandvisor::paths::INITRD_FILE), Path::to_path_buf);
    let text = format!(
        "[hypervisor.qemu]\nkernel = \"{}\"\ninitrd = \"{}\"\ndefault_vcpus = 1\ndefault_memory = 1024\nshared_fs = \"none\"\n{extra}\n[factory]\nenable_template = true\ntemplate_path = \"{}\"\n",
        asset(sandvisor::paths::KERNEL_FILE).display(),
        initrd.display(),
        template_dir.display()
    );
    let config = root.path().join("configuration.toml");
    std::fs::write(&config, text).expect("config");
    let runtime = tempfile::Builder::new()
        .prefix("sv-frt-")
        .tempdir()
        .expect("tempdir");
    Setup {
        _root: root,
        config,
        template_dir,
        runtime,
    }
}

impl Setup {
    fn sandvisor(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
            .args(args)
            // Info logs say where a VM came from (`origin=template`), in
            // the supervisor's log too.
            .env("SANDVISOR_LOG", "info")
            .env("SANDVISOR_RUNTIME_DIR", self.runtime.path())
            .output()
            .expect("sandvisor runs");
        eprintln!("sandvisor {args:?}: {}\n{}", out.status, text(&out.stderr));
        out
    }

    fn factory(&self, sub: &str) -> Output {
        let config = self.config.to_string_lossy().into_owned();
        self.sandvisor(&["factory", sub, "--config", &config])
    }

    fn run(&self, extra: &[&str], argv: &[&str]) -> Output {
        let config = self.config.to_string_lossy().into_owned();
        let mut args = vec!["run", "--config", &config];
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(argv);
        self.sandvisor(&args)
    }

    fn init(&self) {
        let out = self.factory("init");
        assert!(out.status.success(), "init: {}", text(&out.stderr));
        assert!(
            template::is_mount_point(&self.template_dir),
            "init mounts a tmpfs"
        );
    }

    fn vm_dirs_left(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.runtime.path().join("vm"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Pids of QEMU processes whose command line names `dir`.
fn qemus_using(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| {
                            let c = String::from_utf8_lossy(&c);
                            c.contains("qemu-system") && c.contains(&needle)
                        })
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs_f64()
}

#[test]
fn vm_factory_clones_are_independent_reseeded_and_on_time() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let s = setup(None, "");
    s.init();
    let status = s.factory("status");
    let shown = text(&status.stdout);
    assert!(status.status.success());
    for want in [
        s.template_dir.to_string_lossy().as_ref(),
        "state: current",
        "config hash: ",
        "age: ",
        "MiB in use",
    ] {
        assert!(shown.contains(want), "status lacks {want:?}: {shown}");
    }
    // Let the template's clock fall behind, so that a clone whose clock
    // was not set would be seconds off.
    std::thread::sleep(TEMPLATE_AGE);
    let host_before = now_secs();

    // Two clones at once. Each writes a file, waits until the other has
    // had time to write its own, then says which files it sees, 16 bytes
    // of /dev/urandom and its clock.
    let script = "echo $1 > /tmp/written-by-$1; sleep 3; ls /tmp; \
                  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s";
    let (a, b) = std::thread::scope(|scope| {
        let spawn = |name: &'static str| {
            let s = &s;
            scope.spawn(move || {
                let out = s.run(&[], &["sh", "-c", script, "sh", name]);
                (out, now_secs())
            })
        };
        let a = spawn("a");
        let b = spawn("b");
        (a.join().expect("clone a"), b.join().expect("clone b"))
    });
    let parse = |(out, host_after): (Output, f64), me: &str, other: &str| {
        assert!(out.status.success(), "clone {me}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("origin=template"),
            "clone {me} came from the template: {}",
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(lines.len() >= 3, "{stdout}");
        // Whole seconds (busybox's date has no %N): the true time is up
        // to 1 s later.
        let clock: f64 = lines[lines.len() - 1]
            .parse()
            .unwrap_or_else(|e| panic!("date +%s: {e}: {stdout}"));
        let random = lines[lines.len() - 2].to_string();
        let files = &lines[..lines.len() - 2];
        assert!(
            files.contains(&format!("written-by-{me}").as_str()),
            "{me} sees its file: {files:?}"
        );
        assert!(
            !files.contains(&format!("written-by-{other}").as_str()),
            "{me} must not see {other}'s file: {files:?}"
        );
        // The guest reads its clock at least 3 s (its sleep) after
        // `host_before` and before `host_after`: within 2 s of the host's
        // it lies in this window widened by 2 s. A clock left as the
        // template's is TEMPLATE_AGE behind.
        assert!(
            clock + 1.0 >= host_before + 3.0 - 2.0 && clock <= host_after + 2.0,
            "clone {me}'s clock {clock} is off the host's ({host_before}..{host_after})"
        );
        random
    };
    let ra = parse(a, "a", "b");
    let rb = parse(b, "b", "a");
    assert_eq!(ra.len(), 32, "{ra}");
    assert_ne!(ra, rb, "two clones read the same random bytes");

    let out = s.factory("destroy");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !template::is_mount_point(&s.template_dir),
        "tmpfs unmounted"
    );
    assert!(!s.template_dir.exists(), "template directory removed");
    assert!(qemus_using(&s.template_dir).is_empty(), "no QEMU left");
    assert!(s.vm_dirs_left().is_empty(), "{:?}", s.vm_dirs_left());
    let status = text(&s.factory("status").stdout);
    assert!(status.contains("state: none"), "{status}");
}

#[test]
fn vm_factory_run_hot_adds_the_cpus_and_memory_beyond_the_template() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let s = setup(None, "");
    s.init();
    let out = s.run(
        &["--cpus", "2", "--memory", "1536"],
        &[
            "sh",
            "-c",
            "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("origin=template"),
        "from the template, not a direct boot: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("2"), "2 CPUs online: {stdout}");
    let kib: u64 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("MemTotal");
    // 1536 MiB less what the kernel keeps; a 1 GiB guest shows ~980 MiB.
    assert!(
        kib > 1400 * 1024,
        "MemTotal {kib} KiB: the 512 MiB were not onlined"
    );

    // A request that differs in more than CPUs and memory boots directly.
    let out = s.run(&["--memory", "512"], &["true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("booting directly"),
        "{}",
        text(&out.stderr)
    );
    assert!(s.vm_dirs_left().is_empty(), "{:?}", s.vm_dirs_left());
}

#[test]
fn vm_factory_a_stale_template_is_refused_by_run_and_remade_by_init() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let assets = tempfile::Builder::new()
        .prefix("sv-fassets-")
        .tempdir()
        .expect("tempdir");
    let initrd = assets.path().join("initrd.img");
    std::fs::copy(asset(sandvisor::paths::INITRD_FILE), &initrd).expect("copy initrd");
    let s = setup(Some(&initrd), "");
    s.init();
    // The assets are rebuilt: a new file in place of the old.
    let rebuilt = assets.path().join("initrd.new");
    std::fs::copy(&initrd, &rebuilt).expect("copy");
    std::fs::rename(&rebuilt, &initrd).expect("replace");

    let out = s.run(&[], &["true"]);
    assert!(!out.status.success(), "a stale template must not boot");
    let err = text(&out.stderr);
    assert!(err.contains("stale"), "{err}");
    assert!(err.contains("sandvisor factory init"), "{err}");
    assert!(!err.contains("starting qemu"), "no VM was started: {err}");
    assert!(s.vm_dirs_left().is_empty());
    let status = text(&s.factory("status").stdout);
    assert!(status.contains("state: stale"), "{status}");

    let out = s.factory("init");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("remade"),
        "{}",
        text(&out.stdout)
    );
    let out = s.run(&[], &["true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("origin=template"));
    // Init again: the template is current and kept.
    let out = s.factory("init");
    assert!(
        text(&out.stdout).contains("current"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn vm_factory_a_template_over_virtio_fs_is_refused_naming_the_rule() {
    let s = setup(None, "shared_fs = \"virtio-fs\"\n");
    // The setup's `shared_fs = "none"` comes first: drop it.
    let cfg = std::fs::read_to_string(&s.config)
        .expect("config")
        .replacen("shared_fs = \"none\"\n", "", 1);
    std::fs::write(&s.config, cfg).expect("config");
    for sub in ["init", "status"] {
        let out = s.factory(sub);
        assert!(!out.status.success(), "{sub} accepted a virtio-fs template");
        let err = text(&out.stderr);
        assert!(err.contains("enable_template"), "{err}");
        assert!(err.contains("shared_fs = \"virtio-fs\""), "{err}");
    }
    assert!(!s.template_dir.exists(), "nothing was made");
}

#[test]
fn vm_factory_create_and_start_clone_the_template() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let s = setup(None, "");
    s.init();
    let config = s.config.to_string_lossy().into_owned();
    let out = s.sandvisor(&[
        "create", "--config", &config, "--cpus", "2", "--memory", "1536",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    // Whatever happens next, the sandbox goes.
    struct Delete<'a>(&'a Setup, String);
    impl Drop for Delete<'_> {
        fn drop(&mut self) {
            let _ = self.0.sandvisor(&["delete", "--force", &self.1]);
        }
    }
    let _delete = Delete(&s, id.clone());
    let out = s.sandvisor(&["start", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = s.sandvisor(&[
        "exec",
        &id,
        "--",
        "grep",
        "-c",
        "^processor",
        "/proc/cpuinfo",
    ]);
    assert_eq!(text(&out.stdout).trim(), "2", "{}", text(&out.stderr));
    let state = s.sandvisor(&["state", &id, "--json"]);
    let record: serde_json::Value = serde_json::from_slice(&state.stdout).expect("state json");
    assert_eq!(record["vcpus"], 2, "{record}");
    assert_eq!(record["memory_mib"], 1536, "{record}");
    assert_eq!(
        record["config"]["boot_from_template"], true,
        "the VM is a clone: {record}"
    );
    let log = std::fs::read_to_string(s.runtime.path().join(&id).join("supervisor.log"))
        .unwrap_or_default();
    assert!(log.contains("origin=template"), "{log}");
}

/// Needs a booted Linux guest: the first init makes a real template while
/// the second is refused.
#[test]
fn vm_factory_a_second_init_for_the_same_template_fails_at_once_naming_the_first() {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let s = setup(None, "");
    let config = s.config.to_string_lossy().into_owned();
    let mut first = Command::new(env!("CARGO_BIN_EXE_sandvisor"))
        .args(["factory", "init", "--config", &config])
        .env("SANDVISOR_RUNTIME_DIR", s.runtime.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the first init runs");
    // The first has the lock once its pid is in the lock file.
    let lock = template::InitLock::path_for(&s.template_dir);
    let want = format!("{}\n", first.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&lock).ok().as_deref() != Some(want.as_str())
        && std::time::Instant::now() < deadline
        && first.try_wait().ok().flatten().is_none()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = s.factory("init");
    let first_out = first.wait_with_output().expect("the first init ends");

    assert!(
        first_out.status.success(),
        "first init: {}",
        text(&first_out.stderr)
    );
    assert!(!second.status.success(), "the second init succeeded");
    let err = text(&second.stderr);
    assert!(
        err.contains(&format!("pid {}", want.trim()))
            && err.contains(&s.template_dir.display().to_string())
            && err.contains("wait for it to finish"),
        "{err}"
    );
    // The second made nothing and broke nothing: the template is current.
    let again = s.factory("init");
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("is current"),
        "{}",
        text(&again.stdout)
    );
    let destroyed = s.factory("destroy");
    assert!(destroyed.status.success(), "{}", text(&destroyed.stderr));
    assert!(!lock.exists(), "destroy removes the free lock file");
}
