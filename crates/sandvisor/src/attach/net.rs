//! User-mode networking for a one-shot sandbox (`run --net user -p ...`).
//!
//! QEMU's slirp stack gives the guest a NIC without a tap or host
//! privileges and forwards TCP ports from host addresses into the guest.
//! The virtual network is link-local, never a private range:
//!
//! | what | address |
//! |---|---|
//! | network | `169.254.100.0/24` |
//! | gateway (slirp) | `169.254.100.1` |
//! | guest | `169.254.100.2` |
//! | DNS forwarder (slirp) | `169.254.100.3` |
//!
//! The guest's interface is configured by running busybox's `ip` through
//! the agent ([`guest_setup_argv`]) rather than by a new agent request: the
//! initrd ships busybox, the agent has no netlink code to grow, and the
//! protocol stays as it is. The interface is found by its MAC address,
//! waiting for its driver to bind.

use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::device::{PortForward, UserNetwork};

/// The virtual network.
pub const NETWORK: Ipv4Addr = Ipv4Addr::new(169, 254, 100, 0);
/// Its prefix length.
pub const PREFIX_LEN: u8 = 24;
/// slirp's address: the guest's gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 100, 1);
/// The guest's address.
pub const GUEST: Ipv4Addr = Ipv4Addr::new(169, 254, 100, 2);
/// slirp's DNS forwarder.
pub const DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 100, 3);
/// The guest NIC's MAC address (locally administered).
pub const MAC: &str = "02:5a:a9:fe:64:02";
/// How long the guest waits for its NIC to appear, in tenths of a second.
const NIC_WAIT_TENTHS: u32 = 100;

/// Errors in network options.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Not `[ADDR:]HOST:GUEST`.
    #[error("published port {spec:?} is not [127.0.0.1:]HOST_PORT:GUEST_PORT")]
    Syntax {
        /// What was given.
        spec: String,
    },
    /// Port 0.
    #[error("published port {spec:?} has port 0; give ports from 1 to 65535")]
    PortZero {
        /// What was given.
        spec: String,
    },
    /// A port published without a network.
    #[error("-p/--publish needs --net user (the default is --net none)")]
    PublishWithoutNetwork,
    /// Two forwards from one host address and port.
    #[error("host port {addr}:{port} is published twice")]
    Duplicate {
        /// The host address.
        addr: Ipv4Addr,
        /// The host port.
        port: u16,
    },
}

/// The sandbox's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// No NIC at all.
    #[default]
    None,
    /// A NIC on the VMM's user-mode stack.
    User,
}

/// One `-p [ADDR:]HOST:GUEST`: a TCP port forward, from 127.0.0.1 unless an
/// address is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish(pub PortForward);

impl FromStr for Publish {
    type Err = NetError;

