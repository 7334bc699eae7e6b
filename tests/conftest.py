"""Shared pytest fixtures. Each section belongs to one piece of test infrastructure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.app import logs
from gateway.testing.dovecot import Dovecot, DovecotNotInstalled
from gateway.testing.tlsca import CA, make_ca

# -- logging ----------------------------------------------------------------------------

# Log events run through the real processors but print nothing; a test that needs
# them uses structlog.testing.capture_logs().
logs.configure_for_tests()

# -- real Dovecot peer (gateway/testing/dovecot.py) --------------------------------------

DOVECOT_FIXTURES = frozenset({"dovecot", "dovecot_factory"})
"""Fixtures that start a real Dovecot; tests using them (even indirectly) get the marker."""

DOVECOT_USER = ("alice", "secret")
"""The one account the `dovecot` fixture creates."""


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark tests that need Dovecot with `dovecot`, so `-m 'not dovecot'` deselects them."""
    if DOVECOT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.dovecot)


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
