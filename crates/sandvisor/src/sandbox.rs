//! One-shot sandboxes: boot a VM from the default assets, run one command
//! through the guest agent, tear everything down. This is what
//! `sandvisor run` is; a container runtime would keep the [`Sandbox`] and
//! run many.
//!
//! The order follows Kata's: `create_sandbox`, then the agent socket from
//! `generate_socket` added as a device (a virtio-serial port, vsock or a
//! hybrid vsock), then `start_sandbox`, then the agent handshake. Every
//! failure after `create_sandbox` stops the VM and removes its files before
//! the error is returned; so does a cancellation (Ctrl-C) passed to
//! [`run_command`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::Rng;
use sandvisor_proto::{ExecRequest, ExitStatus, Stream};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::agent::{AgentAddress, AgentClient, ClientError, Control, ExecEvent, ExecInput};
use crate::backends::new_hypervisor;
use crate::config::kata::{load_config, KataConfigError};
use crate::config::{ConfigError, HypervisorConfig};
use crate::hypervisor::{Error as HypervisorError, Helper, Hypervisor, NetworkNamespace};
use crate::hypervisor_type::HypervisorType;

/// How long to wait for the VMM to exit after the guest powers off.
const POWER_OFF_WAIT: Duration = Duration::from_secs(10);
/// How often a run looks at the VM's helpers (virtiofsd, vhost-device-vsock).
const HELPER_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Errors from running a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The configuration file could not be loaded.
    #[error("cannot load the configuration")]
    Load(#[from] KataConfigError),
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// More vCPUs than the host has, or none.
    #[error(
        "cannot give the sandbox {requested} vCPUs: this host has {host_cpus}; ask for 1 to {host_cpus} (--cpus)"
    )]
    Vcpus {
        /// What was asked.
        requested: u32,
        /// The host's CPUs.
        host_cpus: u32,
    },
    /// More memory than the host has.
    #[error(
        "cannot give the sandbox {requested_mib} MiB: this host has {host_mib} MiB of memory; ask for at most that (--memory)"
    )]
    Memory {
        /// What was asked, in MiB.
        requested_mib: u32,
        /// The host's MemTotal, in MiB.
        host_mib: u64,
    },
    /// A hypervisor operation failed.
    #[error("cannot {op} sandbox {id}")]
    Hypervisor {
        /// The operation.
        op: &'static str,
        /// The sandbox.
        id: String,
        /// The backend's error, boxed: QEMU's errors carry log tails and
        /// would make every `Result` here large.
        #[source]
        source: Box<HypervisorError>,
    },
    /// The agent socket cannot be reached from the host.
    #[error("bad agent socket for sandbox {id}")]
    AgentAddress {
        /// The sandbox.
        id: String,
        /// What is wrong.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the agent failed.
    #[error("guest agent of sandbox {id}: {op}")]
    Agent {
        /// The sandbox.
        id: String,
        /// The step.
        op: &'static str,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// Writing the command's output failed.
    #[error("cannot write the command's output")]
    Output(#[source] std::io::Error),
    /// The VM factory could not give a VM.
    #[error("VM factory")]
    Factory(#[source] Box<crate::factory::FactoryError>),
    /// A guest kernel, initrd or image the config names does not exist.
    #[error(
        "guest {what} {path:?} is missing: run `sandvisor image build` to make the guest assets"
    )]
    MissingAsset {
        /// Which asset.
        what: &'static str,
        /// Where it should be.
        path: PathBuf,
    },
    /// Volumes or the network could not be set up.
    #[error(transparent)]
    Attach(#[from] crate::attach::AttachError),
    /// A helper the VM's devices need died while the command ran, leaving
    /// a device that no longer answers; the sandbox was torn down, as Kata
    /// stops a sandbox whose virtiofsd died.
    #[error("{helper} (pid {pid}) of sandbox {id} ended; the sandbox was torn down")]
    HelperExited {
        /// The sandbox.
        id: String,
        /// The helper: `virtiofsd`, `vhost-device-vsock`.
        helper: &'static str,
        /// Its pid.
        pid: u32,
        /// What the backend says of it, when it says.
        #[source]
        source: Option<Box<HypervisorError>>,
    },
    /// The run was cancelled (Ctrl-C); the sandbox was torn down.
    #[error("interrupted; sandbox {id} was torn down")]
    Interrupted {
        /// The sandbox.
        id: String,
    },
}

/// What sandbox to make.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// A Kata `configuration.toml`; the built-in default when `None`.
    pub config: Option<PathBuf>,
    /// The hypervisor; the file's (or QEMU) when `None`.
    pub hypervisor: Option<HypervisorType>,
    /// vCPUs, over the config's.
    pub vcpus: Option<u32>,
    /// Memory in MiB, over the config's.
    pub memory_mib: Option<u32>,
    /// How long the VMM and then the agent may take to come up.
    pub boot_timeout: Duration,
    /// Volumes and network ([`run_command`] only).
    pub attach: crate::attach::Attachments,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            config: None,
            hypervisor: None,
            vcpus: None,
            memory_mib: None,
            boot_timeout: Duration::from_secs(60),
            attach: crate::attach::Attachments::default(),
        }
    }
}

