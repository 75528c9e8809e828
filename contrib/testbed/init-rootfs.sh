#!/bin/sh
# /init of the test bed's initramfs when the guest's root filesystem is virtio-fs.
#
# The Debian kernel has virtiofs as a module (CONFIG_VIRTIO_FS=m), so the kernel's own
# "rootfstype=virtiofs root=TAG" cannot mount the root: this init does what it would have done.
# It loads the modules the base initramfs carries, reads root=, rootfstype=, rootflags=, ro/rw
# and init= from /proc/cmdline, mounts the tag on /newroot and switch_roots into its init.
# The harness appends this file as /init over the base initramfs (a later cpio entry wins).
#
# No devtmpfs here: stdio stays on the initramfs's own /dev/console node, so nothing mounted
# here is left busy, and the new root's init mounts /proc, /sys and /dev itself.
export PATH=/bin
mount -t proc proc /proc
. /lib/fsd/functions.sh

fsd_mark BOOTED "$(fsd_uptime)"
ROOT= FSTYPE=virtiofs FLAGS= MODE=ro INIT=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) ROOT=${arg#root=} ;;
        rootfstype=*) FSTYPE=${arg#rootfstype=} ;;
        rootflags=*) FLAGS=${arg#rootflags=} ;;
        init=*) INIT=${arg#init=} ;;
        ro | rw) MODE=$arg ;;
    esac
done
[ -n "$ROOT" ] || fsd_fail "no root= on the kernel command line"
[ "$FSTYPE" = virtiofs ] || fsd_fail "rootfstype=$FSTYPE: this init mounts only virtiofs"

while read -r mod; do
    insmod "$mod" || fsd_fail "insmod $mod failed"
done < /lib/fsd/modules
mkdir -p /newroot
mount -t virtiofs -o "$MODE${FLAGS:+,$FLAGS}" "$ROOT" /newroot \
    || fsd_fail "mount -t virtiofs -o $MODE${FLAGS:+,$FLAGS} $ROOT failed"
[ -x "/newroot$INIT" ] || [ -L "/newroot$INIT" ] || fsd_fail "no $INIT in the root tree"
fsd_mark MOUNTED "$(fsd_uptime)" root
umount /proc
exec switch_root /newroot "$INIT"
