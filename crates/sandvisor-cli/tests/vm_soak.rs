//! Soak and chaos: `SOAK_N` mixed lifecycles (default 30; `make soak` runs
//! 200) over every backend that runs here, one in three with a process
//! killed -9 at a random step, seeded by `SOAK_SEED` (printed, so a
//! failing run can be replayed: the mix and every kill point come from the
//! seed).
//!
//! The mix:
//! - QEMU through the binary: `run` (victim: the VMM), `run -v` (victim:
//!   virtiofsd), `run` cloned from a template made by `factory init` at the
//!   start (victim: the clone's VMM), and `create`/`start`/`exec`/hot-plug/
//!   `pause`/`resume`/`stop`/`delete`, with the agent on a virtio-serial
//!   port (victims: the VMM, the supervisor) or on a hybrid vsock served by
//!   vhost-device-vsock (victims: those and the daemon).
//! - Cloud Hypervisor and Firecracker (unjailed and jailed) through the
//!   library with the tiny PVH guest: create, start, pause, resume, disk
//!   hot-plug and unplug, stop, clean up (victim: the VMM).
//!
//! What each kill must give: a killed VMM leaves a created sandbox `dead`
//! with `{"signal": 9}` (the library's `check` says signal 9 for CH and
//! FC); a killed supervisor is replaced by the next command, which finds
//! the guest as it was; a killed helper leaves a created sandbox `dead`
//! naming the helper, its VMM stopped, and makes a `run` fail naming it;
//! every killed `run` fails and leaves nothing.
//!
//! Afterwards nothing may be left: no process naming the runtime directory
//! or rooted in a jail there, no file, socket or directory under it (VM
//! directories, Firecracker jails), no mount under it or under the
//! template's directory, no tap device more than before, no descriptor more
//! in this (long-lived) process. The template is destroyed at the end.
//!
//! Which assertions need a booted Linux guest: every QEMU lifecycle's
//! (`exec`, a `run`'s output, the volume's file, the template clone's
//! answer). None of the Cloud Hypervisor and Firecracker ones: their
//! guest is the tiny PVH guest, which has no agent. Fails, not skips, when
//! the guest assets, `$SANDVISOR_VMM_DIR`'s binaries or
//! vhost-device-vsock are missing.

mod lifecycle_support;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lifecycle_support::{alive, kill, pid, wait_gone, Env};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sandvisor::backends::clh::Clh;
use sandvisor::backends::firecracker::{FcOptions, Firecracker};
use sandvisor::config::HypervisorConfig;
use sandvisor::device::{BlockDrive, Device};
use sandvisor::hypervisor::{Hypervisor, NetworkNamespace};
use sandvisor::image::tiny_guest::TinyGuest;
use sandvisor::process::Exit;

fn env_number(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The steps of a QEMU sandbox's lifecycle after `start`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Exec,
    Hotplug,
    Unplug,
    Pause,
    Resume,
    Stop,
}

const STEPS: [Step; 6] = [
    Step::Exec,
    Step::Hotplug,
    Step::Unplug,
    Step::Pause,
    Step::Resume,
    Step::Stop,
];

/// The steps of a Cloud Hypervisor or Firecracker lifecycle after start.
#[derive(Debug, Clone, Copy, PartialEq)]
enum VmmStep {
    Pause,
    Resume,
    Hotplug,
    Unplug,
    Stop,
}

const VMM_STEPS: [VmmStep; 5] = [
    VmmStep::Pause,
    VmmStep::Resume,
    VmmStep::Hotplug,
    VmmStep::Unplug,
    VmmStep::Stop,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Victim {
    Vmm,
    Supervisor,
    Virtiofsd,
    VsockDaemon,
}

impl Victim {
    fn name(self) -> &'static str {
        match self {
            Victim::Vmm => "vmm",
            Victim::Supervisor => "supervisor",
            Victim::Virtiofsd => "virtiofsd",
            Victim::VsockDaemon => "vhost-device-vsock",
        }
    }
}

/// A kill before step `.0` of `.1`, or none.
type Kill = Option<(usize, Victim)>;

