//! `sandvisor image build`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use sandvisor::image::{self, BuildOptions, Compression};

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
        /// The statically linked agent; default: $SANDVISOR_AGENT, else
        /// next to this executable or in cargo's target directory.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Initrd compression: none, gzip or zstd.
        #[arg(long, value_name = "ALGO", default_value_t = Compression::default())]
        compression: Compression,
        /// Rebuild even when the inputs have not changed.
        #[arg(long)]
        force: bool,
    },
}

/// Runs `sandvisor image`.
pub fn run(command: ImageCommand) -> CmdResult {
    match command {
        ImageCommand::Build {
            kernel,
            modules,
            output,
            agent,
            compression,
            force,
        } => {
            let opts = BuildOptions {
                kernel,
                modules,
                agent,
                output,
                compression,
                force,
            };
            image::build(&opts, &mut |step| eprintln!("image: {step}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
