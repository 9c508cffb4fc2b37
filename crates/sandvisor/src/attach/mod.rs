//! What a one-shot sandbox gets beyond its VM: host directories
//! ([`volume`]) and a network ([`net`]), as `sandvisor run -v/--net/-p`
//! ask for them.
//!
//! [`prepare`] checks everything before anything boots and adjusts the
//! config (virtio-fs for volumes); the [`Prepared`] it returns gives the
//! devices to add before start, and [`Prepared::apply`] does the guest's
//! side once the agent answers (mounts, interface). Dropping it removes
//! what it made on the host; drop it after the VM is gone.

pub mod net;
pub mod volume;

use std::path::{Path, PathBuf};

use sandvisor_proto::ExecRequest;

use crate::agent::{AgentClient, ClientError};
use crate::config::{ConfigError, HypervisorConfig, SharedFs};
use crate::device::{Device, UserNetwork};
use crate::hypervisor::{Error as HypervisorError, Hypervisor};
use crate::hypervisor_type::HypervisorType;
use net::{NetError, NetworkMode, Publish};
use volume::{SharedRoot, Volume, VolumeError};

/// Where virtiofsd is looked for when the config names none, in order.
pub const VIRTIOFSD_PATHS: &[&str] = &[
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "/usr/libexec/kata-qemu/virtiofsd",
];

/// Volumes and network for a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachments {
    /// Host directories to share.
    pub volumes: Vec<Volume>,
    /// The network.
    pub network: NetworkMode,
    /// TCP ports to forward from the host (needs [`NetworkMode::User`]).
    pub publish: Vec<Publish>,
}

/// Errors in attaching volumes and a network.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A bad volume.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A bad network option.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The hypervisor has no virtio-fs.
    #[error("{hypervisor} has no virtio-fs, so -v/--volume cannot work with it; use --hypervisor qemu or clh")]
    NoVirtioFs {
        /// The hypervisor.
        hypervisor: HypervisorType,
    },
    /// The hypervisor has no user-mode network.
    #[error("--net user is QEMU's user-mode network (slirp), which {hypervisor} lacks; use --hypervisor qemu")]
    NoUserNet {
        /// The hypervisor.
        hypervisor: HypervisorType,
    },
    /// No virtiofsd.
    #[error("-v/--volume needs virtiofsd and none of {looked:?} exists; install qemu-system-common or set virtio_fs_daemon")]
    NoVirtiofsd {
        /// Where it was looked for.
        looked: Vec<PathBuf>,
    },
    /// The config does not allow virtio-fs.
    #[error("the config cannot share volumes with virtio-fs")]
    Config(#[source] ConfigError),
    /// Adding a device failed.
    #[error("cannot add the {what} to sandbox {id}")]
    Device {
        /// What device.
        what: &'static str,
        /// The sandbox.
        id: String,
        /// The backend's error.
        #[source]
        source: Box<HypervisorError>,
    },
    /// A guest mount failed.
    #[error("cannot mount volume {target} in the guest")]
    Mount {
        /// The guest path.
        target: String,
        /// The agent's error.
        #[source]
        source: ClientError,
    },
    /// The agent could not run the network setup.
    #[error("cannot configure the guest network")]
    NetSetup(#[source] ClientError),
    /// The network setup ran and failed.
    #[error("cannot configure the guest network: {stderr}")]
    NetSetupFailed {
        /// What it printed.
        stderr: String,
    },
}

/// Checked attachments, and what was made on the host for them.
#[derive(Debug, Default)]
pub struct Prepared {
    volumes: Vec<Volume>,
    root: Option<SharedRoot>,
    net: Option<UserNetwork>,
}

/// Checks `att` for a `kind` sandbox called `id`, turns on virtio-fs in
/// `config` when there are volumes, and makes the shared root.
///
/// # Errors
/// See [`AttachError`]; nothing is left behind on error.
pub fn prepare(
    att: &Attachments,
    kind: HypervisorType,
    config: &mut HypervisorConfig,
    id: &str,
) -> Result<Prepared, AttachError> {
    let net = net::user_network(att.network, &att.publish)?;
    if net.is_some() && kind != HypervisorType::Qemu {
        return Err(AttachError::NoUserNet { hypervisor: kind });
    }
    let volumes = volume::validate(&att.volumes)?;
    let mut prepared = Prepared {
        volumes,
        root: None,
        net,
    };
    if prepared.volumes.is_empty() {
        return Ok(prepared);
    }
    if !matches!(kind, HypervisorType::Qemu | HypervisorType::Clh) {
        return Err(AttachError::NoVirtioFs { hypervisor: kind });
    }
    use_virtio_fs(config, VIRTIOFSD_PATHS.iter().map(Path::new))?;
    prepared.root = Some(SharedRoot::create(
        crate::paths::runtime_dir().join("volumes").join(id),
        &prepared.volumes,
    )?);
    Ok(prepared)
}

/// Turns on virtio-fs, with the config's virtiofsd or the first of
/// `candidates` that exists.
fn use_virtio_fs<'a>(
    config: &mut HypervisorConfig,
    candidates: impl Iterator<Item = &'a Path> + Clone,
) -> Result<(), AttachError> {
    if !config.shared_fs.is_virtio_fs() {
        config.shared_fs = SharedFs::VirtioFs;
    }
    let configured = config.virtio_fs_daemon.as_deref().filter(|d| d.exists());
    if configured.is_none() {
        let found = candidates.clone().find(|p| p.exists());
        match found {
            Some(p) => config.virtio_fs_daemon = Some(p.to_path_buf()),
            None => {
                return Err(AttachError::NoVirtiofsd {
                    looked: candidates.map(Path::to_path_buf).collect(),
                })
            }
        }
    }
    config.validate().map_err(AttachError::Config)
}

