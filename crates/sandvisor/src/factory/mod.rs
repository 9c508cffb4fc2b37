//! The VM factory (Kata's `virtcontainers/factory`): VMs made ahead of
//! the sandboxes that use them.

pub mod cache;
