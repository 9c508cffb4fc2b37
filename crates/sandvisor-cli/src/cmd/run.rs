//! `sandvisor run -- CMD`.

use clap::Args;

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
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs `sandvisor run`.
pub fn run(_args: RunArgs) -> CmdResult {
    Err("sandvisor run is not built yet".into())
}