impl SandboxOptions {
    /// The validated hypervisor config and type these options give.
    ///
    /// # Errors
    /// When the file cannot be loaded or the result is invalid.
    pub fn resolve(&self) -> Result<(HypervisorType, HypervisorConfig), SandboxError> {
        self.resolve_runtime()
            .map(|(kind, config, _)| (kind, config))
    }

    /// The validated config, as [`SandboxOptions::resolve`], and the VM
    /// factory of its `[factory]` section (for the built-in default: the
    /// template `sandvisor factory init` made, when there is one).
    ///
    /// # Errors
    /// As [`SandboxOptions::resolve`], and [`SandboxError::Factory`].
    pub fn resolve_with_factory(
        &self,
    ) -> Result<(HypervisorType, HypervisorConfig, crate::factory::Factory), SandboxError> {
        let (kind, config, rc) = self.resolve_runtime()?;
        let factory = crate::factory::Factory::for_runtime(&rc)
            .map_err(|e| SandboxError::Factory(Box::new(e)))?;
        Ok((kind, config, factory))
    }

    fn resolve_runtime(
        &self,
    ) -> Result<
        (
            HypervisorType,
            HypervisorConfig,
            crate::config::kata::RuntimeConfig,
        ),
        SandboxError,
    > {
        let rc = load_config(self.config.as_deref(), self.hypervisor)?;
        let mut config = rc.config.clone();
        for w in &rc.warnings {
            tracing::warn!("{w}");
        }
        if let Some(n) = self.vcpus {
            let host_cpus = crate::config::vocabulary::HostFacts::probe().cpus;
            if n == 0 || n > host_cpus {
                return Err(SandboxError::Vcpus {
                    requested: n,
                    host_cpus,
                });
            }
            config.num_vcpus = n;
            // Asking for more vCPUs than the default ceiling (the host's
            // CPUs) raises the ceiling rather than failing.
            config.default_max_vcpus = config.default_max_vcpus.max(n);
        }
        if let Some(m) = self.memory_mib {
            // QEMU would only say "invalid value of maxmem" once started.
            let host_mib = crate::probe::host_memory_mib().ok();
            if let Some(host_mib) = host_mib.filter(|h| u64::from(m) > *h) {
                return Err(SandboxError::Memory {
                    requested_mib: m,
                    host_mib,
                });
            }
            config.memory_size = m;
        }
        config.validate()?;
        Ok((rc.hypervisor, config, rc))
    }
}

/// A new sandbox id: `sv-` and 12 hex digits.
pub fn new_sandbox_id() -> String {
    format!(
        "sv-{:012x}",
        rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff
    )
}

/// A running VM and its connected agent.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    hypervisor: Box<dyn Hypervisor>,
    agent: AgentClient,
}

