//! What the VMM-process backends share: finding the VMM binary
//! ([`lookup`]), supervising the VMM and its helper processes ([`process`]),
//! virtiofsd ([`virtiofsd`]), vhost-device-vsock ([`vsock_daemon`]), and the REST client for their API sockets
//! ([`rest`]).

#[cfg(test)]
pub(crate) mod contract;
pub mod lookup;
pub mod process;
pub mod rest;
pub mod virtiofsd;
pub mod vsock_daemon;
