#!/usr/bin/env bash
# Installs what sandvisor needs on a Debian host, builds it, and builds the
# guest image into the asset directory. Safe to run again: it installs only
# missing packages and `image build` rebuilds only when an input changed.
#
#   scripts/setup.sh            everything
#   scripts/setup.sh --deps     only the apt packages
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-system-x86: the VMM. busybox-static: the guest's shell and tools.
# e2fsprogs: mkfs.ext4 for disk images in tests. The guest kernel is NOT
# installed: `sandvisor image build` unpacks Debian's package into the asset
# directory, never into the host's /boot.
packages=(qemu-system-x86 busybox-static e2fsprogs)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# `image build` fetches the kernel with `apt-get download`, which needs the
# package lists even when every package above is already installed.
if [ ${#missing[@]} -gt 0 ] || ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
  echo "setup: apt-get update" >&2
  $sudo apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "setup: apt packages present: ${packages[*]}" >&2
fi
[ "${1:-}" = "--deps" ] && exit 0

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

echo "setup: building sandvisor" >&2
cargo build --release -p sandvisor-cli
# The agent runs as the guest's PID 1 with no libraries around it, so it is
# linked statically. The explicit --target keeps RUSTFLAGS off build scripts.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -p sandvisor-agent --target x86_64-unknown-linux-gnu

echo "setup: building the guest image" >&2
target/release/sandvisor image build \
  --agent target/x86_64-unknown-linux-gnu/release/sandvisor-agent
