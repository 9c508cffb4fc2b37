//! The seed's constants: default sizes, socket names and ports.

/// vCPUs a VM boots with when the config says nothing.
pub const DEFAULT_VCPUS: u32 = 1;
/// Memory in MiB a VM boots with when the config says nothing (2 GiB).
pub const DEFAULT_MEMORY_MIB: u32 = 2048;
/// PCI bridges a VM gets when the config says nothing.
pub const DEFAULT_BRIDGES: u32 = 1;
/// Block device driver when the config says nothing.
pub const DEFAULT_BLOCK_DRIVER: crate::config::BlockDeviceDriver =
    crate::config::BlockDeviceDriver::VirtioScsi;
/// The 9p `msize` when the config says nothing.
pub const DEFAULT_MSIZE_9P: u32 = 8192;
/// The smallest memory a VM may have, in MiB.
pub const MIN_MEMORY_MIB: u32 = 256;

/// File name of the agent's unix socket in the VM directory.
pub const DEFAULT_SOCKET_NAME: &str = "kata.sock";
/// QEMU device id of the agent's virtio-serial port.
pub const DEFAULT_SOCKET_DEVICE_ID: &str = "channel0";
/// Name of the agent's virtio-serial port, as the guest sees it.
pub const DEFAULT_SOCKET_CHANNEL_NAME: &str = "agent.channel.0";
/// QEMU chardev id behind the agent's virtio-serial port.
pub const DEFAULT_SOCKET_ID: &str = "charch0";

/// vsock port the agent listens on. Ports below 1024 need
/// `CAP_NET_BIND_SERVICE`.
pub const VSOCK_PORT: u32 = 1024;
/// vsock port the agent sends its logs to when the VMM has no console.
pub const VSOCK_LOGS_PORT: u32 = 1025;

/// The most vCPUs a VM may have on this architecture.
pub const fn max_vcpus() -> u32 {
    if cfg!(target_arch = "x86_64") {
        240
    } else if cfg!(target_arch = "aarch64") {
        123
    } else if cfg!(target_arch = "powerpc64") {
        128
    } else if cfg!(target_arch = "s390x") {
        248
    } else {
        1
    }
}

/// The longest path a unix socket address can hold (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH_LEN: usize = 107;
