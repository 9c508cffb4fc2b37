#!/usr/bin/env bash
# Installs what sandvisor needs on a Debian host, builds it, and builds the
# guest image into the asset directory. Safe to run again: it installs only
# missing packages and `image build` rebuilds only when an input changed.
#
#   scripts/setup.sh            everything
#   scripts/setup.sh --deps     only the dependencies: apt packages and VMMs
#   scripts/setup.sh --vmms     only the VMMs
#
# The guest kernel is the sandbox kernel, built from Debian's
# linux-source-6.1 with crates/sandvisor/src/image/kernel/x86_64-sandbox.config
# (`image build`): about 6.5 minutes on an idle 2-core machine the first
# time, with a progress line every 30 s, then cached in
# <asset dir>/cache/kernel, so a second run reuses it.
# SANDVISOR_CLOUD_KERNEL=1 also builds Debian's cloud kernel with its
# modules (`image build --kernel-from cloud`, a 27 MB download and seconds)
# with its initrd into <asset dir>/cloud-kernel (or
# $SANDVISOR_CLOUD_KERNEL_DIR): the VM tests about module loading boot it.
#
# The VMMs (cloud-hypervisor, ch-remote, firecracker, jailer) go into
# $SANDVISOR_BIN_DIR (default /usr/local/bin) when missing: copied from
# $SANDVISOR_VMM_DIR when it is set, otherwise downloaded from the pinned
# upstream releases below and checked against their SHA-256.
# SANDVISOR_CH_URL and SANDVISOR_FC_URL replace the two release download
# directories (a mirror); the pinned digests still apply.
set -euo pipefail
cd "$(dirname "$0")/.."

