//! The client of a VM cache server, and a VM taken from it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::proto::cache_service_client::CacheServiceClient;
use super::proto::GrpcVm;
use super::{CacheError, VmConfig};
use crate::agent::{AgentAddress, AgentClient};
use crate::backends::new_hypervisor;
use crate::config::HypervisorConfig;
use crate::factory::{boot_direct, finish, FactoryError, FactoryVm, Origin};
use crate::hypervisor::Hypervisor;
use crate::hypervisor_type::HypervisorType;

/// How long one call may take, `GetBaseVM` aside (it may wait for a boot).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `GetBaseVM` may take: a VM may have to boot first.
const HANDOUT_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to a cache server.
#[derive(Debug, Clone)]
pub struct CacheClient {
    endpoint: PathBuf,
    inner: CacheServiceClient<Channel>,
}

/// What `Status` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    /// The server's pid.
    pub pid: i64,
    /// VMMs of the VMs ready: pid, vCPUs, memory in MiB.
    pub ready: Vec<(i64, u32, u32)>,
    /// How many VMs it has handed out.
    pub handed_out: u32,
}

impl CacheClient {
    /// Connects to the server on the unix socket `endpoint`, within
    /// `timeout`.
    ///
    /// # Errors
    /// [`CacheError::NotServing`] when nothing answers.
    pub async fn connect(endpoint: &Path, timeout: Duration) -> Result<Self, CacheError> {
        let path = endpoint.to_path_buf();
        let not_serving =
            |source: Box<dyn std::error::Error + Send + Sync>| CacheError::NotServing {
                endpoint: endpoint.to_path_buf(),
                source,
            };
        // The URI is not used: every connection goes to the socket.
        let endpoint_uri = Endpoint::from_static("http://[::]:0")
            .connect_timeout(timeout)
            .timeout(HANDOUT_TIMEOUT);
        let channel = endpoint_uri.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }));
        let channel = tokio::time::timeout(timeout, channel)
            .await
            .map_err(|e| not_serving(Box::new(e)))?
            .map_err(|e| not_serving(Box::new(e)))?;
        Ok(CacheClient {
            endpoint: endpoint.to_path_buf(),
            inner: CacheServiceClient::new(channel),
        })
    }

    fn rpc(&self, call: &'static str) -> impl FnOnce(tonic::Status) -> CacheError + '_ {
        move |status| CacheError::Rpc {
            call,
            endpoint: self.endpoint.clone(),
            status: Box::new(status),
        }
    }

    /// The config the cached VMs were booted from.
    ///
    /// # Errors
    /// A failed call, or data that does not decode.
    pub async fn config(&mut self) -> Result<VmConfig, CacheError> {
        let mut req = tonic::Request::new(());
        req.set_timeout(CALL_TIMEOUT);
        let reply = self
            .inner
            .clone()
            .config(req)
            .await
            .map_err(self.rpc("Config"))?;
        serde_json::from_slice(&reply.into_inner().data).map_err(|source| CacheError::Decode {
            what: "Config data",
            source,
        })
    }

    /// The server's pid and VMs.
    ///
    /// # Errors
    /// A failed call.
    pub async fn status(&mut self) -> Result<CacheStatus, CacheError> {
        let mut req = tonic::Request::new(());
        req.set_timeout(CALL_TIMEOUT);
        let s = self
            .inner
            .clone()
            .status(req)
            .await
            .map_err(self.rpc("Status"))?
            .into_inner();
        Ok(CacheStatus {
            pid: s.pid,
            ready: s
                .vmstatus
                .iter()
                .map(|v| (v.pid, v.cpu, v.memory))
                .collect(),
            handed_out: s.handed_out,
        })
    }

    /// Tells the server to stop itself and every VM it holds.
    ///
    /// # Errors
    /// A failed call.
    pub async fn quit(&mut self) -> Result<(), CacheError> {
        let mut req = tonic::Request::new(());
        req.set_timeout(CALL_TIMEOUT);
        self.inner
            .clone()
            .quit(req)
            .await
            .map_err(self.rpc("Quit"))?;
        Ok(())
    }

    /// One VM, in the wire form; it is the caller's from now on.
    ///
    /// # Errors
    /// A failed call.
    pub async fn get_base_vm_raw(&mut self) -> Result<GrpcVm, CacheError> {
        let mut req = tonic::Request::new(());
        req.set_timeout(HANDOUT_TIMEOUT);
        Ok(self
            .inner
            .clone()
            .get_base_vm(req)
            .await
            .map_err(self.rpc("GetBaseVM"))?
            .into_inner())
    }

    /// A VM for `request` of backend `kind`: checks that the cache's VMs
    /// were booted from a config that differs from `request` in no more
    /// than vCPUs and memory beyond the cache's (the factory's rule for
    /// templates), then takes one and rebuilds its handle
    /// ([`CachedVm::from_grpc`]).
    ///
    /// # Errors
    /// [`CacheError::Mismatch`] before anything is taken; a failed call or
    /// a handle that cannot be rebuilt.
    pub async fn get_base_vm(
        &mut self,
        kind: HypervisorType,
        request: &HypervisorConfig,
    ) -> Result<CachedVm, CacheError> {
        let cached = self.config().await?;
        if cached.hypervisor != kind {
            return Err(CacheError::Mismatch {
                keys: vec![format!(
                    "hypervisor ({} here, {kind} asked)",
                    cached.hypervisor
                )],
            });
        }
        let keys = crate::factory::template::differences(&cached.config, request);
        if !keys.is_empty() {
            return Err(CacheError::Mismatch { keys });
        }
        let vm = self.get_base_vm_raw().await?;
        CachedVm::from_grpc(cached.hypervisor, &cached.config, vm).await
    }
}