/// One kind of lifecycle in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `sandvisor run` on QEMU.
    Run,
    /// `sandvisor run -v` on QEMU: virtiofsd serves the volume.
    RunVolume,
    /// `sandvisor run` cloned from the soak's template.
    RunTemplate,
    /// `create` … `delete` on QEMU, agent on virtio-serial.
    Sandbox,
    /// `create` … `delete` on QEMU, agent on a hybrid vsock.
    VsockSandbox,
    /// Cloud Hypervisor through the library.
    Clh,
    /// Firecracker through the library, unjailed.
    Fc,
    /// Firecracker through the library, in its jail.
    FcJailed,
}

impl Kind {
    /// Out of 20 lifecycles.
    const WEIGHTS: [(Kind, u32); 8] = [
        (Kind::Run, 2),
        (Kind::RunVolume, 2),
        (Kind::RunTemplate, 3),
        (Kind::Sandbox, 4),
        (Kind::VsockSandbox, 3),
        (Kind::Clh, 2),
        (Kind::Fc, 2),
        (Kind::FcJailed, 2),
    ];

    fn pick(rng: &mut StdRng) -> Kind {
        let total: u32 = Self::WEIGHTS.iter().map(|(_, w)| w).sum();
        let mut n = rng.gen_range(0..total);
        for (kind, w) in Self::WEIGHTS {
            if n < w {
                return kind;
            }
            n -= w;
        }
        Kind::Run
    }

    fn backend(self) -> &'static str {
        match self {
            Kind::Clh => "clh",
            Kind::Fc | Kind::FcJailed => "firecracker",
            _ => "qemu",
        }
    }

    /// Who may be killed in this kind of lifecycle.
    fn victims(self) -> &'static [Victim] {
        match self {
            Kind::Run | Kind::RunTemplate | Kind::Clh | Kind::Fc | Kind::FcJailed => &[Victim::Vmm],
            Kind::RunVolume => &[Victim::Virtiofsd],
            Kind::Sandbox => &[Victim::Vmm, Victim::Supervisor],
            Kind::VsockSandbox => &[Victim::Vmm, Victim::Supervisor, Victim::VsockDaemon],
        }
    }

    /// How many steps a kill may come before.
    fn steps(self) -> usize {
        match self {
            Kind::Run | Kind::RunVolume | Kind::RunTemplate => 1,
            Kind::Sandbox | Kind::VsockSandbox => STEPS.len(),
            Kind::Clh | Kind::Fc | Kind::FcJailed => VMM_STEPS.len(),
        }
    }
}

#[derive(Default, Debug)]
struct Tally {
    /// Lifecycles per kind.
    lifecycles: BTreeMap<String, u64>,
    /// Lifecycles that ran to the end without a kill, per kind.
    full: BTreeMap<String, u64>,
    /// Kills per backend and victim.
    kills: BTreeMap<(String, String), u64>,
}

impl Tally {
    fn kill(&mut self, kind: Kind, victim: Victim) {
        *self
            .kills
            .entry((kind.backend().to_string(), victim.name().to_string()))
            .or_default() += 1;
    }

    fn print(&self, seed: u64) {
        let total: u64 = self.lifecycles.values().sum();
        let kills: u64 = self.kills.values().sum();
        eprintln!("soak: {total} lifecycles, {kills} kills (SOAK_SEED={seed})");
        for (kind, n) in &self.lifecycles {
            let full = self.full.get(kind).copied().unwrap_or(0);
            eprintln!("soak:   {kind:<14} {n:>4} lifecycles, {full:>4} without a kill");
        }
        for ((backend, victim), n) in &self.kills {
            eprintln!("soak:   kill {backend:<12} {victim:<20} {n:>4}");
        }
    }
}

/// Processes whose command line names `needle`, or whose root is under it
/// (a jailed Firecracker).
fn processes_naming(needle: &Path) -> Vec<(u32, String)> {
    let text = needle.display().to_string();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmd = std::fs::read(entry.path().join("cmdline"))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        let root = std::fs::read_link(entry.path().join("root")).unwrap_or_default();
        if (cmd.contains(&text) || root.starts_with(needle)) && alive(pid) {
            found.push((pid, cmd));
        }
    }
    found
}

