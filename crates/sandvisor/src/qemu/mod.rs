//! The QEMU backend.

use crate::hypervisor_type::HypervisorType;
use crate::unavailable::Unavailable;

/// Errors from driving QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// Placeholder until the backend lands.
    #[error("qemu backend not built")]
    NotBuilt,
}

/// The QEMU backend.
pub type Qemu = Unavailable;

impl Unavailable {
    /// A QEMU backend.
    pub fn qemu() -> Self {
        Unavailable::new(HypervisorType::Qemu)
    }
}
