#!/bin/bash
# Host packages fsd's development and tests need beyond the guest test bed (which
# contrib/testbed/build.sh installs itself). Idempotent; runs as root on Debian 12.
# fuse3: the setuid fusermount3 helper through which `fsd mount` mounts for an ordinary user.
# systemd: the service manager, systemctl and systemd-socket-activate that test the units in
# contrib/systemd (PID 1 need not be systemd).
# btrfs-progs: a btrfs image with a quota group limit, the one way this host kernel has to make
# a filesystem answer EDQUOT to root (tests/daemon/test_faults.py).
set -euo pipefail
missing=()
# libvirt: tests/guest/test_libvirt.py runs Debian's libvirt 9.0 against fsd-vhost-user. Not
# libvirt-daemon-system: it pulls in systemd-sysv (replacing the init) for its units; the test
# starts libvirtd itself in a private mount namespace.
# btrfs-progs: the fault tests make a btrfs with a quota group to get EDQUOT.
for pkg in python3 python3-venv python3-dev gcc socat fuse3 systemd btrfs-progs \
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup-host: please install: ${missing[*]} (as root)" >&2
        exit 1
    fi
    echo "setup-host: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
