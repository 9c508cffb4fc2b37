//! The CLI's side: find a sandbox, lock it, make sure its supervisor lives
//! (starting a new one that re-attaches when the old one died), and send it
//! requests.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::id::SandboxId;
use super::layout::{LayoutError, SandboxDir, SandboxLock};
use super::proto::{
    read_frame, write_frame, ClientMessage, ExecControl, ExecExit, ExecSpec, Frame, HotplugOutcome,
    HotplugTarget, Op, ProtoError, RemoteError, Reply, Request, MAX_PAYLOAD, PROTOCOL_VERSION,
};
use super::server::LaunchMode;
use super::state::{SandboxRecord, SandboxStatus};
use super::SupervisorError;
use crate::agent::{Control, ExecInput};
use crate::backends::new_hypervisor;
use crate::config::HypervisorConfig;
use crate::hypervisor_type::HypervisorType;
use crate::process::{Exit, Stoppable};

/// How long a command waits for another to release a sandbox's lock,
/// unless `SANDVISOR_LOCK_TIMEOUT` (seconds) says otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// The file `save` writes the VM's device state to, in the sandbox
/// directory, when the config names none.
pub const DEVICES_STATE_FILE: &str = "devices.state";
/// How long a new supervisor may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `Status` may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation may take, on top of its own timeout (it may wait
/// behind another one in the supervisor).
const OP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a deleted sandbox's supervisor may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to start a supervisor process: a program and the arguments that come
/// before `--runtime-dir DIR ID [--reattach]`. The CLI passes itself and
/// its hidden `supervise` subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// The program.
    pub program: PathBuf,
    /// Its leading arguments.
    pub args: Vec<OsString>,
}

/// What `create` needs.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSpec {
    /// The id; a fresh one when `None`.
    pub id: Option<SandboxId>,
    /// The backend.
    pub hypervisor: HypervisorType,
    /// Its config, validated by `create`.
    pub config: HypervisorConfig,
    /// For a clone of a VM template: the config asked for (see
    /// [`crate::factory::Factory::place`]).
    pub from_template: Option<HypervisorConfig>,
}

/// A VM that runs already, for a new sandbox to adopt.
struct Adopted {
    state: crate::hypervisor::HypervisorState,
    agent: super::agent::AgentAddress,
}

/// The sandboxes under one runtime directory.
#[derive(Debug, Clone)]
pub struct Manager {
    runtime_dir: PathBuf,
    launcher: Launcher,
    lock_timeout: Duration,
}

/// A sandbox after [`Manager::attach`]: its supervisor answers, or the
/// sandbox has ended and needs none.
enum Attached {
    Live(SandboxRecord),
    Ended(SandboxRecord),
}

