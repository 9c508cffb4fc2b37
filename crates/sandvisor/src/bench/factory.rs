//! The `factory` section: VMs from a template against cold boots of the
//! same config, in the same run.
//!
//! The built-in config's guest is written to two Kata files that differ
//! only in `enable_template`, with the template in a temporary directory
//! (never Kata's default path, which `run` with the built-in config would
//! pick up). Figures:
//!
//! - `sandvisor run -- true` as a whole process, cold and from the
//!   template, after one uncounted run of each, alternating which goes
//!   first; and their ratio of medians (target ≤ 0.25);
//! - the VM with its agent answering (and, for a clone, finished:
//!   reseeded, clock set), cold and from the template, alternating;
//! - PSS of 10 clones of the template, all alive at once, each against
//!   one cold VM's PSS (target ≤ 30%).
//!
//! The template and every VM are removed on every path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{io_err, ms, resolve, BenchError, BenchOptions, Recorder, Section};
use crate::bench::report::Unit;
use crate::config::kata::FactoryConfig;
use crate::config::HypervisorConfig;
use crate::factory::{self, template, Factory, FactoryVm};
use crate::hypervisor_type::HypervisorType;

/// Targets of the factory section.
pub mod targets {
    /// `run -- true` from the template over a cold one.
    pub const RUN_RATIO: f64 = 0.25;
    /// A clone's PSS over a cold VM's.
    pub const PSS_RATIO: f64 = 0.30;
}

/// Clones alive at once for the PSS figure.
pub const CLONES: usize = 10;
/// Counted runs of each kind.
const RUNS: usize = 3;

/// `[hypervisor.qemu]` of the files the section writes.
#[derive(Serialize)]
struct QemuSection<'a> {
    kernel: &'a Path,
    initrd: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    firmware: Option<&'a Path>,
    machine_accelerators: &'a str,
    kernel_params: String,
    default_vcpus: u32,
    default_memory: u32,
}

#[derive(Serialize)]
struct Hypervisors<'a> {
    qemu: QemuSection<'a>,
}

#[derive(Serialize)]
struct FactorySection<'a> {
    enable_template: bool,
    template_path: &'a Path,
}

#[derive(Serialize)]
struct ConfigFile<'a> {
    hypervisor: Hypervisors<'a>,
    factory: FactorySection<'a>,
}

/// Writes the Kata file of `config`'s guest, templates on or off.
fn write_config(
    path: &Path,
    config: &HypervisorConfig,
    template_dir: &Path,
    enable_template: bool,
) -> Result<(), BenchError> {
    let missing = || BenchError::Unexpected("the built-in config has no kernel or initrd".into());
    let file = ConfigFile {
        hypervisor: Hypervisors {
            qemu: QemuSection {
                kernel: config.kernel_path.as_deref().ok_or_else(missing)?,
                initrd: config.initrd_path.as_deref().ok_or_else(missing)?,
                firmware: config.firmware_path.as_deref(),
                machine_accelerators: &config.machine_accelerators,
                kernel_params: crate::param::serialize_params(&config.kernel_params, "=").join(" "),
                default_vcpus: config.num_vcpus,
                default_memory: config.memory_size,
            },
        },
        factory: FactorySection {
            enable_template,
            template_path: template_dir,
        },
    };
    let text = toml::to_string(&file).map_err(|e| BenchError::Unexpected(e.to_string()))?;
    std::fs::write(path, text).map_err(io_err(format!("write {}", path.display())))
}

/// Removes the template when dropped.
struct TemplateGuard(FactoryConfig);

impl Drop for TemplateGuard {
    fn drop(&mut self) {
        if let Err(e) = template::destroy(&self.0) {
            tracing::warn!(error = %e, "cannot remove the bench's template");
        }
    }
}

/// Runs the section.
pub(super) async fn section(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
) -> Result<(), BenchError> {
    let (kind, config) = resolve(opts)?;
    let dir = tempfile::Builder::new()
        .prefix("sv-bench-factory-")
        .tempdir()
        .map_err(io_err("make a temporary directory"))?;
    let template_dir = dir.path().join("template");
    let cold_file = dir.path().join("cold.toml");
    let tpl_file = dir.path().join("template.toml");
    write_config(&cold_file, &config, &template_dir, false)?;
    write_config(&tpl_file, &config, &template_dir, true)?;
    let fc = FactoryConfig {
        enable_template: true,
        template_path: Some(template_dir.clone()),
        ..FactoryConfig::default()
    };
    let _guard = TemplateGuard(fc.clone());

    // The template, from the file's config as `factory init` makes it.
    let mut rc = crate::config::kata::load_config(Some(&tpl_file), Some(kind))
        .map_err(|e| BenchError::Unexpected(e.to_string()))?;
    rc.validate()
        .map_err(|e| BenchError::Unexpected(e.to_string()))?;
    let base = rc.config.clone();
    let started = Instant::now();
    template::init(&fc, &base, kind, opts.boot_timeout).await?;
    let made = started.elapsed();
    progress(&format!("factory: template made in {made:?}"));
    rec.add(
        Section::Factory,
        "factory_template_init",
        "factory init (boot, quiesce, save)",
        Unit::Millis,
        None,
        ms(made),
    );

    run_true(opts, rec, progress, &cold_file, &tpl_file)?;
    agent_ready(opts, rec, progress, &fc, &base, kind).await?;
    pss(opts, rec, progress, &fc, &base, kind).await?;
    super::cache::rows(opts, rec, progress, &cold_file, dir.path()).await
}