/// A VM taken from a cache: booted, paused, its agent free for this side
/// to connect to. Dropping it kills the VM (its handle owns it).
#[derive(Debug)]
pub struct CachedVm {
    /// The VM's id: its directory under the VM storage, and the sandbox id
    /// a receiver gives it when asked for none.
    pub id: String,
    /// The backend.
    pub kind: HypervisorType,
    /// The handle, rebuilt with `from_grpc`.
    pub hypervisor: Box<dyn Hypervisor>,
    /// The agent's channel.
    pub agent: AgentAddress,
    /// The config the VM was booted with.
    pub config: HypervisorConfig,
}

impl CachedVm {
    /// Rebuilds the handle of the VM `vm` describes (`from_grpc`).
    ///
    /// # Errors
    /// A bad agent address, or a handle the backend cannot rebuild.
    pub async fn from_grpc(
        kind: HypervisorType,
        config: &HypervisorConfig,
        vm: GrpcVm,
    ) -> Result<Self, CacheError> {
        let agent = parse_agent_url(&vm.proxy_url)?;
        let mut hv = new_hypervisor(kind);
        hv.from_grpc(config, &vm.hypervisor)
            .await
            .map_err(|e| CacheError::Hypervisor {
                op: "adopt",
                id: vm.id.clone(),
                source: Box::new(e),
            })?;
        Ok(CachedVm {
            id: vm.id,
            kind,
            hypervisor: hv,
            agent,
            config: config.clone(),
        })
    }
}

