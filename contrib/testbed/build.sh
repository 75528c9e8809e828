#!/bin/bash
# Build the guest test bed: a Debian cloud kernel and a busybox initramfs whose /init mounts
# virtio-fs and runs a per-run workload (appended as a second cpio archive at boot time).
#
# Idempotent: a finished build leaves build/testbed/.stamp; when the stamp matches this
# script, the kernel package and the init sources, the script exits in well under a second.
# Runs as root on a fresh Debian 12 (CI) or on a developer machine that already has the tools.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${FSD_TESTBED_DIR:-$repo/build/testbed}
mkdir -p "$out"
# One builder at a time (parallel test sessions, make -j): the others wait, then find it done.
exec 9> "$out/.lock"
flock 9

log() { printf 'testbed: %s\n' "$*" >&2; }

# --- host packages -------------------------------------------------------------------------
apt_updated=0
apt_update_once() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        apt_updated=1
    fi
}
missing=()
for pkg in qemu-system-x86 busybox-static cpio kmod gcc libc6-dev; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# --- guest kernel: resolve the metapackage to the real image package ------------------------
resolve_kernel() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ { print $2; exit }'
}
kpkg=$(resolve_kernel || true)
if [ -z "$kpkg" ]; then
    apt_update_once
    kpkg=$(resolve_kernel)
fi
[ -n "$kpkg" ] || { log "cannot resolve linux-image-cloud-amd64"; exit 1; }

stamp="$kpkg $(cat "$here/build.sh" "$here/init.sh" "$here/guest-functions.sh" "$here/fsdprobe.c" | sha256sum | cut -d' ' -f1)"
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ] \
    && [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio" ]; then
    log "up to date ($kpkg)"
    exit 0
fi
rm -f "$out/.stamp"

kdir="$out/kernel/$kpkg"
if [ ! -d "$kdir/boot" ]; then
    log "downloading $kpkg"
    dl="$out/download"
    rm -rf "$dl" && mkdir -p "$dl"
    # As root, apt would drop to the _apt user, which cannot write here; it only warns.
    download() { (cd "$dl" && apt-get download -q -o APT::Sandbox::User=root "$kpkg" >&2); }
    if ! download; then
        apt_update_once
        download
    fi
    rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
    dpkg-deb -x "$dl"/"$kpkg"_*.deb "$kdir.tmp"
    mv "$kdir.tmp" "$kdir"
    rm -rf "$dl"
    # Older kernels (the metapackage moved on) are no longer needed.
    find "$out/kernel" -mindepth 1 -maxdepth 1 ! -name "$kpkg" -exec rm -rf {} +
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -n1)
kver=${vmlinuz##*/vmlinuz-}
moddir="$kdir/lib/modules/$kver"
# The package ships no modules.dep (its postinst runs depmod): generate it in the unpacked tree.
[ -f "$moddir/modules.dep" ] || depmod -b "$kdir" "$kver"
cp "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"

# --- modules, in load order, from modules.dep --------------------------------------------------
# modules.dep lines are "path/mod.ko[.xz]: dep1 dep2 ..." with dependencies listed so that the
# last one must be loaded first. A depth-first walk gives a valid order for several targets.
declare -A dep_of=() name_of=() seen=()
while IFS= read -r line; do
    mod=${line%%:*}
    deps=${line#*:}
    base=${mod##*/}
    base=${base%%.ko*}
    name_of[${base//-/_}]=$mod
    dep_of[$mod]=$deps
done < "$moddir/modules.dep"
order=()
visit() {
    local mod=$1 i deps
    [ -n "${seen[$mod]:-}" ] && return 0
    seen[$mod]=1
    read -r -a deps <<< "${dep_of[$mod]}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
        visit "${deps[i]}"
    done
    order+=("$mod")
}
want_module() {
    local want=$1
    if [ -n "${name_of[$want]:-}" ]; then
        visit "${name_of[$want]}"
    elif grep -q "/$want.ko" "$moddir/modules.builtin" 2>/dev/null; then
        log "$want is built in"
    else
        log "module $want not found in $moddir/modules.dep"; exit 1
    fi
}
for want in virtio virtio_ring virtio_pci fuse virtiofs; do
    want_module "$want"
done
boot_modules=${#order[@]}
# Shipped but loaded only by the workloads that need them (load_module in functions.sh):
# overlay, for the tests that use the share as an overlayfs lower layer.
for want in overlay; do
    want_module "$want"
done
log "modules: ${order[*]:0:boot_modules}; on demand: ${order[*]:boot_modules}"

# --- initramfs -----------------------------------------------------------------------------------
stage="$out/stage"
rm -rf "$stage"
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,mnt,tmp,etc,root,home/user,lib/modules,lib/fsd}
cp /bin/busybox "$stage/bin/busybox"
# fsdprobe: the syscalls busybox has no applet for (xattrs, locks, renameat2, O_TMPFILE, ...).
gcc -static -O2 -Wall -o "$stage/bin/fsdprobe" "$here/fsdprobe.c"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
done
: > "$stage/lib/fsd/modules"
for i in "${!order[@]}"; do
    mod=${order[i]}
    base=${mod##*/}
    case "$base" in
        *.ko.xz) xz -dc "$moddir/$mod" > "$stage/lib/modules/${base%.xz}" ;;
        *.ko.zst) zstd -qdc "$moddir/$mod" > "$stage/lib/modules/${base%.zst}" ;;
        *.ko.gz) gzip -dc "$moddir/$mod" > "$stage/lib/modules/${base%.gz}" ;;
        *.ko) cp "$moddir/$mod" "$stage/lib/modules/$base" ;;
        *) log "unknown module format: $mod"; exit 1 ;;
    esac
    [ "$i" -ge "$boot_modules" ] || echo "/lib/modules/${base%.ko*}.ko" >> "$stage/lib/fsd/modules"
done
cat > "$stage/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:unprivileged test user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$stage/etc/group" <<'GROUP'
root:x:0:
user:x:1000:
extra:x:1001:user
nogroup:x:65534:
GROUP
chown 1000:1000 "$stage/home/user"
chmod 1777 "$stage/tmp"
install -m 0755 "$here/init.sh" "$stage/init"
install -m 0644 "$here/guest-functions.sh" "$stage/lib/fsd/functions.sh"
echo "$kver" > "$stage/lib/fsd/kernel-version"
mknod -m 0600 "$stage/dev/console" c 5 1 2>/dev/null || true
# Uncompressed: under TCG, gunzip in the guest costs more than reading a few extra MB.
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible) \
    > "$out/initramfs.cpio.tmp" 2>/dev/null \
    || (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) > "$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
rm -rf "$stage"
echo "$stamp" > "$out/.stamp"
log "built $out (kernel $kver, initramfs $(du -h "$out/initramfs.cpio" | cut -f1))"
