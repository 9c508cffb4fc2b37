//! What the VMM-process backends share: finding the VMM binary
//! ([`lookup`]), supervising the VMM and its helper processes ([`process`]),
//! and virtiofsd ([`virtiofsd`]).

pub mod lookup;
pub mod process;
pub mod virtiofsd;