/// Stops the VMM and removes its files, logging what fails: used on error
/// paths, where the first error is the one to report.
async fn teardown(id: &str, hv: &mut dyn Hypervisor) {
    if let Err(e) = hv.stop_sandbox().await {
        tracing::warn!(id, error = %e, "stopping the sandbox failed");
    }
    if let Err(e) = hv.cleanup().await {
        tracing::warn!(id, error = %e, "cleaning up the sandbox failed");
    }
}

impl Sandbox {
    /// Creates and starts a sandbox with `hypervisor` and `config`, and
    /// connects its agent.
    ///
    /// # Errors
    /// The first step that failed; the VM is torn down first.
    pub async fn launch(
        id: String,
        mut hypervisor: Box<dyn Hypervisor>,
        config: &HypervisorConfig,
        boot_timeout: Duration,
    ) -> Result<Sandbox, SandboxError> {
        let hv_err = |op, id: &str| {
            let id = id.to_string();
            move |source| SandboxError::Hypervisor {
                op,
                id,
                source: Box::new(source),
            }
        };
        hypervisor
            .create_sandbox(&id, &NetworkNamespace::default(), config, false)
            .await
            .map_err(hv_err("create", &id))?;
        match Self::boot(&id, hypervisor.as_mut(), config, boot_timeout).await {
            Ok(agent) => Ok(Sandbox {
                id,
                hypervisor,
                agent,
            }),
            Err(e) => {
                teardown(&id, hypervisor.as_mut()).await;
                Err(e)
            }
        }
    }

    async fn boot(
        id: &str,
        hv: &mut dyn Hypervisor,
        config: &HypervisorConfig,
        boot_timeout: Duration,
    ) -> Result<AgentClient, SandboxError> {
        let hv_err = |op| {
            let id = id.to_string();
            move |source| SandboxError::Hypervisor {
                op,
                id,
                source: Box::new(source),
            }
        };
        let socket = hv
            .generate_socket(id, config.use_vsock)
            .map_err(hv_err("make the agent socket of"))?;
        let address =
            AgentAddress::from_socket(&socket).map_err(|source| SandboxError::AgentAddress {
                id: id.to_string(),
                source,
            })?;
        let device = socket.into_device();
        hv.add_device(device)
            .await
            .map_err(hv_err("add the agent channel to"))?;
        let started = Instant::now();
        hv.start_sandbox(boot_timeout)
            .await
            .map_err(hv_err("start"))?;
        let left = boot_timeout.saturating_sub(started.elapsed());
        let agent = AgentClient::connect(&address, left)
            .await
            .map_err(|source| SandboxError::Agent {
                id: id.to_string(),
                op: "connect",
                source,
            })?;
        tracing::info!(id, elapsed = ?started.elapsed(), agent = agent.agent_version(), "sandbox up");
        Ok(agent)
    }

    /// The VM and its agent, for a caller that keeps them otherwise.
    pub fn into_parts(self) -> (Box<dyn Hypervisor>, AgentClient) {
        (self.hypervisor, self.agent)
    }