impl Manager {
    /// A manager of the sandboxes under `runtime_dir`, starting supervisors
    /// with `launcher`.
    pub fn new(runtime_dir: impl Into<PathBuf>, launcher: Launcher) -> Self {
        let runtime_dir = runtime_dir.into();
        let runtime_dir = std::path::absolute(&runtime_dir).unwrap_or(runtime_dir);
        let lock_timeout = std::env::var("SANDVISOR_LOCK_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(DEFAULT_LOCK_TIMEOUT);
        Manager {
            runtime_dir,
            launcher,
            lock_timeout,
        }
    }

    /// The runtime directory.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// Sets how long commands wait for a sandbox's lock.
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    fn dir(&self, id: &SandboxId) -> SandboxDir {
        SandboxDir::new(&self.runtime_dir, id.clone())
    }

    /// Creates a sandbox: validates the config, makes its directory and
    /// record, starts its supervisor, which creates the VM, and returns once
    /// the supervisor answers. A failed create leaves nothing behind.
    ///
    /// # Errors
    /// An invalid config, an id in use, or the supervisor's failure.
    pub async fn create(&self, spec: CreateSpec) -> Result<SandboxRecord, SupervisorError> {
        self.create_with(spec, None).await
    }

    /// [`Manager::create`] of a sandbox around `vm`, a VM from the cache
    /// that runs already, finished for `spec.config`: its supervisor adopts
    /// the VM instead of creating one, and `start` only connects to its
    /// agent. The sandbox takes the VM's id when `spec` names none. A
    /// failed create stops the VM.
    ///
    /// # Errors
    /// As [`Manager::create`]; also a VM whose agent has no address.
    pub async fn create_from_cache(
        &self,
        mut spec: CreateSpec,
        vm: crate::factory::FactoryVm,
    ) -> Result<SandboxRecord, SupervisorError> {
        if spec.id.is_none() {
            spec.id = vm.id.parse::<SandboxId>().ok();
        }
        let crate::factory::FactoryVm {
            id,
            mut hypervisor,
            agent,
            ..
        } = vm;
        let Some(address) = agent.address().cloned() else {
            let _ = hypervisor.stop_sandbox().await;
            let _ = hypervisor.cleanup().await;
            return Err(SupervisorError::Io {
                op: "find the agent address of cached VM",
                path: PathBuf::from(id),
                source: std::io::Error::other("the agent client has no address"),
            });
        };
        // The supervisor opens the agent's one connection.
        drop(agent);
        let adopted = Adopted {
            state: hypervisor.save(),
            agent: address,
        };
        // QEMU serves one QMP client at a time: this handle lets go before
        // the supervisor connects. It can still stop the VM if the create
        // fails.
        hypervisor.disconnect().await;
        let created = self.create_with(spec, Some(adopted)).await;
        if created.is_err() {
            let _ = hypervisor.stop_sandbox().await;
            let _ = hypervisor.cleanup().await;
        }
        created
    }

    async fn create_with(
        &self,
        spec: CreateSpec,
        adopted: Option<Adopted>,
    ) -> Result<SandboxRecord, SupervisorError> {
        let mut config = spec.config;
        config.validate()?;
        let dir = match spec.id {
            Some(id) => {
                let dir = self.dir(&id);
                dir.create()?;
                dir
            }
            None => loop {
                let dir = self.dir(&SandboxId::generate());
                match dir.create() {
                    Err(LayoutError::Exists(_)) => continue,
                    other => break other.map(|()| dir)?,
                }
            },
        };
        let lock = match dir.lock_new().await {
            Ok(lock) => lock,
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir.path());
                return Err(e.into());
            }
        };
        // Where `save` writes the VM's device state, unless the config says.
        if config.devices_state_path.is_none() {
            config.devices_state_path = Some(dir.path().join(DEVICES_STATE_FILE));
        }
        let mut record = SandboxRecord::new(
            dir.id().clone(),
            spec.hypervisor,
            config,
            dir.control_socket(),
        );
        record.from_template = spec.from_template;
        if let Some(vm) = adopted {
            record.vmm = Some(crate::process::ProcessRef::of(vm.state.pid));
            record.hypervisor_state = Some(vm.state);
            record.agent = Some(vm.agent);
        }
        let created = async {
            record.store(&dir.state_file()).await?;
            self.launch(&dir, LaunchMode::Create).await
        }
        .await;
        match created {
            Ok(record) => Ok(record),
            Err(e) => {
                if let Err(rm) = dir.remove(&lock) {
                    tracing::warn!("cannot remove {:?} after a failed create: {rm}", dir.path());
                }
                Err(e)
            }
        }
    }

    /// Starts a supervisor and waits until it answers.
    async fn launch(
        &self,
        dir: &SandboxDir,
        mode: LaunchMode,
    ) -> Result<SandboxRecord, SupervisorError> {
        let log =
            crate::private::open_append(&dir.log_file()).map_err(|source| SupervisorError::Io {
                op: "open supervisor log",
                path: dir.log_file(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| SupervisorError::Io {
            op: "open supervisor log",
            path: dir.log_file(),
            source,
        })?;
        let mut cmd = tokio::process::Command::new(&self.launcher.program);
        cmd.args(&self.launcher.args)
            .arg("--runtime-dir")
            .arg(&self.runtime_dir)
            .arg(dir.id().as_str());
        if mode == LaunchMode::Reattach {
            cmd.arg("--reattach");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .current_dir("/")
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
            program: self.launcher.program.clone(),
            source,
        })?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            match call(dir, Request::Status, STATUS_TIMEOUT).await {
                Ok(Reply::Done { record }) => {
                    // The supervisor lives on; dropping the handle lets the
                    // runtime reap it if it ends while this process runs.
                    drop(child);
                    return Ok(*record);
                }
                Ok(Reply::Error(e)) => return Err(e.into()),
                Ok(_) => {}
                Err(_) => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                // It ended without answering: its record says why, when it
                // got that far.
                if let Ok(record) = SandboxRecord::load(&dir.state_file()).await {
                    if let Some(e) = record.last_error {
                        return Err(e.into());
                    }
                }
                return Err(SupervisorError::SupervisorExited {
                    id: dir.id().clone(),
                    status: status.to_string(),
                    log: dir.log_file(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(SupervisorError::Timeout {
                    id: dir.id().clone(),
                    what: "its new supervisor to answer",
                    after: READY_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes sure the sandbox's supervisor answers, holding its lock: when
    /// the supervisor died, a new one re-attaches to the VMM if it still
    /// runs; if not, the sandbox is recorded dead.
    async fn attach(
        &self,
        dir: &SandboxDir,
        _lock: &SandboxLock,
    ) -> Result<Attached, SupervisorError> {
        let mut record = SandboxRecord::load(&dir.state_file()).await?;
        match call(dir, Request::Status, STATUS_TIMEOUT).await {
            Ok(Reply::Done { record }) => return Ok(Attached::Live(*record)),
            Ok(Reply::Error(e)) => return Err(e.into()),
            _ => {}
        }
        if let Some(sup) = record.supervisor.filter(|s| s.is_alive()) {
            // Alive but not answering: give it a moment (it may be binding
            // its socket), then give up.
            let deadline = tokio::time::Instant::now() + STATUS_TIMEOUT;
            while tokio::time::Instant::now() < deadline && sup.is_alive() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(Reply::Done { record }) = call(dir, Request::Status, STATUS_TIMEOUT).await
                {
                    return Ok(Attached::Live(*record));
                }
            }
            if sup.is_alive() {
                return Err(SupervisorError::Unresponsive {
                    id: dir.id().clone(),
                    pid: sup.pid,
                    log: dir.log_file(),
                });
            }
            record = SandboxRecord::load(&dir.state_file()).await?;
        }
        if record.status.is_final() {
            return Ok(Attached::Ended(record));
        }
        let vmm_gone = record.vmm.is_some_and(|v| !v.is_alive());
        if record.status == SandboxStatus::Creating || vmm_gone {
            tracing::warn!(id = %dir.id(), "supervisor and VMM are gone: the sandbox is dead");
            record.status = SandboxStatus::Dead;
            if vmm_gone && record.vmm_exit.is_none() {
                record.vmm_exit = Some(Exit::Unknown);
            }
            record.store(&dir.state_file()).await?;
            return Ok(Attached::Ended(record));
        }
        tracing::info!(id = %dir.id(), "supervisor is gone: re-attaching");
        self.launch(dir, LaunchMode::Reattach)
            .await
            .map(Attached::Live)
    }

    /// Locks sandbox `id` and makes sure its supervisor answers.
    async fn lock_and_attach(
        &self,
        id: &SandboxId,
    ) -> Result<(SandboxLock, Attached), SupervisorError> {
        let dir = self.dir(id);
        let lock = dir.lock(self.lock_timeout).await?;
        let attached = self.attach(&dir, &lock).await?;
        Ok((lock, attached))
    }

    /// Sends `request` for `op` to the live supervisor of `id`.
    async fn request(
        &self,
        id: &SandboxId,
        op: Op,
        request: Request,
        timeout: Duration,
    ) -> Result<Reply, SupervisorError> {
        let (_lock, attached) = self.lock_and_attach(id).await?;
        match attached {
            Attached::Ended(record) => {
                op.check(id, record.status)?;
                Err(SupervisorError::NotLive(id.clone()))
            }
            Attached::Live(_) => match call(&self.dir(id), request, timeout).await? {
                Reply::Error(e) => Err(e.into()),
                reply => Ok(reply),
            },
        }
    }

    async fn simple(
        &self,
        id: &SandboxId,
        op: Op,
        request: Request,
        timeout: Duration,
    ) -> Result<SandboxRecord, SupervisorError> {
        match self.request(id, op, request, timeout).await? {
            Reply::Done { record } | Reply::Hotplugged { record, .. } => Ok(*record),
            _ => Err(SupervisorError::Proto {
                id: id.clone(),
                source: ProtoError::Unexpected("reply"),
            }),
        }
    }

    /// Starts the VM, waiting up to `timeout` for the VMM and the agent.
    ///
    /// # Errors
    /// Unknown id, wrong state, or the backend's or agent's failure.
    pub async fn start(
        &self,
        id: &SandboxId,
        timeout: Duration,
    ) -> Result<SandboxRecord, SupervisorError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.simple(
            id,
            Op::Start,
            Request::Start { timeout_ms },
            timeout + OP_TIMEOUT,
        )
        .await
    }

    /// Pauses the guest.
    ///
    /// # Errors
    /// Unknown id, wrong state, or the backend's failure.
    pub async fn pause(&self, id: &SandboxId) -> Result<SandboxRecord, SupervisorError> {
        self.simple(id, Op::Pause, Request::Pause, OP_TIMEOUT).await
    }

    /// Resumes the guest.
    ///
    /// # Errors
    /// Unknown id, wrong state, or the backend's failure.
    pub async fn resume(&self, id: &SandboxId) -> Result<SandboxRecord, SupervisorError> {
        self.simple(id, Op::Resume, Request::Resume, OP_TIMEOUT)
            .await
    }

    /// Saves the VM's device state and the record.
    ///
    /// # Errors
    /// Unknown id, wrong state, or the backend's failure.
    pub async fn save(&self, id: &SandboxId) -> Result<SandboxRecord, SupervisorError> {
        self.simple(id, Op::Save, Request::Save, OP_TIMEOUT).await
    }

    /// Stops the VM.
    ///
    /// # Errors
    /// Unknown id, wrong state, or the backend's failure.
    pub async fn stop(&self, id: &SandboxId) -> Result<SandboxRecord, SupervisorError> {
        self.simple(id, Op::Stop, Request::Stop, OP_TIMEOUT).await
    }

    /// Hot-plugs (or with `remove`, unplugs) a device.
    ///
    /// # Errors
    /// Unknown id, wrong state, an unsupported device, or the backend's
    /// failure.
    pub async fn hotplug(
        &self,
        id: &SandboxId,
        target: HotplugTarget,
        remove: bool,
    ) -> Result<(HotplugOutcome, SandboxRecord), SupervisorError> {
        match self
            .request(
                id,
                Op::Hotplug,
                Request::Hotplug { target, remove },
                OP_TIMEOUT,
            )
            .await?
        {
            Reply::Hotplugged { outcome, record } => Ok((outcome, *record)),
            _ => Err(SupervisorError::Proto {
                id: id.clone(),
                source: ProtoError::Unexpected("reply"),
            }),
        }
    }

    /// Sets the vCPU count and/or the memory size.
    ///
    /// # Errors
    /// Unknown id, wrong state, or the backend's failure.
    pub async fn resize(
        &self,
        id: &SandboxId,
        vcpus: Option<u32>,
        memory_mib: Option<u32>,
    ) -> Result<SandboxRecord, SupervisorError> {
        self.simple(
            id,
            Op::Resize,
            Request::Resize { vcpus, memory_mib },
            OP_TIMEOUT,
        )
        .await
    }

    /// The console socket of a running sandbox.
    ///
    /// # Errors
    /// Unknown id, wrong state, or a backend without a console.
    pub async fn console_socket(&self, id: &SandboxId) -> Result<PathBuf, SupervisorError> {
        match self
            .request(id, Op::Console, Request::Console, OP_TIMEOUT)
            .await?
        {
            Reply::Console { path } => Ok(path),
            _ => Err(SupervisorError::Proto {
                id: id.clone(),
                source: ProtoError::Unexpected("reply"),
            }),
        }
    }

    /// The record of `id`, as its supervisor holds it; re-attaches a new
    /// supervisor when the old one died.
    ///
    /// # Errors
    /// Unknown id, or a failed re-attach.
    pub async fn state(&self, id: &SandboxId) -> Result<SandboxRecord, SupervisorError> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Err(LayoutError::NotFound(id.clone()).into());
        }
        // Fast path, without the lock: the supervisor answers at once.
        if let Ok(Reply::Done { record }) = call(&dir, Request::Status, STATUS_TIMEOUT).await {
            return Ok(*record);
        }
        let (_lock, attached) = self.lock_and_attach(id).await?;
        match attached {
            Attached::Live(record) | Attached::Ended(record) => Ok(record),
        }
    }

    /// The records of every sandbox, by creation time, as last written; it
    /// starts no supervisor.
    ///
    /// # Errors
    /// When the runtime directory cannot be read.
    pub async fn list(&self) -> Result<Vec<SandboxRecord>, SupervisorError> {
        let mut entries = match tokio::fs::read_dir(&self.runtime_dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(SupervisorError::Io {
                    op: "read runtime directory",
                    path: self.runtime_dir.clone(),
                    source,
                })
            }
        };
        let mut records = Vec::new();
        while let Some(entry) =
            entries
                .next_entry()
                .await
                .map_err(|source| SupervisorError::Io {
                    op: "read runtime directory",
                    path: self.runtime_dir.clone(),
                    source,
                })?
        {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<SandboxId>().ok())
            else {
                continue;
            };
            match SandboxRecord::load(&self.dir(&id).state_file()).await {
                Ok(record) => records.push(record),
                Err(e) => tracing::debug!("skipping {:?}: {e}", entry.path()),
            }
        }
        records.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(records)
    }

    /// Deletes a sandbox: its supervisor stops the VM (with `force`; else
    /// the VM must not run), cleans up after the backend and exits; then
    /// the directory goes. With no supervisor, this command kills what is
    /// left of the VM and cleans up itself.
    ///
    /// # Errors
    /// Unknown id, a running VM without `force`, or a cleanup failure.
    pub async fn delete(&self, id: &SandboxId, force: bool) -> Result<(), SupervisorError> {
        let dir = self.dir(id);
        let lock = dir.lock(self.lock_timeout).await?;
        let attached = match self.attach(&dir, &lock).await {
            Ok(a) => a,
            // Nothing to re-attach to: clean up what is there.
            Err(e) if force => {
                tracing::warn!("cannot re-attach to sandbox {id}: {e}; cleaning up");
                Attached::Ended(SandboxRecord::load(&dir.state_file()).await?)
            }
            Err(e) => return Err(e),
        };
        match attached {
            Attached::Live(record) => {
                match call(&dir, Request::Delete { force }, OP_TIMEOUT).await? {
                    Reply::Done { .. } => {}
                    Reply::Error(e) => return Err(e.into()),
                    _ => {
                        return Err(SupervisorError::Proto {
                            id: id.clone(),
                            source: ProtoError::Unexpected("reply"),
                        })
                    }
                }
                if let Some(sup) = record.supervisor {
                    if !sup.wait_gone(EXIT_TIMEOUT).await {
                        tracing::warn!(
                            pid = sup.pid,
                            "supervisor did not exit after delete; killing it"
                        );
                        sup.terminate(Duration::from_secs(1)).await;
                    }
                }
            }
            Attached::Ended(record) => {
                if record.status.vmm_runs() && !force {
                    return Err(RemoteError::WrongState {
                        id: id.clone(),
                        op: Op::Delete,
                        status: record.status,
                    }
                    .into());
                }
                cleanup_offline(&record).await;
            }
        }
        dir.remove(&lock)?;
        Ok(())
    }

    /// Runs a process in the guest of `id`, streaming `input` to it (stdin
    /// as it comes, signals and terminal resizes); writes its stdout and
    /// stderr to `stdout` and `stderr` as they come, and returns how it
    /// ended. It waits as long as the process runs, unless
    /// `spec.timeout_ms` is set. `spec.stdin` is set from `input.stdin`.
    ///
    /// # Errors
    /// Unknown id, wrong state, a backend without a guest, a command that
    /// cannot start ([`RemoteError::NotRunnable`]), or the agent's failure.
    pub async fn exec<O, E>(
        &self,
        id: &SandboxId,
        mut spec: ExecSpec,
        input: ExecInput,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<ExecExit, SupervisorError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let dir = self.dir(id);
        {
            // The lock only while making sure a supervisor answers: the
            // process may run for long, and other commands must not wait.
            let (_lock, attached) = self.lock_and_attach(id).await?;
            if let Attached::Ended(record) = attached {
                Op::Exec.check(id, record.status)?;
            }
        }
        spec.stdin = input.stdin.is_some();
        let mut input = input;
        let started = input.started.take();
        let proto = |source| SupervisorError::Proto {
            id: id.clone(),
            source,
        };
        let stream = connect(&dir, STATUS_TIMEOUT).await.map_err(proto)?;
        let (mut reader, mut writer) = stream.into_split();
        let hello = ClientMessage {
            version: PROTOCOL_VERSION,
            request: Request::Exec(spec),
        };
        write_frame(&mut writer, &Frame::message(&hello).map_err(proto)?)
            .await
            .map_err(proto)?;
        // Input goes out while output comes in. When the supervisor stops
        // reading (the process ended, or it refused the request), writing
        // fails and the reply below says why.
        let sender = tokio::spawn(send_exec_input(writer, input));
        let result = read_exec_output(&mut reader, stdout, stderr, id, started).await;
        sender.abort();
        result
    }
}

/// Sends stdin frames (an empty one at its end) and control messages as
/// they come, until both sources end or the supervisor stops reading.
async fn send_exec_input(mut writer: OwnedWriteHalf, input: ExecInput) {
    let ExecInput {
        mut stdin,
        mut control,
        ..
    } = input;
    while stdin.is_some() || control.is_some() {
        let frame = tokio::select! {
            chunk = recv_some(&mut stdin) => match chunk {
                Some(data) if data.is_empty() => continue,
                Some(data) => Frame::Stdin(data),
                None => {
                    stdin = None;
                    Frame::Stdin(Vec::new())
                }
            },
            c = recv_some(&mut control) => match c {
                Some(c) => {
                    let msg = match c {
                        Control::Signal(signal) => ExecControl::Signal { signal },
                        Control::Resize(size) => ExecControl::Resize { size },
                    };
                    match Frame::message(&msg) {
                        Ok(f) => f,
                        Err(_) => continue,
                    }
                }
                None => {
                    control = None;
                    continue;
                }
            },
        };
        let frames = match frame {
            Frame::Stdin(data) if data.len() > MAX_PAYLOAD => data
                .chunks(MAX_PAYLOAD)
                .map(|c| Frame::Stdin(c.to_vec()))
                .collect(),
            f => vec![f],
        };
        for f in frames {
            if let Err(e) = write_frame(&mut writer, &f).await {
                tracing::debug!("exec input not taken: {e}");
                return;
            }
        }
    }
}

async fn recv_some<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn read_exec_output<O, E>(
    reader: &mut OwnedReadHalf,
    stdout: &mut O,
    stderr: &mut E,
    id: &SandboxId,
    mut started: Option<tokio::sync::oneshot::Sender<u32>>,
) -> Result<ExecExit, SupervisorError>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let proto = |source| SupervisorError::Proto {
        id: id.clone(),
        source,
    };
    let io = |source| SupervisorError::Io {
        op: "write output of",
        path: PathBuf::from(id.as_str()),
        source,
    };
    loop {
        let frame = read_frame(reader)
            .await
            .map_err(proto)?
            .ok_or_else(|| proto(ProtoError::Closed))?;
        match frame {
            Frame::Stdout(b) => {
                stdout.write_all(&b).await.map_err(io)?;
                stdout.flush().await.map_err(io)?;
            }
            Frame::Stderr(b) => {
                stderr.write_all(&b).await.map_err(io)?;
                stderr.flush().await.map_err(io)?;
            }
            Frame::Stdin(_) => return Err(proto(ProtoError::Unexpected("stdin"))),
            msg @ Frame::Message(_) => match msg.decode::<Reply>().map_err(proto)? {
                Reply::ExecStarted { pid } => {
                    tracing::debug!(pid, "guest process started");
                    if let Some(tx) = started.take() {
                        let _ = tx.send(pid);
                    }
                }
                Reply::ExecExited { exit } => return Ok(exit),
                Reply::Error(e) => return Err(e.into()),
                _ => return Err(proto(ProtoError::Unexpected("reply"))),
            },
        }
    }
}