    fn from_str(spec: &str) -> Result<Self, NetError> {
        let syntax = || NetError::Syntax {
            spec: spec.to_string(),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (addr, host, guest) = match parts.as_slice() {
            [h, g] => (Ipv4Addr::LOCALHOST, *h, *g),
            [a, h, g] => (a.parse().map_err(|_| syntax())?, *h, *g),
            _ => return Err(syntax()),
        };
        let port = |p: &str| p.parse::<u16>().map_err(|_| syntax());
        let (host_port, guest_port) = (port(host)?, port(guest)?);
        if host_port == 0 || guest_port == 0 {
            return Err(NetError::PortZero {
                spec: spec.to_string(),
            });
        }
        Ok(Publish(PortForward {
            host_addr: addr,
            host_port,
            guest_port,
        }))
    }
}

/// The NIC for `mode` with `publish`'s forwards, or none.
///
/// # Errors
/// Ports published without `--net user`, or a host port published twice.
pub fn user_network(
    mode: NetworkMode,
    publish: &[Publish],
) -> Result<Option<UserNetwork>, NetError> {
    if mode == NetworkMode::None {
        return if publish.is_empty() {
            Ok(None)
        } else {
            Err(NetError::PublishWithoutNetwork)
        };
    }
    let mut forwards: Vec<PortForward> = Vec::with_capacity(publish.len());
    for Publish(f) in publish {
        if forwards
            .iter()
            .any(|o| o.host_port == f.host_port && o.host_addr == f.host_addr)
        {
            return Err(NetError::Duplicate {
                addr: f.host_addr,
                port: f.host_port,
            });
        }
        forwards.push(*f);
    }
    Ok(Some(UserNetwork {
        id: "usernet0".to_string(),
        mac: MAC.to_string(),
        network: NETWORK,
        prefix_len: PREFIX_LEN,
        gateway: GATEWAY,
        guest: GUEST,
        dns: DNS,
        forwards,
    }))
}

/// The command the agent runs to configure the guest side of `net`: find
/// the NIC by MAC (waiting up to 10 s for its driver), bring it and `lo`
/// up, give it the address and the default route, and point
/// `/etc/resolv.conf` at slirp's DNS.
pub fn guest_setup_argv(net: &UserNetwork) -> Vec<String> {
    let script = format!(
        "set -e\n\
         i=0\n\
         while :; do\n\
         \tfor d in /sys/class/net/*; do\n\
         \t\t[ \"$(cat \"$d/address\" 2>/dev/null)\" = {mac} ] && dev=${{d##*/}}\n\
         \tdone\n\
         \t[ -n \"$dev\" ] && break\n\
         \ti=$((i+1))\n\
         \t[ $i -le {wait} ] || {{ echo \"no network interface with MAC {mac}\" >&2; exit 1; }}\n\
         \tsleep 0.1\n\
         done\n\
         ip link set lo up\n\
         ip link set \"$dev\" up\n\
         ip addr add {guest}/{prefix} dev \"$dev\"\n\
         ip route add default via {gateway}\n\
         echo 'nameserver {dns}' > /etc/resolv.conf\n",
        mac = net.mac,
        wait = NIC_WAIT_TENTHS,
        guest = net.guest,
        prefix = net.prefix_len,
        gateway = net.gateway,
        dns = net.dns,
    );
    vec!["/bin/sh".to_string(), "-c".to_string(), script]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(s: &str) -> Result<Publish, NetError> {
        s.parse()
    }

    #[test]
    fn publish_specs_default_to_the_loopback() {
        assert_eq!(
            publish("18080:80").expect("valid").0,
            PortForward {
                host_addr: Ipv4Addr::LOCALHOST,
                host_port: 18080,
                guest_port: 80
            }
        );
        let p = publish("127.0.0.2:2222:22").expect("valid").0;
        assert_eq!(
            (p.host_addr, p.host_port, p.guest_port),
            ("127.0.0.2".parse().expect("ip"), 2222, 22)
        );
        for bad in ["80", "a:80", "1:2:3:4", "localhost:1:2", "70000:80", "1:-2"] {
            assert!(
                matches!(publish(bad), Err(NetError::Syntax { .. })),
                "{bad}"
            );
        }
        assert!(matches!(publish("0:80"), Err(NetError::PortZero { .. })));
    }

    #[test]
    fn ports_need_the_user_network_and_distinct_host_ports() {
        let p = [publish("8080:80").expect("valid")];
        assert!(matches!(
            user_network(NetworkMode::None, &p),
            Err(NetError::PublishWithoutNetwork)
        ));
        assert_eq!(user_network(NetworkMode::None, &[]).expect("valid"), None);
        let twice = [p[0], publish("127.0.0.1:8080:81").expect("valid")];
        assert!(matches!(
            user_network(NetworkMode::User, &twice),
            Err(NetError::Duplicate { port: 8080, .. })
        ));
        let net = user_network(NetworkMode::User, &p)
            .expect("valid")
            .expect("a NIC");
        assert_eq!(net.forwards, [p[0].0]);
    }

    #[test]
    fn the_address_plan_is_link_local() {
        let net = user_network(NetworkMode::User, &[])
            .expect("valid")
            .expect("a NIC");
        for a in [net.network, net.gateway, net.guest, net.dns] {
            assert!(a.is_link_local() && !a.is_private(), "{a}");
        }
        let argv = guest_setup_argv(&net);
        assert_eq!(argv[..2], ["/bin/sh", "-c"]);
        for line in [
            "ip addr add 169.254.100.2/24 dev \"$dev\"",
            "ip route add default via 169.254.100.1",
            "echo 'nameserver 169.254.100.3' > /etc/resolv.conf",
            "= 02:5a:a9:fe:64:02 ] && dev=${d##*/}",
        ] {
            assert!(argv[2].contains(line), "{line} in {}", argv[2]);
        }
    }
}
