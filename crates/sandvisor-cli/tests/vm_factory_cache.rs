//! The VM cache through the `sandvisor` binary: `factory init` with
//! `vm_cache_number = 2` serving on a private endpoint and runtime
//! directory, `status`, `run` and `create` taking VMs from it, `destroy`,
//! and a handed-out sandbox outliving a server killed with SIGKILL.
//!
//! Every assertion here needs a booted Linux guest: the default assets of
//! `sandvisor::paths::asset_dir()` (`SANDVISOR_ASSET_DIR`), whose initrd
//! carries an agent that knows `reseed_rng` (the factory's finish step).
//! Fails, not skips, when they are missing.

mod lifecycle_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lifecycle_support::{alive, kill, pid, wait_gone, Env};
use serde_json::Value;

fn asset(name: &str) -> PathBuf {
    let p = sandvisor::paths::asset_dir().join(name);
    assert!(
        p.is_file(),
        "guest asset {} is missing: run sandvisor image build",
        p.display()
    );
    p
}

/// A runtime directory, a config with a cache of two VMs on an endpoint
/// of its own, and the cache server, killed (with what it holds) on drop.
struct Cache {
    env: Env,
    config: PathBuf,
    endpoint: PathBuf,
    server: Option<Child>,
}

impl Cache {
    fn new() -> Self {
        let env = Env::new();
        let dir = env.runtime_dir().to_path_buf();
        let endpoint = dir.join("cache.sock");
        let config = dir.join("configuration.toml");
        let text = format!(
            "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"{}\"\ninitrd = \"{}\"\n\
             machine_type = \"q35\"\ndefault_vcpus = 1\ndefault_memory = 1024\n\n\
             [factory]\nvm_cache_number = 2\nvm_cache_endpoint = \"{}\"\n",
            asset(sandvisor::paths::KERNEL_FILE).display(),
            asset(sandvisor::paths::INITRD_FILE).display(),
            endpoint.display(),
        );
        std::fs::write(&config, text).expect("config written");
        let mut cache = Cache {
            env,
            config,
            endpoint,
            server: None,
        };
        let server = cache
            .env
            .command()
            .args(["factory", "init", "--config"])
            .arg(&cache.config)
            .args(["--timeout", "120"])
            .env("SANDVISOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("server.log")).expect("log"),
            ))
            .spawn()
            .expect("factory init runs");
        cache.server = Some(server);
        cache
    }

    fn config(&self) -> &str {
        self.config.to_str().expect("utf-8 path")
    }

    fn server_pid(&self) -> u32 {
        self.server.as_ref().expect("server").id()
    }

    /// `factory status --json`'s cache part.
    #[track_caller]
    fn status(&self) -> Value {
        let out = self
            .env
            .run(&["factory", "status", "--json", "--config", self.config()]);
        let all: Value = serde_json::from_str(out.ok()).expect("status is JSON");
        all["cache"].clone()
    }

    /// Waits until the cache holds `n` VMs ready; returns their VMM pids.
    #[track_caller]
    fn wait_ready(&self, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let s = self.status();
            let pids: Vec<u32> = s["ready_pids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_u64())
                        .map(|p| p as u32)
                        .collect()
                })
                .unwrap_or_default();
            if pids.len() >= n {
                return pids;
            }
            assert!(
                Instant::now() < deadline,
                "the cache did not get {n} VMs ready: {s:#}; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.env.runtime_dir().join("server.log")).unwrap_or_default()
    }

    /// Where servers keep their ledgers.
    fn ledger_dir(&self) -> PathBuf {
        self.env.runtime_dir().join("factory")
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // Whatever a failed test left: the server, then its VMs by the
        // ledger.
        if let Some(mut server) = self.server.take() {
            let _ = self
                .env
                .run(&["factory", "destroy", "--config", self.config()]);
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = self
            .env
            .run(&["factory", "destroy", "--config", self.config()]);
    }
}

/// The QEMU processes whose command line names `dir` (the test's runtime
/// directory, which holds every VM's sockets).
fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&needle)
            })
        })
        .filter(|pid| alive(*pid))
        .collect()
}