# Cloud Hypervisor publishes no checksum file with its releases, so the
# digests of the two static binaries are pinned here. v53.0 (2026-07-12) is
# the newest release tag; builds reporting v54.0.0 come from main after it.
CH_VERSION=v53.0
CH_URL=${SANDVISOR_CH_URL:-https://github.com/cloud-hypervisor/cloud-hypervisor/releases/download/$CH_VERSION}
CH_SHA256=448af3d4e59b22c2987f7df94c213ad40fb53a10d437e42b5ee6c4fce7c29ecc
CH_REMOTE_SHA256=13f32ba952e6791fd901f2279be2055fbacc64005f96c42a8e90d58860df84a7
# Firecracker publishes <tarball>.sha256.txt; the tarball must match both
# it and the digest pinned here.
FC_VERSION=v1.17.0
FC_TARBALL=firecracker-$FC_VERSION-x86_64.tgz
FC_URL=${SANDVISOR_FC_URL:-https://github.com/firecracker-microvm/firecracker/releases/download/$FC_VERSION}
FC_TARBALL_SHA256=06094a1108ae9e82aa4c23a775aa92758f53f1175d422270d9d6162cb9ade558

bin_dir=${SANDVISOR_BIN_DIR:-/usr/local/bin}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Whether the VMM binary $1 is already installed: in $bin_dir or on PATH.
vmm_present() {
  [ -x "$bin_dir/$1" ] || command -v "$1" >/dev/null 2>&1
}

# install_vmm SRC NAME: installs SRC as $bin_dir/NAME.
install_vmm() {
  $sudo install -D -m 0755 "$1" "$bin_dir/$2"
  echo "setup: installed $bin_dir/$2 ($("$bin_dir/$2" --version 2>/dev/null | head -n1))" >&2
}

# fetch URL FILE: downloads URL to FILE, or says what to do and fails. A
# download that cannot happen (no network) does not stop setup: QEMU needs
# none of these, and the clh and firecracker backends name what is missing.
fetch() {
  if ! curl -fsSL --connect-timeout 15 --retry 2 -o "$2" "$1"; then
    echo "setup: WARNING: cannot download $1" >&2
    echo "setup: the clh and firecracker backends need it; without internet access, set SANDVISOR_VMM_DIR to a directory holding cloud-hypervisor, ch-remote, firecracker and jailer" >&2
    return 1
  fi
}

# check_sha256 FILE DIGEST URL: stops setup unless FILE, downloaded from
# URL, has that SHA-256.
check_sha256() {
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    echo "setup: $3 has SHA-256 $got, expected $2; not installing it" >&2
    exit 1
  fi
}

install_vmms() {
  local names=(cloud-hypervisor ch-remote firecracker jailer) missing=() n
  for n in "${names[@]}"; do
    if vmm_present "$n"; then
      local at
      at=$([ -x "$bin_dir/$n" ] && echo "$bin_dir/$n" || command -v "$n")
      echo "setup: $n present: $at ($("$at" --version 2>/dev/null | head -n1))" >&2
    else
      missing+=("$n")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0

  if [ -n "${SANDVISOR_VMM_DIR:-}" ]; then
    for n in "${missing[@]}"; do
      if [ ! -x "$SANDVISOR_VMM_DIR/$n" ]; then
        echo "setup: SANDVISOR_VMM_DIR=$SANDVISOR_VMM_DIR has no executable $n" >&2
        exit 1
      fi
    done
    for n in "${missing[@]}"; do
      install_vmm "$SANDVISOR_VMM_DIR/$n" "$n"
    done
    return 0
  fi

  if [ "$(uname -m)" != x86_64 ]; then
    echo "setup: the pinned VMM releases are for x86_64, not $(uname -m); set SANDVISOR_VMM_DIR" >&2
    exit 1
  fi
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064 # expand $tmp now: it is local
  trap "rm -rf '$tmp'" EXIT
  for n in "${missing[@]}"; do
    case $n in
      cloud-hypervisor | ch-remote)
        local digest=$CH_SHA256
        [ "$n" = ch-remote ] && digest=$CH_REMOTE_SHA256
        echo "setup: downloading $n $CH_VERSION" >&2
        fetch "$CH_URL/$n-static" "$tmp/$n" || continue
        check_sha256 "$tmp/$n" "$digest" "$CH_URL/$n-static"
        install_vmm "$tmp/$n" "$n"
        ;;
      firecracker | jailer)
        if [ ! -d "$tmp/fc" ]; then
          echo "setup: downloading Firecracker $FC_VERSION" >&2
          fetch "$FC_URL/$FC_TARBALL" "$tmp/$FC_TARBALL" || continue
          fetch "$FC_URL/$FC_TARBALL.sha256.txt" "$tmp/$FC_TARBALL.sha256.txt" || continue
          local published
          published=$(cut -d' ' -f1 "$tmp/$FC_TARBALL.sha256.txt")
          if [ "$published" != "$FC_TARBALL_SHA256" ]; then
            echo "setup: $FC_TARBALL.sha256.txt says $published, expected $FC_TARBALL_SHA256" >&2
            exit 1
          fi
          check_sha256 "$tmp/$FC_TARBALL" "$FC_TARBALL_SHA256" "$FC_URL/$FC_TARBALL"
          mkdir "$tmp/fc"
          tar -xzf "$tmp/$FC_TARBALL" -C "$tmp/fc"
        fi
        install_vmm "$tmp/fc/release-$FC_VERSION-x86_64/$n-$FC_VERSION-x86_64" "$n"
        ;;
    esac
  done
}

# qemu-system-x86: the VMM. busybox-static: the guest's shell and tools.
# e2fsprogs: mkfs.ext4 for disk images in tests. tmux: the terminal the
# `run -t` tests type into and read back. The guest kernel is NOT
# installed: `sandvisor image build` builds it (or unpacks Debian's cloud
# kernel) in the asset directory, never in the host's /boot.
packages=(qemu-system-x86 busybox-static e2fsprogs tmux)
# The sandbox kernel's build: the compiler, Kbuild's tools, libelf for
# objtool, OpenSSL's headers for the certificate tools; xz-utils unpacks the
# source tarball.
packages+=(build-essential bc bison flex libelf-dev libssl-dev xz-utils)
cloud_kernel=${SANDVISOR_CLOUD_KERNEL:-0}
if [ -n "${SANDVISOR_SANDBOX_KERNEL:-}" ]; then
  echo "setup: SANDVISOR_SANDBOX_KERNEL is no longer read: the sandbox kernel is the default; SANDVISOR_CLOUD_KERNEL=1 adds the cloud kernel" >&2
