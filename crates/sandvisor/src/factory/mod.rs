//! The VM factory (Kata's `virtcontainers/factory`): where a sandbox's VM
//! comes from.
//!
//! | source | what it does | module |
//! |---|---|---|
//! | direct | boots the VM from its kernel and initrd | [`Factory::get_vm`] |
//! | template | restores a clone of a VM saved once by `sandvisor factory init` | [`template`] |
//! | cache | hands out a VM a cache server keeps booted and paused | [`cache`] (`vm_cache_number > 0`) |
//!
//! [`Factory::new`] picks the source from the `[factory]` section;
//! [`Factory::get_vm`] returns a [`FactoryVm`] whose agent answers. A VM
//! that comes from a template (or a cache) is made into the sandbox the
//! request asked for by [`finish`]: resumed, its random pool reseeded with
//! host entropy, its clock set, and the vCPUs and memory the request has
//! beyond the template's hot-added and onlined. A request that differs
//! from the template in anything else is booted directly, and that is
//! logged once, naming the keys.
//!
//! # A template
//!
//! `template_path` (Kata's default `/run/vc/vm/template`) is a tmpfs of
//! the template's memory plus 8 MiB, mode 0700, holding `memory` (the
//! guest RAM, mapped `share=on` by the template VM and `share=off`, copy
//! on write, by each clone), `state` (the device state, migrated with
//! `x-ignore-shared` through a passed descriptor) and `template.json`
//! (the record: the config and the guest assets it was made from, and
//! their hash). A template whose assets changed since is stale: `init`
//! remakes it, and `run` refuses it, saying to run `sandvisor factory
//! init`.

pub mod cache;
pub mod template;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use rand::RngCore;
use sandvisor_proto::OnlineCpuMemRequest;

use crate::agent::{AgentClient, ClientError};
use crate::backends::new_hypervisor;
use crate::config::kata::{FactoryConfig, KataConfigError, RuntimeConfig, TemplateRule};
use crate::config::HypervisorConfig;
use crate::hypervisor::{Error as HypervisorError, Hypervisor, VmState};
use crate::hypervisor_type::HypervisorType;
use crate::sandbox::{Sandbox, SandboxError};

pub use self::template::{Template, TemplateRecord, TemplateStatus};

/// Bytes of host entropy a VM from the factory gets.
pub const RESEED_BYTES: usize = 512;
/// How long the guest may take to see hot-added vCPUs and memory.
const ONLINE_WAIT: Duration = Duration::from_secs(10);
/// Memory hot-add block, in MiB (a DIMM; the guest onlines it).
const MEMORY_BLOCK_MIB: u32 = 128;

/// Where a VM came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Booted from its kernel and initrd.
    Direct,
    /// Restored from a template.
    Template,
    /// Handed out by a VM cache.
    Cache,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Direct => "direct boot",
            Origin::Template => "template",
            Origin::Cache => "VM cache",
        })
    }
}

/// A VM the factory made, its agent connected.
#[derive(Debug)]
pub struct FactoryVm {
    /// The sandbox id.
    pub id: String,
    /// The VM.
    pub hypervisor: Box<dyn Hypervisor>,
    /// Its agent.
    pub agent: AgentClient,
    /// Where it came from.
    pub origin: Origin,
}

impl FactoryVm {
    /// Stops the VM and removes its files, logging what fails: for error
    /// paths, where the first error is the one to report.
    pub async fn discard(mut self) {
        if let Err(e) = self.hypervisor.stop_sandbox().await {
            tracing::warn!(id = self.id, error = %e, "stopping the VM failed");
        }
        if let Err(e) = self.hypervisor.cleanup().await {
            tracing::warn!(id = self.id, error = %e, "cleaning up the VM failed");
        }
    }
}

/// The holder of a template's init lock, for [`FactoryError::InitBusy`].
fn holder(pid: &Option<u32>) -> String {
    pid.map_or_else(|| "pid not yet written".to_string(), |p| format!("pid {p}"))
}

