"""A private libvirtd for tests: Debian 12's libvirt 9.0, run by the test as root in its own
mount namespace, so that it touches nothing of the host's libvirt set-up.

No systemd here: ``libvirtd`` runs in the foreground with its own config
(``libvirtd -f CONF -p PIDFILE``), its sockets in a directory of ours (``unix_sock_dir``).
The driver's state lives in fixed places (/etc/libvirt, /run/libvirt, /var/lib/libvirt,
/var/log/libvirt, /var/cache/libvirt): in the private mount namespace each is a directory of
ours bound over them, and so is /usr/share/qemu/vhost-user (the vhost-user descriptions
libvirt reads); on the host, at most their empty directories appear (as mount points).
Two more things need the namespace:

* libvirt's QEMU driver looks up the ``libvirt-qemu`` user at start-up even when qemu.conf
  says to run QEMU as root; Debian's libvirt-daemon-system creates that user (with systemd
  in tow), so an /etc/passwd and /etc/group with it are bound over the host's instead;
* our qemu.conf runs QEMU as root without per-domain namespaces, security drivers or
  virtlogd (``stdio_handler = "file"``): QEMU then reads the test's kernel and initrd where
  they are, and libvirt sees the same /dev/kvm access whoever asks (as libvirt-qemu, a
  root-only /dev/kvm made libvirt re-probe QEMU on every call: a minute per domain).

Domains are TCG (``<domain type='qemu'>``): KVM is not usable on these machines.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["PrivateLibvirtd", "libvirt_missing"]

#: Where the driver keeps its state, and the name of our stand-in for each.
_BOUND = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
    "vhost-user": "/usr/share/qemu/vhost-user",
}

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
namespaces = []
stdio_handler = "file"
"""

_START = """\
set -e
for pair in {pairs}; do
    mkdir -p "${{pair#*:}}"
    mount --bind "{root}/${{pair%%:*}}" "${{pair#*:}}"
done
mount --bind "{root}/passwd" /etc/passwd
mount --bind "{root}/group" /etc/group
exec libvirtd -f "{root}/etc/libvirtd.conf" -p "{root}/run/libvirtd.pid"
"""


def libvirt_missing() -> str | None:
    """Why a private libvirtd cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "libvirtd (privileged) and mount namespaces need root"
    for tool in ("libvirtd", "virsh", "unshare", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (contrib/setup-host.sh installs libvirt)"
    return None


class PrivateLibvirtd:
    """libvirtd in a mount namespace of its own, rooted at ``root``; ``virsh(...)`` talks
    to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name in (*_BOUND, "sock"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.sock = root / "sock" / "libvirt-sock"
        (root / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{root}/sock"\nunix_sock_rw_perms = "0700"\n'
            f'log_outputs = "3:file:{root}/libvirtd.log"\n'
        )
        (root / "etc" / "qemu.conf").write_text(QEMU_CONF)
        system = Path("/usr/share/qemu/vhost-user")
        for description in system.glob("*.json") if system.is_dir() else ():
            shutil.copy(description, root / "vhost-user" / description.name)
        self._accounts()
        script = _START.format(
            root=root, pairs=" ".join(f"{name}:{path}" for name, path in _BOUND.items())
        )
        (root / "start.sh").write_text(script)
        self.output = (root / "libvirtd.out").open("wb")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", str(root / "start.sh")],
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"libvirtd did not start: {self.log()}")
            time.sleep(0.1)

    def _accounts(self) -> None:
        """/etc/passwd and /etc/group with the libvirt-qemu user libvirt looks up."""
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if not any(line.startswith("libvirt-qemu:") for line in passwd.splitlines()):
            passwd += "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"
        if not any(line.startswith("libvirt-qemu:") for line in group.splitlines()):
            group += "libvirt-qemu:x:64055:\n"
        (self.root / "passwd").write_text(passwd)
        (self.root / "group").write_text(group)

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.sock}"

    def virsh(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run ``virsh`` against this libvirtd; its stdout."""
        done = subprocess.run(
            ["virsh", "-c", self.uri, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {done.stderr}\n{self.log()}")
        return done.stdout

    def domain_log(self, name: str) -> str:
        """What libvirt logged for domain ``name`` (its QEMU and virtiofs command lines)."""
        return self._read(self.root / "log" / "qemu" / f"{name}.log")

    def virtiofsd_log(self, name: str, alias: str = "fs0") -> str:
        """The stderr of the domain's virtiofs back-end (fsd's log)."""
        return self._read(self.root / "log" / "qemu" / f"{name}-{alias}-virtiofsd.log")

    def log(self) -> str:
        return self._read(self.root / "libvirtd.out") + self._read(self.root / "libvirtd.log")

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop libvirtd (its domains are already gone, or die with their console)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output.close()
