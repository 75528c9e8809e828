"""libvirt defines and boots a TCG domain whose ``<filesystem>`` runs fsd (issue 9, item 3).

Debian 12's libvirt 9.0 (libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients;
contrib/setup-host.sh installs them) runs in a private mount namespace (tests/guest/libvirtd.py).
The domain's ``<memoryBacking>`` and ``<filesystem>`` are docs/vmms.md's; libvirt makes the
vhost-user socket, starts ``fsd-vhost-user --fd=N -o source=...`` itself, and boots the test
bed's kernel and initramfs directly; the guest mounts the share and reads and writes through
it. A second test checks that fsd's vhost-user description does not take over domains that
name no ``<binary>``, and does once installed under a name that sorts first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.guest import GuestImage, parse_console, write_workload_initrd
from tests.guest.docs_blocks import block, command, localize
from tests.guest.libvirtd import PrivateLibvirtd, libvirt_missing
from tests.guest.replay import FSD_VHOST_USER, WORKLOAD, check_share

pytestmark = [
    pytest.mark.guest,
    pytest.mark.skipif(libvirt_missing() is not None, reason=str(libvirt_missing())),
]

REPO = Path(__file__).resolve().parents[2]

DOMAIN = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  {memory_backing}
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{qemu}</emulator>
    {filesystem}
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[PrivateLibvirtd]:
    with tempfile.TemporaryDirectory(prefix="fsd-libvirt-") as root:
        daemon = PrivateLibvirtd(Path(root))
        try:
            yield daemon
        finally:
            daemon.stop()


@pytest.fixture
def share(tmp_path: Path) -> Path:
    path = tmp_path / "share"
    path.mkdir()
    (path / "host.txt").write_text("from-host")
    return path


def _boot(
    libvirtd: PrivateLibvirtd, tmp_path: Path, guest_image: GuestImage, name: str, filesystem: str
) -> str:
    """Define, start and wait out the domain; its console."""
    initrd = write_workload_initrd(tmp_path / "initrd.cpio", WORKLOAD, guest_image=guest_image)
    console = tmp_path / "console.log"
    xml = DOMAIN.format(
        name=name,
        memory_backing=block("libvirt-memory"),
        kernel=guest_image.kernel.resolve(),
        initrd=initrd,
        qemu=shutil.which("qemu-system-x86_64"),
        filesystem=filesystem,
        console=console,
    )
    (tmp_path / "domain.xml").write_text(xml)
    libvirtd.virsh("define", str(tmp_path / "domain.xml"))
    try:
        libvirtd.virsh("start", name)
        deadline = time.monotonic() + 180
        while libvirtd.virsh("domstate", name).strip() != "shut off":
            if time.monotonic() > deadline:
                libvirtd.virsh("destroy", name, check=False)
                raise AssertionError(f"the domain did not finish:\n{console.read_text()}")
            time.sleep(0.2)
    finally:
        libvirtd.virsh("undefine", name, check=False)
    return console.read_text(errors="replace")


def _filesystem(share: Path) -> str:
    return localize(
        block("libvirt-filesystem"),
        {"/srv/share": str(share), "/usr/local/bin/fsd-vhost-user": FSD_VHOST_USER},
    )


def test_libvirt_boots_a_domain_served_by_fsd(
    libvirtd: PrivateLibvirtd, guest_image: GuestImage, share: Path, tmp_path: Path
) -> None:
    console = _boot(libvirtd, tmp_path, guest_image, "fsd-docs", _filesystem(share))
    output, status = parse_console(console)
    fsd_log = libvirtd.virtiofsd_log("fsd-docs")
    assert status == 0, f"{console}\n--- fsd ---\n{fsd_log}\n--- libvirt ---\n{libvirtd.log()}"
    got = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    check_share(share, got)
    assert got["xattr"] == "ok=1"  # xattr='on'
    # The command line libvirt 9.0 ran is the one docs/vmms.md shows.
    launched = re.search(
        rf"^{re.escape(FSD_VHOST_USER)} (.*)$", libvirtd.domain_log("fsd-docs"), re.M
    )
    assert launched is not None, libvirtd.domain_log("fsd-docs")
    fd = re.match(r"--fd=(\d+) ", launched.group(1))
    assert fd is not None
    documented = command(
        "libvirt-9.0-command", {"/srv/share": str(share), "--fd=N": f"--fd={fd.group(1)}"}
    )
    assert [FSD_VHOST_USER, *launched.group(1).split()] == [FSD_VHOST_USER, *documented[1:]]
    assert "front-end connected" in fsd_log and "cache=always" in fsd_log


def test_the_vhost_user_description_does_not_take_over(
    libvirtd: PrivateLibvirtd, guest_image: GuestImage, share: Path, tmp_path: Path
) -> None:
    """A domain without ``<binary>`` keeps the distribution's virtiofsd when fsd's
    description is installed as documented, and gets fsd under a name that sorts first."""
    descriptions = libvirtd.root / "vhost-user"
    if not (descriptions / "50-qemu-virtiofsd.json").exists():
        pytest.skip("no 50-qemu-virtiofsd.json here (qemu-system-common)")
    install = command(
        "libvirt-json",
        {"/etc/qemu/vhost-user/": f"{descriptions}/", "contrib/": f"{REPO}/contrib/"},
    )
    subprocess.run(install, check=True)
    installed = descriptions / "60-fsd.json"
    installed.write_text(
        installed.read_text().replace("/usr/local/bin/fsd-vhost-user", FSD_VHOST_USER)
    )
    plain = re.sub(r"<binary.*?</binary>", "", _filesystem(share), flags=re.S)
    try:
        _boot(libvirtd, tmp_path, guest_image, "fsd-json-60", plain)
        assert "/usr/lib/qemu/virtiofsd" in libvirtd.domain_log("fsd-json-60")
        assert FSD_VHOST_USER not in libvirtd.domain_log("fsd-json-60")
        first = installed.rename(descriptions / "40-fsd.json")
        try:
            console = _boot(libvirtd, tmp_path, guest_image, "fsd-json-40", plain)
        finally:
            first.unlink()
        assert FSD_VHOST_USER in libvirtd.domain_log("fsd-json-40")
        assert parse_console(console)[1] == 0, console
    finally:
        installed.unlink(missing_ok=True)


def test_libvirt_is_debian_12s(libvirtd: PrivateLibvirtd) -> None:
    """The version whose command lines the tests above replay (qemu_virtiofs.c)."""
    assert "libvirt 9.0.0" in libvirtd.virsh("version")