    /// The sandbox of a VM from the factory.
    pub fn from_factory(vm: crate::factory::FactoryVm) -> Sandbox {
        Sandbox {
            id: vm.id,
            hypervisor: vm.hypervisor,
            agent: vm.agent,
        }
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The guest agent.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The hypervisor.
    pub fn hypervisor(&mut self) -> &mut dyn Hypervisor {
        self.hypervisor.as_mut()
    }

    /// Powers the guest off through the agent, then stops the VMM and
    /// removes its files.
    ///
    /// # Errors
    /// When stopping or cleaning up fails. A VMM that has already exited
    /// because the guest powered off is not an error.
    pub async fn shutdown(mut self) -> Result<(), SandboxError> {
        let id = self.id.clone();
        let powered_off = match self.agent.shutdown().await {
            Ok(()) => self.wait_vmm_exit(POWER_OFF_WAIT).await,
            Err(e) => {
                tracing::warn!(id, error = %e, "the agent did not power the guest off; stopping the VMM");
                false
            }
        };
        let stopped = match self.hypervisor.stop_sandbox().await {
            // The VMM exited on its own because it was asked to: its
            // backend may call that an unexpected exit.
            Err(e) if powered_off => {
                tracing::debug!(id, error = %e, "stop after power-off");
                Ok(())
            }
            other => other,
        };
        self.stopped_then_clean_up(stopped).await
    }

    /// Stops the VMM without asking the guest to power off, then removes
    /// its files: for a guest whose state is all in its own memory (an
    /// initrd root, no disk image, no shared directory), where an orderly
    /// power-off would only cost the guest kernel's shutdown path.
    ///
    /// # Errors
    /// When stopping or cleaning up fails; the files are removed either way.
    pub async fn stop(mut self) -> Result<(), SandboxError> {
        let stopped = self.hypervisor.stop_sandbox().await;
        self.stopped_then_clean_up(stopped).await
    }

    /// Removes the VMM's files after `stopped`, the outcome of stopping it:
    /// a failed stop is the error (the files go anyway), else a failed
    /// clean-up is.
    async fn stopped_then_clean_up(
        mut self,
        stopped: crate::hypervisor::Result<()>,
    ) -> Result<(), SandboxError> {
        let id = self.id.clone();
        if let Err(source) = stopped {
            if let Err(e) = self.hypervisor.cleanup().await {
                tracing::warn!(id, error = %e, "cleaning up the sandbox failed");
            }
            return Err(SandboxError::Hypervisor {
                op: "stop",
                id,
                source: Box::new(source),
            });
        }
        self.hypervisor
            .cleanup()
            .await
            .map_err(|source| SandboxError::Hypervisor {
                op: "clean up",
                id,
                source: Box::new(source),
            })
    }

    /// Whether the VMM went away within `wait`, as `check` reports it.
    async fn wait_vmm_exit(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.hypervisor.check().await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Tears the sandbox down without asking the guest: stop, clean up.
    pub async fn kill(mut self) {
        teardown(&self.id, self.hypervisor.as_mut()).await;
    }
}

/// How [`run_command`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOutcome {
    /// The command's exit.
    pub status: ExitStatus,
    /// Whether it was killed at its timeout.
    pub timed_out: bool,
}

/// How long a command may take to end after a signal was passed on to it,
/// before `run` tears its sandbox down anyway.
pub const SIGNAL_GRACE: Duration = Duration::from_secs(10);

/// Boots a sandbox as `opts` say, runs `req` in it with `input` streamed
/// to it (stdin as it comes; signals and terminal resizes), streams its
/// output to `stdout` and `stderr`, then shuts the sandbox down.
/// `req.timeout_ms` kills the command; `req.stream_stdin` is set from
/// `input.stdin`.
///
/// A signal on `input.control` before the command starts (Ctrl-C while
/// booting) tears the sandbox down and returns
/// [`SandboxError::Interrupted`]. Once it runs, signals are passed on to
/// the command, which ends as it chooses: its exit is returned as any
/// other. When it has not ended [`SIGNAL_GRACE`] after the first signal,
/// the sandbox is torn down and the result is
/// [`SandboxError::Interrupted`].
///
/// # Errors
/// See [`SandboxError`]; [`SandboxError::not_runnable_code`] tells a
/// command that does not exist or cannot be executed. In every case the VM
/// is gone when this returns.
pub async fn run_command<O, E>(
    opts: &SandboxOptions,
    req: ExecRequest,
    input: ExecInput,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<RunOutcome, SandboxError>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let (kind, mut config, factory) = opts.resolve_with_factory()?;
    if kind != HypervisorType::Mock {
        check_guest_assets(&config)?;
    }
    let id = new_sandbox_id();
    // Dropped last, once the VM is gone: it owns host mounts.
    let attached = crate::attach::prepare(&opts.attach, kind, &mut config, &id)?;
    let ExecInput {
        stdin,
        mut control,
        started,
    } = input;
    let mut resized = None;
    let sandbox = if attached.devices().is_empty() {
        // The factory boots the VM, or clones the template; a failed or
        // cancelled boot leaves nothing (dropping a VM handle kills it).
        let booted = tokio::select! {
            r = factory.get_vm(&id, &config, opts.boot_timeout) => Some(r),
            () = next_signal(&mut control, &mut resized) => None,
        };
        match booted {
            Some(Ok(vm)) => Sandbox::from_factory(vm),
            // A boot's own error already names the sandbox and the step.
            Some(Err(crate::factory::FactoryError::Boot { source, .. })) => return Err(*source),
            Some(Err(e)) => return Err(SandboxError::Factory(Box::new(e))),
            None => return Err(SandboxError::Interrupted { id }),
        }
    } else {
        // Volumes and a network are devices of a fresh VM: no template or
        // cached VM has them, so this one boots directly.
        let mut hv = new_hypervisor(kind);
        hv.create_sandbox(&id, &NetworkNamespace::default(), &config, false)
            .await
            .map_err(|source| SandboxError::Hypervisor {
                op: "create",
                id: id.clone(),
                source: Box::new(source),
            })?;
        if let Err(e) = attached.add_devices(&id, hv.as_mut()).await {
            teardown(&id, hv.as_mut()).await;
            return Err(e.into());
        }
        let booted = tokio::select! {
            r = Sandbox::boot(&id, hv.as_mut(), &config, opts.boot_timeout) => Some(r),
            () = next_signal(&mut control, &mut resized) => None,
        };
        match booted {
            Some(Ok(agent)) => Sandbox {
                id: id.clone(),
                hypervisor: hv,
                agent,
            },
            Some(Err(e)) => {
                teardown(&id, hv.as_mut()).await;
                return Err(e);
            }
            None => {
                teardown(&id, hv.as_mut()).await;
                return Err(SandboxError::Interrupted { id });
            }
        }
    };
    // A terminal resized while the sandbox booted starts at its new size.
    let req = match (req.tty, resized) {
        (Some(_), Some(size)) => ExecRequest {
            tty: Some(size),
            ..req
        },
        _ => req,
    };
    let input = ExecInput {
        stdin,
        control,
        started,
    };
    let mut sandbox = sandbox;
    // Watched while the volumes are mounted and the command runs: a dead
    // helper would leave the guest waiting on its device for good.
    let helpers = sandbox.hypervisor.save().helpers();
    let ended = tokio::select! {
        r = async {
            attached.apply(sandbox.agent()).await?;
            exec_streaming(&sandbox, req, input, stdout, stderr).await
        } => Ok(r),
        h = helper_gone(&helpers) => Err(h),
    };
    match ended {
        Ok(Ok(outcome)) => {
            // The command's output has all arrived with its exit. A guest
            // that may still hold writes for the host (a disk image,
            // volumes) syncs and powers off; any other has nothing to lose.
            match ending(&config, attached.has_volumes()) {
                Ending::PowerOff => sandbox.shutdown().await?,
                Ending::Stop => sandbox.stop().await?,
            }
            Ok(outcome)
        }
        Ok(Err(e)) => {
            sandbox.kill().await;
            Err(e)
        }
        Err(helper) => {
            let source = sandbox.hypervisor().check().await.err().map(Box::new);
            tracing::error!(
                id = sandbox.id(),
                helper = helper.name,
                pid = helper.process.pid,
                "a helper of the VM ended: tearing the sandbox down"
            );
            let id = sandbox.id().to_string();
            sandbox.kill().await;
            Err(SandboxError::HelperExited {
                id,
                helper: helper.name,
                pid: helper.process.pid,
                source,
            })
        }
    }
}

/// Resolves with the first of `helpers` to end; never when there are none.
async fn helper_gone(helpers: &[Helper]) -> Helper {
    if helpers.is_empty() {
        return std::future::pending().await;
    }
    loop {
        if let Some(h) = helpers.iter().find(|h| !h.process.is_alive()) {
            return *h;
        }
        tokio::time::sleep(HELPER_WATCH_INTERVAL).await;
    }
}

/// How [`run_command`] ends a sandbox whose command has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Through the agent: sync, power off, then stop the VMM
    /// ([`Sandbox::shutdown`]).
    PowerOff,
    /// The VMM stopped at once ([`Sandbox::stop`]).
    Stop,
}

