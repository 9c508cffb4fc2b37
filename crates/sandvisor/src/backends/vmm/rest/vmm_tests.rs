//! The REST client against the real Cloud Hypervisor and Firecracker.
//!
//! Neither needs a guest here: each serves its API before a VM exists, and
//! answers the requests below with replies and faults of its own making.
//! Each request is also checked against the VMM's published contract.

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};

use super::{Endpoint, Flavour, Method, RestClient, RestError};
use crate::backends::vmm::contract::{check_endpoint, Spec};
use crate::backends::vmm::lookup::{self, Binary, VMM_DIR_ENV};

const LONG: Duration = Duration::from_secs(10);

fn vmm_binary(binary: &Binary) -> PathBuf {
    match lookup::find(binary, None) {
        Ok(found) => found.path,
        Err(err) => panic!("{err} (set {VMM_DIR_ENV} to the folder holding it)"),
    }
}

/// A VMM process, killed when dropped.
struct Vmm {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Vmm {
    fn spawn(
        binary: &Binary,
        args: impl FnOnce(&std::path::Path) -> Vec<String>,
    ) -> (Vmm, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let child = Command::new(vmm_binary(binary))
            .args(args(&socket))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the vmm");
        (Vmm { child, _dir: dir }, socket)
    }

    async fn kill(mut self) {
        self.child.kill().await.expect("kill the vmm");
    }
}

/// Firecracker's `GET /`.
#[derive(Serialize)]
struct Describe;

#[derive(Debug, Deserialize)]
struct InstanceInfo {
    state: String,
}

impl Endpoint for Describe {
    type Reply = InstanceInfo;
    const METHOD: Method = Method::Get;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/")
    }
    fn has_body(&self) -> bool {
        false
    }
}

/// Firecracker's `PUT /machine-config`.
#[derive(Serialize)]
struct MachineConfig {
    vcpu_count: u32,
    mem_size_mib: u32,
}

impl Endpoint for MachineConfig {
    type Reply = ();
    const METHOD: Method = Method::Put;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/machine-config")
    }
}

/// Firecracker's `PUT /actions`.
#[derive(Serialize)]
struct Action {
    action_type: &'static str,
}

impl Endpoint for Action {
    type Reply = ();
    const METHOD: Method = Method::Put;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/actions")
    }
}

#[tokio::test]
async fn rest_real_firecracker_answers_and_faults() {
    let (vmm, socket) = Vmm::spawn(&Binary::FIRECRACKER, |socket| {
        vec!["--api-sock".into(), socket.display().to_string()]
    });
    let client = RestClient::new(&socket, Flavour::Firecracker);
    let spec = Spec::firecracker().unwrap_or_else(|err| panic!("{err}"));
    let good = MachineConfig {
        vcpu_count: 1,
        mem_size_mib: 256,
    };
    let bad = MachineConfig {
        vcpu_count: 0,
        mem_size_mib: 256,
    };
    let start = Action {
        action_type: "InstanceStart",
    };

    let info = client.call_when_ready(&Describe, LONG).await;
    let configured = client.call(&good, LONG).await;
    let refused = client.call(&bad, LONG).await;
    let not_bootable = client.call(&start, LONG).await;
    vmm.kill().await;

    assert_eq!(info.expect("describe").state, "Not started");
    configured.expect("machine-config");
    for err in [refused, not_bootable] {
        match err {
            Err(RestError::Fault {
                status, message, ..
            }) => {
                assert_eq!(status, 400);
                assert!(
                    !message.is_empty() && !message.starts_with('{'),
                    "{message}"
                );
            }
            other => panic!("expected a fault, got {other:?}"),
        }
    }
    check_endpoint(&spec, &Describe).expect("describe in the contract");
    check_endpoint(&spec, &good).expect("machine-config in the contract");
    check_endpoint(&spec, &start).expect("actions in the contract");
}

/// Cloud Hypervisor's `vmm.ping`.
#[derive(Serialize)]
struct Ping;

#[derive(Debug, Deserialize)]
struct VmmPing {
    version: String,
}

impl Endpoint for Ping {
    type Reply = VmmPing;
    const METHOD: Method = Method::Get;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed("/api/v1/vmm.ping")
    }
    fn has_body(&self) -> bool {
        false
    }
}

/// A body-less Cloud Hypervisor PUT.
#[derive(Serialize)]
struct Put(&'static str);

impl Endpoint for Put {
    type Reply = serde::de::IgnoredAny;
    const METHOD: Method = Method::Put;
    fn path(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.0)
    }
    fn has_body(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn rest_real_cloud_hypervisor_answers_and_faults() {
    let (mut vmm, socket) = Vmm::spawn(&Binary::CLOUD_HYPERVISOR, |socket| {
        vec!["--api-socket".into(), format!("path={}", socket.display())]
    });
    let client = RestClient::new(&socket, Flavour::CloudHypervisor);
    let spec = Spec::cloud_hypervisor().unwrap_or_else(|err| panic!("{err}"));

    let ping = client.call_when_ready(&Ping, LONG).await;
    let boot = client.call(&Put("/api/v1/vm.boot"), LONG).await;
    let shutdown = client.call(&Put("/api/v1/vmm.shutdown"), LONG).await;
    let exit = tokio::time::timeout(LONG, vmm.child.wait()).await;
    if exit.is_err() {
        vmm.kill().await;
    }

    assert!(!ping.expect("ping").version.is_empty());
    match boot {
        Err(RestError::Fault { message, .. }) => {
            assert!(
                !message.is_empty() && !message.starts_with('['),
                "{message}"
            );
        }
        other => panic!("expected a fault, got {other:?}"),
    }
    shutdown.expect("vmm.shutdown");
    assert!(exit
        .expect("exits after vmm.shutdown")
        .expect("wait")
        .success());
    for path in ["/api/v1/vm.boot", "/api/v1/vmm.shutdown"] {
        check_endpoint(&spec, &Put(path)).expect("in the contract");
    }
    check_endpoint(&spec, &Ping).expect("ping in the contract");
}
