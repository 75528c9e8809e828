#!/bin/bash
# Build a busybox root tree for a guest whose "/" is virtio-fs: the directory fsd serves.
#
#   contrib/testbed/rootfs.sh DEST
#
# DEST must be missing or empty. It gets /bin/busybox with its applets as symlinks, /sbin/init
# (busybox init) with an /etc/inittab whose sysinit script runs /etc/fsd/workload.sh (if the
# caller put one there) between @@FSD BEGIN/END markers on the console, then powers off; the
# shutdown script syncs, remounts / read-only, reports it and unmounts the rest. Takes well
# under a second, so a test can build a fresh tree per boot and inspect it afterwards.
set -euo pipefail

[ $# = 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
dest=$1
busybox=${FSD_BUSYBOX:-/bin/busybox}
if [ -e "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
    echo "rootfs: $dest is not empty" >&2
    exit 1
fi
[ -x "$busybox" ] || { echo "rootfs: no static busybox at $busybox (apt-get install busybox-static)" >&2; exit 1; }

mkdir -p "$dest"/{bin,sbin,dev,proc,sys,run,tmp,root,etc/init.d,etc/fsd,home/user}
cp "$busybox" "$dest/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$dest/bin/$applet"
done
ln -s ../bin/busybox "$dest/sbin/init"
chmod 1777 "$dest/tmp"
chmod 0700 "$dest/root"
chown 1000:1000 "$dest/home/user" 2>/dev/null || true  # as non-root: the guest sees the caller

cat > "$dest/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:unprivileged test user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$dest/etc/group" <<'EOF'
root:x:0:
user:x:1000:
nogroup:x:65534:
EOF
echo fsd-root > "$dest/etc/hostname"

# No respawn/askfirst lines: no getty on ttys this guest lacks; init idles until poweroff.
cat > "$dest/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::shutdown:/etc/init.d/rcK
EOF

cat > "$dest/etc/init.d/rcS" <<'EOF'
#!/bin/sh
# Runs once at boot (busybox init's sysinit): mount the API filesystems, run the workload
# with markers the host harness parses, then ask init to power off (which runs rcK).
export PATH=/bin:/sbin HOME=/root
mark() { echo "@@FSD $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
hostname -F /etc/hostname
mark INIT "$(uptime_s)"
echo 1 > /proc/sys/kernel/printk     # keep kernel messages out of the workload's output
if [ -f /etc/fsd/workload.sh ]; then
    mark BEGIN
    (cd /root && . /etc/fsd/workload.sh)
    status=$?
    mark END "$status"
else
    mark NO-WORKLOAD
fi
echo 7 > /proc/sys/kernel/printk
mark POWEROFF "$(uptime_s)"
poweroff
EOF

cat > "$dest/etc/init.d/rcK" <<'EOF'
#!/bin/sh
# Runs at shutdown, before init kills everything: flush, make / read-only (it cannot be
# unmounted) and say whether that worked; then unmount the rest and power off.
export PATH=/bin:/sbin
mark() { echo "@@FSD $*"; }
sync
if mount -o remount,ro /; then
    mark ROOT-RO "$(awk '$2 == "/" { print $3, $4 }' /proc/mounts)"
else
    mark ROOT-RO-FAILED
fi
mark DONE "$(cut -d' ' -f1 /proc/uptime)"
umount -a -r 2>/dev/null
# Nothing else runs and / is read-only: power off now rather than let init spend two
# one-second pauses signalling processes that do not exist (a fifth of a test boot).
poweroff -f
EOF
chmod 0755 "$dest/etc/init.d/rcS" "$dest/etc/init.d/rcK"