/// An agent address from its [`std::fmt::Display`] form, as `proxyURL`
/// carries it: `unix:PATH`, `vsock:CID:PORT` or `hvsock:PATH:PORT`.
///
/// # Errors
/// [`CacheError::AgentUrl`] for anything else.
pub fn parse_agent_url(url: &str) -> Result<AgentAddress, CacheError> {
    let bad = || CacheError::AgentUrl(url.to_string());
    if let Some(path) = url.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(bad());
        }
        return Ok(AgentAddress::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = url.strip_prefix("vsock:") {
        let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
        return Ok(AgentAddress::Vsock {
            cid: cid.parse().map_err(|_| bad())?,
            port: port.parse().map_err(|_| bad())?,
        });
    }
    if let Some(rest) = url.strip_prefix("hvsock:") {
        let (path, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        if path.is_empty() {
            return Err(bad());
        }
        return Ok(AgentAddress::HybridVsock {
            path: PathBuf::from(path),
            port: port.parse().map_err(|_| bad())?,
        });
    }
    Err(bad())
}

impl CachedVm {
    /// Makes the VM ready for its receiver: resumes it and connects its
    /// agent (the server closed its own connection). The factory's
    /// `finish` does the rest (entropy, clock, vCPUs and memory).
    ///
    /// # Errors
    /// When the VM does not resume or its agent does not answer; the VM is
    /// then stopped and its files removed.
    pub async fn resume(mut self, timeout: Duration) -> Result<FactoryVm, CacheError> {
        let id = self.id.clone();
        let resumed = async {
            self.hypervisor
                .resume_sandbox()
                .await
                .map_err(|source| CacheError::Hypervisor {
                    op: "resume",
                    id: id.clone(),
                    source: Box::new(source),
                })?;
            let agent = AgentClient::connect(&self.agent, timeout)
                .await
                .map_err(|source| CacheError::Agent {
                    id: id.clone(),
                    source,
                })?;
            Ok::<_, CacheError>(agent)
        }
        .await;
        match resumed {
            Ok(agent) => Ok(FactoryVm {
                id: self.id,
                hypervisor: self.hypervisor,
                agent,
                origin: Origin::Cache,
            }),
            Err(e) => {
                if let Err(e) = self.hypervisor.stop_sandbox().await {
                    tracing::warn!(id, "stopping a cached VM: {e}");
                }
                if let Err(e) = self.hypervisor.cleanup().await {
                    tracing::warn!(id, "cleaning up a cached VM: {e}");
                }
                Err(e)
            }
        }
    }
}

/// How long the cache may take to answer before a direct boot is chosen.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A VM from the cache at `endpoint` for `request`, resumed, its agent
/// connected and finished as the factory finishes a VM (entropy, clock,
/// vCPUs and memory beyond the cache's).
///
/// # Errors
/// Why the cache could not serve; nothing taken is left running.
pub async fn take(
    endpoint: &Path,
    kind: HypervisorType,
    request: &HypervisorConfig,
    timeout: Duration,
) -> Result<FactoryVm, CacheError> {
    let mut client = CacheClient::connect(endpoint, CONNECT_TIMEOUT).await?;
    let cached = client.get_base_vm(kind, request).await?;
    let base = cached.config.clone();
    tracing::info!(id = cached.id, endpoint = %endpoint.display(), "VM taken from the cache");
    let mut vm = cached.resume(timeout).await?;
    match finish(&mut vm, &base, request).await {
        Ok(()) => Ok(vm),
        Err(e) => {
            vm.discard().await;
            Err(CacheError::Factory(Box::new(e)))
        }
    }
}

/// [`take`], or `None` with one log line saying why, for a caller that
/// then boots directly.
pub async fn try_take(
    endpoint: &Path,
    kind: HypervisorType,
    request: &HypervisorConfig,
    timeout: Duration,
) -> Option<FactoryVm> {
    match take(endpoint, kind, request, timeout).await {
        Ok(vm) => Some(vm),
        Err(e) => {
            tracing::info!(
                "not using the VM cache: {}; booting directly",
                super::server::error_chain(&e)
            );
            None
        }
    }
}

/// The factory's `get_vm` with a cache: a VM from the cache at `endpoint`,
/// else one booted directly.
///
/// # Errors
/// As [`crate::factory::boot_direct`].
pub async fn get_vm(
    endpoint: &Path,
    kind: HypervisorType,
    id: &str,
    request: &HypervisorConfig,
    timeout: Duration,
) -> Result<FactoryVm, FactoryError> {
    if let Some(vm) = try_take(endpoint, kind, request, timeout).await {
        return Ok(vm);
    }
    boot_direct(id, kind, request, timeout).await
}
