//! `sandvisor exec ID -- CMD...`: runs a command in a sandbox's guest,
//! streaming its stdout and stderr, and exits with its exit code.

use clap::Args;
use sandvisor::supervisor::{ExecSpec, RemoteError, SandboxId, SupervisorError};

use super::lifecycle::{block_on, manager};
use super::stdio::{exit_code, ProcessIo};
use super::CmdResult;

/// Arguments of `sandvisor exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The sandbox.
    pub id: SandboxId,
    /// Environment, directory, user, stdin and terminal of the process.
    #[command(flatten)]
    pub io: super::stdio::IoArgs,
    /// Kill the process after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs `sandvisor exec`.
pub fn run(args: ExecArgs) -> CmdResult {
    let manager = manager()?;
    block_on(async {
        let (uid, gid) = args.io.uid_gid();
        // Without -i or -t the process's stdin is /dev/null, as docker exec
        // has it.
        let mut io = ProcessIo::setup(&args.io, false)?;
        let spec = ExecSpec {
            argv: args.command,
            env: args.io.environment()?,
            cwd: args.io.workdir.clone(),
            timeout_ms: args.timeout.map(|s| s.saturating_mul(1000)),
            uid,
            gid,
            tty: io.size,
            ..ExecSpec::default()
        };
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        let exit = manager
            .exec(
                &args.id,
                spec,
                std::mem::take(&mut io.input),
                &mut stdout,
                &mut stderr,
            )
            .await;
        io.finish();
        match exit {
            Ok(exit) => Ok(exit_code(exit.shell_code())),
            Err(SupervisorError::Remote(e @ RemoteError::NotRunnable { code, .. })) => {
                super::print_error(&e);
                Ok(exit_code(code))
            }
            Err(e) => Err(e.into()),
        }
    })?
}
