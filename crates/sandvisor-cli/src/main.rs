//! `sandvisor`: the command line over the sandvisor library.
//!
//! Each subcommand lives in `cmd/<name>.rs`; this file only parses
//! arguments, sets up logging and prints the error chain once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sandvisor::supervisor::SandboxId;
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
    /// Measure cold start, lifecycle and hot-plug latencies, memory and
    /// density on this machine, against raw QEMU; print a table and write
    /// JSON and an SVG chart.
    Bench(cmd::bench::BenchArgs),
    /// Make, show or remove the VM factory's template (Kata's
    /// `kata-runtime factory`).
    Factory(cmd::factory::FactoryArgs),
    /// Run a command in a fresh VM and exit with its exit code.
    Run(cmd::run::RunArgs),
    /// Create a sandbox, kept by a supervisor process, and print its id.
    Create(cmd::lifecycle::CreateArgs),
    /// Boot a created sandbox's VM.
    Start {
        /// The sandbox.
        id: SandboxId,
        /// Seconds to wait for the VMM and the guest agent.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
    /// Run a command in a sandbox, streaming its output, and exit with its
    /// exit code.
    Exec(cmd::exec::ExecArgs),
    /// Pause a sandbox's guest.
    Pause {
        /// The sandbox.
        id: SandboxId,
    },
    /// Resume a paused sandbox's guest.
    Resume {
        /// The sandbox.
        id: SandboxId,
    },
    /// Hot-plug (or with --remove, unplug) a disk, vCPUs, memory or a NIC.
    Hotplug(cmd::lifecycle::HotplugArgs),
    /// Set a sandbox's vCPU count and/or memory size.
    Resize(cmd::lifecycle::ResizeArgs),
    /// Save a sandbox's VM device state and its record.
    Save {
        /// The sandbox.
        id: SandboxId,
    },
    /// Stop a sandbox's VM; `delete` then removes it.
    Stop {
        /// The sandbox.
        id: SandboxId,
    },
    /// Remove a sandbox that no longer runs (with --force, stop it first).
    Delete {
        /// The sandbox.
        id: SandboxId,
        /// Stop the VM if it runs.
        #[arg(long, short)]
        force: bool,
    },
    /// List sandboxes.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a sandbox's state.
    State {
        /// The sandbox.
        id: SandboxId,
        /// Print the whole record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attach the terminal to a sandbox's console; Ctrl-] detaches.
    Console {
        /// The sandbox.
        id: SandboxId,
    },
    /// Run the supervisor of a sandbox (started by `create`).
    #[command(hide = true)]
    Supervise(cmd::supervise::SuperviseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        // Supervisors log to a file: colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Env { config, json } => cmd::env::run(&config, json),
        Command::Check { config, json } => cmd::check::run(&config, json),
        Command::Image { command } => cmd::image::run(command),
        Command::Run(args) => cmd::run::run(args),
        Command::Factory(args) => cmd::factory::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Create(args) => cmd::lifecycle::create(args),
        Command::Start { id, timeout } => cmd::lifecycle::start(id, timeout),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Pause { id } => cmd::lifecycle::pause(id),
        Command::Resume { id } => cmd::lifecycle::resume(id),
        Command::Hotplug(args) => cmd::lifecycle::hotplug(args),
        Command::Resize(args) => cmd::lifecycle::resize(args),
        Command::Save { id } => cmd::lifecycle::save(id),
        Command::Stop { id } => cmd::lifecycle::stop(id),
        Command::Delete { id, force } => cmd::lifecycle::delete(id, force),
        Command::List { json } => cmd::list::list(json),
        Command::State { id, json } => cmd::list::state(id, json),
        Command::Console { id } => cmd::console::run(id),
        Command::Supervise(args) => cmd::supervise::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            cmd::print_error(err.as_ref());
            ExitCode::FAILURE
        }
    }
}
