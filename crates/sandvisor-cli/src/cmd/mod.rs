//! One module per subcommand.

pub mod bench;
pub mod check;
pub mod console;
pub mod env;
pub mod exec;
pub mod factory;
pub mod image;
pub mod lifecycle;
pub mod list;
pub mod run;
pub mod supervise;

/// What a subcommand returns: its exit code, or an error to print.
pub type CmdResult = Result<std::process::ExitCode, Box<dyn std::error::Error>>;

/// Prints an error and its chain of causes, once, on stderr.
pub fn print_error(err: &dyn std::error::Error) {
    eprint!("sandvisor: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        eprint!(": {cause}");
        source = cause.source();
    }
    eprintln!();
}
