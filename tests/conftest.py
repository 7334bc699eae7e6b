"""Shared pytest fixtures. Each section belongs to one piece of test infrastructure."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import logs
from gateway.testing.dovecot import Dovecot, DovecotNotInstalled
from gateway.testing.imapsession import SessionDriver
from gateway.testing.pop3fetch import FetchHarness
from gateway.testing.reactor_thread import ReactorThread
from gateway.testing.tlsca import CA, make_ca

# -- logging ----------------------------------------------------------------------------

# Log events run through the real processors but print nothing; a test that needs
# them uses structlog.testing.capture_logs().
logs.configure_for_tests()

# -- the reactor thread (gateway/testing/reactor_thread.py) ------------------------------------------


@pytest.fixture(scope="session")
def rt() -> ReactorThread:
    """The global reactor, running in its daemon thread for the whole process."""
    from twisted.internet import reactor

    return ReactorThread.shared(reactor)


# -- the sans-I/O IMAP session (gateway/testing/imapsession.py) -------------------------------


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[SessionDriver]:
    """A session logged in as alice on a fresh SQLite store, driven without a reactor."""
    driver = SessionDriver(tmp_path / "store.db")
    yield driver
    driver.close()


# -- a state directory short enough for the control socket -------------------------------------


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A private (0700) state directory under /tmp: AF_UNIX socket paths are limited to
    ~108 bytes, and pytest's tmp_path can be longer."""
    directory = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    os.chmod(directory, 0o700)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# -- a fake POP3 upstream and a store (gateway/testing/pop3fetch.py) -------------------------


@pytest.fixture
def fake_upstream(rt: ReactorThread, tmp_path: Path) -> Iterator[Callable[..., FetchHarness]]:
    """Make FetchHarnesses: ``fake_upstream(messages=[...], **FakePOP3Server_kwargs)``,
    listening unless ``listen=False``; all stop, and their stores close, at teardown."""
    made: list[FetchHarness] = []

    def factory(*, listen: bool = True, **server_kw: Any) -> FetchHarness:
        directory = tmp_path / f"h{len(made)}"
        directory.mkdir()
        harness = FetchHarness(rt, directory, **server_kw)
        made.append(harness)
        return harness.listen() if listen else harness

    yield factory
    for harness in made:
        harness.close()


# -- real Dovecot peer (gateway/testing/dovecot.py) --------------------------------------

DOVECOT_FIXTURES = frozenset({"dovecot", "dovecot_factory"})
"""Fixtures that start a real Dovecot; tests using them (even indirectly) get the marker."""

DOVECOT_USER = ("alice", "secret")
"""The one account the `dovecot` fixture creates."""


POSTGRES_PARAM = "postgresql"
"""A test parametrised with this value (a store backend) runs on the shared PostgreSQL
server (gateway/testing/postgres.py) and gets the `postgres` marker."""


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark tests that need Dovecot with `dovecot`, so `-m 'not dovecot'` deselects them;
    tests run on the PostgreSQL backend with `postgres` (`make unit` skips those)."""
    if DOVECOT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.dovecot)
    callspec = getattr(item, "callspec", None)
    if callspec is not None and POSTGRES_PARAM in callspec.params.values():
        item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    """A private CA for the whole run; `tls_ca.client_context()` trusts only it."""
    return make_ca(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture
def dovecot_factory(tls_ca: CA) -> Iterator[Callable[..., Dovecot]]:
    """Start Dovecot instances: factory(users={"bob": "pw"}, **Dovecot_kwargs); all stop at teardown.

    Missing binaries fail the test loudly with the package names: CI must install them.
    """
    started: list[Dovecot] = []

    def start(*, users: dict[str, str] | None = None, **kwargs: Any) -> Dovecot:
        kwargs.setdefault("ca", tls_ca)
        try:
            server = Dovecot(**kwargs)
        except DovecotNotInstalled as error:
            pytest.fail(str(error), pytrace=False)
        started.append(server)
        for name, password in (users or {}).items():
            server.add_user(name, password)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., Dovecot]) -> Dovecot:
    """A running Dovecot (POP3/POP3S/IMAP/IMAPS on 127.0.0.1) with user alice/secret."""
    return dovecot_factory(users=dict([DOVECOT_USER]))
