//! The cache's parts that need no guest: the wire, the socket, the
//! ledger, the config check. Handing out real VMs is tested with a booted
//! guest in `crates/sandvisor-cli/tests/vm_factory_cache.rs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::client::parse_agent_url;
use super::ledger::VmEntry;
use super::*;
use crate::agent::AgentAddress;
use crate::config::kata::default_config;
use crate::process::ProcessRef;

fn qemu_config() -> VmConfig {
    let mut config = default_config(HypervisorType::Qemu).config;
    config.validate().expect("the built-in config is valid");
    VmConfig {
        hypervisor: HypervisorType::Qemu,
        config,
    }
}

fn direct() -> crate::factory::Factory {
    let vm = qemu_config();
    crate::factory::Factory::new(
        &crate::config::kata::FactoryConfig::default(),
        &vm.config,
        vm.hypervisor,
    )
    .expect("a factory without template or cache")
}

fn cache_config(dir: &Path, number: u32) -> CacheConfig {
    let vm = qemu_config();
    CacheConfig {
        number,
        endpoint: dir.join("sock").join("cache.sock"),
        hypervisor: vm.hypervisor,
        config: vm.config,
        boot_timeout: Duration::from_secs(5),
        ledger_dir: dir.join("ledger"),
    }
}

#[test]
fn agent_urls_round_trip_and_bad_ones_are_refused() {
    for addr in [
        AgentAddress::Unix(PathBuf::from("/run/x/kata.sock")),
        AgentAddress::Vsock { cid: 7, port: 1024 },
        AgentAddress::HybridVsock {
            path: PathBuf::from("/run/x/hv:sock"),
            port: 1024,
        },
    ] {
        assert_eq!(parse_agent_url(&addr.to_string()).expect("parses"), addr);
    }
    for bad in [
        "",
        "unix:",
        "vsock:7",
        "vsock:x:1",
        "hvsock:/p",
        "tcp:1.2.3.4:5",
    ] {
        assert!(
            matches!(parse_agent_url(bad), Err(CacheError::AgentUrl(s)) if s == bad),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_backend_without_vm_cache_support_cannot_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = cache_config(dir.path(), 1);
    config.hypervisor = HypervisorType::Mock;
    let err = CacheServer::serve(config.clone(), direct(), std::future::pending())
        .await
        .expect_err("the mock cannot hand VMs over");
    assert!(matches!(err, CacheError::Unsupported(HypervisorType::Mock)));
    assert!(!config.endpoint.exists(), "nothing was bound");
}

/// Serves with no VMs to keep (nothing boots), checks the socket, the
/// service and `Quit`.
#[tokio::test]
async fn the_service_answers_on_a_private_socket_and_quit_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cache_config(dir.path(), 0);
    let endpoint = config.endpoint.clone();
    // A stale socket: bound once, its server gone.
    std::fs::create_dir_all(endpoint.parent().expect("parent")).expect("mkdir");
    drop(std::os::unix::net::UnixListener::bind(&endpoint).expect("bind"));
    assert!(endpoint.exists());

    let server = tokio::spawn(CacheServer::serve(
        config.clone(),
        direct(),
        std::future::pending(),
    ));
    let mut client = connect_soon(&endpoint).await;
    let mode = std::fs::metadata(&endpoint)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

    let status = client.status().await.expect("status");
    assert_eq!(status.pid, i64::from(std::process::id()));
    assert!(status.ready.is_empty());
    assert_eq!(status.handed_out, 0);
    let served = client.config().await.expect("config");
    assert_eq!(served, qemu_config());
    assert!(
        Ledger::new(&config.ledger_dir).server().is_some(),
        "the server is recorded"
    );

    // A second server on the same endpoint is refused, naming the first.
    let err = CacheServer::serve(config.clone(), direct(), std::future::pending())
        .await
        .expect_err("in use");
    assert!(
        matches!(err, CacheError::InUse { pid, .. } if pid == status.pid),
        "{err}"
    );

    client.quit().await.expect("quit");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server ends after Quit")
        .expect("joins")
        .expect("serves cleanly");
    assert!(!endpoint.exists(), "the socket is removed");
    assert!(!config.ledger_dir.exists(), "the ledger is removed");
    let err = CacheClient::connect(&endpoint, Duration::from_millis(200))
        .await
        .expect_err("nothing serves");
    assert!(matches!(err, CacheError::NotServing { .. }), "{err}");
}

#[tokio::test]
async fn the_shutdown_future_stops_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = cache_config(dir.path(), 0);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(CacheServer::serve(config.clone(), direct(), async move {
        let _ = rx.await;
    }));
    connect_soon(&config.endpoint).await;
    tx.send(()).expect("send");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("ends")
        .expect("joins")
        .expect("clean");
    assert!(!config.endpoint.exists());
}

#[tokio::test]
async fn destroy_kills_what_a_dead_server_left_and_empties_the_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::new(dir.path().join("ledger"));
    // Stand-ins for a server and its VMM: processes that would run on.
    let mut server = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("sleep");
    let mut vmm = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("sleep");
    let entry = VmEntry {
        hypervisor: HypervisorType::Mock,
        vmm: ProcessRef::of(vmm.id()),
        state: crate::hypervisor::HypervisorState::default(),
    };
    ledger.record_vm("abc", &entry).expect("record vm");
    let server_entry = ledger::ServerEntry {
        process: ProcessRef::of(server.id()),
        endpoint: dir.path().join("cache.sock"),
    };
    std::fs::write(
        ledger.dir().join("server.json"),
        serde_json::to_vec(&server_entry).expect("json"),
    )
    .expect("write");
    assert_eq!(ledger.vms().len(), 1);

    let done = ledger.destroy().await;
    assert_eq!(done.server_killed, Some(server.id()));
    assert_eq!(done.vms_stopped, vec![vmm.id()]);
    // Reap them: killed by a signal, not exited.
    assert!(server.wait().expect("wait").code().is_none());
    assert!(vmm.wait().expect("wait").code().is_none());
    assert!(ledger.vms().is_empty());
    assert!(!ledger.dir().exists());
}

async fn connect_soon(endpoint: &Path) -> CacheClient {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if endpoint.exists() {
            if let Ok(mut c) = CacheClient::connect(endpoint, Duration::from_millis(500)).await {
                if c.status().await.is_ok() {
                    return c;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not answer on {endpoint:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn destroy_removes_a_vm_left_mid_boot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::new(dir.path().join("ledger"));
    let vm_dir = dir.path().join("vm").join("0123456789abcdef");
    std::fs::create_dir_all(&vm_dir).expect("vm dir");
    ledger
        .record_boot(
            "0123456789abcdef",
            &ledger::BootEntry {
                hypervisor: HypervisorType::Qemu,
                vm_dir: vm_dir.clone(),
            },
        )
        .expect("record");
    assert_eq!(ledger.boots().len(), 1);
    // No QEMU answers on its QMP socket: nothing to stop, the files go.
    let done = ledger.destroy().await;
    assert!(done.vms_stopped.is_empty());
    assert!(!vm_dir.exists(), "the VM directory is removed");
    assert!(ledger.boots().is_empty());
    assert!(!ledger.dir().exists());
}
