//! `sandvisor image build`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use sandvisor::image::{self, BuildOptions, Compression, KernelFrom};

use super::CmdResult;

/// `sandvisor image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest kernel and initrd into the asset directory.
    Build {
        /// Use this kernel image instead of the sandbox kernel.
        #[arg(long, value_name = "PATH", conflicts_with = "kernel_from")]
        kernel: Option<PathBuf>,
        /// Where the kernel comes from: `source` (the default), the sandbox
        /// kernel built from Debian's linux-source-6.1 with everything
        /// built in (minutes the first time, then cached); or `cloud`,
        /// Debian's cloud kernel and its modules.
        #[arg(long, value_name = "ORIGIN")]
        kernel_from: Option<KernelFrom>,
        /// Where downloads and kernel builds are kept; default: `cache` in
        /// the asset directory.
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
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
            kernel_from,
            cache,
            modules,
            output,
            agent,
            compression,
            force,
        } => {
            let opts = BuildOptions {
                kernel,
                kernel_from,
                cache,
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