impl Prepared {
    /// Whether host directories are shared into the guest: its writes to
    /// them may sit in its page cache until it syncs.
    pub fn has_volumes(&self) -> bool {
        !self.volumes.is_empty()
    }

    /// The devices to add before the VM starts.
    pub fn devices(&self) -> Vec<Device> {
        let mut d = Vec::new();
        if let Some(root) = &self.root {
            d.push(root.device());
        }
        if let Some(n) = &self.net {
            d.push(Device::UserNet(n.clone()));
        }
        d
    }

    /// Adds [`Prepared::devices`] to `hv`.
    ///
    /// # Errors
    /// The first device the backend refused.
    pub async fn add_devices(&self, id: &str, hv: &mut dyn Hypervisor) -> Result<(), AttachError> {
        for device in self.devices() {
            let what = match device {
                Device::Fs(_) => "volumes' shared directory",
                _ => "network interface",
            };
            hv.add_device(device)
                .await
                .map_err(|source| AttachError::Device {
                    what,
                    id: id.to_string(),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    /// The guest's side: mounts the volumes, configures the interface.
    ///
    /// # Errors
    /// The first mount or setup step that failed.
    pub async fn apply(&self, agent: &AgentClient) -> Result<(), AttachError> {
        if !self.volumes.is_empty() {
            for m in volume::guest_mounts(&self.volumes) {
                let target = m.target.clone();
                agent
                    .mount(m)
                    .await
                    .map_err(|source| AttachError::Mount { target, source })?;
            }
        }
        if let Some(n) = &self.net {
            let mut stderr = Vec::new();
            let out = agent
                .exec(
                    ExecRequest {
                        argv: net::guest_setup_argv(n),
                        timeout_ms: Some(30_000),
                        ..ExecRequest::default()
                    },
                    |_| {},
                    |e| stderr.extend_from_slice(e),
                )
                .await
                .map_err(AttachError::NetSetup)?;
            if out.status.shell_code() != 0 {
                return Err(AttachError::NetSetupFailed {
                    stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_turn_on_virtio_fs_with_the_first_virtiofsd_found() {
        let d = tempfile::tempdir().expect("tempdir");
        let daemon = d.path().join("virtiofsd");
        std::fs::write(&daemon, b"").expect("write");
        let mut c = crate::config::kata::default_config(HypervisorType::Qemu).config;
        c.validate().expect("valid");
        let missing = d.path().join("none");
        use_virtio_fs(&mut c, [missing.as_path(), daemon.as_path()].into_iter()).expect("found");
        assert_eq!(c.shared_fs, SharedFs::VirtioFs);
        assert_eq!(c.virtio_fs_daemon.as_deref(), Some(daemon.as_path()));

        let mut c = crate::config::kata::default_config(HypervisorType::Qemu).config;
        let err = use_virtio_fs(&mut c, [missing.as_path()].into_iter()).expect_err("none");
        assert!(err.to_string().contains("needs virtiofsd"), "{err}");
    }

    #[test]
    fn backends_without_virtio_fs_or_slirp_are_refused_before_boot() {
        let d = tempfile::tempdir().expect("tempdir");
        let att = Attachments {
            volumes: vec![format!("{}:/mnt/x", d.path().display())
                .parse()
                .expect("valid")],
            ..Attachments::default()
        };
        let mut c = crate::config::kata::default_config(HypervisorType::Firecracker).config;
        let err = prepare(&att, HypervisorType::Firecracker, &mut c, "sv-t").expect_err("no fs");
        assert!(matches!(err, AttachError::NoVirtioFs { .. }), "{err}");
        assert!(
            err.to_string().contains("firecracker has no virtio-fs"),
            "{err}"
        );

        let att = Attachments {
            network: NetworkMode::User,
            ..Attachments::default()
        };
        let err = prepare(&att, HypervisorType::Clh, &mut c, "sv-t").expect_err("no slirp");
        assert!(matches!(err, AttachError::NoUserNet { .. }), "{err}");

        let att = Attachments {
            volumes: vec!["/no/such/dir:/x".parse().expect("valid")],
            ..Attachments::default()
        };
        let err = prepare(&att, HypervisorType::Qemu, &mut c, "sv-t").expect_err("missing");
        assert!(err.to_string().contains("/no/such/dir"), "{err}");
    }

    #[test]
    fn nothing_asked_is_nothing_added() {
        let mut c = crate::config::kata::default_config(HypervisorType::Qemu).config;
        let before = c.clone();
        let p = prepare(
            &Attachments::default(),
            HypervisorType::Qemu,
            &mut c,
            "sv-t",
        )
        .expect("valid");
        assert!(p.devices().is_empty());
        assert!(!p.has_volumes());
        assert_eq!(c, before);
        let d = tempfile::tempdir().expect("tempdir");
        let with_volume = Prepared {
            volumes: vec![format!("{}:/mnt/x", d.path().display())
                .parse()
                .expect("valid")],
            ..Prepared::default()
        };
        assert!(with_volume.has_volumes());
    }
}
