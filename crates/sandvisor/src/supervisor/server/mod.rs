//! The supervisor process of one sandbox.
//!
//! It owns the `Box<dyn Hypervisor>`, watches the VMM and records how it
//! ends, holds the guest agent connection, and serves the control socket.
//! One task, the owner, holds the backend and the record and applies
//! requests one at a time; connection tasks pass requests to it, answer
//! `Status` from the last published record without waiting for it, and
//! stream `exec` output with a shared agent handle.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod connection;
mod hotplug;

use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use self::connection::Connection;
use super::agent::{self, AgentAddress, GuestAgent};
use super::id::SandboxId;
use super::layout::SandboxDir;
use super::proto::{Op, RemoteError, Reply, Request};
use super::state::{HelperExit, SandboxRecord, SandboxStatus};
use super::SupervisorError;
use crate::agent::WritesHeld;
use crate::backends::new_hypervisor;
use crate::hypervisor::{Helper, Hypervisor, NetworkNamespace};
use crate::process::{Exit, Liveness, ProcessRef, Stoppable};

/// How often the VMM is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How long the backend may take to say how a dead helper ended.
const HELPER_EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long the guest may take to power off before the VMM is stopped.
const GUEST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pause waits for a write to the agent under way to end.
const HOLD_WRITES_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the agent may take to answer on a running guest.
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than the agent's own wait onlining may take.
const ONLINE_SLACK: Duration = Duration::from_secs(20);
/// The guest's memory block size, which memory resizes are aligned to.
const MEMORY_BLOCK_MIB: u32 = 128;
/// How many stdin frames of an `exec` wait for the agent before the
/// supervisor stops reading its client.
const STDIN_QUEUE: usize = 4;

/// How the supervisor comes to own its sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchMode {
    /// Create the VM from the record's config (`sandvisor create`).
    Create,
    /// Re-attach to the VM the record describes, after the previous
    /// supervisor died.
    Reattach,
}

/// Runs the supervisor of sandbox `id` under `runtime_dir` until the sandbox
/// is deleted or the supervisor is told to go (SIGTERM, SIGINT: the VM then
/// keeps running and the next command re-attaches).
///
/// Call it in a process of its own: it starts a new session, so the
/// terminal of the command that started it does not reach it.
///
/// # Errors
/// When the record cannot be read or the control socket bound; a failure
/// to create or re-attach is written to the record's `last_error` first.
pub async fn supervise(
    runtime_dir: &Path,
    id: SandboxId,
    mode: LaunchMode,
) -> Result<(), SupervisorError> {
    // Not a group leader when spawned, so this succeeds; when it fails we are
    // already detached enough (a leader of our own group).
    let _ = nix::unistd::setsid();
    let dir = SandboxDir::new(runtime_dir, id.clone());
    let mut record = SandboxRecord::load(&dir.state_file()).await?;
    let socket = dir.control_socket();
    // The CLI starts a supervisor only after making sure the last one is
    // gone, so a socket file here is stale.
    let _ = tokio::fs::remove_file(&socket).await;
    let listener = UnixListener::bind(&socket).map_err(|source| SupervisorError::Io {
        op: "bind control socket",
        path: socket.clone(),
        source,
    })?;
    crate::private::tighten(&socket).map_err(|source| SupervisorError::Io {
        op: "make private",
        path: socket.clone(),
        source,
    })?;
    record.supervisor = Some(ProcessRef::current());
    record.last_error = None;
    tracing::info!(%id, ?mode, pid = std::process::id(), "supervisor starting");

    let (events_tx, events_rx) = mpsc::channel(64);
    let owner = match Owner::setup(dir.clone(), record.clone(), mode, events_tx.clone()).await {
        Ok(owner) => owner,
        Err(err) => {
            tracing::error!(%id, "setup failed: {err}");
            record.last_error = Some(err);
            if mode == LaunchMode::Create {
                record.status = SandboxStatus::Dead;
            }
            record.store(&dir.state_file()).await?;
            drop(listener);
            let _ = tokio::fs::remove_file(&socket).await;
            return Ok(());
        }
    };
    let published = owner.published.subscribe();
    let owner_task = tokio::spawn(owner.run(events_rx));
    let mut term = signal(SignalKind::terminate()).map_err(|source| SupervisorError::Io {
        op: "handle SIGTERM in",
        path: socket.clone(),
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| SupervisorError::Io {
        op: "handle SIGINT in",
        path: socket.clone(),
        source,
    })?;
    let mut owner_task = owner_task;
    let exit = Arc::new(Notify::new());
    loop {
        tokio::select! {
            () = exit.notified() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let conn = Connection {
                        id: id.clone(),
                        events: events_tx.clone(),
                        published: published.clone(),
                        exit: exit.clone(),
                    };
                    tokio::spawn(async move { conn.serve(stream).await });
                }
                Err(e) => tracing::warn!("accept failed: {e}"),
            },
            _ = term.recv() => {
                tracing::info!("SIGTERM: leaving the VM running");
                let _ = events_tx.send(Event::Detach).await;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: leaving the VM running");
                let _ = events_tx.send(Event::Detach).await;
            }
            done = &mut owner_task => {
                if let Err(e) = done {
                    tracing::error!("owner task failed: {e}");
                }
                break;
            }
        }
    }
    drop(listener);
    let _ = tokio::fs::remove_file(&socket).await;
    tracing::info!(%id, "supervisor exiting");
    Ok(())
}

