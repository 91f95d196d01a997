#!/usr/bin/env bash
# v2-suite.sh: the agent's cgroup tests on a pure cgroup v2 host, in the VM of v2-vm.sh.
# Each test binary runs alone in a delegated cgroup of its own (hutch-vm-unit); the VM's
# output says which cgroup mode it ran under. Builds the test binaries first (debug).
#
#   scripts/v2-suite.sh [TEST...]      default: memory cgroup_detection cpu stats lifecycle escape isolation pid_namespace
set -euo pipefail
cd "$(dirname "$0")/.."
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(memory cgroup_detection cpu stats lifecycle escape isolation pid_namespace)
cargo build --workspace --bins --examples -q
binaries=()
for t in "${tests[@]}"; do
  bin=$(cargo test -p hutch-agent --test "$t" --no-run 2>&1 | grep -o "target/debug/deps/$t-[0-9a-f]*" | head -1 || true)
  [ -n "$bin" ] || { echo "v2-suite: no test binary for agent test '$t'" >&2; exit 2; }
  binaries+=("$bin")
done
# Inside: every binary in a unit of its own; the first failure fails the suite, after all ran.
script='failed=""; for b in '"${binaries[*]}"'; do echo "== $b (cgroup v2)"; hutch-vm-unit "$b" --test-threads 2 || failed="$failed $b"; done; [ -z "$failed" ] || { echo "v2-suite: failed:$failed"; exit 1; }'
exec bash scripts/v2-vm.sh --timeout 1200 -- sh -c "$script"
