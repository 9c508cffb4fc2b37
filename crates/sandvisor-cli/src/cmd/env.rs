//! `sandvisor env`: the effective hypervisor config, after defaults and
//! validation, under Kata's key names.

use std::io::{self, Write};
use std::process::ExitCode;

use sandvisor::config::kata::load_config;

use super::CmdResult;
use crate::ConfigArgs;

/// Runs `sandvisor env`.
pub fn run(args: &ConfigArgs, json: bool) -> CmdResult {
    let mut runtime = load_config(args.config.as_deref(), args.hypervisor)?;
    // Said here, not only in the log: reviewing the config is what `env` is for.
    for w in &runtime.warnings {
        eprintln!("sandvisor: warning: {w}");
    }
    runtime.validate()?;
    let effective = runtime.effective();
    let text = if json {
        serde_json::to_string_pretty(&effective)? + "\n"
    } else {
        toml::to_string(&effective)?
    };
    emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an
/// error.
pub(crate) fn emit(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
