//! The VM cache server: a pool of booted, paused VMs kept at
//! `vm_cache_number`, and the `CacheService` that hands them out.
//!
//! The pool holds one permit per VM it may keep: a refill loop takes a
//! permit and boots a VM in a task of its own; the VM waits in the pool
//! with its permit until `GetBaseVM` hands it out, which gives the permit
//! back, so the refill boots the next one while the caller is served.
//! A failed boot gives its permit back after [`RETRY_DELAY`].

use std::collections::VecDeque;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::ledger::{BootEntry, Ledger, VmEntry};
use super::proto::cache_service_server::{CacheService, CacheServiceServer};
use super::proto::{GrpcStatus, GrpcVm, GrpcVmConfig, GrpcVmStatus};
use super::{CacheClient, CacheConfig, CacheError, VmConfig};
use crate::agent::AgentAddress;
use crate::backends::new_hypervisor;
use crate::factory::{Factory, FactoryVm};
use crate::hypervisor::Hypervisor;
use crate::process::ProcessRef;
use crate::supervisor::SandboxId;

/// How long after a failed boot the pool tries again.
pub const RETRY_DELAY: Duration = Duration::from_secs(2);
/// How long `GetBaseVM` waits for a VM when none is ready, beyond one
/// boot's timeout.
const HANDOUT_SLACK: Duration = Duration::from_secs(10);
/// How long probing an existing socket may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A VM in the pool, with the permit it holds.
#[derive(Debug)]
struct ReadyVm {
    id: String,
    hv: Box<dyn Hypervisor>,
    agent: AgentAddress,
    pid: u32,
    /// Given back when the VM leaves the pool.
    permit: Option<OwnedSemaphorePermit>,
}

/// The state the service and the refill share.
#[derive(Debug)]
struct Pool {
    config: CacheConfig,
    /// Where the pool's VMs come from: direct boots or the template.
    base: Factory,
    ledger: Ledger,
    ready: Mutex<VecDeque<ReadyVm>>,
    added: Notify,
    permits: Arc<Semaphore>,
    handed_out: AtomicU32,
    quit: watch::Sender<bool>,
}

/// A running cache server (see [`CacheServer::serve`]).
#[derive(Debug, Clone)]
pub struct CacheServer {
    pool: Arc<Pool>,
}

impl Pool {
    fn take(&self) -> Option<ReadyVm> {
        self.ready.lock().ok()?.pop_front()
    }

    fn put(&self, vm: ReadyVm) {
        match self.ready.lock() {
            Ok(mut ready) => ready.push_back(vm),
            // A poisoned lock means a panic elsewhere; the VM is dropped,
            // which kills it.
            Err(_) => tracing::error!(id = vm.id, "pool lock poisoned: dropping a VM"),
        }
        self.added.notify_waiters();
    }

    fn quitting(&self) -> bool {
        *self.quit.borrow()
    }

    /// Makes one VM for the pool with the base factory (a direct boot, or
    /// a clone of the template, finished), tells its agent to finish its
    /// boot work and end the session (`quiesce`), so the receiver finds
    /// the drivers loaded and can open its own session, and pauses the
    /// guest.
    /// A failure stops what was started.
    async fn boot(&self) -> Result<ReadyVm, CacheError> {
        let kind = self.config.hypervisor;
        let id = SandboxId::generate().as_str().to_string();
        let boot = BootEntry {
            hypervisor: kind,
            vm_dir: crate::paths::vm_storage_dir().join(&id),
        };
        self.ledger.record_boot(&id, &boot)?;
        let vm = self
            .base
            .get_vm(&id, &self.config.config, self.config.boot_timeout)
            .await;
        let vm = match vm {
            Ok(vm) => vm,
            Err(e) => {
                self.ledger.forget_boot(&id);
                return Err(CacheError::Factory(Box::new(e)));
            }
        };
        let FactoryVm {
            id,
            mut hypervisor,
            agent,
            origin,
        } = vm;
        let address = agent.address().cloned();
        // The agent finishes its lazy boot work (drivers, bus scans) and
        // ends the session, so that neither waits for the receiver.
        let quiesced = agent.quiesce().await;
        drop(agent);
        if let Err(source) = quiesced {
            let _ = hypervisor.stop_sandbox().await;
            let _ = hypervisor.cleanup().await;
            return Err(CacheError::Agent { id, source });
        }
        let paused = match address {
            Some(address) => hypervisor
                .pause_sandbox()
                .await
                .map(|()| address)
                .map_err(|source| CacheError::Hypervisor {
                    op: "pause",
                    id: id.clone(),
                    source: Box::new(source),
                }),
            None => Err(CacheError::NoAgentAddress { id: id.clone() }),
        };
        let recorded = paused.and_then(|address| {
            let pid = hypervisor.pids().first().copied().unwrap_or(0);
            let entry = VmEntry {
                hypervisor: kind,
                vmm: ProcessRef::of(pid),
                state: hypervisor.save(),
            };
            // A VM the ledger does not know could outlive a crash unseen.
            self.ledger.record_vm(&id, &entry).map(|()| (address, pid))
        });
        self.ledger.forget_boot(&id);
        match recorded {
            Ok((agent, pid)) => {
                tracing::info!(id, pid, %origin, "cached VM ready");
                Ok(ReadyVm {
                    id,
                    hv: hypervisor,
                    agent,
                    pid,
                    permit: None,
                })
            }
            Err(e) => {
                let _ = hypervisor.stop_sandbox().await;
                let _ = hypervisor.cleanup().await;
                Err(e)
            }
        }
    }