/// [`Ending::PowerOff`] when the guest may have written to something that
/// outlives it: a disk image (its writes may sit in the guest's page
/// cache) or `volumes` shared from the host; else [`Ending::Stop`]: the
/// initrd's root is guest memory, lost either way.
fn ending(config: &HypervisorConfig, volumes: bool) -> Ending {
    if config.image_path.is_some() || volumes {
        Ending::PowerOff
    } else {
        Ending::Stop
    }
}

/// The kernel, initrd and image `config` names must exist: QEMU would
/// only say so in its log.
fn check_guest_assets(config: &HypervisorConfig) -> Result<(), SandboxError> {
    let named = [
        ("kernel", &config.kernel_path),
        ("initrd", &config.initrd_path),
        ("image", &config.image_path),
    ];
    for (what, path) in named {
        if let Some(p) = path.as_ref().filter(|p| !p.exists()) {
            return Err(SandboxError::MissingAsset {
                what,
                path: p.clone(),
            });
        }
    }
    Ok(())
}

/// Resolves at the first signal on `control`; never when there is none.
/// Resizes meanwhile are kept in `resized`, the last one winning: there is
/// no terminal to resize yet, so the size goes with the command.
async fn next_signal(
    control: &mut Option<tokio::sync::mpsc::Receiver<Control>>,
    resized: &mut Option<sandvisor_proto::WindowSize>,
) {
    while let Some(rx) = control.as_mut() {
        match rx.recv().await {
            Some(Control::Signal(_)) => return,
            Some(Control::Resize(size)) => *resized = Some(size),
            None => *control = None,
        }
    }
    std::future::pending().await
}

