//! `sandvisor run`'s environment flags: volumes (`-v`), the network
//! (`--net`) and published ports (`-p`), turned into the library's
//! [`Attachments`].

use clap::{Args, ValueEnum};
use sandvisor::attach::net::{NetworkMode, Publish};
use sandvisor::attach::volume::Volume;
use sandvisor::attach::Attachments;

/// The network flag's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum NetArg {
    /// No network interface.
    #[default]
    None,
    /// QEMU's user-mode network (slirp) on 169.254.100.0/24, with -p
    /// forwards from the host.
    User,
}

/// Volumes, network and ports of `sandvisor run`.
#[derive(Debug, Clone, Args)]
pub struct RunEnvArgs {
    /// Share host directory HOST at guest path GUEST (virtio-fs);
    /// `:ro` makes it read-only. Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub volumes: Vec<Volume>,
    /// The guest's network: none, or user (QEMU's user-mode network).
    #[arg(long, value_enum, default_value_t = NetArg::None)]
    pub net: NetArg,
    /// Forward TCP port HOST on the host's loopback (or ADDR) to port GUEST
    /// in the guest; needs --net user. Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "[ADDR:]HOST:GUEST")]
    pub publish: Vec<Publish>,
}

impl RunEnvArgs {
    /// The library's view of these flags.
    pub fn attachments(&self) -> Attachments {
        Attachments {
            volumes: self.volumes.clone(),
            network: match self.net {
                NetArg::None => NetworkMode::None,
                NetArg::User => NetworkMode::User,
            },
            publish: self.publish.clone(),
        }
    }
}
