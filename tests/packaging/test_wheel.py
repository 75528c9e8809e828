"""The wheels as pip builds them: the fsd wheel ships every file its own code names (the docs
its help texts and docstrings cite, the guest test bed fsd.testing.guest builds from) or the
file is listed below as checkout-only and the README's Install section says so; the license
metadata is the SPDX form with the license text inside; an installed copy, run from outside
the checkout, finds its docs and test bed and builds nothing into its own directory."""

from __future__ import annotations

import email.parser
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsd.testing.guest import REPO_ROOT
from tests.source_tree import copy_source_tree, source_files

#: Paths the code names that stay in the source tree, and why.
CHECKOUT_ONLY = {
    "contrib/measure-sandbox.py": "a developer tool that measures the seccomp list the wheel ships",
    "contrib/bench_transport.py": "a benchmark, cited for the measurement behind a design choice",
    "contrib/vhost-user/": "a VMM manager's description file, installed by hand next to QEMU's",
}
#: Paths that belong to another project's tree.
FOREIGN = {
    "docs/interop/vhost-user.rst": "QEMU's documentation",
    "docs/interop/vhost-user.json": "QEMU's schema of the back-end descriptions",
}
#: Where a source-tree directory lives in the wheel.
SHIPPED_AS = {"docs/": "fsd/docs/", "contrib/testbed/": "fsd/testing/testbed/"}

REFERENCE = re.compile(r"(?<![\w./-])((?:docs|contrib)/[\w./-]*[\w/])")


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build sees only what a clone has, and writes its build/ and egg-info there."""
    return copy_source_tree(tmp_path_factory.mktemp("src"))


def build_wheel(project: Path, dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(project), "--no-deps", "-q", "-w", str(dest)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = dest.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(source_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(source_tree, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        [meta] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(zf.read(meta).decode())


def code_references() -> Iterator[tuple[str, str]]:
    """(file, path) for each docs/... or contrib/... path named in fsd's and the plugins'
    Python files."""
    for name in source_files("fsd/*.py", "plugins/*.py"):
        for match in REFERENCE.finditer((REPO_ROOT / name).read_text()):
            yield name, match.group(1).rstrip(".")


def in_wheel(path: str, names: set[str]) -> bool:
    for source, target in SHIPPED_AS.items():
        if path.startswith(source):
            shipped = target + path[len(source) :]
            return shipped in names or any(n.startswith(shipped.rstrip("/") + "/") for n in names)
    return False


def test_every_path_the_code_names_is_shipped_or_checkout_only(names: set[str]) -> None:
    install = readme_install_section()
    missing = []
    for source, path in code_references():
        if path in FOREIGN or in_wheel(path, names):
            continue
        if path in CHECKOUT_ONLY:
            top = path.split("/")[0] + "/"
            assert top in install, f"README's Install section must say {top} is checkout-only"
            assert (REPO_ROOT / path).exists(), f"{source} names {path}, which does not exist"
            continue
        missing.append(f"{source}: {path}")
    assert not missing, "named by the code but neither shipped nor checkout-only:\n" + "\n".join(
        missing
    )


def test_docs_and_testbed_are_whole(names: set[str]) -> None:
    for source in source_files("docs", "contrib/testbed"):
        assert in_wheel(source, names), f"{source} is not in the wheel"
    for source in source_files("fsd/*.py"):
        assert source in names, f"{source} is not in the wheel"
    assert "fsd/py.typed" in names


def test_license_metadata(wheel: Path, names: set[str]) -> None:
    meta = metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert not [c for c in meta.get_all("Classifier", []) if c.startswith("License ::")]
    assert f"fsd-{meta['Version']}.dist-info/licenses/LICENSE" in names
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL", []))
    assert {"Homepage", "Documentation", "Changelog", "Issues"} <= set(urls)
    assert meta["Requires-Python"] == ">=3.11"
    assert "Apache License" in (REPO_ROOT / "LICENSE").read_text()[:200]


@pytest.mark.parametrize("plugin", sorted(p.name for p in (REPO_ROOT / "plugins").iterdir()))
def test_plugin_wheels(plugin: str, source_tree: Path, tmp_path: Path) -> None:
    wheel = build_wheel(source_tree / "plugins" / plugin, tmp_path)
    meta = metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    with zipfile.ZipFile(wheel) as zf:
        [license_file] = [n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert zf.read(license_file) == (REPO_ROOT / "LICENSE").read_bytes()
    fsd_urls = metadata_urls(REPO_ROOT / "pyproject.toml")
    assert (
        metadata_urls(REPO_ROOT / "plugins" / plugin / "pyproject.toml")["Homepage"]
        == (fsd_urls["Homepage"])
    )


def metadata_urls(pyproject: Path) -> dict[str, str]:
    urls: dict[str, str] = tomllib.loads(pyproject.read_text())["project"]["urls"]
    return urls


def readme_install_section() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("\n## Install")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


INSTALLED_CHECK = """
import json, os, sys
import fsd, fsd.resources as r, fsd.testing.guest as g
print(json.dumps({
    "fsd": fsd.__file__,
    "checkout": str(r.checkout_root()),
    "filesystem_doc": r.doc_path("filesystem.md").is_file(),
    "build_script": g.BUILD_SCRIPT.is_file(),
    "rootfs_script": g.ROOTFS_SCRIPT.is_file(),
    "rootfs_init": g.ROOTFS_INIT.is_file(),
    "guest_image_dir": str(r.guest_image_dir()),
    "pythonpath": g.fsd_env().get("PYTHONPATH"),
}))
"""


def test_installed_wheel_finds_its_files(wheel: Path, tmp_path: Path) -> None:
    """Installed with pip (not editable), imported without the checkout on sys.path: the docs
    the help names and the test bed scripts are there, and the test bed is built in the
    user's cache, not in the package."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages")
    # -S: no site module, so neither the editable install's finder nor the checkout is seen;
    # the dependencies come from this venv's site-packages as a plain path entry.
    env = {
        "PYTHONPATH": f"{target}{os.pathsep}{deps}",
        "HOME": str(tmp_path / "home"),
        "PATH": os.environ["PATH"],
    }
    run = [sys.executable, "-S"]
    result = subprocess.run(
        [*run, "-c", INSTALLED_CHECK], env=env, cwd=tmp_path, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    found = json.loads(result.stdout)
    assert found["fsd"] == str(target / "fsd" / "__init__.py")
    assert found["checkout"] == "None"
    assert found["filesystem_doc"] and found["build_script"]
    assert found["rootfs_script"] and found["rootfs_init"]
    assert found["guest_image_dir"] == str(tmp_path / "home" / ".cache" / "fsd" / "testbed")
    assert found["pythonpath"] == env["PYTHONPATH"]  # fsd_env adds no checkout

    helps = [
        subprocess.run(
            [*run, "-m", "fsd", command, "--help"], env=env, cwd=tmp_path,
            capture_output=True, text=True, check=True,
        ).stdout
        for command in ("serve", "mount")
    ]  # fmt: skip
    named = {m.group(1) for text in helps for m in REFERENCE.finditer(" ".join(text.split()))}
    assert named, "the help texts name no docs page any more: drop this check"
    for path in named:
        assert path.startswith("docs/"), path
        assert (target / "fsd" / path).is_file(), f"--help names {path}, not installed"
