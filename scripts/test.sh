#!/usr/bin/env bash
# Installs the test dependencies and runs the whole suite, as root on a real kernel:
# formatting, lints, unit tests, integration tests (real namespaces, cgroups, overlays and a
# real debootstrapped rootfs shared by the run), then a leak check that nothing is left.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
hutch_install_packages
hutch_install_grpcurl
hutch_install_test_packages

started=$(date +%s)
# Each step's heading says when it started (seconds into the suite), so a slow run shows where
# its time went.
phase() { echo "== [$(( $(date +%s) - started ))s] $*"; }
# A whole-suite run gains nothing from incremental compilation, whose caches would double the
# target directory's size (set CARGO_INCREMENTAL=1 to keep them while iterating).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
phase "rust-version: what the lockfile needs, and a build with that toolchain"
bash scripts/check-msrv.sh
phase "leftovers of earlier, killed test runs"
bash scripts/clean-test-leftovers.sh
phase "cargo build (binaries and the example programs the tests run)"
cargo build --workspace --bins --examples
phase "cargo test"
cargo test --workspace --all-targets
phase "the agent's cgroup tests on a pure cgroup v2 host (a VM: scripts/v2-suite.sh)"
bash scripts/v2-suite.sh
phase "benchmark harness, smoke run (checks it works; its figures mean nothing here)"
hutch_install_bench_peers
target/debug/hutch-bench --smoke
phase "fuzz targets, smoke run (20 s each; scripts/fuzz.sh TARGET SECONDS for longer)"
bash scripts/fuzz.sh "" 20
phase "leak check (last: nothing hutch made may be left)"
cargo test -p hutch-agent --test leak_check -- --ignored
echo "== disk: target directory $(du -sh target | cut -f1), fuzz/target $(du -sh fuzz/target | cut -f1)"
echo "== suite passed in $(( $(date +%s) - started ))s"
