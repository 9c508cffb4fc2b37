//! `sandvisor run -- CMD`: the orchestration is
//! [`sandvisor::sandbox::run_command`]; this file maps flags to options,
//! Ctrl-C to cancellation and the outcome to an exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use sandvisor::sandbox::{run_command, SandboxOptions};
use sandvisor_proto::ExecRequest;
use tokio::signal::unix::{signal, SignalKind};

use super::stdio::{exit_code, ProcessIo};
use super::CmdResult;
use crate::ConfigArgs;

/// Arguments of `sandvisor run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// vCPUs.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory in MiB.
    #[arg(long)]
    pub memory: Option<u32>,
    /// Seconds to wait for the VM, and for the command.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Volumes, network, ports.
    #[command(flatten)]
    pub env: super::run_env::RunEnvArgs,
    /// Environment, directory, user, stdin and terminal of the command.
    #[command(flatten)]
    pub io: super::stdio::IoArgs,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Resolves on Ctrl-C or SIGTERM.
pub(super) async fn interrupted() {
    let term = signal(SignalKind::terminate());
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs `sandvisor run`.
pub fn run(args: RunArgs) -> CmdResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> CmdResult {
    let timeout = Duration::from_secs(args.timeout);
    sandvisor::paths::prepare_runtime_dir()?;
    if let Some(hint) = super::run_env::kvm_hint(&sandvisor::probe::probe_host_kvm()) {
        eprintln!("{hint}");
    }
    let opts = SandboxOptions {
        config: args.config.config,
        hypervisor: args.config.hypervisor,
        vcpus: args.cpus,
        memory_mib: args.memory,
        boot_timeout: timeout,
        attach: args.env.attachments(),
    };
    let (uid, gid) = args.io.uid_gid();
    let req = ExecRequest {
        argv: args.command,
        env: args.io.environment()?,
        cwd: args.io.workdir.clone(),
        timeout_ms: Some(timeout.as_millis().try_into().unwrap_or(u64::MAX)),
        uid,
        gid,
        ..ExecRequest::default()
    };
    // Piped stdin goes to the command even without -i, as it always did; a
    // terminal's only with -i or -t.
    let mut io = ProcessIo::setup(&args.io, true)?;
    let req = ExecRequest {
        tty: io.size,
        ..req
    };
    let outcome = run_command(
        &opts,
        req,
        std::mem::take(&mut io.input),
        &mut tokio::io::stdout(),
        &mut tokio::io::stderr(),
    )
    .await;
    io.finish();
    match outcome {
        Ok(o) => {
            if o.timed_out {
                eprintln!(
                    "sandvisor: the command ran past --timeout {}s and was killed",
                    args.timeout
                );
            }
            Ok(exit_code(o.status.shell_code()))
        }
        Err(e @ sandvisor::sandbox::SandboxError::Interrupted { .. }) => {
            super::print_error(&e);
            Ok(ExitCode::from(130))
        }
        Err(e) if e.not_runnable_code().is_some() => {
            super::print_error(&e);
            Ok(exit_code(e.not_runnable_code().unwrap_or(127)))
        }
        Err(e) => Err(e.into()),
    }
}
