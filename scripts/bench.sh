#!/usr/bin/env bash
# Runs the benchmark harness from a clean checkout (as root): installs the peers (runc and
# containerd, from Debian's packages) and what hutch needs, builds hutch in release mode, then
# prints hutch's figures beside the peers'. Arguments go to the harness:
#   scripts/bench.sh                       every scenario
#   scripts/bench.sh start-latency --json  one scenario, as JSON
#   scripts/bench.sh --smoke               a quick run that only checks the harness works
#   scripts/bench.sh start-latency --explain   also where a start's time goes, hop by hop
# HUTCH_BENCH_PROFILE=debug uses a debug build (what CI's smoke run does: no rebuild).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
hutch_install_packages
hutch_install_bench_peers
profile="${HUTCH_BENCH_PROFILE:-release}"
if [ "$profile" = release ]; then
  cargo build --release --workspace --bins
else
  cargo build --workspace --bins
fi
exec "target/$profile/hutch-bench" "$@"
