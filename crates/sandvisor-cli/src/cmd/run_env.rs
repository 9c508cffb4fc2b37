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

/// A hint for a user who cannot open `/dev/kvm`: QEMU then runs the guest
/// under TCG, slower, and the fix is group membership.
pub fn kvm_hint(kvm: &sandvisor::probe::KvmProbe) -> Option<&'static str> {
    (kvm.present && !kvm.openable).then_some(
        "sandvisor: /dev/kvm is not open to you, so the guest runs under TCG (slower); \
         for KVM, join the group that owns it (usually: sudo usermod -aG kvm $USER) and log in again",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandvisor::probe::KvmProbe;

    #[test]
    fn the_kvm_hint_is_for_users_who_cannot_open_dev_kvm() {
        let probe = |present, openable| KvmProbe {
            present,
            openable,
            hardware_virt: true,
            pvm: false,
            reason: None,
        };
        assert!(kvm_hint(&probe(true, false)).is_some_and(|h| h.contains("kvm")));
        assert_eq!(kvm_hint(&probe(true, true)), None);
        assert_eq!(
            kvm_hint(&probe(false, false)),
            None,
            "no KVM at all: no group helps"
        );
    }

    #[test]
    fn flags_become_attachments() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            env: RunEnvArgs,
        }
        let t = T::try_parse_from(["t", "-v", "/a:/b:ro", "--net", "user", "-p", "8080:80"])
            .expect("parses");
        let a = t.env.attachments();
        assert_eq!(a.network, NetworkMode::User);
        assert!(a.volumes[0].read_only);
        assert_eq!(a.publish[0].0.host_port, 8080);
        assert!(T::try_parse_from(["t", "-p", "x"]).is_err());
    }
}