/// The pid of the one process whose program is `program` and whose
/// command line names `dir`.
fn process_of(dir: &Path, program: &str) -> Option<u32> {
    processes_naming(dir)
        .into_iter()
        .find(|(_, cmd)| {
            cmd.split(' ')
                .next()
                .is_some_and(|p| Path::new(p).file_name().is_some_and(|n| n == program))
        })
        .map(|(pid, _)| pid)
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Everything under the runtime directory but its storage roots (`vm`,
/// `volumes`, `jail`, `jail/firecracker`) and the CLI's own log.
fn entries_under(dir: &Path) -> Vec<String> {
    let roots = [
        dir.join("vm"),
        dir.join("volumes"),
        dir.join("jail"),
        dir.join("jail").join("firecracker"),
    ];
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && roots.contains(&p) {
                stack.push(p);
                continue;
            }
            // The CLI's own log (library lines without `--log`) stays.
            if d == dir && p.file_name().is_some_and(|n| n == "sandvisor.log") {
                continue;
            }
            out.push(p.display().to_string());
        }
    }
    out
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// The host's network links by name (`ip -o link`): a tap a backend made
/// and left would be one more.
fn links() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip runs");
    assert!(out.status.success(), "ip -o link: {out:?}");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    names.sort();
    names
}

