//! `sandvisor check`: what this host can run, and whether the config can
//! start a sandbox here. Exits 0 when it can.

use std::process::ExitCode;

use sandvisor::check::{run_check, CheckOptions};
use sandvisor::config::kata::load_config;

use super::CmdResult;
use crate::ConfigArgs;

/// Runs `sandvisor check`.
pub fn run(args: &ConfigArgs, json: bool) -> CmdResult {
    let loaded = load_config(args.config.as_deref(), args.hypervisor);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(run_check(loaded, &CheckOptions::default()));
    let text = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.to_text()
    };
    super::env::emit(&text)?;
    Ok(if report.startable {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
