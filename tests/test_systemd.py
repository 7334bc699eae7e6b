"""The systemd unit is valid and hardened (checked when systemd's tools are installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "popgate.service"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def localised_unit(tmp_path: Path) -> Path:
    """The unit with its ExecStart binaries pointed at this venv, so `verify` can find them."""
    bindir = Path(sys.executable).parent
    text = UNIT.read_text().replace("/usr/local/bin/", f"{bindir}/")
    out = tmp_path / "popgate.service"
    out.write_text(text)
    return out


def test_unit_runs_twistd_in_the_foreground_as_a_dedicated_user():
    text = UNIT.read_text()
    assert re.search(
        r"^ExecStart=\S*twistd --nodaemon --pidfile= --logger gateway\.app\.logs\.twisted_observer "
        r"popgate --config ",
        text,
        re.M,
    )
    assert re.search(r"^User=popgate$", text, re.M)
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", text, re.M)


def test_unit_is_hardened_and_writes_only_the_state_dir():
    text = UNIT.read_text()
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=/var/lib/popgate",
        "StateDirectory=popgate",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "CapabilityBoundingSet=",  # empty: popgate binds no port below 1024 by default
    ):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    out = subprocess.run(
        ["systemd-analyze", "verify", str(localised_unit(tmp_path))],
        capture_output=True,
        text=True,
    )
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if line.startswith("popgate.service") or "popgate.service:" in line
    ]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


@needs_systemd_analyze
def test_security_exposure_is_at_most_ok(tmp_path):
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(localised_unit(tmp_path))],
        capture_output=True,
        text=True,
    )
    m = re.search(r"Overall exposure level for popgate\.service: ([\d.]+) (\w+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert m.group(2) in ("SAFE", "OK"), m.group(0)


def test_unit_raises_the_file_descriptor_limit_for_ten_thousand_connections():
    """Issue 19: one descriptor per connection; the default soft limit (1024) would refuse
    the 1,000th phone."""
    match = re.search(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.M)
    assert match is not None and int(match.group(1)) >= 20_000
