#!/usr/bin/env bash
# Builds hutch and installs it on this Debian host: binaries in /usr/local/bin, systemd units,
# and example configs in /etc/hutch (existing configs are kept).
# Usage (as root, from the hutch sources): deploy/install.sh [agent|controller|both]
set -euo pipefail
cd "$(dirname "$0")/.."
role="${1:-both}"
case "$role" in agent|controller|both) ;; *) echo "usage: deploy/install.sh [agent|controller|both]" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
source scripts/deps.sh
hutch_install_packages

cargo build --release -p hutch-agent -p hutch-supervisor -p hutch-controller -p hutch-cli
install -m 0755 target/release/hutch target/release/hutch-agent target/release/hutch-supervisor \
  target/release/hutch-controller /usr/local/bin/
mkdir -p /etc/hutch
install_config() {  # NAME: the example, unless the host has its own
  if [ -e "/etc/hutch/$1.toml" ]; then
    echo "install.sh: keeping /etc/hutch/$1.toml"
  else
    install -m 0644 "deploy/config/$1.toml" "/etc/hutch/$1.toml"
    echo "install.sh: wrote /etc/hutch/$1.toml: edit its addresses"
  fi
}
units=()
if [ "$role" != controller ]; then install_config agent; units+=(hutch-agent.service); fi
if [ "$role" != agent ]; then install_config controller; units+=(hutch-controller.service); fi
for u in "${units[@]}"; do install -m 0644 "deploy/systemd/$u" /etc/systemd/system/; done
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  echo "install.sh: installed ${units[*]}; start with: systemctl enable --now ${units[*]}"
else
  echo "install.sh: installed ${units[*]} in /etc/systemd/system (systemd is not running here)"
fi
