//! `sandvisor`: the command line over the sandvisor library.
//!
//! Each subcommand lives in `cmd/<name>.rs`; this file only parses
//! arguments, sets up logging and prints the error chain once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sandvisor::HypervisorType;

mod cmd;

/// The hypervisor layer of a VM-isolated container runtime.
#[derive(Debug, Parser)]
#[command(name = "sandvisor", version, about)]
struct Cli {
    /// Log filter, as in RUST_LOG (e.g. `debug`, `sandvisor=trace`).
    #[arg(long, global = true, env = "SANDVISOR_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// A Kata `configuration.toml`; without it, the built-in default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Which hypervisor section of the file to use.
    #[arg(long, value_name = "TYPE")]
    pub hypervisor: Option<HypervisorType>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the effective hypervisor config, after defaults and validation.
    Env {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON, keyed by Kata's names.
        #[arg(long)]
        json: bool,
    },
    /// Report what this host can run, and whether the config can start.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build guest assets.
    Image {
        #[command(subcommand)]
        command: cmd::image::ImageCommand,
    },
    /// Run a command in a fresh VM and exit with its exit code.
    Run(cmd::run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Env { config, json } => cmd::env::run(&config, json),
        Command::Check { config, json } => cmd::check::run(&config, json),
        Command::Image { command } => cmd::image::run(command),
        Command::Run(args) => cmd::run::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            cmd::print_error(err.as_ref());
            ExitCode::FAILURE
        }
    }
}
