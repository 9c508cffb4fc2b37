//! The Cloud Hypervisor backend.

pub mod api;
pub mod vm_config;