async fn exec_streaming<O, E>(
    sandbox: &Sandbox,
    req: ExecRequest,
    input: ExecInput,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<RunOutcome, SandboxError>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let agent_err = |op| {
        let id = sandbox.id().to_string();
        move |source| SandboxError::Agent { id, op, source }
    };
    let mut session = sandbox
        .agent()
        .exec_session(req, input)
        .await
        .map_err(agent_err("start the command"))?;
    session.set_signal_grace(SIGNAL_GRACE);
    loop {
        let event = match session.next().await {
            Err(ClientError::Timeout {
                op: "end after a signal",
                ..
            }) => {
                tracing::warn!(
                    id = sandbox.id(),
                    "the command did not end {SIGNAL_GRACE:?} after a signal"
                );
                return Err(SandboxError::Interrupted {
                    id: sandbox.id().to_string(),
                });
            }
            other => other,
        };
        match event.map_err(agent_err("run the command"))? {
            Some(ExecEvent::Output(Stream::Stdout, data)) => {
                stdout
                    .write_all(&data)
                    .await
                    .map_err(SandboxError::Output)?;
                stdout.flush().await.map_err(SandboxError::Output)?;
            }
            Some(ExecEvent::Output(Stream::Stderr, data)) => {
                stderr
                    .write_all(&data)
                    .await
                    .map_err(SandboxError::Output)?;
                stderr.flush().await.map_err(SandboxError::Output)?;
            }
            Some(ExecEvent::Exit(o)) => {
                return Ok(RunOutcome {
                    status: o.status,
                    timed_out: o.timed_out,
                })
            }
            None => {
                return Err(SandboxError::Agent {
                    id: sandbox.id().to_string(),
                    op: "run the command",
                    source: ClientError::Disconnected,
                })
            }
        }
    }
}

