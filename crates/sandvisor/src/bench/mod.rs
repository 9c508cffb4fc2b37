//! `sandvisor bench`: how fast a sandbox is ready and what it costs, on
//! this machine, side by side with raw QEMU.
//!
//! Sections, each a list of [`Figure`]s with every sample kept:
//!
//! - **cold**: from the start of what `sandvisor run` does (config
//!   resolution, the backend, [`Sandbox::launch`]) to the agent answering
//!   its handshake, and to the first exec's exit status; against **raw
//!   QEMU**: the identical QEMU command line ([`Qemu::launch_command`] for
//!   the same config, kernel and initrd), spawned directly with no QMP
//!   client, supervision or orchestration, timed to the same agent
//!   handshake. Their ratio is sandvisor's overhead. Runs alternate between
//!   the two, after one uncounted warm-up of each, and which goes first
//!   alternates too, so drift and after-effects hit both. The
//!   whole `sandvisor run -- true`, spawned as a process, is timed too.
//! - **lifecycle** (one sandbox): exec round trip, pause and resume.
//! - **hotplug** (the same sandbox): CPU, memory and disk, each until QEMU
//!   acknowledges and until a guest command sees it (the agent onlines CPUs
//!   and memory, as Kata's runtime has it do).
//! - **memory**: per sandbox made by the CLI, the VMM's and the
//!   supervisor's RSS and PSS; and the CPU time sandvisor's own processes
//!   (the supervisor and each CLI call, not QEMU) spend on create, start,
//!   exec, stop and delete.
//! - **density**: N sandboxes launched at once: time until all answer, and
//!   failures.
//!
//! - **firecracker** (only with `--only firecracker`): the Firecracker
//!   backend with the tiny PVH guest: API boot (also jailed), pause and
//!   resume, snapshot create, restore to running, hot-plug ack.
//!
//! Every VM started is stopped and its files removed, on failure too. A
//! section that fails is reported as such and the others still run.

pub mod chart;
mod firecracker;
pub mod report;
pub mod stats;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use sandvisor_proto::{ExecRequest, ExitStatus, OnlineCpuMemRequest};
use tokio::task::JoinSet;

use crate::agent::{AgentAddress, AgentClient, ClientError};
use crate::backends::new_hypervisor;
use crate::backends::qemu::Qemu;
use crate::config::HypervisorConfig;
use crate::device::{BlockDrive, Device};
use crate::hypervisor::{Hypervisor, NetworkNamespace};
use crate::hypervisor_type::HypervisorType;
use crate::sandbox::{new_sandbox_id, Sandbox, SandboxError, SandboxOptions};
use report::{Figure, Machine, Report, Target, Unit, REPORT_VERSION};
use stats::Summary;

/// Targets the issue sets for this machine.
pub mod targets {
    /// Cold start to the agent answering, seconds.
    pub const COLD_START_S: f64 = 2.0;
    /// sandvisor over raw QEMU.
    pub const OVERHEAD_RATIO: f64 = 1.05;
    /// Pause and resume, ms.
    pub const PAUSE_RESUME_MS: f64 = 10.0;
    /// Hot-plug acknowledged by QEMU, ms.
    pub const HOTPLUG_ACK_MS: f64 = 50.0;
    /// Hot-plug seen by the guest, ms.
    pub const HOTPLUG_VISIBLE_MS: f64 = 1000.0;
}

/// Ids of the sandboxes the memory section makes through the CLI start
/// with this, so that an interrupted run can find and delete them.
pub const CLI_ID_PREFIX: &str = "sv-bench-";

/// How often the guest is asked whether it sees a hot-plugged device.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// A part of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// Cold start against raw QEMU, first exec, `run -- true`.
    Cold,
    /// Exec round trip, pause, resume.
    Lifecycle,
    /// CPU, memory and disk hot-plug.
    Hotplug,
    /// Memory per sandbox and CPU time per lifecycle.
    Memory,
    /// Sandboxes started together.
    Density,
    /// The Firecracker backend with the tiny guest: API boot, pause and
    /// resume, snapshot, restore, hot-plug ack. Not run by default.
    Firecracker,
}

impl Section {
    /// Every section run by default, in running order.
    pub const ALL: [Section; 5] = [
        Section::Cold,
        Section::Lifecycle,
        Section::Hotplug,
        Section::Memory,
        Section::Density,
    ];

    /// Sections run only when asked for (`--only`).
    pub const OPTIONAL: [Section; 1] = [Section::Firecracker];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Cold => "cold",
            Section::Lifecycle => "lifecycle",
            Section::Hotplug => "hotplug",
            Section::Memory => "memory",
            Section::Density => "density",
            Section::Firecracker => "firecracker",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Section {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Section::ALL
            .into_iter()
            .chain(Section::OPTIONAL)
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown section {s:?}: expected cold, lifecycle, hotplug, memory, density or firecracker"
                )
            })
    }
}

