//! `sandvisor create | start | pause | resume | hotplug | resize | save |
//! stop | delete`: one request each to the sandbox's supervisor.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use sandvisor::config::kata::load_config;
use sandvisor::factory::Factory;
use sandvisor::supervisor::{CreateSpec, HotplugTarget, Launcher, Manager, SandboxId};

use super::CmdResult;
use crate::ConfigArgs;

/// The manager of the sandboxes under the runtime directory, starting
/// supervisors as `sandvisor supervise`.
pub fn manager() -> Result<Manager, Box<dyn std::error::Error>> {
    let program = std::env::current_exe()?;
    // The supervisor logs to its sandbox's log file: at `info` unless the
    // user asked for another level.
    let level = std::env::var("SANDVISOR_LOG").unwrap_or_else(|_| "info".to_string());
    let launcher = Launcher {
        program,
        args: vec!["--log".into(), level.into(), "supervise".into()],
    };
    Ok(Manager::new(sandvisor::paths::runtime_dir(), launcher))
}

/// Runs `fut` to completion on a single-threaded runtime.
pub fn block_on<F: Future>(fut: F) -> Result<F::Output, Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(fut);
    // Do not wait for blocking reads (the console's stdin) to return.
    rt.shutdown_background();
    Ok(out)
}

/// How long a VM taken from the cache may take to answer after resuming.
const CACHE_TAKE_TIMEOUT_SECS: u64 = 30;

/// Arguments of `sandvisor create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The sandbox id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`; a fresh one when absent.
    #[arg(long)]
    pub id: Option<SandboxId>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// vCPUs to boot with.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory to boot with, in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
}

/// Runs `sandvisor create`: prints the new sandbox's id.
pub fn create(args: CreateArgs) -> CmdResult {
    // load_config logs its warnings (Kata keys sandvisor ignores).
    let mut runtime = load_config(args.config.config.as_deref(), args.config.hypervisor)?;
    // What the host cannot give is refused here, as `run` does, instead of
    // hanging (QEMU with -smp 99 on 2 CPUs) or failing at `start`.
    if let Some(cpus) = args.cpus {
        let host_cpus = sandvisor::config::vocabulary::HostFacts::probe().cpus;
        if cpus == 0 || cpus > host_cpus {
            return Err(sandvisor::sandbox::SandboxError::Vcpus {
                requested: cpus,
                host_cpus,
            }
            .into());
        }
        runtime.config.num_vcpus = cpus;
        runtime.config.default_max_vcpus = runtime.config.default_max_vcpus.max(cpus);
    }
    if let Some(memory) = args.memory {
        if let Some(host_mib) = sandvisor::probe::host_memory_mib()
            .ok()
            .filter(|h| u64::from(memory) > *h)
        {
            return Err(sandvisor::sandbox::SandboxError::Memory {
                requested_mib: memory,
                host_mib,
            }
            .into());
        }
        runtime.config.memory_size = memory;
    }
    // Checked here, naming the file, before anything is made.
    runtime.validate()?;
    // The VM factory: a clone of the template when the config has one.
    let placement = Factory::for_runtime(&runtime)?.place(&runtime.config);
    let spec = CreateSpec {
        id: args.id,
        hypervisor: runtime.hypervisor,
        config: placement.config,
        from_template: placement.from_template,
    };
    let manager = manager()?;
    let record = block_on(async {
        // With a VM cache, the sandbox adopts one of its VMs; when it does
        // not answer (logged), the VM is created as usual.
        if runtime.factory.vm_cache_number > 0 {
            let endpoint = sandvisor::factory::cache::endpoint(&runtime.factory);
            let timeout = Duration::from_secs(CACHE_TAKE_TIMEOUT_SECS);
            if let Some(vm) = sandvisor::factory::cache::try_take(
                &endpoint,
                runtime.hypervisor,
                &runtime.config,
                timeout,
            )
            .await
            {
                return manager.create_from_cache(spec, vm).await;
            }
        }
        manager.create(spec).await
    })??;
    println!("{}", record.id);
    Ok(ExitCode::SUCCESS)
}

