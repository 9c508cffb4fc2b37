//! `sandvisor bench`: how fast a sandbox is ready and what it costs, on
//! this machine, side by side with raw QEMU.
//!
//! Sections, each a list of [`Figure`]s with every sample kept:
//!
//! - **cold**: from the start of what `sandvisor run` does (config
//!   resolution, the backend, [`Sandbox::launch`](crate::sandbox::Sandbox::launch)) to the agent answering
//!   its handshake, and to the first exec's exit status; against **raw
//!   QEMU**: the identical QEMU command line ([`Qemu::launch_command`](crate::backends::qemu::Qemu::launch_command) for
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
//! - **clh** (only with `--only clh`): the Cloud Hypervisor backend with
//!   the tiny PVH guest: spawn to `vmm.ping`, `vm.create` + `vm.boot`,
//!   pause and resume, hot-plug acknowledgements.
//!
//! - **factory** (only with `--only factory`): VMs from a template in a
//!   temporary directory against cold boots of the same config: `run --
//!   true` as a process, the agent answering, PSS of 10 clones against a
//!   cold VM's (see `factory.rs`); and a VM cache of two against cold
//!   boots: `run -- true`, and a handout to its first exec result (see
//!   `cache.rs`).
//!
//! - **firecracker** (only with `--only firecracker`): the Firecracker
//!   backend with the tiny PVH guest: API boot (also jailed), pause and
//!   resume, snapshot create, restore to running, hot-plug ack.
//!
//! Every VM started is stopped and its files removed, on failure too. A
//! section that fails is reported as such and the others still run.

pub mod chart;
pub mod report;
pub mod stats;

mod cache;
mod clh;
mod cli;
mod cold;
mod density;
mod factory;
mod firecracker;
mod host;
mod hotplug;
mod lifecycle;
mod memory;
pub mod naive;
mod options;
mod raw;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use sandvisor_proto::{ExecRequest, ExitStatus};

use crate::agent::{AgentClient, ClientError};
use crate::config::HypervisorConfig;
use crate::hypervisor::Hypervisor;
use crate::hypervisor_type::HypervisorType;
use crate::sandbox::{SandboxError, SandboxOptions};
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
    /// `sandvisor run -- true` over a naive QEMU boot of the same kernel
    /// to power-off.
    pub const RUN_TRUE_OVER_NAIVE: f64 = 0.85;
}

/// Ids of the sandboxes the memory section makes through the CLI start
/// with this, so that an interrupted run can find and delete them.
pub const CLI_ID_PREFIX: &str = "sv-bench-";

/// How often the guest is asked whether it sees a hot-plugged device.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

pub use self::cli::delete_cli_sandboxes;
pub use self::host::{HostProbe, HOST_PROBE_KEY};
pub use self::memory::{parse_rss_pss, parse_schedstat, process_cpu, rss_pss_mib};
pub use self::options::{BenchOptions, Section};

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Booting or running a sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The VM factory failed.
    #[error(transparent)]
    Factory(#[from] crate::factory::FactoryError),
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
    resolve_assets(opts, None)
}

/// The built-in config with the kernel and initrd of the asset directory
/// `assets`, as `sandvisor run` resolves it with `SANDVISOR_ASSET_DIR`.
fn resolve_assets(
    opts: &BenchOptions,
    assets: Option<&Path>,
) -> Result<(HypervisorType, HypervisorConfig), BenchError> {
    let s = SandboxOptions {
        boot_timeout: opts.boot_timeout,
        ..SandboxOptions::default()
    };
    let (kind, mut config) = s.resolve()?;
    if let Some(dir) = assets {
        config.kernel_path = Some(crate::paths::kernel_in(dir));
        config.initrd_path = Some(dir.join(crate::paths::INITRD_FILE));
    }
    Ok((kind, config))
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
        if let Ok((mut q, cmd, _)) = raw::raw_command(opts, dir.path()).await {
            setup.push(format!(
                "qemu {} {}",
                cmd.program.display(),
                cmd.args.join(" ")
            ));
            let _ = q.cleanup().await;
        }
    }
    if let (Some(qemu), Some(kernel)) = (&config.hypervisor_path, &config.kernel_path) {
        let args = naive::naive_args(
            kernel,
            Path::new("<busybox initrd>"),
            config.num_vcpus,
            config.memory_size,
        );
        setup.push(format!("naive {} {}", qemu.display(), args.join(" ")));
    }
    if let Some(dir) = &opts.compare_assets {
        setup.push(format!("compared assets {}", dir.display()));
    }
    let mut rec = Recorder::default();
    for section in &opts.sections {
        // Lifecycle and hot-plug share a sandbox, run with the first.
        if *section == Section::Hotplug && opts.sections.contains(&Section::Lifecycle) {
            continue;
        }
        progress(&format!("section {section}"));
        let result = match section {
            Section::Cold => cold::cold(opts, &mut rec, progress).await,
            Section::Lifecycle | Section::Hotplug => {
                let extra = u32::try_from(opts.hotplugs).unwrap_or(0);
                match lifecycle::shared_sandbox(opts, extra).await {
                    Ok((mut sb, config)) => {
                        let mut r = Ok(());
                        if opts.sections.contains(&Section::Lifecycle) {
                            r = lifecycle::lifecycle(opts, &mut sb, &mut rec, progress).await;
                        }
                        if r.is_ok() && opts.sections.contains(&Section::Hotplug) {
                            r = hotplug::hotplug(opts, &mut sb, &config, &mut rec, progress).await;
                        }
                        if let Err(e) = sb.shutdown().await {
                            tracing::warn!(error = %e, "shutting down the shared sandbox failed");
                        }
                        r
                    }
                    Err(e) => Err(e),
                }
            }
            Section::Memory => memory::memory_and_cpu(opts, &mut rec, progress).await,
            Section::Density => density::density(opts, &mut rec, progress).await,
            Section::Firecracker => firecracker::section(opts, &mut rec, progress).await,
            Section::Factory => factory::section(opts, &mut rec, progress).await,
            Section::Clh => match clh::binary() {
                Some(bin) => clh::measure(opts, &bin, &mut rec, progress).await,
                None => Err(BenchError::Unexpected(format!(
                    "no cloud-hypervisor binary: set {} or install it",
                    crate::backends::vmm::lookup::VMM_DIR_ENV
                ))),
            },
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
    use std::time::Instant;

    use super::*;

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
        // Burn CPU until the process's CPU time has grown by 15 ms: how long
        // that takes depends on what else runs on the host, so only a
        // generous deadline bounds it. A reader stuck at one value fails.
        let me = std::process::id();
        let before = process_cpu(me).expect("schedstat");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut grown = Duration::ZERO;
        while grown < Duration::from_millis(15) && Instant::now() < deadline {
            for i in 0..100_000u64 {
                std::hint::black_box(i);
            }
            grown = process_cpu(me).expect("schedstat").saturating_sub(before);
        }
        assert!(
            grown >= Duration::from_millis(15),
            "CPU time grew by {grown:?}"
        );
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
