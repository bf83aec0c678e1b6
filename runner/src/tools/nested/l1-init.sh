#!/bin/busybox sh
# PID 1 of `lab nested`'s L1 guest: load KVM and the 9p/overlay drivers, make
# the host's file system (read-only 9p) the root under a tmpfs overlay, mount
# the results folder read-write at its host path, and run the request the host
# wrote into the control share. Every report to the host is a JSON file in
# that share (`ready.json`, `done.json`); the inner lab's output goes to the
# virtio console (hvc0, the user's terminal), L1's kernel log to ttyS0 (a
# file on the host).
B=/bin/busybox
$B mkdir -p /proc /sys /dev /host /rw /ctl /newroot
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
fail() {
    echo "lab nested (L1): $*" > /dev/console
    $B poweroff -f
}
for m in $($B cat /etc/nested/modules); do
    $B insmod "$m" 2>/dev/console || echo "lab nested (L1): insmod $m failed" > /dev/console
done
P9="trans=virtio,version=9p2000.L,msize=512000"
$B mount -t 9p -o "$P9,cache=none" ctl /ctl || fail "cannot mount the control share"
OUT=/dev/hvc0
i=0
while [ ! -c $OUT ] && [ $i -lt 200 ]; do $B usleep 10000; i=$((i + 1)); done
[ -c $OUT ] || OUT=/dev/console
$B mount -t 9p -o "$P9,ro,cache=loose" host /host || fail "cannot mount the host root"
$B mount -t tmpfs -o size=90% tmpfs /rw
$B mkdir -p /rw/upper /rw/work
$B mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "cannot mount the overlay root"
for d in proc sys dev tmp run; do $B mkdir -p /newroot/$d; done
$B mount -t proc proc /newroot/proc
$B mount -t sysfs sysfs /newroot/sys
$B mount -t devtmpfs devtmpfs /newroot/dev
# /tmp stays the host's (read-only below, tmpfs above): files a caller
# wrote there, e.g. scenario files, must be visible to the inner lab.
$B mount -t tmpfs tmpfs /newroot/run
$B mkdir -p /newroot/run/arena-nested /newroot/run/arena-nested-changes
$B mount --bind /ctl /newroot/run/arena-nested
# Every file the run creates or changes on the root, read-only: what a
# test lists to show that nothing outside its scratch folder changed.
$B mount --bind /rw/upper /newroot/run/arena-nested-changes
$B mount -o remount,bind,ro /newroot/run/arena-nested-changes
RESULTS=$($B cat /ctl/results-path 2>/dev/null)
if [ -n "$RESULTS" ]; then
    $B mkdir -p "/newroot$RESULTS"
    $B mount -t 9p -o "$P9,cache=none" results "/newroot$RESULTS" \
        || fail "cannot mount the results share at $RESULTS"
fi
# Loopback up: programs in L1 talk TCP to each other (gdb to a VM's stub).
$B ip link set lo up || echo "lab nested (L1): cannot bring up lo" > /dev/console
KVM=false
[ -c /dev/kvm ] && KVM=true
UP=$($B cut -d' ' -f1 /proc/uptime)
echo "{\"uptime_s\":$UP,\"dev_kvm\":$KVM,\"release\":\"$($B uname -r)\"}" > /ctl/ready.json.tmp
$B mv /ctl/ready.json.tmp /ctl/ready.json
$B chroot /newroot /bin/sh /run/arena-nested/request.sh < /dev/null > $OUT 2>&1
RC=$?
echo "{\"exit_code\":$RC}" > /ctl/done.json.tmp
$B mv /ctl/done.json.tmp /ctl/done.json
$B sync
$B poweroff -f