/// What the soak's lifecycles share.
struct Soak {
    env: Env,
    /// Holds the disks, the volume, the configs and the template.
    scratch: tempfile::TempDir,
    /// A raw disk for QEMU hot-plug.
    disk: String,
    /// A raw disk for CH and FC hot-plug.
    vmm_disk: PathBuf,
    /// The QEMU config with the agent on a hybrid vsock.
    vsock_config: String,
    /// The QEMU config with templates on.
    template_config: String,
    /// The template's directory.
    template_dir: PathBuf,
    /// A host directory for `run -v`, holding `hello`.
    volume: PathBuf,
    /// The tiny guest and its dummy initrd.
    tiny_kernel: PathBuf,
    tiny_initrd: PathBuf,
    /// `$SANDVISOR_VMM_DIR`.
    vmm_dir: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Soak {
    fn new() -> Soak {
        let assets = sandvisor::paths::asset_dir();
        for f in [sandvisor::paths::KERNEL_FILE, sandvisor::paths::INITRD_FILE] {
            assert!(
                assets.join(f).is_file(),
                "guest asset {f} is missing: run sandvisor image build"
            );
        }
        let vmm_dir = PathBuf::from(std::env::var_os("SANDVISOR_VMM_DIR").unwrap_or_else(|| {
            panic!(
                "SANDVISOR_VMM_DIR is not set: point it at the folder holding \
                 cloud-hypervisor, firecracker and jailer"
            )
        }));
        for b in ["cloud-hypervisor", "firecracker", "jailer"] {
            assert!(vmm_dir.join(b).is_file(), "{b} is missing in {vmm_dir:?}");
        }
        let lookup = sandvisor::backends::vmm::lookup::find(
            &sandvisor::backends::vmm::lookup::Binary::VHOST_DEVICE_VSOCK,
            None,
        );
        assert!(lookup.is_ok(), "{lookup:?}: run scripts/setup.sh");

        let env = Env::new();
        let scratch = tempfile::Builder::new()
            .prefix("svsk")
            .tempdir_in("/tmp")
            .expect("scratch");
        let s = scratch.path();
        let disk = s.join("disk.img");
        let vmm_disk = s.join("disk16.img");
        for (d, len) in [(&disk, 8 << 20), (&vmm_disk, 16 << 20)] {
            std::fs::File::create(d)
                .and_then(|f| f.set_len(len))
                .expect("disk image");
        }
        let kernel = assets.join(sandvisor::paths::KERNEL_FILE);
        let initrd = assets.join(sandvisor::paths::INITRD_FILE);
        let qemu = format!(
            "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = {:?}\n\
             initrd = {:?}\ndefault_vcpus = 1\ndefault_memory = 384\n",
            kernel.display().to_string(),
            initrd.display().to_string()
        );
        let vsock_config = s.join("vsock.toml");
        std::fs::write(&vsock_config, format!("{qemu}use_vsock = true\n")).expect("config");
        let template_dir = s.join("template");
        let template_config = s.join("template.toml");
        std::fs::write(
            &template_config,
            format!(
                "{qemu}shared_fs = \"none\"\n[factory]\nenable_template = true\n\
                 template_path = {:?}\n",
                template_dir.display().to_string()
            ),
        )
        .expect("config");
        let volume = s.join("volume");
        std::fs::create_dir(&volume).expect("volume");
        std::fs::write(volume.join("hello"), "from the host\n").expect("volume file");
        let tiny_kernel = s.join("guest.elf");
        TinyGuest::default()
            .write_to(&tiny_kernel)
            .expect("tiny guest");
        let tiny_initrd = s.join("initrd.img");
        std::fs::write(&tiny_initrd, [0u8; 4096]).expect("initrd");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Soak {
            env,
            disk: disk.display().to_string(),
            vmm_disk,
            vsock_config: vsock_config.display().to_string(),
            template_config: template_config.display().to_string(),
            template_dir,
            volume,
            tiny_kernel,
            tiny_initrd,
            vmm_dir,
            rt,
            scratch,
        }
    }

    /// `factory init` of the template, checked with `factory status`.
    fn template_init(&self) {
        let out = self
            .env
            .run(&["factory", "init", "--config", &self.template_config]);
        out.ok();
        assert!(
            sandvisor::factory::template::is_mount_point(&self.template_dir),
            "factory init mounts a tmpfs at {:?}",
            self.template_dir
        );
        let status = self
            .env
            .run(&["factory", "status", "--config", &self.template_config]);
        assert!(status.ok().contains("state: current"), "{status:?}");
    }

    /// `factory destroy`: the tmpfs and its files are gone.
    fn template_destroy(&self) {
        self.env
            .run(&["factory", "destroy", "--config", &self.template_config])
            .ok();
        assert!(
            !sandvisor::factory::template::is_mount_point(&self.template_dir),
            "the template's tmpfs is still mounted"
        );
        let left: Vec<_> = std::fs::read_dir(&self.template_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "template files left: {left:?}");
    }

    /// A `run` of `kind` that is not killed: its output is checked, and
    /// for a template clone that it came from the template.
    fn run(&self, kind: Kind, id: &str) {
        let volume = format!("{}:/mnt/v", self.volume.display());
        let (args, want): (Vec<&str>, String) = match kind {
            Kind::RunVolume => (
                vec![
                    "run",
                    "--memory",
                    "384",
                    "-v",
                    &volume,
                    "--",
                    "cat",
                    "/mnt/v/hello",
                ],
                "from the host\n".to_string(),
            ),
            Kind::RunTemplate => (
                vec!["run", "--config", &self.template_config, "--", "echo", id],
                format!("{id}\n"),
            ),
            _ => (
                vec!["run", "--memory", "384", "--", "echo", id],
                format!("{id}\n"),
            ),
        };
        let out = self
            .env
            .command()
            .env("SANDVISOR_LOG", "info")
            .args(&args)
            .output()
            .expect("sandvisor runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{id}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{id}: {stderr}");
        if kind == Kind::RunTemplate {
            assert!(
                stderr.contains("origin=template"),
                "{id} came from the template: {stderr}"
            );
        }
    }

    /// A `run` of `kind` whose `victim` is killed while the command runs:
    /// the run must fail (naming the helper when one was killed), and
    /// leave nothing.
    fn run_killed(&self, kind: Kind, id: &str, victim: Victim) {
        let volume = format!("{}:/mnt/v", self.volume.display());
        let script = "cat /mnt/v/hello 2>/dev/null || echo ready; sleep 600";
        let mut args: Vec<&str> = match kind {
            Kind::RunTemplate => vec!["run", "--config", &self.template_config],
            Kind::RunVolume => vec!["run", "--memory", "384", "-v", &volume],
            _ => vec!["run", "--memory", "384"],
        };
        args.extend(["--", "sh", "-c", script]);
        let mut child = self
            .env
            .command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sandvisor runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let first = rx.recv_timeout(Duration::from_secs(180));
        let first = match first {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                panic!("{id}: no output from the command: {e}");
            }
        };
        let want = if kind == Kind::RunVolume {
            "from the host\n"
        } else {
            "ready\n"
        };
        if first != want {
            let _ = child.kill();
            let out = child.wait_with_output().expect("waits");
            panic!(
                "{id}: the command said {first:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let program = match victim {
            Victim::Virtiofsd => "virtiofsd",
            _ => "qemu-system-x86_64",
        };
        let Some(target) = process_of(self.env.runtime_dir(), program) else {
            let _ = child.kill();
            panic!("{id}: no {program} runs");
        };
        kill(target, "KILL");
        // The run must end by itself; 120 s is a hang check.
        let mut waited = Duration::ZERO;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if waited > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("{id}: the run did not end after its {program} was killed");
            }
            std::thread::sleep(Duration::from_millis(100));
            waited += Duration::from_millis(100);
        };
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!status.success(), "{id}: the run succeeded: {stderr}");
        if victim == Victim::Virtiofsd {
            assert!(
                stderr.contains("virtiofsd") && stderr.contains("torn down"),
                "{id}: the error names virtiofsd: {stderr}"
            );
        }
        assert!(wait_gone(target, Duration::from_secs(10)), "{id}: {target}");
    }

    /// One QEMU sandbox lifecycle; kills `victim` just before step `at`.
    fn sandbox(&self, kind: Kind, id: &str, kill_at: Kill) {
        let env = &self.env;
        let ok = |args: &[&str]| env.run(args).ok().to_string();
        let mut create = vec!["create", "--hypervisor", "qemu", "--id", id];
        if kind == Kind::VsockSandbox {
            create.extend(["--config", &self.vsock_config]);
        } else {
            create.extend(["--memory", "384"]);
        }
        ok(&create);
        ok(&["start", id, "--timeout", "120"]);
        let state = env.state(id);
        let (supervisor, vmm) = (pid(&state, "supervisor"), pid(&state, "vmm"));
        let daemon = state["hypervisor_state"]["vsock_daemon"]["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok());
        assert_eq!(
            daemon.is_some(),
            kind == Kind::VsockSandbox,
            "{id}: a vhost-device-vsock only with use_vsock: {state:#}"
        );
        let mut ended = false;
        for (i, step) in STEPS.iter().enumerate() {
            if let Some((at, victim)) = kill_at.filter(|(at, _)| *at == i) {
                match victim {
                    Victim::Vmm => {
                        kill(vmm, "KILL");
                        let state = env.wait_status(id, "dead", Duration::from_secs(20));
                        assert_eq!(
                            state["vmm_exit"],
                            serde_json::json!({"signal": 9}),
                            "{id}: {state:#}"
                        );
                        env.run(&["exec", id, "--", "true"])
                            .fails_with("it is dead");
                        ended = true;
                        break;
                    }
                    Victim::VsockDaemon | Victim::Virtiofsd => {
                        let helper = daemon.expect("a vsock sandbox has a daemon");
                        kill(helper, "KILL");
                        let state = env.wait_status(id, "dead", Duration::from_secs(20));
                        assert_eq!(
                            state["helper_exit"]["helper"], "vhost-device-vsock",
                            "{id}: {state:#}"
                        );
                        assert_eq!(
                            state["helper_exit"]["exit"],
                            serde_json::json!({"signal": 9}),
                            "{id}: {state:#}"
                        );
                        let text = env.run(&["state", id]);
                        assert!(text.ok().contains("vhost-device-vsock"), "{text:?}");
                        // The sandbox was stopped: its VMM is gone too.
                        assert!(wait_gone(vmm, Duration::from_secs(20)), "{id}: VMM left");
                        env.run(&["exec", id, "--", "true"])
                            .fails_with("it is dead");
                        ended = true;
                        break;
                    }
                    Victim::Supervisor => {
                        kill(supervisor, "KILL");
                        assert!(
                            wait_gone(supervisor, Duration::from_secs(10)),
                            "{id}: supervisor"
                        );
                        assert!(alive(vmm), "{id}: the VMM must outlive its supervisor");
                        // The next command re-attaches; a paused guest stays paused.
                        let state = env.state(id);
                        let expect = if at == 4 { "paused" } else { "running" };
                        assert_eq!(state["status"], expect, "{id} after step {at}: {state:#}");
                    }
                }
            }
            match step {
                Step::Exec => assert_eq!(ok(&["exec", id, "--", "echo", id]), format!("{id}\n")),
                Step::Hotplug => {
                    ok(&["hotplug", id, "block", &self.disk]);
                }
                Step::Unplug => {
                    ok(&["hotplug", id, "--remove", "block", &self.disk]);
                }
                Step::Pause => {
                    ok(&["pause", id]);
                }
                Step::Resume => {
                    ok(&["resume", id]);
                    assert_eq!(ok(&["exec", id, "--", "echo", "back"]), "back\n");
                }
                Step::Stop => {
                    ok(&["stop", id]);
                    assert_eq!(env.state(id)["status"], "stopped");
                }
            }
        }
        let _ = ended;
        ok(&["delete", "--force", id]);
        env.run(&["state", id]).fails_with("no sandbox");
        for p in std::iter::once(vmm).chain(daemon) {
            assert!(wait_gone(p, Duration::from_secs(10)), "{id}: pid {p} left");
        }
        assert!(
            !env.sandbox_dir(id).exists(),
            "{id}: sandbox directory left"
        );
        assert!(
            !env.runtime_dir().join("vm").join(id).exists(),
            "{id}: VM directory left"
        );
    }

    /// The config of a Cloud Hypervisor or Firecracker lifecycle.
    fn vmm_config(&self, kind: Kind) -> HypervisorConfig {
        let (binary, max_vcpus) = match kind {
            Kind::Clh => ("cloud-hypervisor", 2),
            _ => ("firecracker", 1),
        };
        HypervisorConfig {
            kernel_path: Some(self.tiny_kernel.clone()),
            initrd_path: Some(self.tiny_initrd.clone()),
            hypervisor_path: Some(self.vmm_dir.join(binary)),
            jailer_path: (kind == Kind::FcJailed).then(|| self.vmm_dir.join("jailer")),
            // Firecracker is jailed by default: the unjailed kind says so.
            unjailed: kind == Kind::Fc,
            num_vcpus: 1,
            default_max_vcpus: max_vcpus,
            memory_size: 256,
            mem_slots: 1,
            use_vsock: true,
            ..HypervisorConfig::default()
        }
    }

    /// One Cloud Hypervisor or Firecracker lifecycle through the library;
    /// the VMM is killed just before step `kill_at`.
    fn vmm_lifecycle(&self, kind: Kind, id: &str, kill_at: Option<usize>) {
        let storage = self.env.runtime_dir().join("vm");
        let jails = self.env.runtime_dir().join("jail");
        let mut config = self.vmm_config(kind);
        config.validate().expect("a valid config");
        let mut vm: Box<dyn Hypervisor> = match kind {
            Kind::Clh => Box::new(Clh::with_storage(&storage)),
            _ => Box::new(Firecracker::with_options(
                &storage,
                FcOptions {
                    chroot_base: jails.clone(),
                    ..FcOptions::default()
                },
            )),
        };
        let disk = self.vmm_disk.clone();
        self.rt.block_on(async {
            vm.create_sandbox(id, &NetworkNamespace::default(), &config, false)
                .await
                .unwrap_or_else(|e| panic!("{id}: create: {e:?}"));
            let socket = vm.generate_socket(id, true).expect("agent socket");
            vm.add_device(socket.into_device())
                .await
                .expect("adds the hybrid vsock");
            vm.start_sandbox(Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{id}: start: {e:?}"));
            let vmm = vm.pids()[0];
            let drive = BlockDrive {
                file: disk,
                format: "raw".into(),
                id: "soak0".into(),
                index: 1,
                ..BlockDrive::default()
            };
            for (i, step) in VMM_STEPS.iter().enumerate() {
                if kill_at == Some(i) {
                    kill(vmm, "KILL");
                    assert!(wait_gone(vmm, Duration::from_secs(10)), "{id}: {vmm}");
                    // The backend reaps its child: check() says how it ended.
                    let mut exit = None;
                    for _ in 0..50 {
                        match vm.check().await {
                            Err(e) if e.vmm_exit().is_some() => {
                                exit = e.vmm_exit();
                                break;
                            }
                            _ => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                    assert_eq!(exit, Some(Exit::Signal(9)), "{id}: how the VMM ended");
                    // A stop after the VMM died may say so; cleanup must work.
                    let _ = vm.stop_sandbox().await;
                    break;
                }
                let done = match step {
                    VmmStep::Pause => vm.pause_sandbox().await,
                    VmmStep::Resume => vm.resume_sandbox().await,
                    VmmStep::Hotplug => vm
                        .hotplug_add_device(Device::Block(drive.clone()))
                        .await
                        .map(drop),
                    VmmStep::Unplug => vm
                        .hotplug_remove_device(Device::Block(drive.clone()))
                        .await
                        .map(drop),
                    VmmStep::Stop => vm.stop_sandbox().await,
                };
                done.unwrap_or_else(|e| panic!("{id}: {step:?}: {e:?}"));
            }
            vm.cleanup()
                .await
                .unwrap_or_else(|e| panic!("{id}: cleanup: {e:?}"));
            assert!(wait_gone(vmm, Duration::from_secs(10)), "{id}: VMM left");
        });
        drop(vm);
        assert!(!storage.join(id).exists(), "{id}: VM directory left");
        let jail = jails.join("firecracker").join(id);
        assert!(!jail.exists(), "{id}: jail {jail:?} left");
    }
}

#[test]
fn vm_soak_mixed_lifecycles_with_kills_leave_nothing_behind() {
    let n = env_number("SOAK_N", 30);
    let seed = env_number(
        "SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
    );
    eprintln!("soak: {n} lifecycles, SOAK_SEED={seed}");
    // The whole mix first, from the seed alone: printed, so a run can be
    // replayed and `SOAK_PLAN_ONLY=1` shows what a seed would do.
    let mut rng = StdRng::seed_from_u64(seed);
    let plan: Vec<(String, Kind, Kill)> = (0..n)
        .map(|i| {
            let kind = Kind::pick(&mut rng);
            // One in three of every kind, so a third of all.
            let kill_at = rng.gen_ratio(1, 3).then(|| {
                let victims = kind.victims();
                let victim = victims[rng.gen_range(0..victims.len())];
                (rng.gen_range(0..kind.steps()), victim)
            });
            (format!("soak{i}"), kind, kill_at)
        })
        .collect();
    let mut t = Tally::default();
    for (_, kind, kill_at) in &plan {
        *t.lifecycles.entry(format!("{kind:?}")).or_default() += 1;
        match kill_at {
            None => *t.full.entry(format!("{kind:?}")).or_default() += 1,
            Some((_, victim)) => t.kill(*kind, *victim),
        }
    }
    t.print(seed);
    if std::env::var_os("SOAK_PLAN_ONLY").is_some() {
        for (id, kind, kill_at) in &plan {
            eprintln!("soak: {id} {kind:?} kill {kill_at:?}");
        }
        return;
    }
    let started = std::time::Instant::now();
    let links_before = links();
    let soak = Soak::new();
    let fds_before = fd_count();
    soak.template_init();
    for (id, kind, kill_at) in plan {
        let id = id.as_str();
        eprintln!("soak: {id} {kind:?} kill {kill_at:?}");
        match (kind, kill_at) {
            (Kind::Run | Kind::RunVolume | Kind::RunTemplate, None) => soak.run(kind, id),
            (Kind::Run | Kind::RunVolume | Kind::RunTemplate, Some((_, victim))) => {
                soak.run_killed(kind, id, victim)
            }
            (Kind::Sandbox | Kind::VsockSandbox, kill_at) => soak.sandbox(kind, id, kill_at),
            (Kind::Clh | Kind::Fc | Kind::FcJailed, kill_at) => {
                soak.vmm_lifecycle(kind, id, kill_at.map(|(at, _)| at))
            }
        }
    }
    soak.template_destroy();
    eprintln!("soak: all {n} done");
    t.print(seed);
    let root = soak.env.runtime_dir();
    let procs = processes_naming(root);
    let scratch_procs = processes_naming(soak.scratch.path());
    let left = entries_under(root);
    let mounts = mounts_under(root);
    let template_mounts = mounts_under(soak.scratch.path());
    let links_after = links();
    let fds_after = fd_count();
    eprintln!(
        "soak: leaks: {} processes, {} entries, {} mounts, {} template mounts, \
         {} links more, {} descriptors more; {} s",
        procs.len() + scratch_procs.len(),
        left.len(),
        mounts.len(),
        template_mounts.len(),
        links_after.len() as i64 - links_before.len() as i64,
        fds_after as i64 - fds_before as i64,
        started.elapsed().as_secs()
    );
    assert!(procs.is_empty(), "processes left: {procs:#?}");
    assert!(
        scratch_procs.is_empty(),
        "processes left: {scratch_procs:#?}"
    );
    assert!(left.is_empty(), "entries left under {root:?}: {left:#?}");
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    assert!(
        template_mounts.is_empty(),
        "template mounts left: {template_mounts:#?}"
    );
    assert_eq!(links_after, links_before, "network links (taps) left");
    assert_eq!(fds_after, fds_before, "descriptors of the test process");
}
