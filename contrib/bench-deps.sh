#!/bin/bash
# Everything the benchmarks compare fsd with, fetched and built into build/bench-deps/ without
# installing anything foreign on the host:
#
#   virtiofsd-rust/   the Rust virtiofsd 1.13 from Debian 13 (trixie), with trixie's libc6,
#                     libcap-ng0, libseccomp2 and libgcc-s1 beside it: `apt-get download` plus
#                     `dpkg-deb -x`, never installed (its package would replace QEMU's C
#                     virtiofsd, the other reference). bin/virtiofsd-rust runs it through the
#                     unpacked ld-linux with --library-path.
#   fuse3/            libfuse's passthrough_hp (C++), from this host's own Debian source
#                     package (`apt-get source fuse3`), built with meson: bin/passthrough_hp.
#   pyfuse3/          a venv with pyfuse3 from PyPI and its example passthroughfs.py (from the
#                     same version's sdist): bin/pyfuse3-passthrough.
#
# A private apt configuration under build/bench-deps/apt/ (its own sources list, lists and
# cache) reaches trixie and the host's deb-src without touching the system's apt sources. The
# mirror is the one the host's own apt sources use (FSD_DEBIAN_MIRROR overrides it).
# Host packages (fio for the guest benchmark, meson, libfuse3-dev, ...) come from the host's
# own apt sources. QEMU's C virtiofsd (/usr/lib/qemu/virtiofsd, qemu-system-common) is the C
# reference. Idempotent: finished parts are checked and skipped; runs as root on Debian 12.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${FSD_BENCH_DEPS_DIR:-$repo/build/bench-deps}
mkdir -p "$out/bin"
out=$(cd "$out" && pwd -P)  # wrappers name real paths, not a worktree's build/ symlink
exec 9> "$out/.lock"
flock 9

log() { printf 'bench-deps: %s\n' "$*" >&2; }
die() { printf 'bench-deps: ERROR: %s\n' "$*" >&2; exit 1; }

RUST_PACKAGES=(virtiofsd libc6 libcap-ng0 libseccomp2 libgcc-s1)
RUST_SUITE=trixie
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
C_VIRTIOFSD=/usr/lib/qemu/virtiofsd

# --- host packages ---------------------------------------------------------------------------
system_updated=0
system_update_once() {
    if [ "$system_updated" = 0 ]; then
        log "apt-get update (host sources)"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        system_updated=1
    fi
}
missing=()
for pkg in fio meson ninja-build pkg-config libfuse3-dev g++ dpkg-dev xz-utils \
    python3-venv qemu-system-common; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "please install (as root): ${missing[*]}"
    system_update_once
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
fi
[ -x "$C_VIRTIOFSD" ] || die "$C_VIRTIOFSD is missing (qemu-system-common without virtiofsd?)"
owner=$(dpkg-query -S "$C_VIRTIOFSD" 2>/dev/null | cut -d: -f1 || true)
[ "$owner" = qemu-system-common ] \
    || die "$C_VIRTIOFSD belongs to '${owner:-no package}', not qemu-system-common: the C reference is gone"

