//! What `sandvisor factory status` and `destroy` do with a VM cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::ledger::Ledger;
use super::CacheClient;
use crate::process::ProcessRef;

/// How long `status` and `destroy` wait for the server to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a server told to quit may take to stop its VMs and exit.
const QUIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The cache part of `sandvisor factory status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheReport {
    /// The endpoint.
    pub endpoint: PathBuf,
    /// The server's pid, when one answers.
    pub server_pid: Option<i64>,
    /// The VMMs of the VMs ready to hand out.
    pub ready_pids: Vec<i64>,
    /// VMs handed out since the server started.
    pub handed_out: u32,
    /// VMs the ledger holds (ready ones, or ones a dead server left).
    pub recorded: usize,
    /// Why no server answered, when none did.
    pub error: Option<String>,
}

impl CacheReport {
    /// As text, for people.
    pub fn render(&self) -> String {
        let mut s = format!("VM cache: {}\n", self.endpoint.display());
        match (self.server_pid, &self.error) {
            (Some(pid), _) => {
                s.push_str(&format!("  server pid: {pid}\n"));
                s.push_str(&format!("  ready: {}\n", self.ready_pids.len()));
                s.push_str(&format!("  handed out: {}\n", self.handed_out));
            }
            (None, error) => {
                s.push_str("  server: not running");
                if let Some(e) = error {
                    s.push_str(&format!(" ({e})"));
                }
                s.push('\n');
                if self.recorded > 0 {
                    s.push_str(&format!(
                        "  left behind: {} VM(s); `sandvisor factory destroy` stops them\n",
                        self.recorded
                    ));
                }
            }
        }
        s
    }
}

/// Asks the server on `endpoint` how it is.
pub async fn status(endpoint: &Path, ledger_dir: &Path) -> CacheReport {
    let recorded = Ledger::new(ledger_dir).vms().len();
    let answered = async {
        let mut client = CacheClient::connect(endpoint, ANSWER_TIMEOUT).await?;
        client.status().await
    }
    .await;
    match answered {
        Ok(s) => CacheReport {
            endpoint: endpoint.to_path_buf(),
            server_pid: Some(s.pid),
            ready_pids: s.ready.iter().map(|(pid, _, _)| *pid).collect(),
            handed_out: s.handed_out,
            recorded,
            error: None,
        },
        Err(e) => CacheReport {
            endpoint: endpoint.to_path_buf(),
            server_pid: None,
            ready_pids: Vec::new(),
            handed_out: 0,
            recorded,
            error: Some(super::server::error_chain(&e)),
        },
    }
}

/// What `destroy` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DestroyReport {
    /// The server quit when asked over gRPC.
    pub quit: bool,
    /// The server's pid, when it had to be killed.
    pub killed: Option<u32>,
    /// VMMs of VMs left behind that were stopped.
    pub stopped: Vec<u32>,
}

/// Stops the server on `endpoint` and every VM it holds: `Quit` over gRPC,
/// then waits for the server to exit; a server that does not answer or
/// does not exit is killed by its recorded pid, and the VMs in its
/// ledger are stopped. Removes the socket and the ledger. VMs handed out
/// are not the server's and run on.
pub async fn destroy(endpoint: &Path, ledger_dir: &Path) -> DestroyReport {
    let ledger = Ledger::new(ledger_dir);
    let mut report = DestroyReport::default();
    let asked = async {
        let mut client = CacheClient::connect(endpoint, ANSWER_TIMEOUT).await?;
        let pid = client.status().await?.pid;
        client.quit().await?;
        Ok::<_, super::CacheError>(pid)
    }
    .await;
    match asked {
        Ok(pid) => {
            let server = u32::try_from(pid).ok().map(ProcessRef::of);
            let gone = match server {
                Some(p) => wait_gone(&p, QUIT_TIMEOUT).await,
                None => true,
            };
            report.quit = gone;
            if !gone {
                tracing::warn!(pid, "the VM cache server did not exit after Quit");
            }
        }
        Err(e) => tracing::info!(
            "the VM cache server does not answer ({}); cleaning up by its ledger",
            super::server::error_chain(&e)
        ),
    }
    let left = ledger.destroy().await;
    report.killed = left.server_killed;
    report.stopped = left.vms_stopped;
    let stale = std::fs::symlink_metadata(endpoint).is_ok()
        && CacheClient::connect(endpoint, ANSWER_TIMEOUT)
            .await
            .is_err();
    if stale {
        // Nobody serves it any more.
        let _ = std::fs::remove_file(endpoint);
    }
    report
}

async fn wait_gone(p: &ProcessRef, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while p.is_alive() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}