/// Runs `sandvisor start`.
pub fn start(id: SandboxId, timeout: u64) -> CmdResult {
    let manager = manager()?;
    block_on(manager.start(&id, Duration::from_secs(timeout)))??;
    Ok(ExitCode::SUCCESS)
}

/// Runs `sandvisor pause`.
pub fn pause(id: SandboxId) -> CmdResult {
    let manager = manager()?;
    block_on(manager.pause(&id))??;
    Ok(ExitCode::SUCCESS)
}

/// Runs `sandvisor resume`.
pub fn resume(id: SandboxId) -> CmdResult {
    let manager = manager()?;
    block_on(manager.resume(&id))??;
    Ok(ExitCode::SUCCESS)
}

/// Runs `sandvisor save`.
pub fn save(id: SandboxId) -> CmdResult {
    let manager = manager()?;
    block_on(manager.save(&id))??;
    Ok(ExitCode::SUCCESS)
}

/// Runs `sandvisor stop`.
pub fn stop(id: SandboxId) -> CmdResult {
    let manager = manager()?;
    block_on(manager.stop(&id))??;
    Ok(ExitCode::SUCCESS)
}

/// Runs `sandvisor delete`.
pub fn delete(id: SandboxId, force: bool) -> CmdResult {
    let manager = manager()?;
    block_on(manager.delete(&id, force))??;
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `sandvisor hotplug`.
#[derive(Debug, Args)]
pub struct HotplugArgs {
    /// The sandbox.
    pub id: SandboxId,
    /// What to plug.
    #[command(subcommand)]
    pub device: DeviceArg,
    /// Unplug instead.
    #[arg(long, global = true)]
    pub remove: bool,
}

/// A device to hot-plug.
#[derive(Debug, Subcommand)]
pub enum DeviceArg {
    /// A host file or block device, as a disk.
    Block {
        /// Its path.
        path: PathBuf,
        /// Attach it read-only.
        #[arg(long)]
        read_only: bool,
    },
    /// vCPUs.
    Cpu {
        /// How many to add (or remove).
        count: u32,
    },
    /// Memory.
    Memory {
        /// How much to add (or remove), in MiB.
        mib: u32,
    },
    /// A network interface on a host tap device.
    Net {
        /// The tap's name.
        tap: String,
    },
}

/// Runs `sandvisor hotplug`: prints what was done.
pub fn hotplug(args: HotplugArgs) -> CmdResult {
    let target = match args.device {
        DeviceArg::Block { path, read_only } => {
            // The supervisor runs elsewhere: give it an absolute path.
            let path = if args.remove {
                std::path::absolute(&path)?
            } else {
                let abs = path.canonicalize().map_err(|e| {
                    format!(
                        "cannot use {}: {e}; give an existing disk image or block device",
                        path.display()
                    )
                })?;
                if abs.is_dir() {
                    return Err(format!(
                        "cannot use {}: it is a directory; give a disk image or block device",
                        path.display()
                    )
                    .into());
                }
                abs
            };
            HotplugTarget::Block { path, read_only }
        }
        DeviceArg::Cpu { count } => HotplugTarget::Cpu { count },
        DeviceArg::Memory { mib } => HotplugTarget::Memory { size_mib: mib },
        DeviceArg::Net { tap } => HotplugTarget::Net { tap },
    };
    let manager = manager()?;
    let (outcome, _) = block_on(manager.hotplug(&args.id, target, args.remove))??;
    println!("{}", outcome.summary);
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `sandvisor resize`.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// The sandbox.
    pub id: SandboxId,
    /// The new vCPU count.
    #[arg(long)]
    pub cpus: Option<u32>,
    /// The new memory size, in MiB.
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
}

/// Runs `sandvisor resize`: prints the new sizes.
pub fn resize(args: ResizeArgs) -> CmdResult {
    if args.cpus.is_none() && args.memory.is_none() {
        return Err("give --cpus and/or --memory".into());
    }
    let manager = manager()?;
    let record = block_on(manager.resize(&args.id, args.cpus, args.memory))??;
    println!("vcpus {} memory {} MiB", record.vcpus, record.memory_mib);
    Ok(ExitCode::SUCCESS)
}
