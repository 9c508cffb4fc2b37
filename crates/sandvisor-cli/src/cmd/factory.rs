//! `sandvisor factory init | status | destroy`, as `kata-runtime factory`.
//!
//! - `init` makes the VM template of the config (with no `--config`, of
//!   the built-in default, which `run` then uses) and exits; a current one
//!   is kept, a stale one remade.
//! - `status` says what exists: the template's path, size, age and config
//!   hash, and whether it is current.
//! - `destroy` unmounts and removes the template.
//! - With `vm_cache_number > 0`: `init` runs the VM cache server in the
//!   foreground until `destroy` or SIGINT/SIGTERM; `status` shows its VMs
//!   ready and handed out; `destroy` stops it (`Quit`, or by its pid when
//!   it does not answer) and every VM it still holds.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use sandvisor::config::kata::{load_config, FactoryConfig, RuntimeConfig};
use sandvisor::factory::cache::{self, CacheConfig, CacheServer};
use sandvisor::factory::template::{self, InitOutcome, TemplateStatus};
use sandvisor::factory::{Factory, FactoryError, FactoryStatus};

use super::env::emit;
use super::CmdResult;
use crate::ConfigArgs;

/// `sandvisor factory`.
#[derive(Debug, Args)]
pub struct FactoryArgs {
    #[command(subcommand)]
    command: FactoryCommand,
}