fi

if [ "${1:-}" = "--vmms" ]; then
  install_vmms
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
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
install_vmms
[ "${1:-}" = "--deps" ] && exit 0

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# vhost-device-vsock (rust-vmm, crates.io): the vhost-user vsock daemon that
# gives QEMU guests a hybrid vsock when the host has no /dev/vhost-vsock.
# sandvisor finds it on PATH or in $CARGO_HOME/bin.
vdv_bin=${CARGO_HOME:-$HOME/.cargo}/bin/vhost-device-vsock
if command -v vhost-device-vsock >/dev/null 2>&1 || [ -x "$vdv_bin" ]; then
  echo "setup: vhost-device-vsock present" >&2
else
  echo "setup: installing vhost-device-vsock" >&2
  cargo install --locked --quiet vhost-device-vsock
fi

# Fuzzing (make fuzz, or CI with SANDVISOR_FUZZ=1) needs a nightly
# toolchain and cargo-fuzz; nothing else does, so only then.
if [ "${SANDVISOR_FUZZ:-0}" = 1 ]; then
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "setup: installing the nightly toolchain for fuzzing" >&2
    rustup toolchain install nightly --profile minimal
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "setup: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
  fi
fi

echo "setup: building sandvisor" >&2
cargo build --release -p sandvisor-cli
# The agent runs as the guest's PID 1 with no libraries around it, so it is
# linked statically. The explicit --target keeps RUSTFLAGS off build scripts.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -p sandvisor-agent --target x86_64-unknown-linux-gnu

echo "setup: building the guest image: the sandbox kernel (about 6.5 min on 2 idle cores the first time, then cached) and its initrd" >&2
target/release/sandvisor image build \
  --agent target/x86_64-unknown-linux-gnu/release/sandvisor-agent

# Shell completions and man pages, generated from the CLI definition.
# SANDVISOR_SHARE_DIR (default /usr/local/share) moves them all.
share_dir=${SANDVISOR_SHARE_DIR:-/usr/local/share}
install_docs() {
  local bin=$1 tmp
  tmp=$(mktemp -d)
  "$bin" completions bash >"$tmp/sandvisor"
  "$bin" completions zsh >"$tmp/_sandvisor"
  "$bin" completions fish >"$tmp/sandvisor.fish"
  "$bin" man --dir "$tmp/man1"
  $sudo install -D -m 0644 "$tmp/sandvisor" "$share_dir/bash-completion/completions/sandvisor"
  $sudo install -D -m 0644 "$tmp/_sandvisor" "$share_dir/zsh/site-functions/_sandvisor"
  $sudo install -D -m 0644 "$tmp/sandvisor.fish" "$share_dir/fish/vendor_completions.d/sandvisor.fish"
  $sudo install -d "$share_dir/man/man1"
  $sudo install -m 0644 "$tmp"/man1/*.1 "$share_dir/man/man1/"
  rm -rf "$tmp"
  echo "setup: installed completions and man pages under $share_dir" >&2
}
install_docs target/release/sandvisor

if [ "$cloud_kernel" = 1 ]; then
  # The asset directory as crates/sandvisor/src/paths.rs has it.
  if [ -n "${SANDVISOR_ASSET_DIR:-}" ]; then
    assets=$SANDVISOR_ASSET_DIR
  elif [ "$(id -u)" -eq 0 ]; then
    assets=/var/lib/sandvisor/assets
  else
    assets=${XDG_DATA_HOME:-$HOME/.local/share}/sandvisor/assets
  fi
  echo "setup: building the cloud kernel's assets (Debian's package and its modules)" >&2
  target/release/sandvisor image build --kernel-from cloud \
    --agent target/x86_64-unknown-linux-gnu/release/sandvisor-agent \
    --output "${SANDVISOR_CLOUD_KERNEL_DIR:-$assets/cloud-kernel}"
fi
