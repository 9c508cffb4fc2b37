//! The five hypervisor types. `crate::backends` builds a backend for one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which VMM drives a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HypervisorType {
    /// QEMU, Kata's default.
    #[default]
    Qemu,
    /// Firecracker.
    Firecracker,
    /// ACRN.
    Acrn,
    /// Cloud Hypervisor.
    Clh,
    /// A mock that succeeds without a VM, for tests of the layers above.
    Mock,
}

/// A hypervisor type name that is not one of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hypervisor type {0:?}: expected one of qemu, firecracker, acrn, clh, mock")]
pub struct UnknownHypervisorType(pub String);

impl HypervisorType {
    /// Every type, in a stable order.
    pub const ALL: [HypervisorType; 5] = [
        HypervisorType::Qemu,
        HypervisorType::Firecracker,
        HypervisorType::Acrn,
        HypervisorType::Clh,
        HypervisorType::Mock,
    ];

    /// The name Kata uses for this type.
    pub fn as_str(self) -> &'static str {
        match self {
            HypervisorType::Qemu => "qemu",
            HypervisorType::Firecracker => "firecracker",
            HypervisorType::Acrn => "acrn",
            HypervisorType::Clh => "clh",
            HypervisorType::Mock => "mock",
        }
    }
}

impl FromStr for HypervisorType {
    type Err = UnknownHypervisorType;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        HypervisorType::ALL
            .into_iter()
            .find(|t| t.as_str() == value)
            .ok_or_else(|| UnknownHypervisorType(value.to_string()))
    }
}

impl fmt::Display for HypervisorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
