//! Starting Firecracker: the jail's files, the process (or the jailer),
//! the API answering, the pre-boot requests (or the template's snapshot
//! load, in `snapshot`); and undoing a failed start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::api::{ActionType, GetInstanceInfo, InstanceActionInfo, PutAction};
use super::jailer::{self, Placement};
use super::vm_config::{self, BootPlan, HotplugMode, PreBoot, VmConfigError};
use super::{
    io_dir, jail_fs, names, FcError, Firecracker, API_TIMEOUT, FC, GUEST_CID, PLACEHOLDER_BYTES,
};
use crate::assets::AssetType;
use crate::backends::vmm::process::{ProcessError, Spawn, Supervised};
use crate::backends::vmm::rest::{RestClient, RestError};
use crate::device::Device;
use crate::hypervisor::{Error, Result};
use crate::process::{Exit, REAP_TIMEOUT};

impl Firecracker {
    /// The path Firecracker is given for the caller's file `host`: the file
    /// itself, or its place in the jail, which is made.
    pub(super) fn hand_over(
        &self,
        host: &Path,
        dir: &str,
        placement: Placement,
        writable: bool,
    ) -> Result<PathBuf, FcError> {
        let Some(jail) = self.files.as_ref().and_then(|f| f.jail.as_ref()) else {
            return Ok(host.to_path_buf());
        };
        let f = jail.place(host, dir, placement)?;
        let (uid, gid) = (self.options.jail_uid, self.options.jail_gid);
        jail_fs::place(&f, writable, uid, gid)?;
        Ok(f.inside)
    }