#[derive(Debug, Subcommand)]
enum FactoryCommand {
    /// Make the VM template of the config (or start the VM cache) and exit.
    Init {
        #[command(flatten)]
        config: ConfigArgs,
        /// Seconds the template VM may take to boot.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
    },
    /// Show the template (and the VM cache) of the config.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove the template (and stop the VM cache) of the config.
    Destroy {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Runs `sandvisor factory`.
pub fn run(args: FactoryArgs) -> CmdResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.command {
        FactoryCommand::Init { config, timeout } => {
            runtime.block_on(init(&config, Duration::from_secs(timeout)))
        }
        FactoryCommand::Status { config, json } => status(&config, json),
        FactoryCommand::Destroy { config } => destroy(&config),
    }
}

/// The loaded and validated config; the built-in default has templates
/// on, since `factory init` with no file makes the template `run` uses.
fn load(args: &ConfigArgs) -> Result<RuntimeConfig, Box<dyn std::error::Error>> {
    let mut rc = load_config(args.config.as_deref(), args.hypervisor)?;
    if rc.source.is_none() {
        rc.factory.enable_template = true;
    }
    rc.factory = rc.factory.with_defaults();
    rc.validate()?;
    Ok(rc)
}

fn source_name(rc: &RuntimeConfig) -> String {
    rc.source.as_ref().map_or_else(
        || "the built-in config".to_string(),
        |p| p.display().to_string(),
    )
}

async fn init(args: &ConfigArgs, timeout: Duration) -> CmdResult {
    let rc = load(args)?;
    // With vm_cache_number > 0, `init` runs the cache server in the
    // foreground until `destroy` or a signal.
    if rc.factory.vm_cache_number > 0 {
        return serve_cache(&rc, timeout).await;
    }
    if !rc.factory.enable_template {
        return Err(FactoryError::NotEnabled {
            file: source_name(&rc),
        }
        .into());
    }
    let outcome = template::init(&rc.factory, &rc.config, rc.hypervisor, timeout).await?;
    let dir = rc.factory.template_dir();
    let said = match outcome {
        InitOutcome::Made => "made",
        InitOutcome::Remade => "remade (the old one was stale)",
        InitOutcome::Current => "is current: kept",
    };
    emit(&format!("template {} {said}\n", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the VM cache server of `rc` until `destroy` (its `Quit`), SIGINT
/// or SIGTERM. With `enable_template`, the template is made first (or
/// kept) and the cached VMs are its clones.
async fn serve_cache(rc: &RuntimeConfig, timeout: Duration) -> CmdResult {
    if rc.factory.enable_template {
        template::init(&rc.factory, &rc.config, rc.hypervisor, timeout).await?;
    }
    let base_factory = FactoryConfig {
        vm_cache_number: 0,
        ..rc.factory.clone()
    };
    let base = Factory::new(&base_factory, &rc.config, rc.hypervisor)?;
    let config = CacheConfig {
        number: rc.factory.vm_cache_number,
        endpoint: cache::endpoint(&rc.factory),
        hypervisor: rc.hypervisor,
        config: rc.config.clone(),
        boot_timeout: timeout,
        ledger_dir: cache_ledger_dir(&rc.factory),
    };
    emit(&format!(
        "VM cache server (pid {}) keeping {} VM(s) on {}\n",
        std::process::id(),
        config.number,
        config.endpoint.display()
    ))?;
    CacheServer::serve(config, base, super::run::interrupted()).await?;
    emit("VM cache server stopped\n")?;
    Ok(ExitCode::SUCCESS)
}

/// Where the cache server of `factory` keeps its ledger: under the
/// runtime directory.
fn cache_ledger_dir(factory: &FactoryConfig) -> std::path::PathBuf {
    cache::ledger::default_dir(&sandvisor::paths::runtime_dir(), &cache::endpoint(factory))
}

fn status(args: &ConfigArgs, json: bool) -> CmdResult {
    let rc = load(args)?;
    let tpl = template::status(&rc.factory)?;
    let cache = if rc.factory.vm_cache_number > 0 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Some(rt.block_on(cache::admin::status(
            &cache::endpoint(&rc.factory),
            &cache_ledger_dir(&rc.factory),
        )))
    } else {
        None
    };
    if json {
        let all = FactoryStatus {
            template: tpl,
            cache,
        };
        emit(&(serde_json::to_string_pretty(&all)? + "\n"))?;
    } else {
        emit(&render_template(&tpl))?;
        if let Some(c) = &cache {
            emit(&c.render())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The template part of `status`, as text.
fn render_template(t: &TemplateStatus) -> String {
    let mut s = format!("template: {}\n", t.path.display());
    let Some(record) = &t.record else {
        s.push_str(&format!(
            "  state: none{}\n",
            if t.mounted {
                " (a tmpfs is mounted)"
            } else {
                ""
            }
        ));
        return s;
    };
    let state = match &t.stale {
        None => "current".to_string(),
        Some(why) => format!("stale: {why} changed; run `sandvisor factory init`"),
    };
    s.push_str(&format!("  state: {state}\n"));
    s.push_str(&format!(
        "  size: {:.1} MiB in use (tmpfs{} mounted)\n",
        t.size_bytes as f64 / f64::from(1u32 << 20),
        if t.mounted { "" } else { " not" }
    ));
    if let Some(age) = t.age_secs {
        s.push_str(&format!("  age: {}\n", human_age(age)));
    }
    s.push_str(&format!("  config hash: {}\n", record.config_hash));
    s.push_str(&format!(
        "  hypervisor: {}, {} vCPU(s), {} MiB\n",
        record.hypervisor, record.config.num_vcpus, record.config.memory_size
    ));
    s
}

fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

fn destroy(args: &ConfigArgs) -> CmdResult {
    let rc = load(args)?;
    let factory: &FactoryConfig = &rc.factory;
    // The cache server and every VM it still holds go first.
    if factory.vm_cache_number > 0 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let endpoint = cache::endpoint(factory);
        let done = rt.block_on(cache::admin::destroy(&endpoint, &cache_ledger_dir(factory)));
        let how = match (done.quit, done.killed) {
            (true, _) => "stopped".to_string(),
            (false, Some(pid)) => format!("killed (pid {pid})"),
            (false, None) => "not running".to_string(),
        };
        emit(&format!(
            "VM cache server on {} {how}\n",
            endpoint.display()
        ))?;
        if !done.stopped.is_empty() {
            emit(&format!(
                "stopped {} VM(s) it had left\n",
                done.stopped.len()
            ))?;
        }
    }
    let removed = template::destroy(factory)?;
    let dir = factory.template_dir();
    let line = if removed {
        format!("template {} removed\n", dir.display())
    } else {
        format!("no template at {}\n", dir.display())
    };
    emit(&line)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_well() {
        assert_eq!(human_age(5), "5 s");
        assert_eq!(human_age(600), "10 min");
        assert_eq!(human_age(3 * 3600), "3 h");
        assert_eq!(human_age(3 * 86_400), "3 days");
    }

    #[test]
    fn an_empty_template_path_says_none() {
        let t = TemplateStatus {
            path: "/run/vc/vm/template".into(),
            mounted: false,
            record: None,
            size_bytes: 0,
            age_secs: None,
            stale: None,
        };
        assert_eq!(
            render_template(&t),
            "template: /run/vc/vm/template\n  state: none\n"
        );
    }
}
