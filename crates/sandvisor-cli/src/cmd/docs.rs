//! `sandvisor completions SHELL` and `sandvisor man`: generated from the
//! CLI definition, so they cannot drift from it.

use std::io;
use std::path::Path;
use std::process::ExitCode;

use super::CmdResult;

/// Prints `shell`'s completion script for `cmd` on stdout.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> CmdResult {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Prints `cmd`'s man page on stdout, or writes one page per command
/// (`sandvisor.1`, `sandvisor-run.1`, ...) into `dir`.
pub fn man(cmd: clap::Command, dir: Option<&Path>) -> CmdResult {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(cmd, dir)?;
        }
        None => clap_mangen::Man::new(cmd).render(&mut io::stdout())?,
    }
    Ok(ExitCode::SUCCESS)
}
