//! `sandvisor exec ID -- CMD...`: runs a command in a sandbox's guest,
//! streaming its stdout and stderr, and exits with its exit code.

use std::io::Read;
use std::process::ExitCode;

use clap::Args;
use sandvisor::supervisor::{ExecSpec, SandboxId};

use super::lifecycle::{block_on, manager};
use super::CmdResult;

/// Arguments of `sandvisor exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The sandbox.
    pub id: SandboxId,
    /// Send this command's stdin (read to its end first) to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Environment of the process, `KEY=VALUE`; repeatable.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Kill the process after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs `sandvisor exec`.
pub fn run(args: ExecArgs) -> CmdResult {
    let stdin = if args.interactive {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        Some(buf)
    } else {
        None
    };
    let spec = ExecSpec {
        argv: args.command,
        env: args.env,
        cwd: args.cwd,
        timeout_ms: args.timeout.map(|s| s.saturating_mul(1000)),
        stdin: false,
    };
    let manager = manager()?;
    let exit = block_on(async {
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        manager
            .exec(&args.id, spec, stdin, &mut stdout, &mut stderr)
            .await
    })??;
    Ok(ExitCode::from(
        u8::try_from(exit.shell_code().clamp(0, 255)).unwrap_or(u8::MAX),
    ))
}
