//! `sandvisor supervise` (hidden): the supervisor process of one sandbox,
//! started by `create` and by commands that re-attach.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use sandvisor::supervisor::{supervise, LaunchMode, SandboxId};

use super::CmdResult;

/// Arguments of `sandvisor supervise`.
#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The runtime directory holding the sandbox.
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: PathBuf,
    /// The sandbox.
    pub id: SandboxId,
    /// Re-attach to a running VM instead of creating one.
    #[arg(long)]
    pub reattach: bool,
}

/// Runs the supervisor until the sandbox is deleted.
pub fn run(args: SuperviseArgs) -> CmdResult {
    let mode = if args.reattach {
        LaunchMode::Reattach
    } else {
        LaunchMode::Create
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(supervise(&args.runtime_dir, args.id, mode))?;
    Ok(ExitCode::SUCCESS)
}
