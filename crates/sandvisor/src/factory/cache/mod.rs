//! The VM cache (Kata's `factory/cache` and `grpccache`): a server keeps
//! `vm_cache_number` VMs booted and paused and hands one out per request
//! over a unix socket, with Kata's `cache.proto` service on gRPC.
//!
//! | concern | module |
//! |---|---|
//! | the generated gRPC types, client and server traits | [`proto`] |
//! | the server: the pool, its refill, the service, the socket | [`server`] |
//! | the client, and a VM taken from the cache | [`client`] |
//! | what the server holds, on disk, for `destroy` after a crash | [`ledger`] |
//! | `factory status` and `destroy` of a cache | [`admin`] |
//!
//! # Ownership
//!
//! A VM belongs to exactly one party. The server owns the VMs it holds
//! and stops them on `Quit`, `destroy` or a signal. `GetBaseVM` passes a
//! VM on: the server calls [`Hypervisor::to_grpc`] (its handle lets go and
//! closes its connections, so dropping it kills nothing), forgets the VM,
//! and the receiver rebuilds a handle with [`Hypervisor::from_grpc`]. The
//! agent's channel travels as `proxyURL`: the server closed its agent
//! connection before pausing the VM, so the receiver's is the only one.
//!
//! The server records every VM it holds in its ledger under the runtime
//! directory: a server killed with SIGKILL leaves handed-out VMs running
//! (they are no longer its own) and its own VMs in the ledger, which
//! `sandvisor factory destroy` stops.
//!
//! [`Hypervisor::to_grpc`]: crate::Hypervisor::to_grpc
//! [`Hypervisor::from_grpc`]: crate::Hypervisor::from_grpc

pub mod admin;
pub mod client;
pub mod ledger;
pub mod server;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::HypervisorConfig;
use crate::hypervisor_type::HypervisorType;

pub use client::{get_vm, take, try_take, CacheClient, CacheStatus, CachedVm};
pub use ledger::Ledger;
pub use server::CacheServer;

/// The gRPC service, generated from `cache.proto` (Kata's message and
/// field names).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod proto {
    tonic::include_proto!("cache");
}

/// Kata's default `vm_cache_endpoint`.
pub const DEFAULT_ENDPOINT: &str = "/var/run/kata-containers/cache.sock";

/// Errors of the VM cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or directory of the cache could not be used.
    #[error("cannot {op} {path:?}")]
    Io {
        /// What was tried.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Another server answers on the endpoint.
    #[error("a VM cache server (pid {pid}) already serves {endpoint:?}; `sandvisor factory destroy` stops it")]
    InUse {
        /// The endpoint.
        endpoint: PathBuf,
        /// Its pid.
        pid: i64,
    },
    /// Nothing answers on the endpoint.
    #[error("no VM cache server answers on {endpoint:?}; start one with `sandvisor factory init`")]
    NotServing {
        /// The endpoint.
        endpoint: PathBuf,
        /// Why it could not be reached.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A gRPC call failed.
    #[error("VM cache {call} on {endpoint:?} failed: {status}")]
    Rpc {
        /// The call.
        call: &'static str,
        /// The endpoint.
        endpoint: PathBuf,
        /// The server's status, message included.
        status: Box<tonic::Status>,
    },
    /// The gRPC server failed.
    #[error("the VM cache server on {endpoint:?} failed")]
    Serve {
        /// The endpoint.
        endpoint: PathBuf,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A message did not decode.
    #[error("bad {what} from the VM cache")]
    Decode {
        /// What it was.
        what: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The factory gave a VM whose agent client has no address to pass on.
    #[error("VM {id} has no agent address to hand out with it")]
    NoAgentAddress {
        /// The VM.
        id: String,
    },
    /// `proxyURL` names no agent channel this side knows.
    #[error("bad agent address {0:?} from the VM cache: expected unix:PATH, vsock:CID:PORT or hvsock:PATH:PORT")]
    AgentUrl(String),
    /// The cached VMs were booted from another config.
    #[error("the VM cache's VMs differ from the requested config in {}", keys.join(", "))]
    Mismatch {
        /// The keys that differ.
        keys: Vec<String>,
    },
    /// Finishing a VM from the cache, or booting one for it, failed.
    #[error("VM factory")]
    Factory(#[source] Box<crate::factory::FactoryError>),
    /// A hypervisor operation failed.
    #[error("cannot {op} cached VM {id}")]
    Hypervisor {
        /// The operation.
        op: &'static str,
        /// The VM.
        id: String,
        /// The backend's error.
        #[source]
        source: Box<crate::Error>,
    },
    /// The agent of a cached VM did not answer.
    #[error("guest agent of cached VM {id}")]
    Agent {
        /// The VM.
        id: String,
        /// The client's error.
        #[source]
        source: crate::agent::ClientError,
    },
    /// The backend cannot hand its VMs over.
    #[error("{0} cannot serve a VM cache: its handles cannot be passed on (to_grpc/from_grpc)")]
    Unsupported(HypervisorType),
}

/// What a cache server serves.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How many VMs to keep ready (`vm_cache_number`).
    pub number: u32,
    /// The unix socket to serve (`vm_cache_endpoint`).
    pub endpoint: PathBuf,
    /// The backend.
    pub hypervisor: HypervisorType,
    /// The validated config every cached VM boots with.
    pub config: HypervisorConfig,
    /// How long one VM may take to boot to its agent.
    pub boot_timeout: Duration,
    /// Where the server keeps its ledger (see [`Ledger`]).
    pub ledger_dir: PathBuf,
}

/// `GrpcVMConfig.Data`: what the cached VMs were booted from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    /// The backend.
    pub hypervisor: HypervisorType,
    /// Its validated config.
    pub config: HypervisorConfig,
}

/// The endpoint of a `[factory]` section: `vm_cache_endpoint`, or Kata's
/// default.
pub fn endpoint(factory: &crate::config::kata::FactoryConfig) -> PathBuf {
    factory
        .vm_cache_endpoint
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ENDPOINT))
}

#[cfg(test)]
mod tests;
