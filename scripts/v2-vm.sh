#!/usr/bin/env bash
# v2-vm.sh: runs a command inside a small VM booted with a pure cgroup v2 hierarchy
# (Debian's kernel with cgroup_no_v1=all), under qemu's software emulation (no KVM needed).
#
#   scripts/v2-vm.sh [--timeout SECONDS] [--memory MIB] -- COMMAND [ARG...]
#
# The VM sees this machine's filesystem read-only through 9p, under an overlay whose
# writes stay in the VM's memory; /tmp, /var/tmp, /run and /var/lib/hutch are fresh tmpfs
# mounts (overlayfs upper dirs must be on a real filesystem), and /var/tmp/hutch-test-cache
# (the test rootfs store) is an overlay of this machine's copy. COMMAND runs as root in the
# current directory; `hutch-vm-unit PROGRAM...` there runs a program alone in a cgroup of its
# own with memory, pids and cpu delegated (a systemd unit with Delegate=yes), and fails when
# that cgroup cannot be removed after. Its output and exit status come back; the
# script exits with that status (124 on a timeout, 125 when the VM could not run it).
#
# Cached between runs in HUTCH_VM_CACHE (default /var/tmp/hutch-vm-cache): Debian's kernel
# package (linux-image-amd64's dependency, from the host's apt sources) unpacked, and the
# initramfs. Nothing is left running: qemu is killed on any exit of this script.
set -euo pipefail

timeout_secs=900
memory_mib=4096
while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) timeout_secs=$2; shift 2 ;;
    --memory) memory_mib=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "v2-vm: unknown option $1 (usage: v2-vm.sh [--timeout S] [--memory MIB] -- COMMAND)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "v2-vm: no command (usage: v2-vm.sh [--timeout S] [--memory MIB] -- COMMAND)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "v2-vm: run as root" >&2; exit 125; }

cache=${HUTCH_VM_CACHE:-/var/tmp/hutch-vm-cache}
mkdir -p "$cache"