    /// Stops a VM the pool holds and forgets it.
    async fn discard(&self, mut vm: ReadyVm) {
        if let Err(e) = vm.hv.stop_sandbox().await {
            tracing::warn!(id = vm.id, "stopping a cached VM: {e}");
        }
        if let Err(e) = vm.hv.cleanup().await {
            tracing::warn!(id = vm.id, "cleaning up a cached VM: {e}");
        }
        self.ledger.forget_vm(&vm.id);
    }

    /// Hands a VM out: its handle lets go (`to_grpc`), the ledger forgets
    /// it.
    async fn hand_out(&self, mut vm: ReadyVm) -> Result<GrpcVm, Status> {
        let data = match vm.hv.to_grpc().await {
            Ok(data) => data,
            Err(e) => {
                let msg = format!("cannot hand out VM {}: {e}", vm.id);
                self.discard(vm).await;
                return Err(Status::internal(msg));
            }
        };
        self.ledger.forget_vm(&vm.id);
        self.handed_out.fetch_add(1, Ordering::Relaxed);
        let config = &self.config.config;
        tracing::info!(id = vm.id, pid = vm.pid, "cached VM handed out");
        Ok(GrpcVm {
            id: vm.id.clone(),
            hypervisor: data,
            proxy_pid: 0,
            proxy_url: vm.agent.to_string(),
            cpu: config.num_vcpus,
            memory: config.memory_size,
            cpu_delta: 0,
        })
        // `vm` drops here: its handle is detached and kills nothing; its
        // permit goes back to the refill.
    }
}

/// Keeps the pool full until the server quits.
async fn refill(pool: Arc<Pool>) {
    let mut quit = pool.quit.subscribe();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&pool.permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = quit.wait_for(|q| *q) => return,
        };
        let pool = Arc::clone(&pool);
        tokio::spawn(async move {
            let mut quit = pool.quit.subscribe();
            let booted = tokio::select! {
                b = pool.boot() => Some(b),
                _ = quit.wait_for(|q| *q) => None,
            };
            match booted {
                Some(Ok(mut vm)) => {
                    vm.permit = Some(permit);
                    if pool.quitting() {
                        pool.discard(vm).await;
                    } else {
                        pool.put(vm);
                    }
                }
                Some(Err(e)) => {
                    tracing::error!("{}", error_chain(&e));
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_DELAY) => {}
                        _ = quit.wait_for(|q| *q) => {}
                    }
                    drop(permit);
                }
                // Cancelled mid-boot: the sandbox's own teardown (the
                // handle's drop) kills what was started.
                None => drop(permit),
            }
        });
    }
}

