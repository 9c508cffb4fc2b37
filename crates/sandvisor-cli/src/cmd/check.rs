//! `sandvisor check`.

use super::CmdResult;
use crate::ConfigArgs;

/// Runs `sandvisor check`.
pub fn run(_config: &ConfigArgs, _json: bool) -> CmdResult {
    Err("sandvisor check is not built yet".into())
}