fn vm_dir_exists(env: &Env, id: &str) -> bool {
    env.runtime_dir().join("vm").join(id).exists()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn socket_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn status_shows_two_ready_run_takes_one_and_destroy_leaves_no_qemu() {
    let mut cache = Cache::new();
    let ready = cache.wait_ready(2);
    assert_eq!(ready.len(), 2);
    assert_eq!(socket_mode(&cache.endpoint), 0o600);
    let text = cache
        .env
        .run(&["factory", "status", "--config", cache.config()]);
    assert!(text.ok().contains("ready: 2"), "{}", text.stdout);

    let run = cache
        .env
        .command()
        .args([
            "run",
            "--config",
            cache.config(),
            "--",
            "sh",
            "-c",
            "echo from-cache",
        ])
        .env("SANDVISOR_LOG", "info")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&run.stdout), "from-cache\n");
    assert!(stderr.contains("VM taken from the cache"), "{stderr}");
    assert!(!stderr.contains("booting directly"), "{stderr}");
    // The VM it took is gone with the run; the server refills.
    let status = cache.status();
    assert_eq!(status["handed_out"], 1, "{status:#}");
    let taken: Vec<u32> = ready
        .iter()
        .copied()
        .filter(|p| {
            !status["ready_pids"]
                .as_array()
                .is_some_and(|a| a.contains(&Value::from(*p)))
        })
        .collect();
    assert_eq!(taken.len(), 1, "one ready VM was handed out: {status:#}");
    assert!(
        wait_gone(taken[0], Duration::from_secs(10)),
        "the run's VM ended with it"
    );

    let refilled = cache.wait_ready(2);
    let out = cache
        .env
        .run(&["factory", "destroy", "--config", cache.config()]);
    assert!(out.ok().contains("stopped"), "{}", out.stdout);
    let mut server = cache.server.take().expect("server");
    let exit = wait_exit(&mut server, Duration::from_secs(30)).expect("the server exits");
    assert!(exit.success(), "{exit}: {}", cache.log());
    for qemu in ready.iter().chain(&refilled) {
        assert!(
            wait_gone(*qemu, Duration::from_secs(10)),
            "QEMU {qemu} of the cache is left running"
        );
    }
    assert!(
        qemus_under(cache.env.runtime_dir()).is_empty(),
        "a QEMU of the cache is left running"
    );
    assert!(!cache.endpoint.exists(), "the socket is left");
    assert!(!cache.ledger_dir().exists(), "the ledger is left");
}

#[test]
fn a_handed_out_sandbox_survives_the_server_killed_and_destroy() {
    let mut cache = Cache::new();
    let ready = cache.wait_ready(2);

    // The sandbox's own name, not the cached VM's.
    let id = cache
        .env
        .run(&["create", "--config", cache.config(), "--id", "adopted"])
        .ok()
        .trim()
        .to_string();
    assert_eq!(id, "adopted");
    let created = cache.env.state(&id);
    assert_eq!(created["status"], "created", "{created:#}");
    let vmm = pid(&created, "vmm");
    assert!(
        ready.contains(&vmm),
        "the sandbox's VMM {vmm} is not one of the cache's {ready:?}"
    );
    // The server dies without a word while it boots the VM that refills
    // the one handed out: the sandbox is not its own.
    kill(cache.server_pid(), "KILL");
    let mut server = cache.server.take().expect("server");
    wait_exit(&mut server, Duration::from_secs(10)).expect("killed");

    cache.env.run(&["start", &id, "--timeout", "60"]).ok();
    assert_eq!(cache.env.state(&id)["status"], "running");
    let first = cache.env.run(&["exec", &id, "--", "echo", "adopted"]);
    assert_eq!(first.ok(), "adopted\n");
    // The record names the adopted VM's console socket, and `console`
    // reaches it (stdin is empty: it attaches, then ends with its input).
    let running = cache.env.state(&id);
    let console = running["console_socket"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_default();
    assert!(
        std::fs::symlink_metadata(&console).is_ok(),
        "console socket {console:?} of the record does not exist: {running:#}"
    );
    let attached = cache.env.run(&["console", &id]);
    attached.ok();
    assert!(
        attached
            .stderr
            .contains("connected to the console of sandbox adopted"),
        "{}",
        attached.stderr
    );

    // destroy stops what the dead server held, not the sandbox.
    let left: Vec<u32> = ready.iter().copied().filter(|p| *p != vmm).collect();
    let out = cache
        .env
        .run(&["factory", "destroy", "--config", cache.config()]);
    assert!(
        out.ok().contains("stopped 1 VM(s)") || out.stdout.contains("VM(s)"),
        "{}",
        out.stdout
    );
    for qemu in &left {
        assert!(
            wait_gone(*qemu, Duration::from_secs(10)),
            "cached QEMU {qemu} left running"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while qemus_under(cache.env.runtime_dir()) != vec![vmm] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        qemus_under(cache.env.runtime_dir()),
        vec![vmm],
        "only the handed-out sandbox's QEMU runs"
    );
    assert!(alive(vmm), "the handed-out sandbox's VMM was stopped");
    assert_eq!(
        cache
            .env
            .run(&["exec", &id, "--", "echo", "after-destroy"])
            .ok(),
        "after-destroy\n"
    );
    assert!(!cache.ledger_dir().exists(), "the ledger is left");

    // A normal sandbox to the end.
    cache.env.run(&["stop", &id]).ok();
    cache.env.run(&["delete", &id]).ok();
    assert!(
        wait_gone(vmm, Duration::from_secs(10)),
        "VMM left after delete"
    );
    assert!(!cache.env.sandbox_dir(&id).exists());
    assert!(!vm_dir_exists(&cache.env, &id));
}
