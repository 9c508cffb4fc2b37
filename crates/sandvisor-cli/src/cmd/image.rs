//! `sandvisor image build`.

use std::path::PathBuf;

use clap::Subcommand;

use super::CmdResult;

/// `sandvisor image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest kernel and initrd into the asset directory.
    Build {
        /// Use this kernel image instead of Debian's cloud kernel.
        #[arg(long, value_name = "PATH")]
        kernel: Option<PathBuf>,
        /// The modules directory (`lib/modules/<version>`) of `--kernel`.
        #[arg(long, value_name = "DIR")]
        modules: Option<PathBuf>,
        /// Where to write the assets; default: the asset directory.
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
}

/// Runs `sandvisor image`.
pub fn run(_command: ImageCommand) -> CmdResult {
    Err("sandvisor image is not built yet".into())
}
