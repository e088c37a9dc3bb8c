#!/usr/bin/env bash
# Installs what portiso and its tests need from Debian 12's packages. Idempotent: packages
# already present are not fetched again.
set -euo pipefail

packages=(
  openvswitch-switch   # ovsdb-server, ovs-vswitchd, ovs-vsctl, ovs-ofctl
  iproute2 nftables ethtool procps util-linux   # ip, nft, ethtool, sysctl, nsenter
  busybox-static       # ping/arping/nc for tests and the rootfs of podman test containers
  podman runc containernetworking-plugins       # a real CNI runtime for the plugin's tests
  shellcheck           # lints every shell script (operator/tests/shellcheck.rs)
  iptables             # iptables-nft: the Linux DNAT baseline of `portiso bench`
  qemu-system-x86      # boots the real VM guest of operator/tests/vm.rs (KVM, else TCG)
  kmod                 # depmod/modprobe order the guest's virtio-net modules (e2e/guest-image.sh)
  libc6-dev            # static glibc for the guest's helper, linked with rustc +crt-static
  clang llvm libbpf-dev  # compile the eBPF fast path (operator/bpf/) into the portiso binary
  jq curl openssl      # e2e/local-cluster.sh: its Multus stand-in, health checks, throwaway PKI
  binutils             # e2e/local-cluster.sh: objcopy strips the debug info of the image's binaries
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "cargo (Rust 1.80 or newer) is needed to build portiso: install it with rustup" >&2
  exit 1
fi
