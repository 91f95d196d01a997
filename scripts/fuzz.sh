#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time (default 20 s each; CI's smoke
# mode). Any crash fails the run and leaves its input in fuzz/artifacts/TARGET/; replay it
# with: cd fuzz && cargo +nightly fuzz run --sanitizer none TARGET artifacts/TARGET/FILE
#   scripts/fuzz.sh            # every target, 20 s each
#   scripts/fuzz.sh spec 300   # one target, 5 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
hutch_install_fuzz_tools
seconds=${2:-20}
cd fuzz
targets=${1:-$(cargo +nightly fuzz list | tr '\n' ' ')}
# No sanitizer: the code under test is safe Rust, and panics are what the targets look for;
# this keeps the build (tonic, tokio, ...) short enough for every CI run.
cargo +nightly fuzz build --sanitizer none -O
for t in $targets; do
  echo "== fuzz $t for ${seconds}s"
  mkdir -p "corpus/$t"
  # libFuzzer prints a line per new input; keep the end (the stats, or a crash and the
  # file it was written to). pipefail keeps cargo fuzz's failure.
  cargo +nightly fuzz run --sanitizer none -O "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 2>&1 | tail -n 40 |
    { grep -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)' || true; }
done
