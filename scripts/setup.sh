#!/usr/bin/env bash
# Installs what hutch needs, builds and installs the agent, builds the default rootfs
# (Debian bookworm minbase + procps + iproute2, from the host's apt mirror, progress shown),
# and starts the agent as a daemon on 127.0.0.1:7070.
# Usage (as root): scripts/setup.sh          PREFIX=/usr/local, HUTCH_LISTEN=127.0.0.1:7070
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
hutch_install_packages
hutch_install_grpcurl

PREFIX="${PREFIX:-/usr/local}"
LISTEN="${HUTCH_LISTEN:-127.0.0.1:7070}"
LOG=/var/log/hutch-agent.log
PIDFILE=/run/hutch-agent.pid

cargo build --release -p hutch-agent
install -m 0755 target/release/hutch-agent target/release/hutch-supervisor "$PREFIX/bin/"
echo "hutch: installed hutch-agent and hutch-supervisor in $PREFIX/bin"

"$PREFIX/bin/hutch-agent" rootfs build debian

# (Re)start the daemon. Running containers survive: they belong to their supervisors.
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "hutch: stopping the running agent (pid $(cat "$PIDFILE"))"
  kill -TERM "$(cat "$PIDFILE")"
  for _ in $(seq 50); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.1; done
fi
setsid "$PREFIX/bin/hutch-agent" serve --listen "$LISTEN" >>"$LOG" 2>&1 < /dev/null &
echo $! > "$PIDFILE"
for _ in $(seq 100); do
  grep -q "listening on" "$LOG" 2>/dev/null && break
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { echo "hutch: the agent did not start; see $LOG" >&2; tail -5 "$LOG" >&2; exit 1; }
  sleep 0.1
done
echo "hutch: agent running (pid $(cat "$PIDFILE"), log $LOG): $(grep "listening on" "$LOG" | tail -1)"
cat <<MSG

Try it:
  grpcurl -plaintext $LISTEN hutch.v1.Agent/NodeInfo
  grpcurl -plaintext -d '{"name":"hello","spec":{"rootfs":"debian","command":["ps","-ef"],"namespaces":["NAMESPACE_PID"]}}' $LISTEN hutch.v1.Agent/RunContainer
  grpcurl -plaintext -d '{"id":"hello"}' $LISTEN hutch.v1.Agent/ContainerLogs
Or locally: hutch-agent run --ns pid debian -- ps -ef
Stop the agent: kill \$(cat $PIDFILE)   (containers keep running)
MSG
