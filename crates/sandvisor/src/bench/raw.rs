//! Raw QEMU: the command line sandvisor would run, spawned directly with
//! no QMP client, supervision or orchestration, timed to the agent's
//! handshake.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{agent_err, hv_err, io_err, resolve, BenchError, BenchOptions};
use crate::agent::{AgentAddress, AgentClient};
use crate::backends::qemu::Qemu;
use crate::hypervisor::{Hypervisor, NetworkNamespace};
use crate::hypervisor_type::HypervisorType;

/// Kills a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The raw-QEMU command for the built-in config, in the VM directory of a
/// created (never started) backend under `storage`.
pub(super) async fn raw_command(
    opts: &BenchOptions,
    storage: &Path,
) -> Result<
    (
        Qemu,
        crate::backends::qemu::cmdline::QemuCommand,
        AgentAddress,
    ),
    BenchError,
> {
    let (kind, config) = resolve(opts)?;
    if kind != HypervisorType::Qemu {
        return Err(BenchError::Raw(format!(
            "the baseline is QEMU; the config names {kind}"
        )));
    }
    let mut q = Qemu::with_storage(storage);
    q.create_sandbox("raw", &NetworkNamespace::default(), &config, false)
        .await
        .map_err(hv_err("create the raw VM"))?;
    let socket = q
        .generate_socket("raw", config.use_vsock)
        .map_err(hv_err("make the raw VM's agent socket"))?;
    let address = AgentAddress::from_socket(&socket).map_err(io_err("the agent's address"))?;
    q.add_device(socket.into_device())
        .await
        .map_err(hv_err("add the raw VM's agent channel"))?;
    let cmd = q
        .launch_command()
        .map_err(hv_err("build the raw VM's command line"))?;
    if !cmd.fds.is_empty() {
        return Err(BenchError::Raw(
            "the command passes descriptors (vhost-vsock or tap); the baseline runs virtio-serial configs only".into(),
        ));
    }
    Ok((q, cmd, address))
}

/// Raw QEMU: the same command line, spawned directly, to the agent's
/// handshake.
pub(super) async fn raw_boot(opts: &BenchOptions) -> Result<Duration, BenchError> {
    let storage = tempfile::Builder::new()
        .prefix("sandvisor-bench-raw-")
        .tempdir()
        .map_err(io_err("make a directory for the raw VM"))?;
    let (mut q, cmd, address) = raw_command(opts, storage.path()).await?;
    let result = async {
        let dir = q
            .vm_paths()
            .map(|p| (p.dir.clone(), p.qemu_log.clone()))
            .ok_or_else(|| BenchError::Raw("the backend made no VM paths".into()))?;
        std::fs::create_dir_all(&dir.0).map_err(io_err(format!("create {}", dir.0.display())))?;
        let log =
            std::fs::File::create(&dir.1).map_err(io_err(format!("create {}", dir.1.display())))?;
        let log2 = log.try_clone().map_err(io_err("duplicate the log file"))?;
        let started = Instant::now();
        let child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(format!("spawn {}", cmd.program.display())))?;
        let _child = KillOnDrop(child);
        let agent = AgentClient::connect(&address, opts.boot_timeout)
            .await
            .map_err(agent_err("raw VM handshake"))?;
        let up = started.elapsed();
        drop(agent);
        Ok(up)
    }
    .await;
    // The process is gone (KillOnDrop); remove what the backend made.
    if let Err(e) = q.cleanup().await {
        tracing::warn!(error = %e, "cleaning up the raw VM's directory failed");
    }
    result
}