/// Errors of the factory.
#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    /// The configuration does not validate.
    #[error("invalid configuration")]
    Config(#[source] Box<KataConfigError>),
    /// `enable_template` with a config templates cannot use.
    #[error("cannot use a VM template")]
    Rule(#[source] TemplateRule),
    /// No template where the config says.
    #[error("no VM template at {path}: run `sandvisor factory init`{config}")]
    NoTemplate {
        /// The template directory.
        path: PathBuf,
        /// ` --config FILE`, when a file was given.
        config: String,
    },
    /// The template was made from other guest assets than the config's
    /// are now.
    #[error("the VM template at {path} is stale: {what} changed since it was made; run `sandvisor factory init`{config} to remake it")]
    StaleTemplate {
        /// The template directory.
        path: PathBuf,
        /// What changed.
        what: String,
        /// ` --config FILE`, when a file was given.
        config: String,
    },
    /// The template directory holds something that is not a template.
    #[error("cannot read the VM template record {path}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file operation on the template failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Mounting or unmounting the template's tmpfs failed.
    #[error("cannot {action} the template tmpfs at {path}")]
    Mount {
        /// `mount` or `unmount`.
        action: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// Another `factory init` is making the template at this path.
    #[error("another `sandvisor factory init` ({}) is making the VM template at {path} (it holds {lock}): wait for it to finish, or stop it", holder(.pid))]
    InitBusy {
        /// The template directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// The holder's pid, when it has written it yet.
        pid: Option<u32>,
    },
    /// A config file that enables no factory.
    #[error("{file} enables no VM factory: set enable_template = true or vm_cache_number > 0 in its [factory] section")]
    NotEnabled {
        /// The file.
        file: String,
    },
    /// The VM cache failed.
    #[error("VM cache")]
    Cache(#[source] Box<cache::CacheError>),
    /// Booting a VM (the template, or one directly) failed.
    #[error("cannot boot VM {id}")]
    Boot {
        /// The VM.
        id: String,
        /// Why.
        #[source]
        source: Box<SandboxError>,
    },
    /// A hypervisor operation on a VM from the factory failed.
    #[error("cannot {op} VM {id}")]
    Hypervisor {
        /// The operation.
        op: &'static str,
        /// The VM.
        id: String,
        /// Why.
        #[source]
        source: Box<HypervisorError>,
    },
    /// The guest agent predates the factory's requests.
    #[error("the guest agent of VM {id} (version {agent_version}) does not know `{request}`: rebuild the initrd with this sandvisor (`sandvisor image build`)")]
    AgentTooOld {
        /// The VM.
        id: String,
        /// The request it refused.
        request: &'static str,
        /// The agent's version.
        agent_version: String,
    },
    /// The guest agent of a VM from the factory failed a request.
    #[error("guest agent of VM {id}: {op}")]
    Agent {
        /// The VM.
        id: String,
        /// The request.
        op: &'static str,
        /// Why.
        #[source]
        source: ClientError,
    },
}

impl FactoryError {
    fn hv(op: &'static str, id: &str) -> impl FnOnce(HypervisorError) -> FactoryError {
        let id = id.to_string();
        move |source| FactoryError::Hypervisor {
            op,
            id,
            source: Box::new(source),
        }
    }

    fn agent(op: &'static str, id: &str) -> impl FnOnce(ClientError) -> FactoryError {
        let id = id.to_string();
        move |source| FactoryError::Agent { op, id, source }
    }

    /// The error of `request` (one the factory added to the protocol),
    /// which an older agent answers `malformed`: then it says so.
    fn new_request(
        request: &'static str,
        id: &str,
        agent: &AgentClient,
    ) -> impl FnOnce(ClientError) -> FactoryError {
        Self::new_request_of(request, id, agent.agent_version())
    }

    fn new_request_of(
        request: &'static str,
        id: &str,
        agent_version: &str,
    ) -> impl FnOnce(ClientError) -> FactoryError {
        let id = id.to_string();
        let agent_version = agent_version.to_string();
        move |source| match source.agent_error() {
            Some(sandvisor_proto::AgentError::Malformed { .. }) => FactoryError::AgentTooOld {
                id,
                request,
                agent_version,
            },
            _ => FactoryError::Agent {
                op: request,
                id,
                source,
            },
        }
    }
}

/// What `sandvisor factory status --json` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FactoryStatus {
    /// The template.
    pub template: TemplateStatus,
    /// The VM cache, when `vm_cache_number > 0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<cache::admin::CacheReport>,
}

/// Where VMs come from.
#[derive(Debug)]
enum Source {
    /// Boot every VM.
    Direct,
    /// Clone the template.
    Template(Box<Template>),
    /// Take a VM from the cache server on this endpoint; boot directly
    /// when it does not answer.
    Cache(PathBuf),
}

/// A factory: the `[factory]` section, the base config, and what it found
/// on the host.
#[derive(Debug)]
pub struct Factory {
    kind: HypervisorType,
    config: FactoryConfig,
    source: Source,
}

impl Factory {
    /// The factory `factory` describes for VMs of `base`, booted by
    /// `kind`: with `enable_template`, the template at `template_path`,
    /// which must exist and be current; else direct boots.
    ///
    /// # Errors
    /// [`FactoryError::Rule`] for a config templates cannot use,
    /// [`FactoryError::NoTemplate`] or [`FactoryError::StaleTemplate`].
    pub fn new(
        factory: &FactoryConfig,
        base: &HypervisorConfig,
        kind: HypervisorType,
    ) -> Result<Factory, FactoryError> {
        Self::with_config_name(factory, base, kind, None)
    }

    /// As [`Factory::new`]; `config_file` is named in the messages that
    /// say to run `sandvisor factory init`.
    ///
    /// # Errors
    /// As [`Factory::new`].
    pub fn with_config_name(
        factory: &FactoryConfig,
        base: &HypervisorConfig,
        kind: HypervisorType,
        config_file: Option<&std::path::Path>,
    ) -> Result<Factory, FactoryError> {
        // `vm_cache_number > 0`: a client of the cache server (Kata's
        // grpccache); the server's own base is this without the cache.
        let source = if factory.vm_cache_number > 0 {
            Source::Cache(cache::endpoint(factory))
        } else if factory.enable_template {
            crate::config::kata::check_template_rules(kind, base).map_err(FactoryError::Rule)?;
            let dir = factory.template_dir();
            let Some(template) = Template::open(&dir)? else {
                return Err(FactoryError::NoTemplate {
                    path: dir,
                    config: init_hint(config_file),
                });
            };
            template
                .check_fresh(kind)
                .map_err(|what| FactoryError::StaleTemplate {
                    path: dir.clone(),
                    what,
                    config: init_hint(config_file),
                })?;
            Source::Template(Box::new(template))
        } else {
            Source::Direct
        };
        Ok(Factory {
            kind,
            config: factory.clone(),
            source,
        })
    }

    /// The factory of a loaded configuration: [`Factory::for_builtin`]
    /// for the built-in default, else [`Factory::new`] with the file's
    /// `[factory]` section and its hypervisor config, validated.
    ///
    /// # Errors
    /// [`FactoryError::Config`] for a config that does not validate; as
    /// [`Factory::new`] otherwise.
    pub fn for_runtime(rc: &RuntimeConfig) -> Result<Factory, FactoryError> {
        let mut rc = rc.clone();
        rc.validate()
            .map_err(|e| FactoryError::Config(Box::new(e)))?;
        match &rc.source {
            None => Self::for_builtin(&rc.factory, &rc.config, rc.hypervisor),
            Some(file) => {
                Self::with_config_name(&rc.factory, &rc.config, rc.hypervisor, Some(file))
            }
        }
    }

    /// The factory of the built-in default config: the template `sandvisor
    /// factory init` made with no `--config`, when there is one, else
    /// direct boots. A stale template is refused as with
    /// `enable_template`.
    ///
    /// # Errors
    /// As [`Factory::new`].
    pub fn for_builtin(
        factory: &FactoryConfig,
        base: &HypervisorConfig,
        kind: HypervisorType,
    ) -> Result<Factory, FactoryError> {
        let made = template::record_path(&factory.template_dir()).is_file()
            && crate::config::kata::check_template_rules(kind, base).is_ok();
        let factory = FactoryConfig {
            enable_template: factory.enable_template || made,
            ..factory.clone()
        };
        Self::new(&factory, base, kind)
    }

    /// Whether VMs come from a template.
    pub fn uses_template(&self) -> bool {
        matches!(self.source, Source::Template(_))
    }

    /// A VM for sandbox `id` as `request` describes it, its agent
    /// connected: from the template when `request` differs from it only
    /// in more vCPUs or memory, else booted directly.
    ///
    /// # Errors
    /// The first step that failed; whatever was started is gone.
    pub async fn get_vm(
        &self,
        id: &str,
        request: &HypervisorConfig,
        boot_timeout: Duration,
    ) -> Result<FactoryVm, FactoryError> {
        match &self.source {
            Source::Direct => boot_direct(id, self.kind, request, boot_timeout).await,
            Source::Cache(endpoint) => {
                cache::get_vm(endpoint, self.kind, id, request, boot_timeout).await
            }
            Source::Template(t) => {
                let differences = template::differences(&t.record().config, request);
                if !differences.is_empty() {
                    tracing::info!(
                        id,
                        template = %t.dir().display(),
                        keys = differences.join(", "),
                        "the request differs from the template in more than vCPUs and memory: booting directly"
                    );
                    return boot_direct(id, self.kind, request, boot_timeout).await;
                }
                let mut vm = t
                    .clone_vm(&self.config, self.kind, id, boot_timeout)
                    .await?;
                match finish(&mut vm, &t.record().config, request).await {
                    Ok(()) => Ok(vm),
                    Err(e) => {
                        vm.discard().await;
                        Err(e)
                    }
                }
            }
        }
    }
}

/// Where a VM that a supervisor boots in two steps (`create`, `start`)
/// comes from: see [`Factory::place`].
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The config to create the VM with: a clone of the template's, or the
    /// request itself.
    pub config: HypervisorConfig,
    /// The request, when the VM is a clone: what [`finish_parts`] makes
    /// it into after the start.
    pub from_template: Option<HypervisorConfig>,
}

impl Factory {
    /// The config a VM for `request` is created with, for callers that
    /// create and start it themselves (the supervisor): the template's
    /// clone config when `request` can come from the template, else
    /// `request`. After the start, a clone goes through
    /// [`finish_parts`] with the request this returns.
    pub fn place(&self, request: &HypervisorConfig) -> Placement {
        let direct = Placement {
            config: request.clone(),
            from_template: None,
        };
        let Source::Template(t) = &self.source else {
            return direct;
        };
        let differences = template::differences(&t.record().config, request);
        if !differences.is_empty() {
            tracing::info!(
                template = %t.dir().display(),
                keys = differences.join(", "),
                "the request differs from the template in more than vCPUs and memory: booting directly"
            );
            return direct;
        }
        let factory = FactoryConfig {
            template_path: Some(t.dir().to_path_buf()),
            ..self.config.clone()
        };
        Placement {
            config: factory.from_template_vm_config(&t.record().config),
            from_template: Some(request.clone()),
        }
    }
}

fn init_hint(config_file: Option<&std::path::Path>) -> String {
    config_file
        .map(|p| format!(" --config {}", p.display()))
        .unwrap_or_default()
}

/// Boots VM `id` of `config` with `kind` and connects its agent (Kata's
/// direct factory).
///
/// # Errors
/// [`FactoryError::Boot`]; the VM is gone.
pub async fn boot_direct(
    id: &str,
    kind: HypervisorType,
    config: &HypervisorConfig,
    boot_timeout: Duration,
) -> Result<FactoryVm, FactoryError> {
    boot_with(id, kind, config, boot_timeout, Origin::Direct).await
}

/// Creates VM `id` of `config`, starts it and connects its agent; a
/// failure stops and removes it.
pub(crate) async fn boot_with(
    id: &str,
    kind: HypervisorType,
    config: &HypervisorConfig,
    boot_timeout: Duration,
    origin: Origin,
) -> Result<FactoryVm, FactoryError> {
    let boot_err = |source| FactoryError::Boot {
        id: id.to_string(),
        source: Box::new(source),
    };
    let hypervisor = new_hypervisor(kind);
    let sandbox = Sandbox::launch(id.to_string(), hypervisor, config, boot_timeout)
        .await
        .map_err(boot_err)?;
    let (hypervisor, agent) = sandbox.into_parts();
    Ok(FactoryVm {
        id: id.to_string(),
        hypervisor,
        agent,
        origin,
    })
}

/// What comes after a VM leaves the factory (Kata's `factory.GetVM` after
/// `GetBaseVM`): resume it when paused, reseed its random pool with host
/// entropy, set its clock to the host's, and hot-add and online the vCPUs
/// and memory `request` has beyond `template`'s. A VM booted directly
/// needs none of it and is left alone.
///
/// # Errors
/// The step that failed; the VM is left as it is for the caller to
/// discard.
pub async fn finish(
    vm: &mut FactoryVm,
    template: &HypervisorConfig,
    request: &HypervisorConfig,
) -> Result<(), FactoryError> {
    if vm.origin == Origin::Direct {
        return Ok(());
    }
    finish_parts(
        vm.hypervisor.as_mut(),
        &vm.agent,
        &vm.id,
        vm.origin,
        template,
        request,
    )
    .await
}

/// [`finish`] on a VM and agent held apart, as a supervisor holds them.
///
/// # Errors
/// As [`finish`].
pub async fn finish_parts(
    hypervisor: &mut dyn Hypervisor,
    agent: &AgentClient,
    id: &str,
    origin: Origin,
    template: &HypervisorConfig,
    request: &HypervisorConfig,
) -> Result<(), FactoryError> {
    let started = Instant::now();
    if hypervisor.save().state == VmState::Paused {
        hypervisor
            .resume_sandbox()
            .await
            .map_err(FactoryError::hv("resume", id))?;
    }
    let mut entropy = vec![0u8; RESEED_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut entropy);
    agent
        .reseed_rng(entropy)
        .await
        .map_err(FactoryError::new_request("reseed_rng", id, agent))?;
    agent
        .set_time(SystemTime::now())
        .await
        .map_err(FactoryError::agent("set time", id))?;
    let more_cpus = request.num_vcpus.saturating_sub(template.num_vcpus);
    let more_mib = request.memory_size.saturating_sub(template.memory_size);
    if more_cpus > 0 {
        hypervisor
            .resize_vcpus(request.num_vcpus)
            .await
            .map_err(FactoryError::hv("hot-add vCPUs to", id))?;
    }
    let mut added_mib = 0;
    if more_mib > 0 {
        let (now, _) = hypervisor
            .resize_memory(request.memory_size, MEMORY_BLOCK_MIB, false)
            .await
            .map_err(FactoryError::hv("hot-add memory to", id))?;
        added_mib = now.saturating_sub(template.memory_size);
    }
    if more_cpus > 0 || added_mib > 0 {
        agent
            .online_cpu_mem(OnlineCpuMemRequest {
                nb_cpus: more_cpus,
                cpu_only: added_mib == 0,
                memory_mib: added_mib,
                wait_ms: u64::try_from(ONLINE_WAIT.as_millis()).unwrap_or(u64::MAX),
                ..OnlineCpuMemRequest::default()
            })
            .await
            .map_err(FactoryError::agent("online cpu/mem", id))?;
    }
    tracing::info!(
        id,
        %origin,
        more_cpus,
        added_mib,
        elapsed = ?started.elapsed(),
        "VM from the factory finished"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandvisor_proto::AgentError;

    #[test]
    fn an_agent_that_does_not_know_a_factory_request_is_called_too_old() {
        let malformed = ClientError::Agent {
            op: "quiesce",
            source: AgentError::Malformed {
                reason: "unknown variant `quiesce`".into(),
            },
        };
        let e = FactoryError::new_request_of("quiesce", "vm1", "0.0.9")(malformed);
        assert!(
            matches!(&e, FactoryError::AgentTooOld { request: "quiesce", agent_version, .. } if agent_version == "0.0.9"),
            "{e}"
        );
        assert!(e.to_string().contains("sandvisor image build"), "{e}");
        let other =
            FactoryError::new_request_of("quiesce", "vm1", "0.1.0")(ClientError::Disconnected);
        assert!(matches!(other, FactoryError::Agent { .. }), "{other}");
    }

    #[test]
    fn a_vm_cache_number_makes_a_client_of_the_cache() {
        let fc = FactoryConfig {
            vm_cache_number: 2,
            ..FactoryConfig::default()
        };
        let f = Factory::new(&fc, &HypervisorConfig::default(), HypervisorType::Qemu)
            .expect("a cache client");
        assert!(
            matches!(&f.source, Source::Cache(p) if p.as_os_str() == cache::DEFAULT_ENDPOINT),
            "{f:?}"
        );
        let fc = FactoryConfig {
            vm_cache_endpoint: Some("/tmp/x/cache.sock".into()),
            ..fc
        };
        let f = Factory::new(&fc, &HypervisorConfig::default(), HypervisorType::Qemu)
            .expect("a cache client");
        assert!(matches!(&f.source, Source::Cache(p) if p.as_os_str() == "/tmp/x/cache.sock"));
    }

    #[test]
    fn templates_route_to_firecracker_and_refuse_clh_saying_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fc = FactoryConfig {
            enable_template: true,
            template_path: Some(dir.path().join("none")),
            ..FactoryConfig::default()
        };
        let base = HypervisorConfig {
            kernel_path: Some("/k".into()),
            initrd_path: Some("/i".into()),
            ..HypervisorConfig::default()
        };
        // Firecracker passes the rules and looks for its template.
        let e = Factory::new(&fc, &base, HypervisorType::Firecracker).expect_err("none made");
        assert!(matches!(e, FactoryError::NoTemplate { .. }), "{e}");
        let e = Factory::new(&fc, &base, HypervisorType::Clh).expect_err("refused");
        assert!(
            matches!(
                e,
                FactoryError::Rule(crate::config::kata::TemplateRule::ClhSnapshot)
            ),
            "{e}"
        );
        let why = std::error::Error::source(&e).map(ToString::to_string);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("vm.snapshot")),
            "{why:?}"
        );
    }
}
