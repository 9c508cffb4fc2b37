//! Starting CH (and virtiofsd) under the start deadline, undoing a failed
//! start, and re-attaching to a CH another process started.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::api::{
    self, RestoreConfig, VmBoot, VmCreate, VmInfoGet, VmRestore, VmRunState, VmmPing,
};
use super::vm_config::{self, VmConfigError, VmPaths, VmSpec, SAVED_CONFIG, TEMPLATE_ZONE};
use super::{host_memory_mib, remove_dir, Clh, ClhError, StartTimings, KIND, REAP_TIMEOUT};
use crate::backends::vmm::process::{Exit, ProcessError, Spawn, Supervised};
use crate::backends::vmm::rest::{Flavour, RestClient, RestError};
use crate::backends::vmm::virtiofsd;
use crate::device::Device;
use crate::hypervisor::HypervisorState;

impl Clh {
    /// Runs a step of the start, under `deadline`, racing CH's exit.
    pub(super) async fn starting<T>(
        &self,
        what: &str,
        deadline: Instant,
        step: impl Future<Output = std::result::Result<T, RestError>>,
    ) -> Result<T, ClhError> {
        let Some(p) = &self.clh else {
            return Err(ProcessError::NotRunning { pid: 0 }.into());
        };
        let early = |exit| ClhError::EarlyExit {
            binary: self.binary(),
            pid: p.pid(),
            exit,
            log_tail: self.log_tail(),
        };
        let mut exit = p.exit_watch();
        let result = tokio::select! {
            r = step => r,
            _ = exit.wait_for(Option::is_some) => {
                return Err(early(p.exited().unwrap_or(Exit::Unknown)));
            }
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                // CH dying mid-request shows as a connection error first.
                if let Some(exit) = p.wait(Duration::from_millis(200)).await {
                    return Err(early(exit));
                }
                if Instant::now() >= deadline || matches!(e, RestError::Timeout { .. }) {
                    return Err(ClhError::StartTimeout {
                        what: what.to_string(),
                        timeout: self.start_timeout,
                        log_tail: self.log_tail(),
                        last: Some(Box::new(e)),
                    });
                }
                Err(ClhError::Api {
                    op: "start the VM",
                    source: e,
                })
            }
        }
    }

    pub(super) fn vm_config(&self, devices: &[Device]) -> Result<api::VmConfig, VmConfigError> {
        let paths = self
            .paths
            .clone()
            .unwrap_or_else(|| VmPaths::new(&self.storage, &self.id));
        vm_config::build(&VmSpec {
            config: &self.config,
            devices,
            paths: &paths,
            host_memory_mib: self.host_memory_mib,
        })
    }

    pub(super) async fn launch(&mut self, timeout: Duration) -> Result<(), ClhError> {
        let started = Instant::now();
        let deadline = started + timeout;
        self.start_timeout = timeout;
        let paths = self
            .paths
            .clone()
            .expect("create_sandbox set the paths before the state became Created");
        crate::private::create_dir_all(&paths.dir).map_err(|source| ClhError::Dir {
            action: "create",
            path: paths.dir.clone(),
            source,
        })?;
        for stale in [&paths.api, &paths.console, &paths.vsock] {
            let _ = std::fs::remove_file(stale);
        }
        let vm = self.vm_config(&self.devices)?;
        if let Some(zone) = vm.memory.zones.iter().find(|z| z.id == TEMPLATE_ZONE) {
            // CH maps the zone's file as it is: it must exist, at the size.
            let path = zone.file.clone().expect("a template zone names its file");
            std::fs::File::create(&path)
                .and_then(|f| f.set_len(zone.size))
                .map_err(|source| ClhError::TemplateMemory { path, source })?;
        }

        if !vm.fs.is_empty() && self.config.shared_fs.is_virtio_fs() {
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
            }
        }

        let binary = self.binary();
        let args = command_args(&paths.api, self.config.debug);
        tracing::info!(id = self.id, binary = %binary.display(), ?args, "starting cloud hypervisor");
        self.clh = Some(Supervised::spawn(Spawn {
            program: &binary,
            args: &args,
            fds: Vec::new(),
            log: &paths.log,
            netns: self.netns.path.as_deref(),
            run_as: None,
        })?);
        let api = Arc::new(RestClient::new(&paths.api, Flavour::CloudHypervisor));
        self.api = Some(Arc::clone(&api));

        let left = || deadline.saturating_duration_since(Instant::now());
        let what = format!("answer vmm.ping on {:?}", paths.api);
        let ping = self
            .starting(&what, deadline, api.call_when_ready(&VmmPing, left()))
            .await?;
        tracing::info!(
            id = self.id,
            version = ping.version,
            "cloud hypervisor answers"
        );
        let vmm_ready = started.elapsed();

        if self.config.boot_from_template {
            let dir = self
                .config
                .devices_state_path
                .clone()
                .unwrap_or_else(|| paths.snapshot.clone());
            let dir = clone_snapshot_dir(&dir, &paths)?;
            let restore = VmRestore(RestoreConfig {
                source_url: api::file_url(&dir),
                prefault: None,
                resume: Some(true),
            });
            self.starting(
                "restore the VM (vm.restore)",
                deadline,
                api.call(&restore, left()),
            )
            .await?;
        } else {
            self.starting(
                "create the VM (vm.create)",
                deadline,
                api.call(&VmCreate(vm), left()),
            )
            .await?;
            self.starting("boot the VM (vm.boot)", deadline, api.call(&VmBoot, left()))
                .await?;
        }
        let create_boot = started.elapsed() - vmm_ready;
        let info = self
            .starting(
                "report the VM (vm.info)",
                deadline,
                api.call(&VmInfoGet, left()),
            )
            .await?;
        if info.state != VmRunState::Running {
            return Err(ClhError::NotRunning { state: info.state });
        }
        self.timings = Some(StartTimings {
            vmm_ready,
            create_boot,
            total: started.elapsed(),
        });
        tracing::info!(
            id = self.id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cloud hypervisor runs the VM"
        );
        Ok(())
    }

    /// Kills whatever a failed start left and removes the VM directory.
    pub(super) async fn abort_start(&mut self) {
        self.api = None;
        if let Some(p) = self.clh.take() {
            p.kill();
            if p.wait(REAP_TIMEOUT).await.is_none() {
                tracing::error!(pid = p.pid(), "cloud hypervisor did not die after SIGKILL");
            }
        }
        if let Some(v) = self.virtiofsd.take() {
            v.terminate(REAP_TIMEOUT).await;
        }
        if let Some(paths) = &self.paths {
            if let Err(e) = remove_dir(&paths.dir) {
                tracing::warn!(error = %e, "cannot remove VM directory after a failed start");
            }
        }
        self.remove_unmade_template();
    }

    pub(super) fn restore_from_state(&mut self, state: &HypervisorState) -> Result<(), ClhError> {
        if state.hypervisor != KIND {
            return Err(ClhError::WrongHypervisor(state.hypervisor));
        }
        self.id = state.id.clone();
        if let Some(parent) = state.vm_dir.parent() {
            self.storage = parent.to_path_buf();
        }
        let mut paths = VmPaths::new(&self.storage, &self.id);
        if let Some(api) = &state.api_socket {
            paths.api = api.clone();
        }
        if let Some(console) = &state.console_socket {
            paths.console = console.clone();
        }
        self.api = Some(Arc::new(RestClient::new(
            &paths.api,
            Flavour::CloudHypervisor,
        )));
        self.paths = Some(paths);
        self.hot = state
            .hotplugged_devices
            .iter()
            .map(|d| match d.split_once('@') {
                Some((id, bdf)) => (id.to_string(), bdf.to_string()),
                None => (d.clone(), String::new()),
            })
            .collect();
        self.block_indexes = state.block_index_map.clone();
        self.hot_memory_mib = state.hotplugged_memory_mib;
        self.snapshot = state.snapshot_dir.clone();
        self.host_memory_mib = host_memory_mib()?;
        Ok(())
    }

    pub(super) fn adopt(&mut self, state: &HypervisorState) -> Result<(), ClhError> {
        let api = self
            .paths
            .as_ref()
            .map(|p| p.api.to_string_lossy().into_owned())
            .unwrap_or_default();
        // virtiofsd first: when Cloud Hypervisor is gone, this load fails,
        // and the cleanup that follows still ends the virtiofsd it knows.
        let (virtiofsd, virtiofsd_adopted) = virtiofsd::adopt(state.virtiofsd_pid);
        self.virtiofsd = virtiofsd;
        let clh = Supervised::adopt(state.pid, &api)?;
        let now = crate::process::ProcessRef::of(state.pid).start_time;
        if state.vmm_start_time != 0 && now != state.vmm_start_time {
            return Err(ProcessError::NotOurs {
                pid: state.pid,
                expected: format!("start time {}", state.vmm_start_time),
            }
            .into());
        }
        self.clh = Some(clh);
        virtiofsd_adopted?;
        self.detached = false;
        Ok(())
    }
}