#[tonic::async_trait]
impl CacheService for CacheServer {
    async fn config(&self, _: Request<()>) -> Result<Response<GrpcVmConfig>, Status> {
        let config = VmConfig {
            hypervisor: self.pool.config.hypervisor,
            config: self.pool.config.config.clone(),
        };
        let data = serde_json::to_vec(&config).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(GrpcVmConfig {
            data,
            agent_config: b"{}".to_vec(),
        }))
    }

    async fn get_base_vm(&self, _: Request<()>) -> Result<Response<GrpcVm>, Status> {
        let pool = &self.pool;
        let wait = pool.config.boot_timeout + HANDOUT_SLACK;
        let deadline = tokio::time::Instant::now() + wait;
        let mut quit = pool.quit.subscribe();
        loop {
            if pool.quitting() {
                return Err(Status::unavailable("the VM cache is shutting down"));
            }
            let added = pool.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(vm) = pool.take() {
                return pool.hand_out(vm).await.map(Response::new);
            }
            tokio::select! {
                () = &mut added => {}
                _ = quit.wait_for(|q| *q) => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Status::deadline_exceeded(format!(
                        "no cached VM became ready within {wait:?}; see the server's log"
                    )));
                }
            }
        }
    }

    async fn status(&self, _: Request<()>) -> Result<Response<GrpcStatus>, Status> {
        let config = &self.pool.config.config;
        let vmstatus = match self.pool.ready.lock() {
            Ok(ready) => ready
                .iter()
                .map(|vm| GrpcVmStatus {
                    pid: i64::from(vm.pid),
                    cpu: config.num_vcpus,
                    memory: config.memory_size,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(Response::new(GrpcStatus {
            pid: i64::from(std::process::id()),
            vmstatus,
            handed_out: self.pool.handed_out.load(Ordering::Relaxed),
        }))
    }

    async fn quit(&self, _: Request<()>) -> Result<Response<()>, Status> {
        tracing::info!("quit requested over gRPC");
        self.pool.quit.send_replace(true);
        Ok(Response::new(()))
    }
}

/// Binds `endpoint`: makes its directory, refuses a socket another server
/// answers on, replaces a stale one, and makes it mode 0600.
///
/// # Errors
/// [`CacheError::InUse`] when a server answers; I/O errors otherwise.
pub async fn bind(endpoint: &Path) -> Result<UnixListener, CacheError> {
    if let Some(parent) = endpoint.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| CacheError::Io {
                op: "create",
                path: parent.to_path_buf(),
                source,
            })?;
    }
    if std::fs::symlink_metadata(endpoint).is_ok() {
        if let Ok(mut client) = CacheClient::connect(endpoint, PROBE_TIMEOUT).await {
            if let Ok(status) = client.status().await {
                return Err(CacheError::InUse {
                    endpoint: endpoint.to_path_buf(),
                    pid: status.pid,
                });
            }
        }
        tracing::info!(endpoint = %endpoint.display(), "removing a stale VM cache socket");
        std::fs::remove_file(endpoint).map_err(|source| CacheError::Io {
            op: "remove stale socket",
            path: endpoint.to_path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(endpoint).map_err(|source| CacheError::Io {
        op: "bind",
        path: endpoint.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(endpoint, std::fs::Permissions::from_mode(0o600)).map_err(
        |source| CacheError::Io {
            op: "chmod 0600",
            path: endpoint.to_path_buf(),
            source,
        },
    )?;
    Ok(listener)
}

impl CacheServer {
    /// Serves `config.endpoint` with VMs from `base` (a factory without a
    /// cache: direct boots or the template) until `Quit` or `shutdown`
    /// completes, then
    /// stops every VM the pool still holds and removes the socket and the
    /// ledger. VMs handed out run on.
    ///
    /// # Errors
    /// A backend that cannot hand VMs over, a socket that cannot be bound
    /// (or another server on it), or a failure of the gRPC server.
    pub async fn serve(
        config: CacheConfig,
        base: Factory,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), CacheError> {
        if !new_hypervisor(config.hypervisor).capabilities().vm_cache {
            return Err(CacheError::Unsupported(config.hypervisor));
        }
        let endpoint = config.endpoint.clone();
        let listener = bind(&endpoint).await?;
        let ledger = Ledger::new(config.ledger_dir.clone());
        // VMs a crashed server left: not ours to hand out, ours to stop.
        let left = ledger.destroy().await;
        if !left.vms_stopped.is_empty() {
            tracing::warn!(pids = ?left.vms_stopped, "stopped VMs a previous server left");
        }
        ledger.record_server(&endpoint)?;
        let (quit, _) = watch::channel(false);
        let pool = Arc::new(Pool {
            permits: Arc::new(Semaphore::new(config.number as usize)),
            config,
            base,
            ledger,
            ready: Mutex::new(VecDeque::new()),
            added: Notify::new(),
            handed_out: AtomicU32::new(0),
            quit,
        });
        let server = CacheServer {
            pool: Arc::clone(&pool),
        };
        let refill_task = tokio::spawn(refill(Arc::clone(&pool)));
        tracing::info!(endpoint = %endpoint.display(), number = pool.config.number, "VM cache server start");
        let mut quit = pool.quit.subscribe();
        let stop = async move {
            tokio::select! {
                () = shutdown => {}
                _ = quit.wait_for(|q| *q) => {}
            }
        };
        let served = tonic::transport::Server::builder()
            .add_service(CacheServiceServer::new(server))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop)
            .await;
        pool.quit.send_replace(true);
        refill_task.abort();
        // Boots in flight see `quit` and kill what they started; once the
        // pool's VMs are stopped, every permit comes back.
        while let Some(vm) = pool.take() {
            pool.discard(vm).await;
        }
        wait_for_boots(&pool, pool.config.number).await;
        while let Some(vm) = pool.take() {
            pool.discard(vm).await;
        }
        let _ = std::fs::remove_file(&endpoint);
        // Boots cancelled by the quit killed their VMs; their entries go
        // with the ledger.
        pool.ledger.destroy().await;
        tracing::info!(endpoint = %endpoint.display(), "VM cache server stop");
        served.map_err(|source| CacheError::Serve {
            endpoint: endpoint.clone(),
            source,
        })
    }
}

/// Waits until every permit is back: no boot is in flight.
async fn wait_for_boots(pool: &Pool, all: u32) {
    let permits = Arc::clone(&pool.permits);
    let wait = pool.config.boot_timeout + HANDOUT_SLACK;
    // Pool VMs hold permits too: they were discarded before this.
    match tokio::time::timeout(wait, permits.acquire_many_owned(all)).await {
        Ok(Ok(p)) => drop(p),
        Ok(Err(_)) => {}
        Err(_) => tracing::warn!("boots of cached VMs still in flight after {wait:?}"),
    }
}

/// An error and its causes on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}
