#!/bin/sh
# PID 1 of the test guest. Mounts virtio-fs, runs the per-run workload (/fsd/workload.sh, from
# the cpio archive the harness appends) and reports on the serial console between @@FSD markers,
# which fsd.testing.guest parses. Never returns: the guest always powers off.
export PATH=/bin HOME=/root
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
. /lib/fsd/functions.sh

MNT=/mnt TAG=myfs MOUNT_OPTS=
[ -f /fsd/run.conf ] && . /fsd/run.conf
export MNT TAG

fsd_mark BOOTED "$(fsd_uptime)"
while read -r mod; do
    insmod "$mod" || fsd_fail "insmod $mod failed"
done < /lib/fsd/modules
mkdir -p "$MNT"
mount -t virtiofs ${MOUNT_OPTS:+-o "$MOUNT_OPTS"} "$TAG" "$MNT" || fsd_fail "mount -t virtiofs $TAG failed"
fsd_mark MOUNTED "$(fsd_uptime)"

# ttyS1 is the host's reply channel for host_step; keep it open so no byte is lost.
if [ -c /dev/ttyS1 ]; then
    stty -F /dev/ttyS1 raw -echo 2>/dev/null
    exec 3<>/dev/ttyS1
fi

[ -f /fsd/workload.sh ] || fsd_fail "no workload"
echo 1 > /proc/sys/kernel/printk     # keep kernel messages out of the workload's output
fsd_mark BEGIN
(cd "$MNT" && . /fsd/workload.sh)
status=$?
fsd_mark END "$status"
echo 7 > /proc/sys/kernel/printk
[ "$status" = 0 ] || { fsd_mark DMESG; dmesg | tail -n 40; fsd_mark DMESG-END; }

cd /
umount "$MNT" || fsd_mark UMOUNT-FAILED
fsd_mark DONE "$(fsd_uptime)"
poweroff -f