/// Cloud Hypervisor's command line: the API socket, `-v` when debugging.
/// No `--seccomp`: its seccomp filters stay on (their default), which
/// `sandvisor check` reports from this function.
pub(crate) fn command_args(api: &std::path::Path, debug: bool) -> Vec<String> {
    let mut args = vec![
        "--api-socket".to_string(),
        format!("path={}", api.display()),
    ];
    if debug {
        args.push("-v".to_string());
    }
    args
}

/// Name of a clone's own snapshot directory, in its VM directory.
pub(super) const CLONE_SNAPSHOT: &str = "restore";

/// The directory a clone restores from: for a template's snapshot (it has
/// a saved config), `<vm dir>/restore` with the config patched for this
/// clone ([`vm_config::template_restore_config`]) and the snapshot's other
/// files linked; a directory without a saved config as it is (CH's
/// `vm.restore` then names what is missing).
fn clone_snapshot_dir(template: &Path, paths: &VmPaths) -> Result<PathBuf, ClhError> {
    let saved = template.join(SAVED_CONFIG);
    let text = match std::fs::read_to_string(&saved) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(template.to_path_buf()),
        Err(source) => {
            return Err(ClhError::TemplateConfig {
                path: saved,
                source,
            })
        }
    };
    let config_err = |source| ClhError::TemplateConfig {
        path: saved.clone(),
        source,
    };
    let patched = vm_config::template_restore_config(&text, paths)
        .map_err(|e| config_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    let own = paths.dir.join(CLONE_SNAPSHOT);
    std::fs::create_dir_all(&own).map_err(|source| ClhError::Dir {
        action: "create",
        path: own.clone(),
        source,
    })?;
    let entries = std::fs::read_dir(template).map_err(config_err)?;
    for entry in entries {
        let entry = entry.map_err(config_err)?;
        if entry.file_name() == SAVED_CONFIG {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), own.join(entry.file_name()))
            .map_err(config_err)?;
    }
    std::fs::write(own.join(SAVED_CONFIG), patched).map_err(config_err)?;
    Ok(own)
}
