"""`make demo`: a real Linux guest mounts a host directory through fsd and the two talk.

The host writes a file, starts ``fsd serve`` and boots a guest under QEMU (test bed from
contrib/testbed/build.sh). The guest reads the host's file and writes one back; halfway, it
pauses so the host can look at the guest's file while the guest still runs. With
``--allowlist`` the host also changes fsd's path allowlist while the guest runs and the guest
sees each change. The transcript says who did what.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

# Run as a script, Python puts contrib/ on sys.path, not the checkout holding fsd.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402

from fsd.testing.guest import (  # noqa: E402
    BackendError,
    GuestImage,
    GuestResult,
    build_testbed,
    fsd_env,
    fsd_serve_command,
    run_guest,
    running_backend,
    virtiofsd_command,
)

HOST_TEXT = "Hello from the host: this file was written before the guest booted.\n"

BASIC_WORKLOAD = r"""
show() { echo "\$ $*"; eval "$@"; }
echo "guest kernel $(uname -r), virtio-fs tag '$TAG' mounted on $MNT"
show ls -l
show cat hello-from-host.txt
show 'echo "Hello from the guest (uptime $(cut -d" " -f1 /proc/uptime) s)" > hello-from-guest.txt'
echo "(asking the host to look at it while the guest runs)"
echo "host says: $(host_step look hello-from-guest.txt)"
show ls -l
"""

# The allowlist scenario: everything hidden, then /public and /inbox allowed, then /public
# revoked. drop_caches makes the guest forget dentries it cached before the revocation
# (otherwise it trusts them for the entry timeout, as with any virtio-fs backend).
ALLOWLIST_WORKLOAD = r"""
show() { echo "\$ $*"; eval "$@"; }
failures=0
expect() {  # expect visible|hidden PATH: say what the guest sees, count surprises
    if [ -e "$2" ]; then seen=visible; else seen=hidden; fi
    if [ "$seen" = "$1" ]; then echo "ok: $2 is $seen"
    else echo "UNEXPECTED: $2 is $seen, expected $1"; failures=$((failures + 1)); fi
}
echo "guest kernel $(uname -r), virtio-fs tag '$TAG' mounted on $MNT"
echo "-- the allowlist starts empty: the guest sees nothing"
show ls -la
expect hidden public/hello.txt
expect hidden secret/plans.txt
echo "host says: $(host_step allow /public /inbox)"
show ls -l
show cat public/hello.txt
expect hidden secret/plans.txt
show 'echo "Hello from the guest" > inbox/hello-from-guest.txt'
echo "host says: $(host_step revoke /public)"
echo 2 > /proc/sys/vm/drop_caches
show ls -l
expect hidden public/hello.txt
expect visible inbox/hello-from-guest.txt
exit "$failures"
"""


def say(who: str, text: str) -> None:
    for line in text.splitlines() or [""]:
        print(f"{who:6}| {line}", flush=True)


class Transcript:
    """Prints the guest's workload output live, the way the console shows it."""

    def __init__(self) -> None:
        self.in_workload = False

    def on_line(self, line: str) -> None:
        if "@@FSD MOUNTED" in line:
            say("guest", "(virtio-fs mounted)")
        elif "@@FSD BEGIN" in line:
            self.in_workload = True
        elif "@@FSD END" in line:
            self.in_workload = False
        elif self.in_workload and "@@FSD" not in line:
            say("guest", line)


class AllowlistError(Exception):
    """The allowlist client failed; the guest hears about it and the demo goes on."""


async def allowlist(control: Path, verb: str, paths: list[str]) -> str:
    """Change fsd's allowlist with its own client, as an operator would."""
    argv = [sys.executable, "-m", "fsd", "allowlist", "--socket", str(control), verb, *paths]
    say("host", "$ fsd allowlist --socket CTRL " + " ".join([verb, *paths]))
    done = await trio.run_process(
        argv, capture_stdout=True, capture_stderr=True, env=fsd_env(), check=False
    )
    text = (done.stdout + done.stderr).decode().strip()
    if done.returncode != 0:
        raise AllowlistError(text or f"exit status {done.returncode}")
    return text or "ok"


