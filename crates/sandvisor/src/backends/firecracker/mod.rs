//! The Firecracker backend: typed API bodies ([`api`]), the pre-boot
//! requests ([`vm_config`]) and the jail ([`jailer`]).

pub mod api;
pub mod jailer;
pub mod vm_config;
