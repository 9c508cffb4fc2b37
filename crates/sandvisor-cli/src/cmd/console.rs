//! `sandvisor console ID`: attaches the terminal to the sandbox's console;
//! Ctrl-] detaches.

use std::os::fd::AsFd;
use std::process::ExitCode;

use sandvisor::supervisor::console::{self, ConsoleEnd, RawTerminal};
use sandvisor::supervisor::SandboxId;

use super::lifecycle::{block_on, manager};
use super::CmdResult;

/// Runs `sandvisor console`.
pub fn run(id: SandboxId) -> CmdResult {
    let manager = manager()?;
    let socket = block_on(manager.console_socket(&id))??;
    let stdin = std::io::stdin();
    eprintln!("sandvisor: connected to the console of sandbox {id}; Ctrl-] detaches");
    let end = {
        let _raw = RawTerminal::enter(stdin.as_fd())?;
        block_on(console::attach(
            &socket,
            std::io::stdin(),
            tokio::io::stdout(),
            console::ESCAPE,
        ))??
    };
    match end {
        ConsoleEnd::Detached => eprintln!("\nsandvisor: detached"),
        ConsoleEnd::Closed => eprintln!("\nsandvisor: the console closed"),
        ConsoleEnd::InputEnded => {}
    }
    Ok(ExitCode::SUCCESS)
}