async def demo(args: argparse.Namespace) -> int:
    guest_image = GuestImage.default()
    if not guest_image.exists():
        say("host", "building the guest test bed (contrib/testbed/build.sh)")
        guest_image = build_testbed()
    shared = REPO_ROOT / "build" / "demo" / "shared"
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir(parents=True)

    if args.allowlist:
        (shared / "public").mkdir()
        (shared / "public" / "hello.txt").write_text(HOST_TEXT)
        (shared / "secret").mkdir()
        (shared / "secret" / "plans.txt").write_text("not for the guest\n")
        (shared / "inbox").mkdir()
        guest_file = shared / "inbox" / "hello-from-guest.txt"
        workload = ALLOWLIST_WORKLOAD
    else:
        (shared / "hello-from-host.txt").write_text(HOST_TEXT)
        guest_file = shared / "hello-from-guest.txt"
        workload = BASIC_WORKLOAD
    say("host", f"shared directory {shared}")
    for path in sorted(p for p in shared.rglob("*") if p.is_file()):
        say("host", f"  {path.relative_to(shared)}: {path.read_text().strip()!r}")

    with tempfile.TemporaryDirectory(prefix="fsd-demo-") as tmp:
        socket_path = Path(tmp) / "fs.sock"
        control = Path(tmp) / "allowlist.sock"
        if args.backend == "virtiofsd":
            argv = virtiofsd_command(socket_path, shared)
        else:
            extra = ["--allowlist-socket-path", str(control)] if args.allowlist else []
            argv = fsd_serve_command(socket_path, shared, *extra)
        shown = ["fsd", *argv[3:]] if argv[0] == sys.executable else argv
        say("host", "$ " + " ".join(shown))
        log_path = REPO_ROOT / "build" / "demo" / "backend.log"

        async def on_step(name: str, words: list[str]) -> str:
            if name == "look":
                text = (shared / words[0]).read_text().strip()
                say("host", f"(guest paused) the host reads {words[0]}: {text!r}")
                return f"I can see your file, {len(text)} characters"
            if name in ("allow", "revoke"):
                verb = "add" if name == "allow" else "remove"
                try:
                    reply = await allowlist(control, verb, words)
                except AllowlistError as exc:
                    say("host", f"the allowlist client failed: {exc}")
                    return f"!{exc}"
                say("host", reply)
                return f"allowlist {verb} {' '.join(words)}: {reply}"
            return f"!unknown step {name}"

        try:
            async with running_backend(argv, socket_path, log_path=log_path, env=fsd_env()):
                say("host", "booting the guest: QEMU q35, TCG, 1 vCPU, vhost-user-fs-pci")
                transcript = Transcript()
                result = await run_guest(
                    workload,
                    socket_path=socket_path,
                    guest_image=guest_image,
                    on_step=on_step,
                    on_line=transcript.on_line,
                    time_limit=args.time_limit,
                )
        except BackendError as exc:
            say("host", f"the backend did not start:\n{exc}")
            return 1
    return report(result, guest_file, log_path)


def report(result: GuestResult, guest_file: Path, log_path: Path) -> int:
    console_path = log_path.with_name("console.log")
    console_path.write_text(result.console + "\n")
    if result.exit_status is None:
        say("host", result.describe())
    elif result.exit_status != 0:
        say("host", f"the guest's workload failed (exit status {result.exit_status}, see above)")
    if result.exit_status != 0:
        say("host", f"guest console: {console_path}\nbackend log: {log_path}")
        return 1
    say("host", f"the guest powered off; {guest_file.name} on the host now reads:")
    say("host", f"  {guest_file.read_text().strip()!r}")
    print()
    boot = result.boot_to_mount_seconds or float("nan")
    uptime = result.guest_uptime_at_mount or float("nan")
    print(
        textwrap.dedent(f"""\
        boot to mount: {boot:.2f} s (QEMU start to virtio-fs mounted; guest uptime {uptime:.2f} s)
        whole run:     {result.total_seconds:.2f} s (QEMU start to power-off)""")
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=["fsd", "virtiofsd"],
        default="fsd",
        help="serve the share with fsd (default) or QEMU's C virtiofsd, for comparison",
    )
    parser.add_argument(
        "--allowlist",
        action="store_true",
        help="also change fsd's path allowlist while the guest runs (needs fsd's allowlist)",
    )
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds for the guest")
    args = parser.parse_args()
    if args.allowlist and args.backend != "fsd":
        parser.error("--allowlist needs --backend fsd")
    return trio.run(demo, args)


if __name__ == "__main__":
    raise SystemExit(main())
