"""Start-up imports only what the config turns on (issue 19: start-up to the first greeting).

Import time was ~0.95 of popgate's start-up once the web page, Sieve, ManageSieve, the
submission relay, OAuth and the metrics endpoint had grown around the IMAP server. Each
feature's modules are now imported when its config section is on (or, for the Sieve
language, when a script is first compiled or run). These tests guard that without timing
anything: a fresh interpreter builds the service as ``popgate serve`` does and reports
``sys.modules``. The last test turns every feature on and sees each module arrive, so the
first cannot pass by looking for names that are never imported at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.security.passwords import hash_password

ROOT = Path(__file__).resolve().parent.parent

FEATURE_MODULES: dict[str, tuple[str, ...]] = {
    "[server] web (the page)": ("gateway.web.resource", "gateway.web.signin"),
    "[metrics] enabled (the endpoint)": ("gateway.app.metrics_http", "twisted.web.server"),
    "[server] submission (the relay)": ("gateway.app.sending", "gateway.submission.server"),
    "[server] managesieve": ("gateway.managesieve.server",),
    "a Sieve script or ManageSieve (the language)": ("gateway.sieve", "gateway.sieve.parser"),
    "[[upstreams]] (the POP3 side)": ("gateway.pop3.fetcher", "gateway.pop3.poller"),
    '[[upstreams]] auth = "oauth2"': ("gateway.oauth.refresh", "twisted.web.client"),
}
"""Modules that only a feature's config section should bring in, by that section."""

BUILD = """
import json, sys
from twisted.internet import reactor
from gateway.app import config as configmod
from gateway.app import logs
from gateway.app.service import build_service

cfg = configmod.load(sys.argv[1])
logs.configure("warning", "json", stream=open(sys.argv[3], "w"))
build_service(cfg, reactor)
with open(sys.argv[2], "w") as out:
    json.dump(sorted(sys.modules), out)
"""


def _config(tmp_path: Path, *extra: str) -> Path:
    path = tmp_path / "popgate.toml"
    lines = [
        "[server]",
        f"state_dir = {json.dumps(str(tmp_path / 'state'))}",
        'imap = ["tcp:0:interface=127.0.0.1"]',
        *extra,
        "",
        "[users.alice]",
        f"password = {json.dumps(hash_password('pw'))}",
    ]
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def _modules_after_build(tmp_path: Path, config: Path) -> set[str]:
    """``sys.modules`` of a fresh interpreter that loaded ``config`` and built the service."""
    listing = tmp_path / "modules.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(config), str(listing), str(tmp_path / "log")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(listing.read_text()))


def _present(modules: set[str]) -> dict[str, list[str]]:
    return {
        feature: [m for m in names if m in modules]
        for feature, names in FEATURE_MODULES.items()
        if any(m in modules for m in names)
    }


def test_a_gateway_without_features_imports_none_of_their_modules(tmp_path):
    """IMAP over SQLite, no upstreams, nothing else configured: no feature's modules."""
    modules = _modules_after_build(tmp_path, _config(tmp_path))
    assert "gateway.imap.server" in modules  # it did build the IMAP server
    assert _present(modules) == {}
    # popgate's version (metrics, status) is looked up at the first scrape or status
    assert "importlib.metadata" not in modules
    # the listeners are gateway.app.listening.HerdListener, not Twisted's
    # StreamServerEndpointService, whose module builds ClientService's state machine
    assert "twisted.application.internet" not in modules


def test_an_upstream_brings_the_pop3_side_but_not_oauth(tmp_path):
    upstream = [
        "",
        "[[upstreams]]",
        'name = "isp"',
        'owner = "alice"',
        'host = "127.0.0.1"',
        'tls = "none"',
        'username = "alice@isp.example"',
        'password = "secret"',
    ]
    config = _config(tmp_path)
    config.write_text(config.read_text() + "\n".join(upstream) + "\n")
    present = _present(_modules_after_build(tmp_path, config))
    assert present == {
        "[[upstreams]] (the POP3 side)": list(FEATURE_MODULES["[[upstreams]] (the POP3 side)"])
    }


def test_each_feature_imports_its_modules_when_configured(tmp_path):
    """Every feature on: each listed module is imported, so the lists name real modules
    on the paths the features take (and the tests above can fail)."""
    config = _config(
        tmp_path,
        'web = ["tcp:0:interface=127.0.0.1"]',
        'managesieve = ["tcp:0:interface=127.0.0.1"]',
        'submission = ["tcp:0:interface=127.0.0.1"]',
        "",
        "[metrics]",
        "enabled = true",
        'listen = "tcp:0:interface=127.0.0.1"',
    )
    oauth_upstream = [
        "",
        "[[upstreams]]",
        'name = "mail"',
        'owner = "alice"',
        'host = "127.0.0.1"',
        'tls = "none"',
        'username = "alice@mail.example"',
        'auth = "oauth2"',
        "",
        "[upstreams.oauth2]",
        'provider = "custom"',
        'client_id = "popgate-test"',
        'token_url = "https://127.0.0.1:1/token"',
        'device_authorization_url = "https://127.0.0.1:1/device"',
        'scope = "mail"',
    ]
    config.write_text(config.read_text() + "\n".join(oauth_upstream) + "\n")
    modules = _modules_after_build(tmp_path, config)
    missing = {
        feature: [m for m in names if m not in modules]
        for feature, names in FEATURE_MODULES.items()
        if any(m not in modules for m in names)
    }
    assert missing == {}


def test_the_collector_is_paused_for_start_up_and_frozen_objects_skipped_after():
    """``popgate serve`` turns the cyclic collector off for start-up (~5% of its
    instructions went to passes over objects that live as long as the process) and,
    once the service has started, freezes them and turns it back on."""
    import gc

    from gateway.app import runner

    assert gc.isenabled()
    try:
        runner.pause_gc_for_startup()
        assert not gc.isenabled()
        runner._resume_gc()
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        runner._resume_gc()  # a second end of the pause changes nothing
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.enable()