/// Removes what a sandbox without a supervisor left: its VMM, if it somehow
/// runs, and the backend's files.
async fn cleanup_offline(record: &SandboxRecord) {
    if let Some(vmm) = record.vmm.filter(|v| v.is_alive()) {
        tracing::warn!(pid = vmm.pid, "killing the VMM left behind");
        vmm.terminate(Duration::from_secs(2)).await;
    }
    let Some(state) = record.hypervisor_state.clone() else {
        return;
    };
    let vm_dir = state.vm_dir.clone();
    let mut hv = new_hypervisor(record.hypervisor);
    if let Err(e) = hv.load(state).await {
        tracing::debug!("backend cannot load the dead VM's state: {e}");
    }
    if let Err(e) = hv.cleanup().await {
        tracing::warn!("backend cleanup failed: {e}");
    }
    // The backend's VM directory is named after the sandbox; anything else
    // in the record is not ours to remove.
    if vm_dir.file_name().and_then(|n| n.to_str()) == Some(record.id.as_str()) && vm_dir.is_dir() {
        if let Err(e) = tokio::fs::remove_dir_all(&vm_dir).await {
            tracing::warn!("cannot remove {vm_dir:?}: {e}");
        }
    }
}

async fn connect(dir: &SandboxDir, timeout: Duration) -> Result<UnixStream, ProtoError> {
    let path = dir.control_socket();
    match tokio::time::timeout(timeout, UnixStream::connect(&path)).await {
        Ok(stream) => Ok(stream?),
        Err(_) => Err(ProtoError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {} took over {timeout:?}", path.display()),
        ))),
    }
}

/// Sends one request to the supervisor of `dir` and reads its reply, within
/// `timeout`.
async fn call(
    dir: &SandboxDir,
    request: Request,
    timeout: Duration,
) -> Result<Reply, SupervisorError> {
    let id = dir.id().clone();
    let exchange = async {
        let mut stream = connect(dir, timeout).await?;
        let msg = ClientMessage {
            version: PROTOCOL_VERSION,
            request,
        };
        write_frame(&mut stream, &Frame::message(&msg)?).await?;
        match read_frame(&mut stream).await? {
            Some(frame) => frame.decode::<Reply>(),
            None => Err(ProtoError::Closed),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(source)) => Err(SupervisorError::Proto { id, source }),
        Err(_) => Err(SupervisorError::Timeout {
            id,
            what: "its supervisor to answer",
            after: timeout,
        }),
    }
}
