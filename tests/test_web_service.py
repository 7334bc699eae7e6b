"""The web page wired into the gateway (issue 18): the site on every ``[server] web``
listener with IMAP's password table and login penalty, the history recorder as a child
service that stops cleanly, ``admins`` re-read on SIGHUP, the status fields the page
shows (``node``, ``failing_since``, ``oauth2``, the web listeners), and the time-series
table as one of the store's migrations (so backups carry it)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from gateway.app import config as configmod
from gateway.app.service import build_service, reload
from gateway.app.status import render, upstream_extras
from gateway.oauth.tokenfile import TokenSet, save_tokens, token_path
from gateway.security.passwords import hash_password
from gateway.store.schema import MIGRATIONS, SCHEMA_VERSION, TIMESERIES, migrate
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_timeseries import TIMESERIES_DDL, SQLiteTimeSeries
from gateway.store.timeseries import Point
from gateway.testing.tlsca import CA
from gateway.web.history import FETCHED_MESSAGES, HistoryRecorder
from gateway.web.resource import WebServices

HASHES = {name: hash_password(f"{name}-pw", salt=b"0123456789abcdef") for name in "abc"}


def write_config(path: Path, *, admins: list[str], users: str = "ab", extra: str = "") -> None:
    lines = [
        "[server]",
        f'state_dir = "{path.parent / "state"}"',
        'imap = ["tcp:1143:interface=127.0.0.1"]',
        # with [tls], also HTTPS on its certificate
        'web = ["tcp:8025:interface=127.0.0.1"' + (', "ssl:8443"]' if "[tls]" in extra else "]"),
        f"admins = {admins!r}".replace("'", '"'),
    ]
    for name in users:
        lines += [f"[users.{name}]", f'password = "{HASHES[name]}"']
    path.write_text("\n".join(lines) + "\n" + extra)


OAUTH_UPSTREAM = """
[[upstreams]]
name = "a-outlook"
owner = "a"
host = "127.0.0.1"
port = 995
username = "a@outlook.example"
auth = "oauth2"
[upstreams.oauth2]
provider = "microsoft"
client_id = "00000000-0000-0000-0000-000000000000"
"""


@pytest.fixture
def built(tmp_path: Path):
    path = tmp_path / "popgate.toml"
    write_config(path, admins=["a"], extra=OAUTH_UPSTREAM)
    reactor = MemoryReactorClock()
    top = build_service(configmod.load(path), reactor)
    yield path, top, reactor
    top.store.close()


def start_listeners(top) -> None:
    """Start the listening services alone (the memory reactor makes no control socket)."""
    from gateway.app.listening import HerdListener

    for child in top:
        if isinstance(child, HerdListener):
            child.startService()


def test_the_page_shares_imaps_password_table_pool_and_penalty(built) -> None:
    _path, top, _reactor = built
    web = top.web
    assert isinstance(web, WebServices)
    assert web.authenticator is top.imap_factory.authenticator
    assert web.penalty is top.imap_factory.penalty
    assert web.admins() == ("a",)
    assert web.households() == {}
    assert web.recorder is top.history and web.series is top.history.series
    assert isinstance(web.series, SQLiteTimeSeries)  # in the store's file


def test_every_web_listener_serves_the_site(built) -> None:
    _path, top, reactor = built
    start_listeners(top)
    (port, site, _backlog, interface) = reactor.tcpServers[-1]
    assert (port, interface) == (8025, "127.0.0.1") and isinstance(site, Site)


def test_an_ssl_listener_is_https_on_the_tls_certificate(tmp_path: Path, tls_ca: CA) -> None:
    cert, key = tls_ca.issue(tmp_path / "certs")
    path = tmp_path / "popgate.toml"
    write_config(path, admins=[], extra=f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
    reactor = MemoryReactorClock()
    top = build_service(configmod.load(path), reactor)
    start_listeners(top)
    try:
        web = {p: f for p, f, _b, _i in reactor.tcpServers if p in (8025, 8443)}
        assert isinstance(web[8025], Site)
        assert isinstance(web[8443], TLSMemoryBIOFactory)
        assert web[8443].wrappedFactory is web[8025]  # one site, one session table
    finally:
        top.store.close()


def test_the_recorder_is_a_child_service_that_stops_cleanly(built) -> None:
    _path, top, reactor = built
    recorder = top.history
    assert isinstance(recorder, HistoryRecorder) and recorder.parent is top
    assert list(top).index(recorder) > 0  # after the store: stopped before it is closed
    recorder.startService()
    assert recorder.running and reactor.getDelayedCalls()
    recorder.stopService()
    assert not recorder.running and recorder._loop is None
    assert reactor.getDelayedCalls() == []


def test_sighup_rereads_admins_and_users(built) -> None:
    path, top, _reactor = built
    write_config(path, admins=["c"], users="abc", extra=OAUTH_UPSTREAM)
    assert reload(top) is True
    assert top.web.admins() == ("c",)
    assert top.web.authenticator.authenticate("c", b"c-pw") == "c"


def test_status_has_the_pages_fields_and_the_web_listeners(built) -> None:
    _path, top, _reactor = built
    status = top.status.collect()
    assert status["listeners"]["web"] == ["tcp:8025:interface=127.0.0.1"]
    assert "; web tcp:8025:interface=127.0.0.1" in render(status)
    (up,) = status["upstreams"]
    assert up["node"] is None and up["failing_since"] is None
    assert up["oauth2"]["expires_at"] is None  # not signed in yet
    assert up["oauth2"]["login_command"] == (
        f"popgate oauth login --config {top.config.path} a-outlook"
    )
    save_tokens(
        token_path(top.config.state_dir, "a-outlook"),
        TokenSet(access_token="t", refresh_token="r", expires_at=1234.0),
    )
    assert top.status.collect()["upstreams"][0]["oauth2"]["expires_at"] == 1234.0


def test_failing_since_prefers_the_episode_kept_across_restarts() -> None:
    health = {"consecutive_failures": 2, "failing_since": 500.0}
    poller = SimpleNamespace(
        upstream=SimpleNamespace(name="x", auth="user"),
        notifier=SimpleNamespace(episode=SimpleNamespace(failing_since=100.0)),
    )
    extras = upstream_extras(poller, health, state_dir="/nonexistent", config_path="c")
    assert extras == {"node": None, "failing_since": 100.0, "oauth2": None}
    ok = {"consecutive_failures": 0, "failing_since": None}
    assert upstream_extras(poller, ok, state_dir="/x", config_path="c")["failing_since"] is None


# ---- the store: the time-series table is a migration -------------------------------------


def test_a_store_gets_the_timeseries_table_from_its_migrations(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "s.db").close()
    conn = sqlite3.connect(tmp_path / "s.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("SELECT series, at, value FROM timeseries_point")
    finally:
        conn.close()


@pytest.mark.parametrize("table_already_there", [False, True])
def test_upgrading_a_store_from_before_the_timeseries_migration(
    tmp_path: Path, table_already_there: bool
) -> None:
    """A file one step before (mail in it) upgrades in place; a file where the page had
    created the table itself (before the migration existed) keeps its points."""
    before = MIGRATIONS.index(TIMESERIES)
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:before])
    conn.execute("INSERT INTO meta (key, value) VALUES ('kept', 7)")
    if table_already_there:
        conn.execute(TIMESERIES_DDL)
        conn.execute("INSERT INTO timeseries_point VALUES ('fetched.messages:x', 10.0, 3.0)")
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.db.execute("SELECT value FROM meta WHERE key = 'kept'").fetchone() == (7,)
        series = SQLiteTimeSeries(store.db)
        kept = series.latest(FETCHED_MESSAGES + "x")
        assert kept == (Point(10.0, 3.0) if table_already_there else None)
        series.record(FETCHED_MESSAGES + "y", [Point(20.0, 1.0)])
    finally:
        store.close()


def test_a_backup_carries_the_history(tmp_path: Path) -> None:
    from gateway.app.backup import backup

    store = SQLiteStore(tmp_path / "s.db")
    SQLiteTimeSeries(store.db).record("store.bytes:a", [Point(1.0, 42.0)])
    store.close()
    backup(tmp_path / "s.db", tmp_path / "copy.db")
    copy = SQLiteTimeSeries.open(tmp_path / "copy.db")
    try:
        assert copy.latest("store.bytes:a") == Point(1.0, 42.0)
    finally:
        copy.close()
