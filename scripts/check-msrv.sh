#!/usr/bin/env bash
# Checks the workspace's `rust-version` (Cargo.toml) two ways:
# 1. it equals the highest `rust-version` any locked dependency declares: not lower (a user
#    with that toolchain could not build) and not higher (it would refuse toolchains that work);
# 2. the workspace really builds with that toolchain (`cargo +VERSION check`), installed by
#    rustup when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
declared=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
needed=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, sys
meta = json.load(sys.stdin)
ours = set(meta["workspace_members"])
best, who = (0,), []
for p in meta["packages"]:
    v = p.get("rust_version")
    if not v or p["id"] in ours:
        continue
    key = tuple(int(x) for x in v.split("."))
    key = key + (0,) * (3 - len(key))
    if key > best:
        best, who = key, [p["name"]]
    elif key == best:
        who.append(p["name"])
print("%d.%d" % best[:2], " ".join(sorted(set(who))))
')
version=${needed%% *}
echo "rust-version: declared $declared; the lockfile needs $version (set by: ${needed#* })"
if [ "$declared" != "$version" ]; then
  echo "hutch: rust-version in Cargo.toml ($declared) must be $version, what the lockfile needs" >&2
  exit 1
fi
if ! rustup toolchain list | grep -q "^$declared"; then
  echo "hutch: installing Rust $declared (the workspace's rust-version) to check the build with it"
  rustup toolchain install "$declared" --profile minimal
fi
cargo "+$declared" check --workspace --locked --quiet
echo "rust-version: the workspace builds with Rust $declared"
