#!/usr/bin/env bash
# Installs what hutch needs, builds and installs the controller, the agent and the CLI, builds the
# default rootfs (Debian bookworm minbase + procps + iproute2, from the host's apt mirror,
# progress shown), and starts a one-host cluster: the controller on 127.0.0.1:7000 and an
# agent on 127.0.0.1:7070 registered with it.
# Usage (as root): scripts/setup.sh
#   PREFIX=/usr/local  HUTCH_CONTROLLER_LISTEN=127.0.0.1:7000  HUTCH_LISTEN=127.0.0.1:7070
#   HUTCH_ALLOWED_BIND_PATHS=/home,/root,/srv,/tmp,/var/tmp,/mnt,/media   (node paths
#   containers may bind, -v /path:/in: where people keep their work, never /etc, /proc, /sys,
#   /dev or hutch's state; an agent started by hand allows none unless told)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
hutch_install_packages
hutch_install_grpcurl

PREFIX="${PREFIX:-/usr/local}"
CONTROLLER="${HUTCH_CONTROLLER_LISTEN:-127.0.0.1:7000}"
LISTEN="${HUTCH_LISTEN:-127.0.0.1:7070}"
ALLOWED_BIND_PATHS="${HUTCH_ALLOWED_BIND_PATHS:-/home,/root,/srv,/tmp,/var/tmp,/mnt,/media}"

cargo build --release -p hutch-agent -p hutch-supervisor -p hutch-controller -p hutch-cli
install -m 0755 target/release/hutch-agent target/release/hutch-supervisor \
  target/release/hutch-controller target/release/hutch "$PREFIX/bin/"
echo "hutch: installed hutch (the CLI), hutch-controller, hutch-agent and hutch-supervisor in $PREFIX/bin"

"$PREFIX/bin/hutch-agent" rootfs build debian

# start_daemon NAME ARGS...: (re)starts $PREFIX/bin/NAME ARGS as a daemon, logging to
# /var/log/NAME.log, pid in /run/NAME.pid; waits until it listens.
start_daemon() {
  local name=$1; shift
  local log=/var/log/$name.log pidfile=/run/$name.pid
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "hutch: stopping the running $name (pid $(cat "$pidfile"))"
    kill -TERM "$(cat "$pidfile")"
    for _ in $(seq 50); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
  fi
  local start_line
  start_line=$(( $( { cat "$log" 2>/dev/null || true; } | wc -l) + 1 ))
  setsid "$PREFIX/bin/$name" "$@" >>"$log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  for _ in $(seq 100); do
    tail -n +"$start_line" "$log" | grep -q "listening on" && break
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "hutch: $name did not start; see $log" >&2; tail -5 "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "hutch: $name running (pid $(cat "$pidfile"), log $log): $(tail -n +"$start_line" "$log" | grep "listening on" | tail -1)"
}

# Running containers survive restarts of either daemon: they belong to their supervisors.
start_daemon hutch-controller --listen "$CONTROLLER"
start_daemon hutch-agent serve --listen "$LISTEN" --controller "http://$CONTROLLER" \
  --allowed-bind-paths "$ALLOWED_BIND_PATHS"
for _ in $(seq 50); do
  grpcurl -plaintext "$CONTROLLER" hutch.v1.Controller/ListNodes 2>/dev/null | grep -q NODE_STATE_READY && break
  sleep 0.1
done
cat <<MSG

A one-host cluster is up. Try it with the CLI:
  hutch nodes
  hutch run --rm --ns pid debian -- ps -ef
  hutch run -d --name box debian -- sleep infinity && hutch exec box -- ip addr
  hutch run --rm -v data:/data debian -- sh -c 'date >> /data/log; cat /data/log'
  hutch run --rm -v "\$PWD:/src:ro" debian -- ls /src
Or with grpcurl:
  grpcurl -plaintext $CONTROLLER hutch.v1.Controller/ListNodes
  grpcurl -plaintext -d '{"name":"hello","spec":{"rootfs":"debian","command":["ps","-ef"]}}' $CONTROLLER hutch.v1.Controller/CreateContainer
  grpcurl -plaintext -d '{"id":"hello"}' $CONTROLLER hutch.v1.Controller/GetContainer
  grpcurl -plaintext -d '{"id":"hello"}' $CONTROLLER hutch.v1.Controller/ContainerLogs
The agent's own API is on $LISTEN (hutch.v1.Agent); locally: hutch-agent run --ns pid debian -- ps -ef
Stop: kill \$(cat /run/hutch-agent.pid) \$(cat /run/hutch-controller.pid)   (containers keep running)
MSG
