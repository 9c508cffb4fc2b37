//! `sandvisor env`.

use super::CmdResult;
use crate::ConfigArgs;

/// Runs `sandvisor env`.
pub fn run(_config: &ConfigArgs, _json: bool) -> CmdResult {
    Err("sandvisor env is not built yet".into())
}
