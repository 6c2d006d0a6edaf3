#!/usr/bin/busybox sh
# /init of the Keep image (PID 1).  Mounts what a Keep needs, loads the virtio drivers, sets up
# QEMU's user-mode network, and runs the wasmldr with its control pipe on the virtio-serial
# port.  When the wasmldr ends, the VM ends.  Lines on the console are lifecycle only.
bb=/usr/bin/busybox
say() { $bb echo "keepbook-init: $*"; }
halt() { say "$*"; $bb sync; $bb reboot -f; }

$bb mount -t proc -o nosuid,nodev,noexec proc /proc
$bb mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
$bb mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
$bb mkdir -p /dev/shm /tmp /run
$bb mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
$bb mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp

backend=kvm
for arg in $($bb cat /proc/cmdline); do
  case "$arg" in keepbook.backend=*) backend="${arg#keepbook.backend=}" ;; esac
done

for list in /etc/keepbook/modules /etc/keepbook/modules.$backend; do
  [ -f "$list" ] || continue
  for m in $($bb cat "$list"); do
    $bb insmod "/usr/lib/modules/keep/$m.ko" 2>/dev/null || say "module $m not loaded"
  done
done

$bb ip link set lo up
$bb ip addr add @GUEST_ADDRESS@/24 dev eth0 || halt "no network device (virtio-net)"
$bb ip link set eth0 up
$bb ip route add default via @GUEST_GATEWAY@

port=""
n=0
while [ -z "$port" ] && [ $n -lt 100 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$($bb cat "$p/name" 2>/dev/null)" = "@CONTROL_PORT@" ] && port="/dev/${p##*/}"
  done
  [ -n "$port" ] || { $bb usleep 50000; n=$((n + 1)); }
done
[ -n "$port" ] || halt "no control port @CONTROL_PORT@ (virtio-serial)"

say "starting the wasmldr (backend $backend)"
$bb env -i PATH=/usr/bin HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
  KEEPBOOK_KEEP_LISTEN=@GUEST_ADDRESS@ KEEPBOOK_KEEP_PORT=@GUEST_PORT@ \
  /usr/bin/python3.11 -m keepbook.keep.inside --backend "$backend" <>"$port" >&0
halt "the wasmldr exited (code $?)"