    /// The boot plan, with every file placed where Firecracker reads it.
    pub(super) fn boot_plan(&self, host_memory_mib: u64) -> Result<BootPlan<'_>, FcError> {
        let f = self
            .files
            .as_ref()
            .expect("create_sandbox set the files before the state became Created");
        let c = &self.config;
        for (what, kind) in [
            ("kernel", AssetType::Kernel),
            ("initrd", AssetType::Initrd),
            ("image", AssetType::Image),
        ] {
            if let Some(path) = c.asset_path(kind).filter(|p| !p.is_file()) {
                return Err(FcError::MissingAsset {
                    what,
                    path: path.to_path_buf(),
                });
            }
        }
        let kernel = c
            .asset_path(AssetType::Kernel)
            .ok_or(VmConfigError::NoKernel)?;
        let kernel = self.hand_over(kernel, "boot", Placement::LinkOrCopy, false)?;
        let initrd = match c.asset_path(AssetType::Initrd) {
            Some(p) => Some(self.hand_over(p, "boot", Placement::LinkOrCopy, false)?),
            None => None,
        };
        let image = match c.asset_path(AssetType::Image) {
            Some(p) => Some(self.hand_over(p, "boot", Placement::LinkOrCopy, false)?),
            None => None,
        };
        let mut drives = Vec::new();
        let mut nets = Vec::new();
        let mut vsock = None;
        for d in &self.devices {
            match d {
                Device::Block(b) | Device::Image(b) => {
                    let placement = if b.read_only {
                        Placement::LinkOrCopy
                    } else {
                        Placement::LinkOrBind
                    };
                    let p = self.hand_over(&b.file, "drives", placement, !b.read_only)?;
                    drives.push((b.clone(), p));
                }
                Device::Net(n) => nets.push(n.clone()),
                Device::HybridVsock(h) => {
                    let cid = u32::try_from(h.context_id).unwrap_or(GUEST_CID);
                    vsock = Some((cid, f.inside(names::VSOCK)));
                }
                _ => {}
            }
        }
        let (uid, gid) = self.owner();
        let mut placeholders = Vec::new();
        for id in &self.hot.placeholders {
            let host = f.host(&format!("{id}.img"));
            jail_fs::make_placeholder(&host, PLACEHOLDER_BYTES, uid, gid)?;
            placeholders.push((id.clone(), f.inside(&format!("{id}.img"))));
        }
        for name in [names::LOG, names::METRICS, names::SERIAL] {
            jail_fs::make_file(&f.host(name), uid, gid)?;
        }
        Ok(BootPlan {
            config: c,
            hotplug: self.options.hotplug,
            host_memory_mib,
            log: f.inside(names::LOG),
            metrics: f.inside(names::METRICS),
            serial: f.inside(names::SERIAL),
            kernel,
            initrd,
            image,
            drives,
            nets,
            vsock,
            placeholders,
        })
    }

    /// Makes the VM directory and the jail's root, before the jailer runs,
    /// so that every file (and bind mount) is in place when it pivots.
    pub(super) fn make_dirs(&self) -> Result<(), FcError> {
        let f = self
            .files
            .as_ref()
            .expect("create_sandbox set the files before the state became Created");
        crate::private::create_dir_all(&f.dir).map_err(io_dir("create", &f.dir))?;
        if let Some(jail) = &f.jail {
            let (uid, gid) = self.owner();
            jail_fs::make_dir(jail.root(), uid, gid)?;
            jail_fs::make_dir(&jail.root().join("run"), uid, gid)?;
        }
        Ok(())
    }

    /// Spawns Firecracker (or the jailer).
    pub(super) fn spawn(&mut self) -> Result<(), FcError> {
        let f = self
            .files
            .clone()
            .expect("create_sandbox set the files before the state became Created");
        let fc = self.binary();
        let mut fc_args = Vec::new();
        if self.options.hotplug == HotplugMode::Pci {
            fc_args.push("--enable-pci".to_string());
        }
        let (program, args, netns) = match (&f.jail, self.jailer()) {
            (Some(_), Some(jailer)) => {
                let spec = self.jail_spec(&fc, &jailer);
                // The jailer gives Firecracker --id itself.
                let (program, args) = jailer::command(&spec, &fc_args);
                (program, args, None)
            }
            _ => {
                let mut args = vec![
                    "--api-sock".to_string(),
                    f.api().display().to_string(),
                    "--id".to_string(),
                    self.id.clone(),
                ];
                args.extend(fc_args);
                (fc, args, self.netns.path.clone())
            }
        };
        let _ = std::fs::remove_file(f.api());
        tracing::info!(id = self.id, program = %program.display(), ?args, "starting firecracker");
        self.fc = Some(Supervised::spawn(Spawn {
            program: &program,
            args: &args,
            fds: Vec::new(),
            log: &f.out(),
            netns: netns.as_deref(),
            run_as: None,
        })?);
        Ok(())
    }

    /// With `--new-pid-ns` the jailer exits once Firecracker runs; adopt
    /// Firecracker from the pid file it left.
    pub(super) async fn adopt_from_pid_file(&mut self, timeout: Duration) -> Result<(), Error> {
        let Some(jail) = self.files.as_ref().and_then(|f| f.jail.clone()) else {
            return Ok(());
        };
        let Some(jailer) = self.fc.take() else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let exit = jailer.wait(timeout).await;
        match exit {
            Some(e) if e.success() => {}
            Some(exit) => {
                return Err(Error::VmmExited {
                    hypervisor: FC,
                    binary: self.jailer().unwrap_or_default(),
                    pid: jailer.pid(),
                    exit,
                    starting: true,
                    log_tail: self.log_tail(),
                })
            }
            None => {
                self.fc = Some(jailer);
                return Err(Error::StartTimeout {
                    hypervisor: FC,
                    what: "start firecracker in a new pid namespace (the jailer did not exit)"
                        .into(),
                    timeout,
                    log_tail: self.log_tail(),
                    last: None,
                });
            }
        }
        let path = jail.pid_file();
        let pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or(FcError::PidFile { path })?;
        // The pid file is written before Firecracker's exec completes: while
        // it runs, /proc/<pid>/cmdline can be empty, so "not ours" is retried
        // until the start deadline.
        loop {
            match Supervised::adopt(pid, &self.id) {
                Ok(fc) => {
                    self.fc = Some(fc);
                    return Ok(());
                }
                Err(ProcessError::NotOurs { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(FcError::from(e).into()),
            }
        }
    }

    /// Waits for `GET /` on a Firecracker that is starting.
    pub(super) async fn wait_api(&mut self, timeout: Duration) -> Result<(), Error> {
        let api = self.api()?;
        let Some(p) = &self.fc else {
            return Err(self.invalid("wait for"));
        };
        let mut exit = p.exit_watch();
        let answered = tokio::select! {
            r = api.call_when_ready(&GetInstanceInfo, timeout) => r,
            _ = exit.wait_for(Option::is_some) => {
                return Err(self.start_exit());
            }
        };
        match answered {
            Ok(info) => {
                tracing::info!(
                    id = self.id,
                    version = info.vmm_version,
                    "firecracker answers"
                );
                Ok(())
            }
            Err(e) => {
                if let Some(p) = &self.fc {
                    if p.wait(Duration::from_millis(200)).await.is_some() {
                        return Err(self.start_exit());
                    }
                }
                if e.is_transient() || matches!(e, RestError::Timeout { .. }) {
                    return Err(Error::StartTimeout {
                        hypervisor: FC,
                        what: format!("answer on API socket {:?}", api.socket()),
                        timeout,
                        log_tail: self.log_tail(),
                        last: Some(Box::new(e)),
                    });
                }
                Err(FcError::from(e).into())
            }
        }
    }

    pub(super) fn start_exit(&self) -> Error {
        let p = self.fc.as_ref();
        Error::VmmExited {
            hypervisor: FC,
            binary: self.binary(),
            pid: p.map_or(0, Supervised::pid),
            exit: p.and_then(Supervised::exited).unwrap_or(Exit::Unknown),
            starting: true,
            log_tail: self.log_tail(),
        }
    }

    pub(super) async fn launch(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let host_mib = crate::probe::host_memory_mib().map_err(FcError::HostMemory)?;
        let from_template = self.config.boot_from_template;
        self.make_dirs()?;
        // Placed before the spawn: a jail's files and mounts must exist
        // when the jailer pivots into it.
        let requests = if from_template {
            None
        } else {
            let plan = self.boot_plan(host_mib)?;
            let reqs = vm_config::pre_boot_requests(&plan).map_err(FcError::from)?;
            Some(reqs)
        };
        self.spawn()?;
        if self.options.new_pid_ns && self.files.as_ref().is_some_and(|f| f.jail.is_some()) {
            self.adopt_from_pid_file(deadline.saturating_duration_since(Instant::now()))
                .await?;
        }
        self.wait_api(deadline.saturating_duration_since(Instant::now()))
            .await?;
        let api = self.api()?;
        match requests {
            Some(reqs) => {
                for r in &reqs {
                    let res = send_pre_boot(&api, r).await;
                    self.or_exited(res).await?;
                    if let PreBoot::MemoryHotplug(m) = r {
                        self.memory_region_mib = m.0.total_size_mib;
                    }
                }
                let start = PutAction(InstanceActionInfo {
                    action_type: ActionType::InstanceStart,
                });
                let res = api.call(&start, API_TIMEOUT).await.map_err(FcError::from);
                self.or_exited(res).await?;
            }
            None => self.restore_template(&api).await?,
        }
        Ok(())
    }

    /// Kills whatever a failed start left and removes the VM's files.
    pub(super) async fn abort_start(&mut self) {
        self.api = None;
        if let Some(p) = self.fc.take() {
            p.kill();
            if p.wait(REAP_TIMEOUT).await.is_none() {
                tracing::error!(pid = p.pid(), "firecracker did not die after SIGKILL");
            }
        }
        if let Err(e) = self.remove_files() {
            tracing::warn!(error = %e, "cannot remove the VM's files after a failed start");
        }
    }
}

pub(super) async fn send_pre_boot(api: &RestClient, r: &PreBoot) -> Result<(), FcError> {
    let t = API_TIMEOUT;
    match r {
        PreBoot::Logger(e) => api.call(e, t).await,
        PreBoot::Metrics(e) => api.call(e, t).await,
        PreBoot::Machine(e) => api.call(e, t).await,
        PreBoot::Boot(e) => api.call(e, t).await,
        PreBoot::Drive(e) => api.call(e, t).await,
        PreBoot::Net(e) => api.call(e, t).await,
        PreBoot::Vsock(e) => api.call(e, t).await,
        PreBoot::Entropy(e) => api.call(e, t).await,
        PreBoot::Serial(e) => api.call(e, t).await,
        PreBoot::MemoryHotplug(e) => api.call(e, t).await,
    }
    .map_err(FcError::from)
}
