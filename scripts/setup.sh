#!/usr/bin/env bash
# Installs what hutch needs, builds and installs the agent, and builds the default rootfs
# (Debian bookworm minbase + procps + iproute2, from the host's apt mirror).
# Usage: sudo scripts/setup.sh        (PREFIX=/usr/local by default)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
hutch_install_packages

PREFIX="${PREFIX:-/usr/local}"
cargo build --release -p hutch-agent
install -m 0755 target/release/hutch-agent target/release/hutch-supervisor "$PREFIX/bin/"
echo "hutch: installed hutch-agent and hutch-supervisor in $PREFIX/bin"

"$PREFIX/bin/hutch-agent" rootfs build debian
"$PREFIX/bin/hutch-agent" rootfs ls
cat <<'MSG'

hutch is ready. Try the tutorial:
  hutch-agent run --ns pid debian -- ps -ef
  hutch-agent run --ns pid,ipc,net,uts,mount debian -- ip addr
  hutch-agent run --memory 1000000 debian -- tail /dev/zero     # OOM-killed
MSG
