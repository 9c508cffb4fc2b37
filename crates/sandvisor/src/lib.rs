//! sandvisor: the hypervisor layer of a VM-isolated container runtime.
//!
//! It follows Kata Containers' `virtcontainers/hypervisor.go`: one config
//! type ([`config::HypervisorConfig`]) with Kata's defaults, validation,
//! VM-template rules and custom assets; kernel parameters ([`param`]); host
//! probes ([`probe`]); agent-socket generation ([`socket`]); and one
//! [`Hypervisor`] trait with a backend per [`HypervisorType`].
//!
//! ```
//! use sandvisor::config::HypervisorConfig;
//!
//! let mut config = HypervisorConfig {
//!     kernel_path: Some("/opt/vmlinuz".into()),
//!     initrd_path: Some("/opt/initrd.img".into()),
//!     ..HypervisorConfig::default()
//! };
//! config.validate().expect("kernel and initrd are set");
//! assert_eq!(config.num_vcpus, 1);
//! assert_eq!(config.memory_size, 2048);
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod assets;
pub mod attach;
pub mod backends;
pub mod bench;
pub mod check;
pub mod config;
pub mod defaults;
pub mod device;
pub mod factory;
pub mod hypervisor;
pub mod hypervisor_type;
pub mod image;
pub mod param;
pub mod paths;
pub mod private;
pub mod probe;
pub mod process;
pub mod sandbox;
pub mod socket;
pub mod supervisor;
mod sys;

pub use backends::new_hypervisor;
pub use hypervisor::{Capabilities, Error, Hypervisor, HypervisorState, VmState};
pub use hypervisor_type::HypervisorType;
