#!/usr/bin/env bash
# Installs the host packages hutch needs at run time and for its tests (Debian 12, as root).
# Sourced by setup.sh and test.sh; safe to run again.
set -euo pipefail

HUTCH_PACKAGES=(
  debootstrap   # builds rootfs
  zstd          # .tar.zst rootfs sources, zstd initramfs images
  cpio          # initramfs rootfs sources
  xz-utils bzip2 gzip tar
  util-linux    # ipcmk/ipcs used by the isolation tests, nsenter for users
  procps iproute2
  ca-certificates
)

hutch_install_packages() {
  if [ "$(id -u)" != 0 ]; then
    echo "hutch: run as root (hutch creates namespaces, cgroups and mounts)" >&2
    exit 1
  fi
  local missing=()
  for p in "${HUTCH_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "hutch: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null; then
    echo "hutch: cargo (Rust 1.85 or newer) is required; install it with rustup" >&2
    exit 1
  fi
}
