"""OAuth 2.0 end to end with real peers: Dovecot as the POP3 upstream with its ``oauth2``
passdb, validating tokens against the test's own authorization server (token, device
authorization and introspection endpoints). Access tokens live 5 s."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import reactor as global_reactor

from gateway.oauth.refresh import TokenSource
from gateway.oauth.settings import OAuth2Settings
from gateway.oauth.tokenfile import token_path
from gateway.pop3.credentials import with_oauth_token
from gateway.pop3.errors import FetchError
from gateway.pop3.fetcher import fetch_once
from gateway.pop3.notifier import FailureNotifier
from gateway.pop3.poller import UpstreamPoller
from gateway.pop3.upstream import Upstream
from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.oauthserver import AuthorizationServer, dovecot_oauth2_config
from gateway.testing.reactor_thread import ReactorThread

pytestmark = [pytest.mark.slow, pytest.mark.dovecot]

USER = "alice"
TOKEN_LIFETIME = 5.0
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rt() -> ReactorThread:
    return ReactorThread.shared(global_reactor)


@pytest.fixture
def idp(rt: ReactorThread) -> Iterator[AuthorizationServer]:
    server = AuthorizationServer(
        global_reactor, access_lifetime=TOKEN_LIFETIME, auto_approve=USER, pending_polls=1
    )
    rt.call(server.listen)
    yield server
    rt.call(server.port.stopListening)


@pytest.fixture
def upstream_peer(
    idp: AuthorizationServer, dovecot_factory: Callable[..., Dovecot]
) -> Iterator[Dovecot]:
    shared = Path(tempfile.mkdtemp(prefix="popgate-oauth-", dir="/tmp"))
    shared.chmod(0o755)
    try:
        yield dovecot_factory(
            users={USER: "password-not-used"}, extra_config=dovecot_oauth2_config(idp, shared)
        )
    finally:
        for f in shared.iterdir():
            f.unlink()
        shared.rmdir()


def make_upstream(idp: AuthorizationServer, server: Dovecot, mechanism: str = "auto") -> Upstream:
    settings = OAuth2Settings(
        provider="custom",
        client_id="popgate-test",
        token_url=idp.url("/token"),
        device_authorization_url=idp.url("/device"),
        scope="mail offline_access",
        mechanism=mechanism,
    )
    return Upstream(
        name="alice-mail", owner=USER, host="127.0.0.1", port=server.pop3s_port,
        tls="implicit", ca_file=str(server.ca.cert_path), username=USER, password="",
        auth="oauth2", oauth2=settings, poll_interval=1.0, timeout=20.0,
    )  # fmt: skip


def notices(rt: ReactorThread, store: Any) -> list[bytes]:
    def read() -> list[bytes]:
        box = store.get_mailbox(USER, "INBOX")
        raw = [store.message_bytes(box.id, r.uid) for r in store.message_rows(box.id)]
        return [m for m in raw if m.startswith(b"From: popgate <postmaster@localhost>")]

    return rt.call(read)


def inbox_count(rt: ReactorThread, store: Any) -> int:
    return rt.call(lambda: len(store.message_rows(store.get_mailbox(USER, "INBOX").id)))


def wait_for(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {message}")


def cli_login(upstream: Upstream, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """``popgate oauth login NAME --config FILE`` in a subprocess; until the lead wires
    ``[upstreams.oauth2]`` into the TOML loader, the configuration object is handed to
    the command through its ``load_config`` hook (a pickled stand-in)."""
    cfg_file = state_dir / "cfg.pickle"
    cfg_file.write_bytes(
        pickle.dumps(SimpleNamespace(state_dir=str(state_dir), upstreams=[upstream]))
    )
    shim = (
        "import pickle, sys; from gateway.cli import oauth, main; "
        "oauth.load_config = lambda path: pickle.load(open(path, 'rb')); "
        "sys.exit(main.main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", shim, "oauth", "login", upstream.name, "--config", str(cfg_file)],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_both_mechanisms_log_in_and_a_dead_token_gets_the_json_error(
    rt, idp, upstream_peer, mechanism, tmp_path: Path
) -> None:
    upstream_peer.deliver(USER, samplemail.generate(1, 3)[0])
    store = rt.call(SQLiteStore, tmp_path / "s.db")
    try:
        base = make_upstream(idp, upstream_peer, mechanism)
        good = Upstream(**{**vars(base), "password": idp.issue(USER)["access_token"]})
        assert rt.call(fetch_once, good, store, reactor=global_reactor).fetched == 1
        dead = Upstream(**{**vars(base), "password": "at-revoked"})
        with pytest.raises(FetchError) as info:
            rt.call(fetch_once, dead, store, reactor=global_reactor)
        assert info.value.kind == "auth" and "server said: status=" in str(info.value)
    finally:
        rt.call(store.close)


def test_fetches_across_token_expiries_then_revocation_notice_relogin_and_recovery(
    rt, idp, upstream_peer, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    upstream = make_upstream(idp, upstream_peer)
    # first sign-in through the CLI's device flow
    done = cli_login(upstream, state_dir)
    assert done.returncode == 0, done.stderr
    assert "enter" in done.stdout and "Signed in." in done.stdout

    store = rt.call(SQLiteStore, tmp_path / "store.db")
    rt.call(store.ensure_user, USER)
    tokens = TokenSource(
        upstream.name, upstream.oauth2, token_path(state_dir, upstream.name), reactor=global_reactor
    )
    poller = UpstreamPoller(
        upstream, store, reactor=global_reactor, fetch=with_oauth_token(fetch_once, tokens),
        notifier=FailureNotifier(upstream, store, state_dir), jitter=0.0, first_delay=0.1,
        min_spacing=0.5, backoff_base=1.0, backoff_cap=2.0,
    )  # fmt: skip
    rt.call(poller.startService)
    try:
        # 1. ~20 s of passes with 5 s tokens: refreshed ahead of every expiry, no failed pass
        sent = 0
        started = time.monotonic()
        while time.monotonic() - started < 20:
            upstream_peer.deliver(USER, samplemail.generate(1, 100 + sent)[0])
            sent += 1
            time.sleep(1.0)
            assert poller.health.consecutive_failures == 0, poller.health.last_error
        wait_for(lambda: inbox_count(rt, store) == sent, 15, "every message fetched")
        health = rt.call(poller.health_dict)
        assert health["last_error"] is None and health["passes"] >= 10
        assert tokens.refreshes >= 4  # 20 s / 5 s tokens
        assert notices(rt, store) == []

        # 2. the refresh token is revoked: auth failure, exactly one notice
        idp.revoke_refresh_tokens()
        wait_for(lambda: poller.health.consecutive_failures >= 3, 30, "failing passes")
        assert poller.health.last_error_kind == "auth"
        assert "popgate oauth login alice-mail" in (poller.health.last_error or "")
        time.sleep(3)  # more failing passes: still one notice
        filed = notices(rt, store)
        assert len(filed) == 1 and b"fetching from alice-mail fails" in filed[0]
        assert b"run: popgate oauth login alice-mail" in filed[0]

        # 3. sign in again through the CLI: mail flows, one "works again" notice, no restart
        upstream_peer.deliver(USER, samplemail.generate(1, 999)[0])
        done = cli_login(upstream, state_dir)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: inbox_count(rt, store) == sent + 1 + 2, 30, "mail and the recovery notice")
        filed = notices(rt, store)
        assert len(filed) == 2 and b"works again" in filed[1]
        assert poller.health.consecutive_failures == 0
    finally:
        rt.call(poller.stopService)
        rt.call(store.close)