/// What the owner task is told.
enum Event {
    /// A request, and where to answer it.
    Request(Request, oneshot::Sender<Reply>),
    /// An `exec` wants the agent.
    Agent(oneshot::Sender<Result<Arc<dyn GuestAgent>, RemoteError>>),
    /// The watched VMM ended.
    Exited(ProcessRef, Exit),
    /// A watched helper (virtiofsd, vhost-device-vsock) ended.
    HelperExited(Helper, Exit),
    /// Leave the VM running and end the supervisor.
    Detach,
}

/// The task that owns the backend.
struct Owner {
    dir: SandboxDir,
    record: SandboxRecord,
    hv: Box<dyn Hypervisor>,
    agent_address: Option<AgentAddress>,
    agent: Option<Arc<dyn GuestAgent>>,
    published: watch::Sender<SandboxRecord>,
    events: mpsc::Sender<Event>,
    watcher: Option<JoinHandle<()>>,
    /// `delete` is done: the supervisor ends once the client has the reply.
    deleted: bool,
    /// While the guest is paused: writes to its agent wait for `resume`.
    writes_held: Option<WritesHeld>,
}

impl Owner {
    fn id(&self) -> &SandboxId {
        self.dir.id()
    }

    async fn setup(
        dir: SandboxDir,
        mut record: SandboxRecord,
        mode: LaunchMode,
        events: mpsc::Sender<Event>,
    ) -> Result<Self, RemoteError> {
        let id = dir.id().clone();
        let mut hv = new_hypervisor(record.hypervisor);
        let agent_address = match (mode, record.status) {
            // A VM from the cache: it runs; `start` connects to its agent.
            (LaunchMode::Create, status) if record.hypervisor_state.is_some() => {
                Op::Create.check(&id, status)?;
                let state = record.hypervisor_state.clone().unwrap_or_default();
                hv.load(state)
                    .await
                    .map_err(|e| RemoteError::from_hypervisor(&id, Op::Create, &e))?;
                record.status = SandboxStatus::Created;
                record.agent.clone()
            }
            (LaunchMode::Create, status) => {
                Op::Create.check(&id, status)?;
                let address = create_vm(&mut *hv, &id, &record).await?;
                record.status = SandboxStatus::Created;
                address
            }
            // Created around a VM from the cache, which runs.
            (LaunchMode::Reattach, SandboxStatus::Created)
                if record.vmm.is_some() && record.hypervisor_state.is_some() =>
            {
                let state = record.hypervisor_state.clone().unwrap_or_default();
                hv.load(state)
                    .await
                    .map_err(|e| RemoteError::from_hypervisor(&id, Op::Reattach, &e))?;
                record.agent.clone()
            }
            // Nothing runs yet, so there is nothing to re-attach to: the VM
            // is prepared again, as `create` did.
            (LaunchMode::Reattach, SandboxStatus::Created) => create_vm(&mut *hv, &id, &record)
                .await
                .map_err(|e| e.with_op(Op::Reattach))?,
            (LaunchMode::Reattach, status) => {
                Op::Reattach.check(&id, status)?;
                if let Some(vmm) = record.vmm.filter(|v| !v.is_alive()) {
                    tracing::warn!(pid = vmm.pid, "the VMM is gone");
                    return Err(RemoteError::Failed {
                        id,
                        op: Op::Reattach,
                        causes: vec![format!("its VMM (pid {}) is gone", vmm.pid)],
                    });
                }
                let state = record
                    .hypervisor_state
                    .clone()
                    .ok_or_else(|| RemoteError::Failed {
                        id: id.clone(),
                        op: Op::Reattach,
                        causes: vec!["the record holds no hypervisor state".to_string()],
                    })?;
                hv.load(state)
                    .await
                    .map_err(|e| RemoteError::from_hypervisor(&id, Op::Reattach, &e))?;
                record.agent.clone()
            }
        };
        record.agent = agent_address.clone();
        record.hypervisor_state = Some(hv.save());
        let (published, _) = watch::channel(record.clone());
        let mut owner = Owner {
            dir,
            record,
            hv,
            agent_address,
            agent: None,
            published,
            events,
            watcher: None,
            deleted: false,
            writes_held: None,
        };
        owner.watch_vmm();
        owner.persist().await;
        Ok(owner)
    }

