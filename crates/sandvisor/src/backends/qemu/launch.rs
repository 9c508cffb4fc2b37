//! Starting QEMU: resolving the accelerator, building the command line,
//! starting virtiofsd, spawning QEMU and waiting for QMP; and undoing a
//! start that failed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;

use super::cmdline::{self, Accelerator, LaunchSpec, QemuCommand, VmPaths};
use super::qmp::Qmp;
use super::rootless::{self, RunAs};
use super::{Qemu, QemuError, QemuSpec, REAP_TIMEOUT};
use crate::backends::vmm::process::{self, Supervised};
use crate::backends::vmm::virtiofsd;
use crate::backends::vmm::vsock_daemon;
use crate::device::Device;
use crate::hypervisor::Result;
use crate::probe;

impl Qemu {
    pub(super) fn resolve_accel(&self) -> Result<Accelerator, QemuError> {
        let kvm = probe::probe_host_kvm();
        let accel = probe::resolve_accel(self.config.accel, &kvm);
        match (self.config.accel, accel) {
            (crate::config::Accel::Auto, crate::config::Accel::Tcg) => tracing::info!(
                reason = kvm.reason.as_deref().unwrap_or(""),
                "accel auto: using TCG"
            ),
            (requested, resolved) => {
                tracing::info!(%requested, %resolved, "accelerator")
            }
        }
        Ok(Accelerator::from_resolved(accel)?)
    }