# --- qemu and busybox from Debian's packages.
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
# A static busybox: the initramfs has no libraries.
{ [ -x /bin/busybox ] && grep -q "not a dynamic" <<<"$(ldd /bin/busybox 2>&1 || true)"; } || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "v2-vm: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Debian's kernel, unpacked once.
kdir=$cache/kernel
if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
  [ -n "$pkg" ] || { echo "v2-vm: no kernel package behind linux-image-amd64 in the apt sources" >&2; exit 125; }
  echo "v2-vm: downloading $pkg (once; cached in $cache)"
  rm -rf "$cache/download" "$kdir.tmp"
  mkdir -p "$cache/download"
  (cd "$cache/download" && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
  dpkg-deb -x "$cache"/download/*.deb "$kdir.tmp"
  mv "$kdir.tmp" "$kdir"
  rm -rf "$cache/download"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}
moddir=$kdir/lib/modules/$kver/kernel

# --- The initramfs: busybox, the modules for a 9p root with an overlay, and init.
# Modules in load order (each after what it depends on).
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  9pnet 9pnet_virtio netfs fscache 9p overlay)
self_hash=$(sha256sum "$0" | cut -c1-16)
initrd=$cache/initrd-$kver-$self_hash.cpio.gz
if [ ! -f "$initrd" ]; then
  echo "v2-vm: building the initramfs for $kver"
  root=$(mktemp -d "$cache/initrd.XXXXXX")
  mkdir -p "$root"/{bin,modules,proc,sys,dev,host,rw,newroot}
  cp /bin/busybox "$root/bin/busybox"
  for m in "${modules[@]}"; do
    f=$(find "$moddir" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
    [ -n "$f" ] || { echo "v2-vm: module $m not in $kver" >&2; exit 125; }
    case "$f" in
      *.xz) xz -dc "$f" >"$root/modules/$m.ko" ;;
      *) cp "$f" "$root/modules/$m.ko" ;;
    esac
  done
  printf '%s\n' "${modules[@]}" >"$root/modules/order"
  cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do
  insmod /modules/$m.ko 2>/dev/null || echo "v2-vm init: insmod $m failed"
done
fail() { echo "v2-vm init: $*"; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /host || fail "no 9p root"
mount -t tmpfs -o size=75% tmpfs /rw
mkdir -p /rw/root/upper /rw/root/work /rw/cache/upper /rw/cache/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/root/upper,workdir=/rw/root/work /newroot || fail "no overlay root"
mkdir -p /newroot/hutch-vm-out /newroot/hutch-vm-host
mount --bind /host /newroot/hutch-vm-host || fail "no bind of the 9p root"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out /newroot/hutch-vm-out || fail "no out share"
for d in proc sys dev; do mount --move /$d /newroot/$d 2>/dev/null || mount -t $d $d /newroot/$d; done
exec switch_root /newroot /bin/sh /hutch-vm-out/stage2.sh
INIT
  chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$root"
fi

# --- This run's share: the second stage (inside the new root) and the command.
out=$(mktemp -d /var/tmp/hutch-vm-run.XXXXXX)
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null || true
  rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
printf '%q ' "$@" >"$out/command"
printf '%s' "$PWD" >"$out/cwd-raw"
env | grep -E '^(RUST_[A-Z_]+|HUTCH_[A-Z_]+|CARGO_[A-Z_]+)=' | sed 's/^/export /; s/=\(.*\)$/="\1"/' >"$out/env" || true
cat >"$out/stage2.sh" <<'STAGE2'
set -u
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mkdir -p /var/lib/hutch /var/tmp/hutch-test-cache
mount -t tmpfs tmpfs /var/lib/hutch
# The caller's directory (a checkout under /tmp, say) where the tmpfs mounts hid it: an
# overlay of this machine's copy, writes kept here.
cwd=$(cat /hutch-vm-out/cwd-raw)
if [ ! -d "$cwd" ] && [ -d "/hutch-vm-host$cwd" ]; then
  mkdir -p "$cwd" /run/cwd/upper /run/cwd/work
  mount -t overlay overlay -o "lowerdir=/hutch-vm-host$cwd,upperdir=/run/cwd/upper,workdir=/run/cwd/work" "$cwd"
fi
# The test rootfs store: an overlay of this machine's copy (9p, read-only), writes kept here.
mkdir -p /run/cache/upper /run/cache/work
if [ -d /hutch-vm-host/var/tmp/hutch-test-cache ]; then
  mount -t overlay overlay -o lowerdir=/hutch-vm-host/var/tmp/hutch-test-cache,upperdir=/run/cache/upper,workdir=/run/cache/work /var/tmp/hutch-test-cache
fi
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# Loopback only (gRPC servers of the tests); the VM has no other network.
ip link set lo up
hostname hutch-vm
echo "v2-vm: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
echo "v2-vm: cgroup mounts: $(awk '$9 ~ /^cgroup/ {print $5 " (" $9 ")"}' /proc/self/mountinfo | tr '\n' ' ')"
if awk '$9 == "cgroup" {found=1} END {exit !found}' /proc/self/mountinfo; then
  echo "v2-vm: a cgroup v1 hierarchy is mounted: not a pure v2 host"; echo 125 >/hutch-vm-out/status; poweroff -f
fi
# The command runs in /init. `hutch-vm-unit CMD...` (on its PATH) runs CMD alone in a fresh
# cgroup /unit-N with memory, pids and cpu delegated, as a systemd unit with Delegate=yes
# would, and removes that cgroup after (a cgroup left non-empty fails the run).
mkdir -p /sys/fs/cgroup/init
echo $$ >/sys/fs/cgroup/init/cgroup.procs
echo "+memory +pids +cpu" >/sys/fs/cgroup/cgroup.subtree_control
echo "v2-vm: cgroup mode unified; units get the controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
mkdir -p /run/hutch-vm/bin
cat >/run/hutch-vm/bin/hutch-vm-unit <<'UNIT'
#!/bin/sh
unit=/sys/fs/cgroup/unit-$$
mkdir "$unit" || exit 125
sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$unit" "$@"
status=$?
for _ in 1 2 3 4 5 6 7 8 9 10; do
  find "$unit" -depth -type d -exec rmdir {} \; 2>/dev/null
  [ -d "$unit" ] || break
  sleep 1
done
if [ -d "$unit" ]; then
  echo "hutch-vm-unit: $unit is left, with processes: $(cat $(find "$unit" -name cgroup.procs) | tr '\n' ' ')"
  exit 125
fi
exit $status
UNIT
chmod +x /run/hutch-vm/bin/hutch-vm-unit
export PATH=/run/hutch-vm/bin:$PATH
. /hutch-vm-out/env
cd "$cwd" || { echo "v2-vm: no $cwd in the VM"; echo 125 >/hutch-vm-out/status; poweroff -f; }
sh -c "$(cat /hutch-vm-out/command)"
echo $? >/hutch-vm-out/status
sync
poweroff -f
STAGE2

echo "v2-vm: booting $kver under qemu (software emulation), ${memory_mib} MiB, command: $*"
started=$(date +%s)
timeout --kill-after=10 "$timeout_secs" qemu-system-x86_64 \
  -nographic -no-reboot -nodefaults -serial stdio -vga none \
  -machine q35 -cpu max -smp 2 -m "$memory_mib" \
  -kernel "$vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 cgroup_no_v1=all" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$out",mount_tag=out,security_model=none,multidevs=remap &
qemu_pid=$!
set +e
wait "$qemu_pid"
qemu_status=$?
set -e
qemu_pid=
echo "v2-vm: the VM ran for $(( $(date +%s) - started ))s"
if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
  echo "v2-vm: timed out after ${timeout_secs}s" >&2
  exit 124
fi
if [ ! -s "$out/status" ]; then
  echo "v2-vm: the command did not finish in the VM (qemu exit $qemu_status)" >&2
  exit 125
fi
exit "$(cat "$out/status")"
