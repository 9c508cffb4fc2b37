//! What the VMM-process backends share: supervising the VMM and its helper
//! processes ([`process`]), and virtiofsd ([`virtiofsd`]).

pub mod process;
pub mod virtiofsd;