    /// Waits for QMP on a QEMU that is starting, until `deadline`.
    async fn wait_qmp(&self, timeout: Duration) -> Result<Qmp, QemuError> {
        let (Some(p), Some(paths)) = (&self.qemu, &self.paths) else {
            return Err(QemuError::Process(process::ProcessError::NotRunning {
                pid: 0,
            }));
        };
        let deadline = Instant::now() + timeout;
        let mut exit = p.exit_watch();
        let mut last = None;
        loop {
            if let Some(exit) = p.exited() {
                return Err(QemuError::EarlyExit {
                    binary: self.binary(),
                    pid: p.pid(),
                    exit,
                    log_tail: process::log_tail(&paths.qemu_log),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QemuError::StartTimeout {
                    path: paths.qmp.clone(),
                    timeout,
                    log_tail: process::log_tail(&paths.qemu_log),
                    last,
                });
            }
            match Qmp::connect(&paths.qmp, left).await {
                Ok(q) => return Ok(q),
                Err(e) if e.is_transient_connect() => {
                    last = Some(Box::new(e));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20).min(left)) => {}
                        _ = exit.changed() => {}
                    }
                }
                Err(e) => {
                    // QEMU dying mid-handshake shows as a QMP error: the
                    // exit is the better answer.
                    if let Some(exit) = p.wait(Duration::from_millis(200)).await {
                        return Err(QemuError::EarlyExit {
                            binary: self.binary(),
                            pid: p.pid(),
                            exit,
                            log_tail: process::log_tail(&paths.qemu_log),
                        });
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// The QEMU command line for this handle's sandbox, as `launch` runs it.
    fn build_command(
        &self,
        accel: Accelerator,
        paths: &VmPaths,
        qemu: &QemuSpec,
        vm_dir_fd: Option<i32>,
    ) -> Result<QemuCommand, QemuError> {
        let image_size = match &qemu.nvdimm_image {
            Some(img) => Some(
                std::fs::metadata(img)
                    .map_err(|source| QemuError::Image {
                        path: img.clone(),
                        source,
                    })?
                    .len(),
            ),
            None => None,
        };
        let spec = LaunchSpec {
            config: &self.config,
            id: &self.id,
            uuid: &self.uuid,
            accel,
            host_memory_mib: self.host_memory_mib,
            paths,
            devices: &self.devices,
            image_size,
            // A rootless QEMU cannot open /dev/vhost-net.
            vhost_net: self.vhost_net() && vm_dir_fd.is_none(),
            vm_dir_fd,
        };
        Ok(cmdline::build_for(&spec, qemu.machine)?)
    }

    /// The command line `start_sandbox` would run for the created sandbox,
    /// with its devices so far: for running the same VM without sandvisor,
    /// as `sandvisor bench` does for its raw-QEMU baseline.
    ///
    /// # Errors
    /// [`Error::InvalidState`](crate::hypervisor::Error::InvalidState) before `create_sandbox`; otherwise what
    /// building the command line reports.
    pub fn launch_command(&self) -> Result<QemuCommand> {
        let (Some(paths), Some(qemu)) = (self.paths.as_ref(), self.spec.as_ref()) else {
            return Err(self.invalid("build the command line of"));
        };
        let accel = self.resolve_accel()?;
        let vm_dir_fd = self.config.rootless.then_some(rootless::VM_DIR_FD);
        Ok(self.build_command(accel, paths, qemu, vm_dir_fd)?)
    }

    pub(super) async fn launch(&mut self, timeout: Duration) -> Result<(), QemuError> {
        let started_all = Instant::now();
        let accel = self.resolve_accel()?;
        self.accel = Some(accel);
        let paths = self
            .paths
            .clone()
            .expect("create_sandbox set the paths before the state became Created");
        crate::private::create_dir_all(&paths.dir).map_err(|source| QemuError::VmDir {
            action: "create",
            path: paths.dir.clone(),
            source,
        })?;
        for stale in [&paths.qmp, &paths.console] {
            let _ = std::fs::remove_file(stale);
        }
        let qemu = self
            .spec
            .as_ref()
            .expect("create_sandbox made the spec before the state became Created");
        let run_as = match self.config.rootless {
            true => Some(self.prepare_rootless(accel, &paths)?),
            false => None,
        };
        let mut cmd =
            self.build_command(accel, &paths, qemu, run_as.map(|_| rootless::VM_DIR_FD))?;
        if run_as.is_some() {
            let dir = std::fs::File::open(&paths.dir).map_err(|source| QemuError::VmDir {
                action: "open",
                path: paths.dir.clone(),
                source,
            })?;
            cmd.fds
                .push((Arc::new(OwnedFd::from(dir)), rootless::VM_DIR_FD));
        }

        if self.config.shared_fs.is_virtio_fs() {
            let share = self.devices.iter().find_map(|d| match d {
                Device::Fs(v) => Some(v.host_path.clone()),
                _ => None,
            });
            if let Some(source) = share {
                self.virtiofsd = Some(virtiofsd::start(
                    &self.config,
                    &source,
                    &paths.virtiofs,
                    &paths.virtiofsd_log,
                )?);
                give_socket(&paths.virtiofs, run_as)?;
            }
        }

        // The daemon first: QEMU's vhost-user-vsock chardev connects to it
        // while QEMU starts, and QEMU exits at once without it.
        let has_hybrid_vsock = self
            .devices
            .iter()
            .any(|d| matches!(d, Device::HybridVsock(_)));
        if let Some(daemon) = qemu.hybrid_vsock.clone().filter(|_| has_hybrid_vsock) {
            let daemon_paths = super::daemon_paths(&paths);
            let d = vsock_daemon::start(&daemon, &daemon_paths, vsock_daemon::GUEST_CID, timeout)
                .await?;
            tracing::info!(id = self.id, pid = d.pid(), "vhost-device-vsock ready");
            give_socket(&paths.vsock_vhost_user, run_as)?;
            self.vsock_daemon = Some(d);
        }
        let timeout = timeout.saturating_sub(started_all.elapsed());

        let fds = cmd
            .fds
            .iter()
            .map(|(fd, n)| fd.try_clone().map(|fd| (fd, *n)))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(QemuError::DupFd)?;
        tracing::info!(id = self.id, args = ?cmd.args, "starting qemu");
        self.qemu = Some(Supervised::spawn(process::Spawn {
            program: &cmd.program,
            args: &cmd.args,
            fds,
            log: &paths.qemu_log,
            netns: self.netns.path.as_deref(),
            run_as: run_as.map(|r| (r.uid, r.gid)),
        })?);
        let started = Instant::now();
        let qmp = self.wait_qmp(timeout).await?;
        tracing::info!(
            id = self.id,
            version = %qmp.version(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "qemu answers on QMP"
        );
        self.qmp = Some(Arc::new(qmp));
        // QEMU has bound its QMP, console and agent sockets, with the mode
        // its umask gives; they are 0600 like the rest of the directory.
        crate::private::tighten_in_background(&paths.dir)
            .await
            .map_err(|source| QemuError::VmDir {
                action: "restrict access to",
                path: paths.dir.clone(),
                source,
            })?;

        if self.config.boot_from_template {
            self.restore_template().await?;
        }
        Ok(())
    }

    /// Picks the uid a rootless QEMU runs as and gives it the VM
    /// directory, after checking what it will have to open.
    fn prepare_rootless(&self, accel: Accelerator, paths: &VmPaths) -> Result<RunAs, QemuError> {
        rootless::check_config(&self.config)?;
        rootless::check_devices(&self.config, &self.devices)?;
        let run_as = rootless::pick(&self.id, &paths.dir, accel)?;
        rootless::check_assets(&self.config, run_as)?;
        rootless::give(&paths.dir, run_as).map_err(|source| QemuError::VmDir {
            action: "give to the rootless uid",
            path: paths.dir.clone(),
            source,
        })?;
        tracing::info!(
            id = self.id,
            uid = run_as.uid,
            gid = run_as.gid,
            "qemu runs rootless"
        );
        Ok(run_as)
    }

    /// Kills whatever a failed start left and removes the VM directory.
    pub(super) async fn abort_start(&mut self) {
        self.qmp = None;
        if let Some(p) = self.qemu.take() {
            p.kill();
            if p.wait(REAP_TIMEOUT).await.is_none() {
                tracing::error!(pid = p.pid(), "qemu did not die after SIGKILL");
            }
        }
        if let Some(v) = self.virtiofsd.take() {
            v.terminate(REAP_TIMEOUT).await;
        }
        self.stop_vsock_daemon().await;
        if let Some(paths) = &self.paths {
            if let Err(e) = remove_dir(&paths.dir) {
                tracing::warn!(error = %e, "cannot remove VM directory after a failed start");
            }
        }
    }
}

/// Gives a helper's socket, which QEMU connects to, to a rootless QEMU.
fn give_socket(path: &Path, run_as: Option<RunAs>) -> Result<(), QemuError> {
    match run_as {
        Some(r) => rootless::give(path, r).map_err(|source| QemuError::VmDir {
            action: "give a socket in",
            path: path.to_path_buf(),
            source,
        }),
        None => Ok(()),
    }
}

pub(super) fn host_memory_mib() -> Result<u64, QemuError> {
    probe::host_memory_mib().map_err(QemuError::HostMemory)
}

pub(super) fn remove_dir(dir: &Path) -> Result<(), QemuError> {
    crate::backends::vmm::remove_dir_if_present(dir).map_err(|source| QemuError::VmDir {
        action: "remove",
        path: dir.to_path_buf(),
        source,
    })
}