/// What to measure, how often.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Counted boots per boot figure (cold start, raw QEMU, `run`).
    pub boots: usize,
    /// Samples of cheap operations (exec, pause, resume).
    pub ops: usize,
    /// Hot-plugs of each kind (memory is bounded by the DIMM slots).
    pub hotplugs: usize,
    /// CLI lifecycles for memory and CPU time.
    pub lifecycles: usize,
    /// Sandboxes started together in the density section.
    pub density: usize,
    /// Sections to run.
    pub sections: BTreeSet<Section>,
    /// The `sandvisor` binary, for the sections that use the CLI.
    pub cli: PathBuf,
    /// How long one VM may take to answer.
    pub boot_timeout: Duration,
    /// How the run was invoked, for the report.
    pub command: String,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            boots: 9,
            ops: 20,
            hotplugs: 5,
            lifecycles: 3,
            density: 4,
            sections: Section::ALL.into_iter().collect(),
            cli: PathBuf::from("sandvisor"),
            boot_timeout: Duration::from_secs(60),
            command: "sandvisor bench".into(),
        }
    }
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Booting or running a sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A backend call failed.
    #[error("{op}")]
    Hypervisor {
        /// The step.
        op: &'static str,
        /// The backend's error.
        #[source]
        source: crate::hypervisor::Error,
    },
    /// The agent failed.
    #[error("guest agent: {op}")]
    Agent {
        /// The step.
        op: &'static str,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// A guest command did not succeed.
    #[error("guest command {command:?} ended with {status:?}: {stderr}")]
    GuestCommand {
        /// The command.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// The guest did not show a hot-plugged device in time.
    #[error("the guest did not see the hot-plugged {what} within {waited:?}")]
    NotSeen {
        /// What was plugged.
        what: &'static str,
        /// How long it was looked for.
        waited: Duration,
    },
    /// A CLI call failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Cli {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// The raw-QEMU baseline cannot run this config.
    #[error("raw QEMU baseline: {0}")]
    Raw(String),
    /// A command printed something the bench cannot read.
    #[error("{0}")]
    Unexpected(String),
    /// A file or process operation failed.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

fn hv_err(op: &'static str) -> impl FnOnce(crate::hypervisor::Error) -> BenchError {
    move |source| BenchError::Hypervisor { op, source }
}

fn agent_err(op: &'static str) -> impl FnOnce(ClientError) -> BenchError {
    move |source| BenchError::Agent { op, source }
}

/// Collects samples by key, keeping the order figures were first seen.
#[derive(Debug, Default)]
struct Recorder {
    figures: Vec<Figure>,
    failures: Vec<String>,
}

impl Recorder {
    fn add(
        &mut self,
        section: Section,
        key: &str,
        label: &str,
        unit: Unit,
        target: Option<f64>,
        sample: f64,
    ) {
        if let Some(f) = self.figures.iter_mut().find(|f| f.key == key) {
            f.samples.push(sample);
            if let Some(s) = Summary::of(&f.samples) {
                f.summary = s;
            }
            return;
        }
        let samples = vec![sample];
        let Some(summary) = Summary::of(&samples) else {
            self.failures
                .push(format!("{key}: sample {sample} is not a number"));
            return;
        };
        self.figures.push(Figure {
            section: section.as_str().into(),
            key: key.into(),
            label: label.into(),
            unit,
            samples,
            summary,
            target: target.map(|max| Target { max }),
        });
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `sh -c script` in the guest; its stdout, or an error with stderr.
async fn guest_sh(agent: &AgentClient, script: &str) -> Result<String, BenchError> {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let outcome = agent
        .exec(
            ExecRequest {
                argv: vec!["sh".into(), "-c".into(), script.into()],
                ..ExecRequest::default()
            },
            |b| out.extend_from_slice(b),
            |b| err.extend_from_slice(b),
        )
        .await
        .map_err(agent_err("exec"))?;
    if outcome.status != ExitStatus::Code(0) {
        return Err(BenchError::GuestCommand {
            command: script.into(),
            status: outcome.status,
            stderr: String::from_utf8_lossy(&err).trim().into(),
        });
    }
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// Runs `true` in the guest.
async fn guest_true(agent: &AgentClient) -> Result<(), BenchError> {
    let outcome = agent
        .exec(
            ExecRequest {
                argv: vec!["true".into()],
                ..ExecRequest::default()
            },
            |_| {},
            |_| {},
        )
        .await
        .map_err(agent_err("exec true"))?;
    match outcome.status {
        ExitStatus::Code(0) => Ok(()),
        status => Err(BenchError::GuestCommand {
            command: "true".into(),
            status,
            stderr: String::new(),
        }),
    }
}

/// The built-in config, as `sandvisor run` resolves it.
fn resolve(opts: &BenchOptions) -> Result<(HypervisorType, HypervisorConfig), BenchError> {
    let s = SandboxOptions {
        boot_timeout: opts.boot_timeout,
        ..SandboxOptions::default()
    };
    Ok(s.resolve()?)
}

/// One `sandvisor run`'s worth of work, in process: returns the time to
/// the agent answering and to the first exec's exit.
async fn sandvisor_boot(opts: &BenchOptions) -> Result<(Duration, Duration), BenchError> {
    let started = Instant::now();
    let (kind, config) = resolve(opts)?;
    let sandbox = Sandbox::launch(
        new_sandbox_id(),
        new_hypervisor(kind),
        &config,
        opts.boot_timeout,
    )
    .await?;
    let up = started.elapsed();
    let first = guest_true(sandbox.agent()).await;
    let first_exec = started.elapsed();
    match first {
        Ok(()) => sandbox.shutdown().await?,
        Err(e) => {
            sandbox.kill().await;
            return Err(e);
        }
    }
    Ok((up, first_exec))
}

/// Kills a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The raw-QEMU command for the built-in config, in the VM directory of a
/// created (never started) backend under `storage`.
async fn raw_command(
    opts: &BenchOptions,
    storage: &Path,
) -> Result<
    (
        Qemu,
        crate::backends::qemu::cmdline::QemuCommand,
        AgentAddress,
    ),
    BenchError,
> {
    let (kind, config) = resolve(opts)?;
    if kind != HypervisorType::Qemu {
        return Err(BenchError::Raw(format!(
            "the baseline is QEMU; the config names {kind}"
        )));
    }
    let mut q = Qemu::with_storage(storage);
    q.create_sandbox("raw", &NetworkNamespace::default(), &config, false)
        .await
        .map_err(hv_err("create the raw VM"))?;
    let socket = q
        .generate_socket("raw", config.use_vsock)
        .map_err(hv_err("make the raw VM's agent socket"))?;
    let address = AgentAddress::from_socket(&socket).map_err(io_err("the agent's address"))?;
    q.add_device(socket.into_device())
        .await
        .map_err(hv_err("add the raw VM's agent channel"))?;
    let cmd = q
        .launch_command()
        .map_err(hv_err("build the raw VM's command line"))?;
    if !cmd.fds.is_empty() {
        return Err(BenchError::Raw(
            "the command passes descriptors (vhost-vsock or tap); the baseline runs virtio-serial configs only".into(),
        ));
    }
    Ok((q, cmd, address))
}

/// Raw QEMU: the same command line, spawned directly, to the agent's
/// handshake.
async fn raw_boot(opts: &BenchOptions) -> Result<Duration, BenchError> {
    let storage = tempfile::Builder::new()
        .prefix("sandvisor-bench-raw-")
        .tempdir()
        .map_err(io_err("make a directory for the raw VM"))?;
    let (mut q, cmd, address) = raw_command(opts, storage.path()).await?;
    let result = async {
        let dir = q
            .vm_paths()
            .map(|p| (p.dir.clone(), p.qemu_log.clone()))
            .ok_or_else(|| BenchError::Raw("the backend made no VM paths".into()))?;
        std::fs::create_dir_all(&dir.0).map_err(io_err(format!("create {}", dir.0.display())))?;
        let log =
            std::fs::File::create(&dir.1).map_err(io_err(format!("create {}", dir.1.display())))?;
        let log2 = log.try_clone().map_err(io_err("duplicate the log file"))?;
        let started = Instant::now();
        let child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(format!("spawn {}", cmd.program.display())))?;
        let _child = KillOnDrop(child);
        let agent = AgentClient::connect(&address, opts.boot_timeout)
            .await
            .map_err(agent_err("raw VM handshake"))?;
        let up = started.elapsed();
        drop(agent);
        Ok(up)
    }
    .await;
    // The process is gone (KillOnDrop); remove what the backend made.
    if let Err(e) = q.cleanup().await {
        tracing::warn!(error = %e, "cleaning up the raw VM's directory failed");
    }
    result
}

/// `sandvisor run -- true` as a process: its wall time.
fn cli_run_true(opts: &BenchOptions) -> Result<Duration, BenchError> {
    let started = Instant::now();
    cli(opts, &["run", "--", "true"])?;
    Ok(started.elapsed())
}

/// Runs the CLI with `args`; its stdout.
fn cli(opts: &BenchOptions, args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new(&opts.cli)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("run {}", opts.cli.display())))?;
    if !out.status.success() {
        return Err(BenchError::Cli {
            command: format!("sandvisor {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Entries in [`HostProbe`]'s table: 32 MiB, more than a server's
/// last-level cache share, so that every step goes to memory.
const HOST_PROBE_ENTRIES: u32 = 8 << 20;

/// Steps of one [`HostProbe::time`]: tens of milliseconds at DRAM latency.
const HOST_PROBE_STEPS: u32 = 300_000;

/// Key of the host-steadiness figure.
pub const HOST_PROBE_KEY: &str = "host_memory_probe";

/// Times a fixed chain of dependent memory loads, to show how steady the
/// host was while the boots were measured.
///
/// A TCG guest's boot is the host translating and running guest code, which
/// leans on the host's caches and memory as much as on its cores. On a
/// shared host, a neighbour's memory traffic slows that down without any
/// steal time showing, while plain arithmetic stays steady. A pointer chase
/// through a table larger than the cache moves with it, so timing the same
/// chase before every boot shows whether the boot figures were measured on
/// a steady host. [`Report::host_variation`] turns the spread into a
/// warning.
pub struct HostProbe {
    next: Vec<u32>,
}

impl HostProbe {
    /// Builds the table: one random cycle through every entry (Sattolo's
    /// shuffle), so the chase neither repeats early nor can be prefetched.
    pub fn new() -> HostProbe {
        let mut next: Vec<u32> = (0..HOST_PROBE_ENTRIES).collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in (1..next.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // The remainder is below i, an index.
            let j = (x % i as u64) as usize;
            next.swap(i, j);
        }
        HostProbe { next }
    }

    /// How long the chase took this time.
    pub fn time(&self) -> Duration {
        let start = Instant::now();
        let mut at = 0u32;
        for _ in 0..std::hint::black_box(HOST_PROBE_STEPS) {
            at = self.next[at as usize];
        }
        std::hint::black_box(at);
        start.elapsed()
    }
}

impl fmt::Debug for HostProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostProbe")
            .field("entries", &self.next.len())
            .finish()
    }
}

impl Default for HostProbe {
    fn default() -> Self {
        Self::new()
    }
}

async fn cold(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    progress("cold: warm-up boots (not counted)");
    sandvisor_boot(opts).await?;
    raw_boot(opts).await?;
    let probe = HostProbe::new();
    let mut probes = Vec::with_capacity(2 * opts.boots);
    for i in 0..opts.boots {
        // Alternate which goes first, so that what one leaves behind (a
        // VMM's memory being freed, caches) weighs on both equally.
        let ((up, first), raw) = if i % 2 == 0 {
            probes.push(probe.time());
            let s = sandvisor_boot(opts).await?;
            probes.push(probe.time());
            (s, raw_boot(opts).await?)
        } else {
            probes.push(probe.time());
            let r = raw_boot(opts).await?;
            probes.push(probe.time());
            (sandvisor_boot(opts).await?, r)
        };
        progress(&format!(
            "cold {}/{}: sandvisor {:.3}s, raw QEMU {:.3}s, first exec {:.3}s",
            i + 1,
            opts.boots,
            up.as_secs_f64(),
            raw.as_secs_f64(),
            first.as_secs_f64()
        ));
        let c = Section::Cold;
        rec.add(
            c,
            "cold_start_sandvisor",
            "cold start: sandvisor run's start to agent answering",
            Unit::Seconds,
            Some(targets::COLD_START_S),
            up.as_secs_f64(),
        );
        rec.add(
            c,
            "cold_start_raw_qemu",
            "cold start: raw QEMU, same argv, to agent answering",
            Unit::Seconds,
            None,
            raw.as_secs_f64(),
        );
        rec.add(
            c,
            "first_exec",
            "first exec result: run's start to exit status",
            Unit::Seconds,
            None,
            first.as_secs_f64(),
        );
        rec.add(
            c,
            "overhead_ratio",
            "overhead: sandvisor / raw QEMU, per pair",
            Unit::Ratio,
            Some(targets::OVERHEAD_RATIO),
            up.as_secs_f64() / raw.as_secs_f64(),
        );
    }
    for p in probes {
        rec.add(
            Section::Cold,
            HOST_PROBE_KEY,
            "host steadiness: fixed memory-bound work before each boot",
            Unit::Millis,
            None,
            ms(p),
        );
    }
    for i in 0..opts.boots {
        let wall = cli_run_true(opts)?;
        progress(&format!(
            "cold: `sandvisor run -- true` {}/{}: {:.3}s",
            i + 1,
            opts.boots,
            wall.as_secs_f64()
        ));
        rec.add(
            Section::Cold,
            "run_true_wall",
            "`sandvisor run -- true`, whole process",
            Unit::Seconds,
            None,
            wall.as_secs_f64(),
        );
    }
    Ok(())
}

/// Boots the sandbox the lifecycle and hot-plug sections share, with room
/// for `extra_cpus` more vCPUs.
async fn shared_sandbox(
    opts: &BenchOptions,
    extra_cpus: u32,
) -> Result<(Sandbox, HypervisorConfig), BenchError> {
    let (kind, mut config) = resolve(opts)?;
    config.default_max_vcpus = config.default_max_vcpus.max(config.num_vcpus + extra_cpus);
    let sandbox = Sandbox::launch(
        new_sandbox_id(),
        new_hypervisor(kind),
        &config,
        opts.boot_timeout,
    )
    .await?;
    Ok((sandbox, config))
}

async fn lifecycle(
    opts: &BenchOptions,
    sandbox: &mut Sandbox,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    // The first exec waits for the boot-time drivers; not a round trip.
    guest_true(sandbox.agent()).await?;
    for _ in 0..opts.ops {
        let t = Instant::now();
        guest_true(sandbox.agent()).await?;
        rec.add(
            Section::Lifecycle,
            "exec_rtt",
            "exec round trip (`true`) in a running sandbox",
            Unit::Millis,
            None,
            ms(t.elapsed()),
        );
    }
    for _ in 0..opts.ops {
        let t = Instant::now();
        sandbox
            .hypervisor()
            .pause_sandbox()
            .await
            .map_err(hv_err("pause"))?;
        let paused = t.elapsed();
        let t = Instant::now();
        sandbox
            .hypervisor()
            .resume_sandbox()
            .await
            .map_err(hv_err("resume"))?;
        let resumed = t.elapsed();
        rec.add(
            Section::Lifecycle,
            "pause",
            "pause (QMP stop, acknowledged)",
            Unit::Millis,
            Some(targets::PAUSE_RESUME_MS),
            ms(paused),
        );
        rec.add(
            Section::Lifecycle,
            "resume",
            "resume (QMP cont, acknowledged)",
            Unit::Millis,
            Some(targets::PAUSE_RESUME_MS),
            ms(resumed),
        );
    }
    // A paused guest would not answer this.
    guest_true(sandbox.agent()).await?;
    progress(&format!(
        "lifecycle: {} exec round trips, {} pause/resume pairs",
        opts.ops, opts.ops
    ));
    Ok(())
}

/// Polls `seen` every [`POLL_INTERVAL`] until it is true; how long it took
/// from `since`.
async fn until_seen<F, Fut>(
    what: &'static str,
    since: Instant,
    mut seen: F,
) -> Result<Duration, BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, BenchError>>,
{
    let limit = Duration::from_secs(10);
    loop {
        if seen().await? {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            return Err(BenchError::NotSeen {
                what,
                waited: limit,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn mem_total_kib(agent: &AgentClient) -> Result<u64, BenchError> {
    let line = guest_sh(agent, "grep MemTotal /proc/meminfo").await?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

async fn hotplug(
    opts: &BenchOptions,
    sandbox: &mut Sandbox,
    config: &HypervisorConfig,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let h = Section::Hotplug;
    // vCPUs, one at a time; the agent onlines each, as Kata's runtime asks.
    let plugs = u32::try_from(opts.hotplugs).unwrap_or(u32::MAX);
    for want in (config.num_vcpus + 1)..=(config.num_vcpus.saturating_add(plugs)) {
        let t = Instant::now();
        sandbox
            .hypervisor()
            .resize_vcpus(want)
            .await
            .map_err(hv_err("hot-plug a vCPU"))?;
        let ack = t.elapsed();
        let agent = sandbox.agent();
        // The agent waits for the vCPU to appear and onlines it.
        agent
            .online_cpu_mem(OnlineCpuMemRequest {
                nb_cpus: 1,
                cpu_only: true,
                wait_ms: 5_000,
                ..OnlineCpuMemRequest::default()
            })
            .await
            .map_err(agent_err("online the vCPU"))?;
        let seen = until_seen("vCPU", t, || async move {
            Ok(guest_sh(agent, "nproc").await?.parse::<u32>().unwrap_or(0) >= want)
        })
        .await?;
        rec.add(
            h,
            "hotplug_cpu_ack",
            "hot-plug vCPU: QEMU acknowledges",
            Unit::Millis,
            Some(targets::HOTPLUG_ACK_MS),
            ms(ack),
        );
        rec.add(
            h,
            "hotplug_cpu_seen",
            "hot-plug vCPU: online in the guest (nproc)",
            Unit::Millis,
            Some(targets::HOTPLUG_VISIBLE_MS),
            ms(seen),
        );
    }
    // Memory, 128 MiB at a time, as many as the DIMM slots allow.
    let mut memory = config.memory_size;
    let dimms = opts.hotplugs.min(config.mem_slots as usize);
    for _ in 0..dimms {
        let before = mem_total_kib(sandbox.agent()).await?;
        let t = Instant::now();
        sandbox
            .hypervisor()
            .resize_memory(memory + 128, 128, false)
            .await
            .map_err(hv_err("hot-plug 128 MiB"))?;
        let ack = t.elapsed();
        memory += 128;
        let agent = sandbox.agent();
        // The agent waits for the DIMM's memory to appear and onlines it.
        agent
            .online_cpu_mem(OnlineCpuMemRequest {
                memory_mib: 128,
                wait_ms: 5_000,
                ..OnlineCpuMemRequest::default()
            })
            .await
            .map_err(agent_err("online the memory"))?;
        let seen = until_seen("memory", t, || async move {
            Ok(mem_total_kib(agent).await? >= before + 120 * 1024)
        })
        .await?;
        rec.add(
            h,
            "hotplug_memory_ack",
            "hot-plug 128 MiB DIMM: QEMU acknowledges",
            Unit::Millis,
            Some(targets::HOTPLUG_ACK_MS),
            ms(ack),
        );
        rec.add(
            h,
            "hotplug_memory_seen",
            "hot-plug 128 MiB DIMM: in the guest's MemTotal",
            Unit::Millis,
            Some(targets::HOTPLUG_VISIBLE_MS),
            ms(seen),
        );
    }
    // Disks: 16 MiB sparse files.
    let disks = tempfile::Builder::new()
        .prefix("sandvisor-bench-disks-")
        .tempdir()
        .map_err(io_err("make a directory for disk images"))?;
    for i in 0..opts.hotplugs {
        let file = disks.path().join(format!("disk{i}.img"));
        let f =
            std::fs::File::create(&file).map_err(io_err(format!("create {}", file.display())))?;
        f.set_len(16 << 20)
            .map_err(io_err(format!("size {}", file.display())))?;
        let before = sandbox
            .agent()
            .list_block_devices()
            .await
            .map_err(agent_err("list block devices"))?
            .len();
        let t = Instant::now();
        sandbox
            .hypervisor()
            .hotplug_add_device(Device::Block(BlockDrive {
                file,
                format: "raw".into(),
                id: format!("bench{i}"),
                index: u32::try_from(i + 1).unwrap_or(u32::MAX),
                ..BlockDrive::default()
            }))
            .await
            .map_err(hv_err("hot-plug a disk"))?;
        let ack = t.elapsed();
        let agent = sandbox.agent();
        let seen = until_seen("disk", t, || async move {
            Ok(agent
                .list_block_devices()
                .await
                .map_err(agent_err("list block devices"))?
                .len()
                > before)
        })
        .await?;
        rec.add(
            h,
            "hotplug_disk_ack",
            "hot-plug disk: QEMU acknowledges",
            Unit::Millis,
            Some(targets::HOTPLUG_ACK_MS),
            ms(ack),
        );
        rec.add(
            h,
            "hotplug_disk_seen",
            "hot-plug disk: block device in the guest",
            Unit::Millis,
            Some(targets::HOTPLUG_VISIBLE_MS),
            ms(seen),
        );
    }
    progress(&format!(
        "hotplug: {} vCPUs, {dimms} DIMMs, {} disks; the guest polled every {}ms",
        opts.hotplugs,
        opts.hotplugs,
        POLL_INTERVAL.as_millis()
    ));
    Ok(())
}

/// `Rss` and `Pss` of a process, in MiB, from `smaps_rollup`.
pub fn rss_pss_mib(pid: u32) -> Result<(f64, f64), BenchError> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(io_err(format!("read {path}")))?;
    Ok(parse_rss_pss(&text))
}

/// `Rss` and `Pss` from `smaps_rollup` text, in MiB.
pub fn parse_rss_pss(text: &str) -> (f64, f64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("Rss:"), field("Pss:"))
}

/// A process's own CPU time, children excluded: the sum over its threads
/// of the nanoseconds the scheduler ran them (`/proc/<pid>/task/*/schedstat`),
/// which, unlike `stat`'s clock ticks, resolves a few milliseconds.
pub fn process_cpu(pid: u32) -> Result<Duration, BenchError> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(io_err(format!("read {dir}")))?;
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += parse_schedstat(&text).unwrap_or_default();
        }
    }
    Ok(total)
}

/// The time on CPU in a `schedstat` line: its first field, nanoseconds.
pub fn parse_schedstat(text: &str) -> Option<Duration> {
    text.split_whitespace()
        .next()?
        .parse()
        .ok()
        .map(Duration::from_nanos)
}

/// CPU time of this process's waited-for children so far.
fn children_cpu() -> Duration {
    match nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// The pid in `record[key].pid` of `sandvisor state --json` output.
fn state_pid(state: &serde_json::Value, key: &str) -> Option<u32> {
    state[key]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

async fn memory_and_cpu(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let m = Section::Memory;
    for i in 0..opts.lifecycles {
        let id = format!("{CLI_ID_PREFIX}{}", &new_sandbox_id()[3..]);
        let cli_before = children_cpu();
        let outcome = async {
            cli(opts, &["create", "--id", &id])?;
            cli(opts, &["start", &id])?;
            cli(opts, &["exec", &id, "--", "true"])?;
            let state: serde_json::Value =
                serde_json::from_str(&cli(opts, &["state", &id, "--json"])?)
                    .map_err(|e| BenchError::Raw(format!("sandvisor state --json: {e}")))?;
            let sup = state_pid(&state, "supervisor")
                .ok_or_else(|| BenchError::Raw("no supervisor pid in state".into()))?;
            let vmm = state_pid(&state, "vmm")
                .ok_or_else(|| BenchError::Raw("no VMM pid in state".into()))?;
            // Let the guest settle after the exec before reading memory.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (vmm_rss, vmm_pss) = rss_pss_mib(vmm)?;
            let (sup_rss, sup_pss) = rss_pss_mib(sup)?;
            let mut sup_cpu = process_cpu(sup)?;
            cli(opts, &["stop", &id])?;
            // The supervisor's work for stop counts too, while it lives.
            if let Ok(after) = process_cpu(sup) {
                sup_cpu = after;
            }
            cli(opts, &["delete", &id])?;
            Ok::<_, BenchError>((vmm_rss, vmm_pss, sup_rss, sup_pss, sup_cpu))
        }
        .await;
        let (vmm_rss, vmm_pss, sup_rss, sup_pss, sup_cpu) = match outcome {
            Ok(v) => v,
            Err(e) => {
                let _ = cli(opts, &["delete", "--force", &id]);
                return Err(e);
            }
        };
        let cli_cpu = children_cpu().saturating_sub(cli_before);
        progress(&format!(
            "memory {}/{}: VMM RSS {vmm_rss:.0} MiB PSS {vmm_pss:.0} MiB; supervisor RSS {sup_rss:.1} MiB; sandvisor CPU {:.0} ms",
            i + 1,
            opts.lifecycles,
            ms(sup_cpu + cli_cpu)
        ));
        rec.add(
            m,
            "vmm_rss",
            "VMM (QEMU) RSS per idle sandbox",
            Unit::Mib,
            None,
            vmm_rss,
        );
        rec.add(
            m,
            "vmm_pss",
            "VMM (QEMU) PSS per idle sandbox",
            Unit::Mib,
            None,
            vmm_pss,
        );
        rec.add(
            m,
            "supervisor_rss",
            "supervisor RSS per sandbox",
            Unit::Mib,
            None,
            sup_rss,
        );
        rec.add(
            m,
            "supervisor_pss",
            "supervisor PSS per sandbox",
            Unit::Mib,
            None,
            sup_pss,
        );
        rec.add(
            m,
            "cpu_supervisor",
            "CPU per lifecycle: supervisor",
            Unit::Millis,
            None,
            ms(sup_cpu),
        );
        rec.add(
            m,
            "cpu_cli",
            "CPU per lifecycle: CLI calls (create..delete)",
            Unit::Millis,
            None,
            ms(cli_cpu),
        );
        rec.add(
            m,
            "cpu_sandvisor_total",
            "CPU per lifecycle: all sandvisor processes",
            Unit::Millis,
            None,
            ms(sup_cpu + cli_cpu),
        );
    }
    Ok(())
}

async fn density(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let (kind, config) = resolve(opts)?;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..opts.density {
        let config = config.clone();
        let timeout = opts.boot_timeout;
        set.spawn(async move {
            let t = Instant::now();
            let r = Sandbox::launch(new_sandbox_id(), new_hypervisor(kind), &config, timeout).await;
            (t.elapsed(), r)
        });
    }
    let mut sandboxes = Vec::new();
    let mut failures = 0u32;
    let mut each = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((took, Ok(sb))) => {
                each.push(took);
                sandboxes.push(sb);
            }
            Ok((_, Err(e))) => {
                failures += 1;
                tracing::warn!(error = %e, "a density sandbox failed to start");
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "a density task failed");
            }
        }
    }
    let all = started.elapsed();
    for sb in sandboxes {
        if let Err(e) = sb.shutdown().await {
            tracing::warn!(error = %e, "shutting down a density sandbox failed");
        }
    }
    let n = opts.density;
    progress(&format!(
        "density: {n} sandboxes, all ready in {:.3}s, {failures} failed",
        all.as_secs_f64()
    ));
    let d = Section::Density;
    rec.add(
        d,
        "density_all_ready",
        &format!("{n} sandboxes started together: all answering"),
        Unit::Seconds,
        None,
        all.as_secs_f64(),
    );
    for t in each {
        rec.add(
            d,
            "density_each_ready",
            &format!("{n} together: each sandbox answering"),
            Unit::Seconds,
            None,
            t.as_secs_f64(),
        );
    }
    rec.add(
        d,
        "density_failures",
        &format!("{n} together: failures"),
        Unit::Count,
        None,
        f64::from(failures),
    );
    Ok(())
}

/// Deletes the sandboxes an interrupted run left behind: those whose id
/// starts with [`CLI_ID_PREFIX`]. Returns the ids deleted.
pub fn delete_cli_sandboxes(cli_path: &Path) -> Vec<String> {
    let opts = BenchOptions {
        cli: cli_path.to_path_buf(),
        ..BenchOptions::default()
    };
    let Ok(text) = cli(&opts, &["list", "--json"]) else {
        return Vec::new();
    };
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    list.iter()
        .filter_map(|r| r["id"].as_str())
        .filter(|id| id.starts_with(CLI_ID_PREFIX))
        .filter(|id| cli(&opts, &["delete", "--force", id]).is_ok())
        .map(str::to_string)
        .collect()
}

/// What the machine is.
pub fn machine(config: &HypervisorConfig) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let memory_mib =
        crate::probe::host_memory_size_kb(Path::new("/proc/meminfo")).unwrap_or(0) / 1024;
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let qemu = config
        .hypervisor_path
        .as_ref()
        .and_then(|p| Command::new(p).arg("--version").output().ok())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let kvm = crate::probe::probe_host_kvm();
    let accel = crate::probe::resolve_accel(config.accel, &kvm);
    let accel = match kvm.reason {
        Some(why) => format!("{} ({why})", accel.as_str()),
        None => accel.as_str().to_string(),
    };
    Machine {
        cpu_model,
        cpus: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        memory_mib,
        kernel,
        qemu,
        accel,
    }
}

/// Runs the sections `opts` names. `progress` gets a line per step.
///
/// # Errors
/// Only when even the config cannot be resolved; a section that fails is
/// recorded in [`Report::failures`].
pub async fn run(
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, BenchError> {
    let (_, config) = resolve(opts)?;
    let started = crate::supervisor::state::rfc3339(SystemTime::now());
    let mut setup = vec![
        format!(
            "kernel {}",
            config
                .kernel_path
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        ),
        format!(
            "initrd {}",
            config
                .initrd_path
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        ),
    ];
    if let Ok(dir) = tempfile::tempdir() {
        if let Ok((mut q, cmd, _)) = raw_command(opts, dir.path()).await {
            setup.push(format!(
                "qemu {} {}",
                cmd.program.display(),
                cmd.args.join(" ")
            ));
            let _ = q.cleanup().await;
        }
    }
    let mut rec = Recorder::default();
    for section in &opts.sections {
        // Lifecycle and hot-plug share a sandbox, run with the first.
        if *section == Section::Hotplug && opts.sections.contains(&Section::Lifecycle) {
            continue;
        }
        progress(&format!("section {section}"));
        let result = match section {
            Section::Cold => cold(opts, &mut rec, progress).await,
            Section::Lifecycle | Section::Hotplug => {
                let extra = u32::try_from(opts.hotplugs).unwrap_or(0);
                match shared_sandbox(opts, extra).await {
                    Ok((mut sb, config)) => {
                        let mut r = Ok(());
                        if opts.sections.contains(&Section::Lifecycle) {
                            r = lifecycle(opts, &mut sb, &mut rec, progress).await;
                        }
                        if r.is_ok() && opts.sections.contains(&Section::Hotplug) {
                            r = hotplug(opts, &mut sb, &config, &mut rec, progress).await;
                        }
                        if let Err(e) = sb.shutdown().await {
                            tracing::warn!(error = %e, "shutting down the shared sandbox failed");
                        }
                        r
                    }
                    Err(e) => Err(e),
                }
            }
            Section::Memory => memory_and_cpu(opts, &mut rec, progress).await,
            Section::Density => density(opts, &mut rec, progress).await,
            Section::Firecracker => firecracker::section(opts, &mut rec, progress).await,
        };
        if let Err(e) = result {
            let mut msg = format!("{section}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            progress(&format!("FAILED {msg}"));
            rec.failures.push(msg);
        }
    }
    Ok(Report {
        version: REPORT_VERSION,
        sandvisor: env!("CARGO_PKG_VERSION").into(),
        started,
        command: opts.command.clone(),
        machine: machine(&config),
        setup,
        figures: rec.figures,
        failures: rec.failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_probe_chases_one_cycle_through_every_entry() {
        let probe = HostProbe::new();
        let mut at = 0u32;
        let mut steps = 0u32;
        loop {
            at = probe.next[at as usize];
            steps += 1;
            if at == 0 {
                break;
            }
        }
        assert_eq!(steps, HOST_PROBE_ENTRIES, "one cycle, no short loops");
        // Folded away or cached, the chase would take microseconds.
        let took = probe.time();
        assert!(took > Duration::from_millis(1), "{took:?}");
    }

    #[test]
    fn sections_parse_by_name() {
        assert_eq!("hotplug".parse::<Section>(), Ok(Section::Hotplug));
        let e = "warm".parse::<Section>().expect_err("unknown");
        assert!(e.contains("\"warm\"") && e.contains("density"), "{e}");
    }

    #[test]
    fn smaps_rollup_gives_rss_and_pss() {
        let text = "55a0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:              204800 kB\nPss:              102400 kB\nPss_Anon:          90000 kB\n";
        assert_eq!(parse_rss_pss(text), (200.0, 100.0));
        assert_eq!(parse_rss_pss(""), (0.0, 0.0));
    }

    #[test]
    fn schedstat_gives_nanoseconds_on_cpu() {
        assert_eq!(
            parse_schedstat("1500000000 200000 12\n"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        assert!(process_cpu(me).expect("schedstat") >= Duration::from_millis(15));
        let (rss, pss) = rss_pss_mib(me).expect("smaps_rollup");
        assert!(rss > 0.0 && pss > 0.0 && pss <= rss, "{rss} {pss}");
    }

    #[test]
    fn samples_gather_under_one_figure() {
        let mut r = Recorder::default();
        r.add(
            Section::Lifecycle,
            "pause",
            "pause",
            Unit::Millis,
            Some(10.0),
            2.0,
        );
        r.add(
            Section::Lifecycle,
            "pause",
            "pause",
            Unit::Millis,
            Some(10.0),
            4.0,
        );
        r.add(
            Section::Lifecycle,
            "resume",
            "resume",
            Unit::Millis,
            Some(10.0),
            3.0,
        );
        assert_eq!(r.figures.len(), 2);
        assert_eq!(r.figures[0].samples, [2.0, 4.0]);
        assert_eq!(r.figures[0].summary.median, 3.0);
        r.add(Section::Lifecycle, "x", "x", Unit::Millis, None, f64::NAN);
        assert_eq!(r.failures.len(), 1);
    }
}
