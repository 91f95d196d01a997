#!/usr/bin/env bash
# Removes what an earlier test run left behind because its process was killed before it could
# clean up (a test's own cleanup runs on failure, not on SIGKILL). Only test resources whose
# owning test process no longer exists are touched: test state directories
# /var/tmp/hutch-test-NAME-PID-N, test cgroups hutch-t-NAME-PID-N, and their mounts and
# supervisors. A running agent or a test run in progress is left alone.
set -euo pipefail

owner_gone() {  # NAME-PID-N -> true when PID is not running
  local pid
  pid=$(echo "$1" | awk -F- '{print $(NF-1)}')
  [[ "$pid" =~ ^[0-9]+$ ]] && [ ! -d "/proc/$pid" ]
}

for dir in /var/tmp/hutch-test-*; do
  [ -e "$dir" ] || continue
  name=$(basename "$dir")
  [ "$name" = hutch-test-cache ] && continue
  owner_gone "$name" || continue
  echo "clean: leftovers of a killed test run in $dir"
  for pid in $(grep -l -- "$dir" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Deepest mounts first.
  awk -v d="$dir" '$5 ~ "^"d {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$dir"
done

# Bind sources of killed tests: /var/tmp/hutch-test-binds/NAME-PID-N.
for dir in /var/tmp/hutch-test-binds/*; do
  [ -e "$dir" ] || continue
  owner_gone "$(basename "$dir")" || continue
  echo "clean: bind sources of a killed test run in $dir"
  awk -v d="$dir" '$5 ~ "^"d {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$dir"
done

while read -r cg; do
  owner_gone "$(basename "$cg")" || continue
  echo "clean: test cgroup of a killed test run $cg"
  find "$cg" -name cgroup.procs | while read -r procs; do
    for pid in $(cat "$procs"); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  sleep 0.2
  find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
done < <(find /sys/fs/cgroup -mindepth 1 -maxdepth 8 -type d -name 'hutch-t-*' -prune 2>/dev/null)

# Daemon logs that failed tests kept for reading (a passing test removes its own).
for log in "${TMPDIR:-/tmp}"/hutch-test-*.log; do
  [ -e "$log" ] || continue
  echo "clean: daemon log of an earlier failed test run $log"
  rm -f "$log"
done

# Labs (deploy/lab) of test runs that were killed: their lab name ends in -PID-N.
for dir in /var/tmp/hutch-lab-t-*; do
  [ -e "$dir" ] || continue
  name=${dir#/var/tmp/hutch-lab-}
  owner_gone "$name" || continue
  echo "clean: lab $name of a killed test run"
  deploy/lab --name "$name" down
done
