"""Packaging: a normal (non-editable) install carries the twistd plugin and twistd lists it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("popgate-*.whl")
    return whl


def test_wheel_holds_plugin_without_namespace_init(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/popgate.py" in names
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "gateway/imap/framing.py" in names and "gateway/store/sqlite/__init__.py" in names


def test_twistd_help_lists_popgate_after_normal_install(wheel, tmp_path):
    """A fresh interpreter that sees only the installed wheel (plus the dependencies,
    but not this checkout) finds the plugin through twistd's plugin scan."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    deps = sysconfig.get_paths()["purelib"]  # PYTHONPATH entries do not run .pth files,
    env = {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{deps}"}  # so no editable hook
    code = (
        "import sys; from twisted.scripts.twistd import run; sys.argv = ['twistd', '--help']; run()"
    )
    out = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "popgate" in out.stdout, out.stdout + out.stderr
    where = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))
