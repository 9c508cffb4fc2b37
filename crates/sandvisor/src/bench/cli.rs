//! The `sandvisor` binary as a process: `run -- true` timed, any command
//! run, and the sandboxes an interrupted bench left behind deleted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{io_err, BenchError, BenchOptions, CLI_ID_PREFIX};

/// `sandvisor run -- true` as a process, with the assets in `assets` (the
/// default ones when `None`): its wall time.
pub(super) fn cli_run_true(
    opts: &BenchOptions,
    assets: Option<&Path>,
) -> Result<Duration, BenchError> {
    let started = Instant::now();
    cli_with(opts, &["run", "--", "true"], assets)?;
    Ok(started.elapsed())
}

/// Runs the CLI with `args`; its stdout.
pub(super) fn cli(opts: &BenchOptions, args: &[&str]) -> Result<String, BenchError> {
    cli_with(opts, args, None)
}

/// Runs the CLI with `args` and, when given, `SANDVISOR_ASSET_DIR`.
fn cli_with(
    opts: &BenchOptions,
    args: &[&str],
    assets: Option<&Path>,
) -> Result<String, BenchError> {
    let mut cmd = Command::new(&opts.cli);
    if let Some(dir) = assets {
        cmd.env("SANDVISOR_ASSET_DIR", dir);
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("run {}", opts.cli.display())))?;
    if !out.status.success() {
        return Err(BenchError::Cli {
            command: format!("sandvisor {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes the sandboxes an interrupted run left behind: those whose id
/// starts with [`CLI_ID_PREFIX`]. Returns the ids deleted.
pub fn delete_cli_sandboxes(cli_path: &Path) -> Vec<String> {
    let opts = BenchOptions {
        cli: cli_path.to_path_buf(),
        ..BenchOptions::default()
    };
    let Ok(text) = cli(&opts, &["list", "--json"]) else {
        return Vec::new();
    };
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    list.iter()
        .filter_map(|r| r["id"].as_str())
        .filter(|id| id.starts_with(CLI_ID_PREFIX))
        .filter(|id| cli(&opts, &["delete", "--force", id]).is_ok())
        .map(str::to_string)
        .collect()
}