impl SandboxError {
    /// The shell's exit code when the command could not be started: 127
    /// when it does not exist, 126 when it is not executable.
    pub fn not_runnable_code(&self) -> Option<i32> {
        match self {
            SandboxError::Agent {
                op: "start the command",
                source,
                ..
            } => source.agent_error().and_then(|e| e.not_runnable_code()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::new_hypervisor;

    #[test]
    fn ids_are_distinct_and_short() {
        let (a, b) = (new_sandbox_id(), new_sandbox_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("sv-"));
    }

    #[test]
    fn only_a_guest_with_host_backed_storage_powers_off() {
        let plain = HypervisorConfig::default();
        assert_eq!(ending(&plain, false), Ending::Stop);
        assert_eq!(ending(&plain, true), Ending::PowerOff);
        let with_image = HypervisorConfig {
            image_path: Some("/images/rootfs.img".into()),
            ..HypervisorConfig::default()
        };
        assert_eq!(ending(&with_image, false), Ending::PowerOff);
    }

    #[test]
    fn options_override_the_config() {
        let vcpus = crate::config::vocabulary::HostFacts::probe().cpus.min(2);
        let opts = SandboxOptions {
            vcpus: Some(vcpus),
            memory_mib: Some(512),
            ..SandboxOptions::default()
        };
        let (_, config) = opts.resolve().expect("the default config is valid");
        assert_eq!((config.num_vcpus, config.memory_size), (vcpus, 512));
        let bad = SandboxOptions {
            memory_mib: Some(16),
            ..SandboxOptions::default()
        };
        assert!(matches!(
            bad.resolve(),
            Err(SandboxError::Config(ConfigError::MemoryTooSmall { .. }))
        ));
    }

    #[test]
    fn vcpus_and_memory_beyond_the_host_are_refused_naming_both_numbers() {
        let host_cpus = crate::config::vocabulary::HostFacts::probe().cpus;
        for asked in [0, host_cpus + 1, 99 + host_cpus] {
            let opts = SandboxOptions {
                vcpus: Some(asked),
                ..SandboxOptions::default()
            };
            let err = opts.resolve().expect_err("more vCPUs than the host");
            assert!(
                matches!(err, SandboxError::Vcpus { requested, host_cpus: h } if requested == asked && h == host_cpus),
                "{err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{asked} vCPUs")) && msg.contains("--cpus"),
                "{msg}"
            );
        }
        let host_mib = crate::probe::host_memory_mib().expect("MemTotal");
        let asked = u32::try_from(host_mib + 1).expect("host memory fits in u32 MiB");
        let opts = SandboxOptions {
            memory_mib: Some(asked),
            ..SandboxOptions::default()
        };
        let err = opts.resolve().expect_err("more memory than the host");
        let msg = err.to_string();
        assert!(matches!(err, SandboxError::Memory { .. }), "{msg}");
        assert!(
            msg.contains(&format!("{asked} MiB")) && msg.contains(&format!("{host_mib} MiB")),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn agent_that_never_answers_fails_launch_in_time() {
        // The mock runs no guest: nobody answers on its socket.
        let mut config = crate::config::kata::default_config(HypervisorType::Mock).config;
        config.validate().expect("valid");
        let started = Instant::now();
        let err = Sandbox::launch(
            new_sandbox_id(),
            new_hypervisor(HypervisorType::Mock),
            &config,
            Duration::from_millis(300),
        )
        .await
        .expect_err("no agent");
        assert!(
            matches!(err, SandboxError::Agent { op: "connect", .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn cancel_before_boot_is_interrupted() {
        let opts = SandboxOptions {
            hypervisor: Some(HypervisorType::Mock),
            boot_timeout: Duration::from_secs(30),
            ..SandboxOptions::default()
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(Control::Signal(2)).await;
        });
        let r = run_command(
            &opts,
            ExecRequest {
                argv: vec!["true".into()],
                ..ExecRequest::default()
            },
            ExecInput {
                control: Some(rx),
                ..ExecInput::default()
            },
            &mut out,
            &mut err,
        )
        .await;
        assert!(matches!(r, Err(SandboxError::Interrupted { .. })), "{r:?}");
    }
}
