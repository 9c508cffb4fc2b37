//! The sandvisor agent protocol.