/// `run -- true` as a process, cold against the template.
fn run_true(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
    cold_file: &Path,
    tpl_file: &Path,
) -> Result<(), BenchError> {
    let time = |file: &PathBuf| -> Result<Duration, BenchError> {
        let f = file.to_string_lossy();
        let started = Instant::now();
        super::cli::cli(opts, &["run", "--config", &f, "--", "true"])?;
        Ok(started.elapsed())
    };
    let (cold_file, tpl_file) = (cold_file.to_path_buf(), tpl_file.to_path_buf());
    // One uncounted run of each.
    time(&cold_file)?;
    time(&tpl_file)?;
    let (mut cold, mut tpl) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_cold in order {
            let d = time(if is_cold { &cold_file } else { &tpl_file })?;
            progress(&format!(
                "factory: run -- true {} {:.0} ms",
                if is_cold { "cold" } else { "template" },
                ms(d)
            ));
            let (key, label, v) = if is_cold {
                ("factory_run_true_cold", "run -- true, cold", &mut cold)
            } else {
                (
                    "factory_run_true_template",
                    "run -- true, from the template",
                    &mut tpl,
                )
            };
            v.push(ms(d));
            rec.add(Section::Factory, key, label, Unit::Millis, None, ms(d));
        }
    }
    let ratio = median(&tpl) / median(&cold);
    progress(&format!("factory: run -- true template/cold = {ratio:.3}"));
    rec.add(
        Section::Factory,
        "factory_run_true_ratio",
        "run -- true, template over cold (medians)",
        Unit::Ratio,
        Some(targets::RUN_RATIO),
        ratio,
    );
    Ok(())
}

/// The VM with its agent answering, cold against the template.
async fn agent_ready(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
    fc: &FactoryConfig,
    base: &HypervisorConfig,
    kind: HypervisorType,
) -> Result<(), BenchError> {
    let from_template = Factory::new(fc, base, kind)?;
    let (mut cold, mut tpl) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        for is_cold in [i % 2 == 0, i % 2 != 0] {
            let id = crate::sandbox::new_sandbox_id();
            let started = Instant::now();
            let vm = if is_cold {
                factory::boot_direct(&id, kind, base, opts.boot_timeout).await?
            } else {
                from_template.get_vm(&id, base, opts.boot_timeout).await?
            };
            let d = started.elapsed();
            vm.discard().await;
            let (key, label, v) = if is_cold {
                (
                    "factory_agent_cold",
                    "VM + agent answering, cold",
                    &mut cold,
                )
            } else {
                (
                    "factory_agent_template",
                    "VM + agent answering, from the template (finished)",
                    &mut tpl,
                )
            };
            v.push(ms(d));
            rec.add(Section::Factory, key, label, Unit::Millis, None, ms(d));
        }
    }
    let speedup = median(&cold) / median(&tpl);
    progress(&format!(
        "factory: agent answering {speedup:.1}x sooner from the template"
    ));
    rec.add(
        Section::Factory,
        "factory_agent_speedup",
        "agent answering, cold over template (medians)",
        Unit::Ratio,
        None,
        speedup,
    );
    Ok(())
}

/// PSS of [`CLONES`] clones alive together, against one cold VM.
async fn pss(
    opts: &BenchOptions,
    rec: &mut Recorder,
    progress: &mut dyn FnMut(&str),
    fc: &FactoryConfig,
    base: &HypervisorConfig,
    kind: HypervisorType,
) -> Result<(), BenchError> {
    let from_template = Factory::new(fc, base, kind)?;
    let mut vms: Vec<FactoryVm> = Vec::new();
    let measured = async {
        let cold = factory::boot_direct(
            &crate::sandbox::new_sandbox_id(),
            kind,
            base,
            opts.boot_timeout,
        )
        .await?;
        vms.push(cold);
        for _ in 0..CLONES {
            let id = crate::sandbox::new_sandbox_id();
            vms.push(from_template.get_vm(&id, base, opts.boot_timeout).await?);
        }
        // Every VM idles a moment after its start before it is measured.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut pss = Vec::new();
        for vm in &vms {
            let pid = vm
                .hypervisor
                .pids()
                .first()
                .copied()
                .ok_or_else(|| BenchError::Unexpected("a VM without a VMM pid".into()))?;
            pss.push(super::rss_pss_mib(pid)?);
        }
        Ok::<_, BenchError>(pss)
    }
    .await;
    for vm in vms {
        vm.discard().await;
    }
    let pss = measured?;
    let (cold_rss, cold_pss) = pss[0];
    progress(&format!(
        "factory: cold VM RSS {cold_rss:.0} MiB PSS {cold_pss:.0} MiB"
    ));
    rec.add(
        Section::Factory,
        "factory_pss_cold",
        "PSS of a cold VM",
        Unit::Mib,
        None,
        cold_pss,
    );
    for &(rss, p) in &pss[1..] {
        rec.add(
            Section::Factory,
            "factory_pss_clone",
            "PSS of each of 10 clones alive together",
            Unit::Mib,
            None,
            p,
        );
        rec.add(
            Section::Factory,
            "factory_pss_clone_ratio",
            "PSS of each clone over a cold VM's",
            Unit::Ratio,
            Some(targets::PSS_RATIO),
            p / cold_pss,
        );
        progress(&format!(
            "factory: clone RSS {rss:.0} MiB PSS {p:.0} MiB ({:.0}% of cold)",
            100.0 * p / cold_pss
        ));
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