    /// Writes the record and publishes it to `Status` readers.
    async fn persist(&mut self) {
        if self.record.status != SandboxStatus::Dead || self.record.hypervisor_state.is_none() {
            self.record.hypervisor_state = Some(self.hv.save());
        }
        if let Err(e) = self.record.store(&self.dir.state_file()).await {
            tracing::error!("cannot persist the record: {e}");
        }
        self.published.send_replace(self.record.clone());
        self.make_private().await;
    }

    /// Makes the sandbox and VM directories private again: sockets and files
    /// a VMM or helper made since the last look get mode 0600.
    async fn make_private(&self) {
        // The VM's own directory: one adopted from the cache is named after
        // the cached VM, not the sandbox.
        let vm_dir = Some(self.hv.save().vm_dir)
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| crate::paths::vm_storage_dir().join(self.id().as_str()));
        let dirs = [self.dir.path().to_path_buf(), vm_dir];
        let walk = tokio::task::spawn_blocking(move || {
            for dir in &dirs {
                if let Err(e) = crate::private::tighten(dir) {
                    tracing::warn!("cannot make {dir:?} private: {e}");
                }
            }
        });
        if let Err(e) = walk.await {
            tracing::warn!("making the sandbox directories private failed: {e}");
        }
    }

    /// Starts watching the VMM process, when the record names one, and
    /// the helpers its devices need while it runs.
    fn watch_vmm(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        let Some(vmm) = self.record.vmm else {
            return;
        };
        let helpers = if self.record.status.vmm_runs() {
            self.hv.save().helpers()
        } else {
            Vec::new()
        };
        let events = self.events.clone();
        self.watcher = Some(tokio::spawn(async move {
            loop {
                if let Liveness::Gone(exit) = vmm.liveness() {
                    let _ = events.send(Event::Exited(vmm, exit)).await;
                    return;
                }
                let gone = helpers.iter().find_map(|h| match h.process.liveness() {
                    Liveness::Gone(exit) => Some((*h, exit)),
                    Liveness::Alive => None,
                });
                if let Some((helper, exit)) = gone {
                    let _ = events.send(Event::HelperExited(helper, exit)).await;
                    return;
                }
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        }));
    }

    async fn run(mut self, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Request(request, reply) => {
                    let answer = if self.deleted {
                        Reply::Error(RemoteError::BadRequest {
                            id: self.id().clone(),
                            op: Op::Delete,
                            reason: "it is being deleted".to_string(),
                        })
                    } else {
                        let delete = matches!(request, Request::Delete { .. });
                        let answer = self.handle(request).await;
                        self.deleted = delete && matches!(answer, Reply::Done { .. });
                        answer
                    };
                    let _ = reply.send(answer);
                }
                Event::Agent(reply) => {
                    let _ = reply.send(self.agent_for_exec().await);
                }
                Event::Exited(vmm, exit) => self.vmm_exited(vmm, exit).await,
                Event::HelperExited(helper, exit) => self.helper_exited(helper, exit).await,
                Event::Detach => {
                    self.hv.disconnect().await;
                    break;
                }
            }
        }
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }

    async fn vmm_exited(&mut self, vmm: ProcessRef, mut exit: Exit) {
        if self.record.vmm != Some(vmm) {
            return;
        }
        if exit == Exit::Unknown {
            // The backend holds the child handle and may have reaped it
            // first; its check() then says how it ended.
            if let Err(e) = self.hv.check().await {
                exit = backend_exit(&e).unwrap_or(exit);
            }
        }
        if !self.record.status.vmm_runs() {
            // Stopped on purpose: keep a known status, nothing else.
            if exit != Exit::Unknown && self.record.vmm_exit.is_none() {
                self.record.vmm_exit = Some(exit);
                self.persist().await;
            }
            return;
        }
        tracing::warn!(pid = vmm.pid, %exit, "VMM ended on its own");
        self.record.vmm_exit = Some(exit);
        self.record.status = SandboxStatus::Dead;
        self.agent = None;
        self.writes_held = None;
        self.hv.disconnect().await;
        self.persist().await;
    }

    /// A helper died under the running VM: its device no longer answers
    /// (a guest's virtio-fs requests would hang, the agent is out of
    /// reach), so the sandbox is stopped and recorded `dead` naming the
    /// helper, as Kata stops a sandbox whose virtiofsd died. `delete`
    /// removes the rest.
    async fn helper_exited(&mut self, helper: Helper, mut exit: Exit) {
        if !self.record.status.vmm_runs() {
            return;
        }
        // The backend reaped its child and knows how it ended, once its
        // reaper has published the status: a moment after the pid is gone.
        let deadline = tokio::time::Instant::now() + HELPER_EXIT_WAIT;
        while exit == Exit::Unknown {
            if let Err(e) = self.hv.check().await {
                if let Some((name, known)) = e.helper_exit().filter(|(n, _)| *n == helper.name) {
                    tracing::debug!(helper = name, "the backend saw it end: {e}");
                    if known != Exit::Unknown {
                        exit = known;
                        break;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(WATCH_INTERVAL).await;
        }
        tracing::error!(
            helper = helper.name,
            pid = helper.process.pid,
            %exit,
            "a helper of the VM ended: stopping the sandbox"
        );
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        self.agent = None;
        self.writes_held = None;
        if let Err(e) = self.hv.stop_sandbox().await {
            tracing::warn!("stopping after {} ended: {e}", helper.name);
        }
        if let Some(vmm) = self.record.vmm {
            if let Liveness::Gone(vmm_exit @ (Exit::Code(_) | Exit::Signal(_))) = vmm.liveness() {
                self.record.vmm_exit = Some(vmm_exit);
            }
        }
        self.record.helper_exit = Some(HelperExit {
            helper: helper.name.to_string(),
            pid: helper.process.pid,
            exit,
        });
        self.record.status = SandboxStatus::Dead;
        self.persist().await;
    }

    async fn handle(&mut self, request: Request) -> Reply {
        let op = match &request {
            Request::Status => {
                return Reply::Done {
                    record: Box::new(self.record.clone()),
                }
            }
            Request::Start { .. } => Op::Start,
            Request::Pause => Op::Pause,
            Request::Resume => Op::Resume,
            Request::Save => Op::Save,
            Request::Stop => Op::Stop,
            Request::Hotplug { .. } => Op::Hotplug,
            Request::Resize { .. } => Op::Resize,
            Request::Exec(_) => Op::Exec,
            Request::Console => Op::Console,
            Request::Delete { .. } => Op::Delete,
        };
        if let Err(e) = op.check(self.id(), self.record.status) {
            return Reply::Error(e);
        }
        let result = match request {
            Request::Start { timeout_ms } => self.start(Duration::from_millis(timeout_ms)).await,
            Request::Pause => self.pause_resume(true).await,
            Request::Resume => self.pause_resume(false).await,
            Request::Save => self.save().await,
            Request::Stop => self.stop().await,
            Request::Hotplug { target, remove } => {
                return match self.hotplug(target, remove).await {
                    Ok(outcome) => {
                        self.persist().await;
                        Reply::Hotplugged {
                            outcome,
                            record: Box::new(self.record.clone()),
                        }
                    }
                    Err(e) => Reply::Error(e),
                };
            }
            Request::Resize { vcpus, memory_mib } => self.resize(vcpus, memory_mib).await,
            Request::Console => {
                return match self.hv.sandbox_console(self.id().as_str()).await {
                    Ok(Some(path)) => Reply::Console { path },
                    Ok(None) => Reply::Error(RemoteError::Unsupported {
                        id: self.id().clone(),
                        op: Op::Console,
                        what: "a console".to_string(),
                        hypervisor: self.record.hypervisor,
                        reason: "the VM has no console socket".to_string(),
                    }),
                    Err(e) => Reply::Error(RemoteError::from_hypervisor(self.id(), op, &e)),
                };
            }
            Request::Delete { force } => self.delete(force).await,
            Request::Status | Request::Exec(_) => Err(RemoteError::BadRequest {
                id: self.id().clone(),
                op,
                reason: "not a request for the owner".to_string(),
            }),
        };
        match result {
            Ok(()) => Reply::Done {
                record: Box::new(self.record.clone()),
            },
            Err(e) => Reply::Error(e),
        }
    }

    fn hv_err(&self, op: Op) -> impl Fn(crate::Error) -> RemoteError + '_ {
        move |e| RemoteError::from_hypervisor(self.id(), op, &e)
    }

    async fn start(&mut self, timeout: Duration) -> Result<(), RemoteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let id = self.id().clone();
        // A VM adopted from the cache runs already (paused, if someone
        // paused it): it is resumed.
        let started = if self.adopted() {
            match self.hv.save().state {
                crate::hypervisor::VmState::Paused => self.hv.resume_sandbox().await,
                _ => Ok(()),
            }
        } else {
            self.hv.start_sandbox(timeout).await
        };
        if let Err(e) = started {
            let err = RemoteError::from_hypervisor(&id, Op::Start, &e);
            self.record.last_error = Some(err.clone());
            self.persist().await;
            return Err(err);
        }
        self.record.status = SandboxStatus::Running;
        self.record.vmm = self.hv.pids().first().map(|&pid| ProcessRef::of(pid));
        self.record.vmm_exit = None;
        self.record.helper_exit = None;
        self.record.console_socket = self.hv.sandbox_console(id.as_str()).await.ok().flatten();
        self.watch_vmm();
        self.persist().await;
        if let Some(address) = self.agent_address.clone() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self
                .connect_agent(&address, left.max(Duration::from_secs(1)))
                .await
            {
                Ok(a) => {
                    self.hold_connection(&*a).await;
                    self.agent = Some(a);
                }
                Err(e) => {
                    // A VM whose agent never answers is of no use: stop it, as
                    // Kata does when the agent check after boot fails.
                    let err = RemoteError::failed(&id, Op::Start, &*e);
                    tracing::error!("{err}; stopping the VM");
                    if let Err(e) = self.hv.stop_sandbox().await {
                        tracing::error!("stopping after a failed start: {e}");
                    }
                    self.stopped().await;
                    self.record.last_error = Some(err.clone());
                    self.persist().await;
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Connects the agent; a VM cloned from a template is then made into
    /// the one asked for (reseeded, its clock set, CPUs and memory added).
    async fn connect_agent(
        &mut self,
        address: &AgentAddress,
        wait: Duration,
    ) -> Result<Arc<dyn GuestAgent>, Box<dyn std::error::Error + Send + Sync>> {
        let Some(request) = self.record.from_template.clone() else {
            return Ok(agent::connect(address, wait).await?);
        };
        let client = crate::agent::AgentClient::connect(address, wait).await?;
        let template = crate::factory::template::base_config(&self.record.config);
        let id = self.id().clone();
        crate::factory::finish_parts(
            self.hv.as_mut(),
            &client,
            id.as_str(),
            crate::factory::Origin::Template,
            &template,
            &request,
        )
        .await?;
        self.record.vcpus = request.num_vcpus.max(template.num_vcpus);
        self.record.memory_mib = request.memory_size.max(template.memory_size);
        self.persist().await;
        Ok(agent::from_client(client))
    }

    async fn pause_resume(&mut self, pause: bool) -> Result<(), RemoteError> {
        if pause {
            // A paused guest reads nothing, and host data reaching
            // vhost-device-vsock then ends its device for good: writes to
            // the agent (an exec's stdin) wait for the resume.
            let held = self.hold_agent_writes().await;
            self.hv
                .pause_sandbox()
                .await
                .map_err(self.hv_err(Op::Pause))?;
            self.writes_held = held;
            self.record.status = SandboxStatus::Paused;
        } else {
            self.hv
                .resume_sandbox()
                .await
                .map_err(self.hv_err(Op::Resume))?;
            self.writes_held = None;
            self.record.status = SandboxStatus::Running;
        }
        self.persist().await;
        Ok(())
    }

    /// Holds the agent's writes, once a write under way has ended; gives
    /// up after [`HOLD_WRITES_TIMEOUT`] (a write the guest does not take)
    /// and pauses anyway.
    async fn hold_agent_writes(&self) -> Option<WritesHeld> {
        let agent = self.agent.as_ref()?;
        match tokio::time::timeout(HOLD_WRITES_TIMEOUT, agent.hold_writes()).await {
            Ok(held) => held,
            Err(_) => {
                tracing::warn!(
                    "a write to the agent took over {HOLD_WRITES_TIMEOUT:?}; pausing without holding writes"
                );
                None
            }
        }
    }

    /// Saves the VM's device state to the config's `devices_state_path`
    /// (`create` points it into the sandbox directory). The backend pauses
    /// the guest to save it; a guest that ran runs again afterwards.
    async fn save(&mut self) -> Result<(), RemoteError> {
        let was_running = self.record.status == SandboxStatus::Running;
        let saved = self.hv.save_sandbox().await.map_err(self.hv_err(Op::Save));
        if was_running {
            if let Err(e) = self.hv.resume_sandbox().await {
                // Paused by the save and not resumable: say so in the record.
                tracing::error!("resume after save failed: {e}");
                self.record.status = SandboxStatus::Paused;
                self.persist().await;
                saved?;
                return Err(RemoteError::from_hypervisor(self.id(), Op::Save, &e));
            }
        }
        self.persist().await;
        saved
    }

    /// Whether the sandbox is created around a VM from the cache, whose
    /// VMM runs before `start`.
    fn adopted(&self) -> bool {
        self.record.status == SandboxStatus::Created && self.record.vmm.is_some()
    }

    async fn stop(&mut self) -> Result<(), RemoteError> {
        if self.record.status == SandboxStatus::Created && !self.adopted() {
            // Nothing runs yet.
            self.record.status = SandboxStatus::Stopped;
            self.persist().await;
            return Ok(());
        }
        // The VM goes: what is written to its agent no longer matters.
        self.writes_held = None;
        if let Some(agent) = self.agent.take() {
            match tokio::time::timeout(GUEST_SHUTDOWN_TIMEOUT, agent.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("guest power-off failed: {e}"),
                Err(_) => tracing::warn!("guest power-off took over {GUEST_SHUTDOWN_TIMEOUT:?}"),
            }
        }
        self.hv
            .stop_sandbox()
            .await
            .map_err(self.hv_err(Op::Stop))?;
        self.stopped().await;
        self.persist().await;
        Ok(())
    }

    /// Records a VMM that was stopped on purpose.
    async fn stopped(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        self.agent = None;
        self.writes_held = None;
        self.record.status = SandboxStatus::Stopped;
        if let Some(vmm) = self.record.vmm {
            match vmm.liveness() {
                Liveness::Gone(Exit::Unknown) | Liveness::Alive => {}
                Liveness::Gone(exit) => self.record.vmm_exit = Some(exit),
            }
        }
    }

    async fn delete(&mut self, force: bool) -> Result<(), RemoteError> {
        let id = self.id().clone();
        if self.record.status.vmm_runs() {
            if !force {
                return Err(RemoteError::WrongState {
                    id,
                    op: Op::Delete,
                    status: self.record.status,
                });
            }
            if let Err(e) = self.stop().await {
                tracing::warn!("stop before delete failed: {e}; killing the VMM");
            }
        }
        // A VMM that survived the stop goes now. Only the recorded one,
        // whose start time proves its pid was not reused; the backend's
        // cleanup ends its helpers.
        if let Some(vmm) = self.record.vmm.filter(|v| v.is_alive()) {
            if !vmm.terminate(Duration::from_secs(2)).await {
                tracing::warn!(pid = vmm.pid, "the VMM survived SIGKILL");
            }
        }
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        self.hv.cleanup().await.map_err(self.hv_err(Op::Delete))?;
        Ok(())
    }

    async fn agent_for_exec(&mut self) -> Result<Arc<dyn GuestAgent>, RemoteError> {
        Op::Exec.check(self.id(), self.record.status)?;
        // A hybrid vsock's daemon is a process of its own: when it is gone
        // the agent is unreachable for good, and the VMM, still running,
        // does not say so. The backend's check does.
        if self.hv.capabilities().hybrid_vsock {
            if let Err(e) = self.hv.check().await {
                let err = RemoteError::from_hypervisor(self.id(), Op::Exec, &e);
                self.agent = None;
                self.record.last_error = Some(err.clone());
                self.persist().await;
                return Err(err);
            }
        }
        self.agent().await.map_err(|e| e.with_op(Op::Exec))
    }

    /// The agent connection, made when there is none yet (after a
    /// re-attach).
    async fn agent(&mut self) -> Result<Arc<dyn GuestAgent>, RemoteError> {
        if let Some(a) = &self.agent {
            return Ok(a.clone());
        }
        let id = self.id().clone();
        let Some(address) = self.agent_address.clone() else {
            return Err(RemoteError::Unsupported {
                id,
                op: Op::Exec,
                what: "guest processes".to_string(),
                hypervisor: self.record.hypervisor,
                reason: "it runs no guest".to_string(),
            });
        };
        let a = agent::connect(&address, AGENT_CONNECT_TIMEOUT)
            .await
            .map_err(|e| RemoteError::failed(&id, Op::Exec, &e))?;
        self.hold_connection(&*a).await;
        self.agent = Some(a.clone());
        Ok(a)
    }

    /// Has the VMM hold a copy of a new agent connection, where the
    /// backend asks for it. The connection works without; it is then only
    /// lost with this supervisor, so a failure is logged, not returned.
    async fn hold_connection(&mut self, agent: &dyn GuestAgent) {
        if !self.hv.capabilities().holds_agent_connection {
            return;
        }
        let Some(connection) = agent.connection() else {
            return;
        };
        if let Err(e) = self.hv.hold_agent_connection(connection).await {
            tracing::warn!("the VMM cannot hold the agent connection: {e}");
        }
    }
}

/// How the VMM ended, when the backend's error says: a backend reports the
/// exit status of a child it reaped as [`crate::Error::VmmExited`].
fn backend_exit(err: &crate::Error) -> Option<Exit> {
    err.vmm_exit().filter(|exit| *exit != Exit::Unknown)
}

/// Prepares the VM of `record` on a fresh backend, as Kata does: the
/// backend creates it, then the caller makes the agent channel and adds it
/// as a device before the VM starts. Returns where the agent will listen.
async fn create_vm(
    hv: &mut dyn Hypervisor,
    id: &SandboxId,
    record: &SandboxRecord,
) -> Result<Option<AgentAddress>, RemoteError> {
    let err = |e: crate::Error| RemoteError::from_hypervisor(id, Op::Create, &e);
    hv.create_sandbox(
        id.as_str(),
        &NetworkNamespace::default(),
        &record.config,
        false,
    )
    .await
    .map_err(err)?;
    if !agent::has_guest(record.hypervisor) {
        return Ok(None);
    }
    let socket = hv
        .generate_socket(id.as_str(), record.config.use_vsock)
        .map_err(err)?;
    let address =
        AgentAddress::from_socket(&socket).map_err(|e| RemoteError::failed(id, Op::Create, &e))?;
    let device = socket.into_device();
    hv.add_device(device).await.map_err(err)?;
    Ok(Some(address))
}

impl RemoteError {
    /// The same error, for another operation.
    fn with_op(self, new_op: Op) -> Self {
        match self {
            RemoteError::WrongState { id, status, .. } => RemoteError::WrongState {
                id,
                op: new_op,
                status,
            },
            RemoteError::Unsupported {
                id,
                what,
                hypervisor,
                reason,
                ..
            } => RemoteError::Unsupported {
                id,
                op: new_op,
                what,
                hypervisor,
                reason,
            },
            RemoteError::Failed { id, causes, .. } => RemoteError::Failed {
                id,
                op: new_op,
                causes,
            },
            RemoteError::BadRequest { id, reason, .. } => RemoteError::BadRequest {
                id,
                op: new_op,
                reason,
            },
            v @ (RemoteError::Version { .. } | RemoteError::NotRunnable { .. }) => v,
        }
    }
}