# --- the private apt configuration -----------------------------------------------------------
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || die "no VERSION_CODENAME in /etc/os-release"
host_mirror() {
    # The Debian archive (not -security) that the host's own apt sources point at.
    apt-get indextargets --format '$(REPO_URI)' 'Origin: Debian' 'Label: Debian' \
        'Identifier: Packages' 2>/dev/null | head -n 1
}
mirror=${FSD_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(host_mirror)
    if [ -z "$mirror" ]; then
        system_update_once
        mirror=$(host_mirror)
    fi
fi
[ -n "$mirror" ] || die "cannot find a Debian mirror in the host's apt sources; set FSD_DEBIAN_MIRROR"

apt_dir=$out/apt
private_apt_ready=0
private_apt_setup() {
    # Write the private configuration and update its lists, once per run.
    if [ "$private_apt_ready" = 0 ]; then
        mkdir -p "$apt_dir/etc/sources.list.d" "$apt_dir/etc/preferences.d" \
            "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial"
        touch "$apt_dir/state/status"
        cat > "$apt_dir/etc/sources.list" <<EOF
deb [signed-by=$KEYRING] $mirror $RUST_SUITE main
deb-src [signed-by=$KEYRING] $mirror $codename main
EOF
        cat > "$apt_dir/apt.conf" <<EOF
Dir::Etc::sourcelist "$apt_dir/etc/sources.list";
Dir::Etc::sourceparts "$apt_dir/etc/sources.list.d";
Dir::Etc::preferences "$apt_dir/etc/preferences";
Dir::Etc::preferencesparts "$apt_dir/etc/preferences.d";
Dir::State "$apt_dir/state";
Dir::State::status "$apt_dir/state/status";
Dir::Cache "$apt_dir/cache";
APT::Architecture "amd64";
APT::Sandbox::User "root";
EOF
        log "apt-get update (private: $RUST_SUITE binaries, $codename sources, from $mirror)"
        APT_CONFIG=$apt_dir/apt.conf apt-get update -qq >&2 \
            || die "apt-get update of the private configuration ($mirror $RUST_SUITE) failed"
        private_apt_ready=1
    fi
}
private_apt() { APT_CONFIG=$apt_dir/apt.conf apt-get "$@"; }

# --- the Rust virtiofsd ----------------------------------------------------------------------
rust=$out/virtiofsd-rust
if [ -x "$rust/root/usr/libexec/virtiofsd" ] && [ -e "$rust/root/usr/lib64/ld-linux-x86-64.so.2" ]; then
    log "Rust virtiofsd: unpacked"
else
    rm -rf "$rust.new"
    mkdir -p "$rust.new/debs" "$rust.new/root"
    private_apt_setup
    log "downloading ${RUST_PACKAGES[*]} from $RUST_SUITE"
    (cd "$rust.new/debs" && private_apt download -qq "${RUST_PACKAGES[@]}" >&2) \
        || die "apt-get download ${RUST_PACKAGES[*]} from $RUST_SUITE failed: no Rust virtiofsd"
    for deb in "$rust.new/debs"/*.deb; do
        dpkg-deb -x "$deb" "$rust.new/root" || die "dpkg-deb -x $deb failed"
    done
    for file in usr/lib64/ld-linux-x86-64.so.2 usr/libexec/virtiofsd; do
        [ -e "$rust.new/root/$file" ] || die "the $RUST_SUITE packages have no $file"
    done
    rm -rf "$rust"
    mv "$rust.new" "$rust"
fi
cat > "$out/bin/virtiofsd-rust" <<EOF
#!/bin/sh
# The Rust virtiofsd from Debian $RUST_SUITE with its own glibc (written by contrib/bench-deps.sh).
root=$rust/root
exec "\$root/usr/lib64/ld-linux-x86-64.so.2" \\
    --library-path "\$root/usr/lib/x86_64-linux-gnu:\$root/lib/x86_64-linux-gnu" \\
    "\$root/usr/libexec/virtiofsd" "\$@"
EOF
chmod +x "$out/bin/virtiofsd-rust"
version=$("$out/bin/virtiofsd-rust" --version 2>&1) \
    || die "the unpacked Rust virtiofsd does not run: $version"
log "Rust virtiofsd: $version"

# --- libfuse's passthrough_hp from Debian's fuse3 source package ----------------------------
fuse=$out/fuse3
if [ -x "$fuse/build/example/passthrough_hp" ]; then
    log "passthrough_hp: built"
else
    rm -rf "$fuse"
    mkdir -p "$fuse/src"
    private_apt_setup
    log "apt-get source fuse3 ($codename)"
    (cd "$fuse/src" && private_apt source -qq fuse3 >&2) \
        || die "apt-get source fuse3 ($codename deb-src) failed: no passthrough_hp"
    tree=$(find "$fuse/src" -mindepth 1 -maxdepth 1 -type d -name 'fuse3-*' | head -n 1)
    [ -n "$tree" ] || die "apt-get source fuse3 left no source tree"
    log "building passthrough_hp with meson ($(basename "$tree"))"
    meson setup "$fuse/build" "$tree" --buildtype=debugoptimized -Dexamples=true \
        -Dutils=false -Dtests=false > "$fuse/meson.log" 2>&1 \
        || die "meson setup failed, see $fuse/meson.log"
    ninja -C "$fuse/build" example/passthrough_hp > "$fuse/ninja.log" 2>&1 \
        || die "building passthrough_hp failed, see $fuse/ninja.log"
fi
ln -sfn "$fuse/build/example/passthrough_hp" "$out/bin/passthrough_hp"

# --- pyfuse3 and its example passthroughfs.py ------------------------------------------------
py=$out/pyfuse3
if [ -x "$py/venv/bin/python" ] && [ -f "$py/passthroughfs.py" ] \
    && "$py/venv/bin/python" -c 'import pyfuse3' 2> /dev/null; then
    log "pyfuse3: $("$py/venv/bin/python" -c 'import pyfuse3; print(pyfuse3.__version__)')"
else
    rm -rf "$py"
    mkdir -p "$py/sdist"
    log "pyfuse3: venv and pip install"
    python3 -m venv "$py/venv" || die "python3 -m venv failed"
    "$py/venv/bin/pip" install -q pyfuse3 > "$py/pip.log" 2>&1 \
        || die "pip install pyfuse3 failed, see $py/pip.log"
    version=$("$py/venv/bin/python" -c 'import pyfuse3; print(pyfuse3.__version__)')
    "$py/venv/bin/pip" download -q --no-deps --no-binary :all: "pyfuse3==$version" \
        -d "$py/sdist" >> "$py/pip.log" 2>&1 \
        || die "pip download of the pyfuse3 $version sdist failed, see $py/pip.log"
    sdist=$(find "$py/sdist" -name "pyfuse3-$version.tar.gz" | head -n 1)
    [ -n "$sdist" ] || die "no pyfuse3-$version.tar.gz sdist"
    tar -xzf "$sdist" -C "$py" --strip-components=2 "pyfuse3-$version/examples/passthroughfs.py" \
        || die "the pyfuse3 $version sdist has no examples/passthroughfs.py"
    log "pyfuse3: $version"
fi
cat > "$out/bin/pyfuse3-passthrough" <<EOF
#!/bin/sh
# pyfuse3's example passthrough file system (written by contrib/bench-deps.sh).
exec "$py/venv/bin/python" "$py/passthroughfs.py" "\$@"
EOF
chmod +x "$out/bin/pyfuse3-passthrough"
log "ready in $out/bin: $(cd "$out/bin" && echo *)"
