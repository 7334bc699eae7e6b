"""Web sessions, cookie flags, CSRF tokens and the sign-in rules (gateway/web/sessions.py,
gateway/web/signin.py)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.security.penalty import AuthPenalty, PenaltySettings
from gateway.web.sessions import (
    ANONYMOUS_TIMEOUT,
    COOKIE_NAME,
    IDLE_TIMEOUT,
    LIFETIME,
    SessionTable,
    clearing_cookie,
    csrf_ok,
    session_cookie,
)
from gateway.web.signin import Refused, SignIn, plaintext_allowed


def _table(clock: Clock, **kw: Any) -> SessionTable:
    return SessionTable(clock.seconds, **kw)


def test_ids_and_tokens_are_256_random_bits_and_differ() -> None:
    table = _table(Clock())
    a, b = table.sign_in("alice"), table.sign_in("alice")
    assert len({a.id, a.csrf, b.id, b.csrf}) == 4
    assert all(len(x) == 43 for x in (a.id, a.csrf))  # base64url of 32 bytes


def test_signing_in_makes_a_new_id_and_ends_the_anonymous_one() -> None:
    table = _table(Clock())
    anon = table.anonymous()
    session = table.sign_in("alice", previous=anon)
    assert session.id != anon.id and session.csrf != anon.csrf
    assert table.get(anon.id) is None
    assert table.get(session.id) is session


def test_sessions_expire_when_idle_and_after_their_lifetime() -> None:
    clock = Clock()
    table = _table(clock)
    idle = table.sign_in("alice")
    busy = table.sign_in("bob")
    clock.advance(IDLE_TIMEOUT - 1)
    assert table.get(busy.id) is busy
    clock.advance(2)
    assert table.get(idle.id) is None
    for _ in range(int(LIFETIME // (IDLE_TIMEOUT / 2)) + 1):
        clock.advance(IDLE_TIMEOUT / 2)
        table.get(busy.id)
    assert table.get(busy.id) is None  # however busy


def test_anonymous_sessions_expire_quickly_and_sweep_forgets_them() -> None:
    clock = Clock()
    table = _table(clock)
    table.anonymous()
    clock.advance(ANONYMOUS_TIMEOUT + 1)
    assert table.sweep() == 1 and len(table) == 0


def test_the_table_is_bounded_and_visitors_cannot_push_out_users() -> None:
    table = _table(Clock(), max_sessions=3)
    alice = table.sign_in("alice")
    for _ in range(100):
        table.anonymous()
    assert table.get(alice.id) is alice
    assert len(table) == 4
    for user in ("b", "c", "d"):
        table.sign_in(user)
    assert table.get(alice.id) is None  # least recently used first out


def test_odd_cookie_values_find_nothing() -> None:
    table = _table(Clock())
    table.sign_in("alice")
    for value in (None, "", "x" * 1000, "nope"):
        assert table.get(value) is None


def test_csrf_tokens_must_match_the_session() -> None:
    table = _table(Clock())
    session = table.sign_in("alice")
    other = table.sign_in("bob")
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, other.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, "")
    assert not csrf_ok(None, session.csrf)
    assert not csrf_ok(session, "é" + session.csrf)


def test_cookie_flags() -> None:
    plain = session_cookie("abc", secure=False)
    assert plain == f"{COOKIE_NAME}=abc; Path=/; HttpOnly; SameSite=Strict"
    assert session_cookie("abc", secure=True).endswith("; Secure")
    gone = clearing_cookie(secure=True)
    assert "Max-Age=0" in gone and "Secure" in gone and "HttpOnly" in gone


@pytest.mark.parametrize(
    ("secure", "peer", "allowed", "expected"),
    [
        (True, "192.0.2.1", False, True),
        (False, "127.0.0.1", False, True),
        (False, "::1", False, True),
        (False, "192.0.2.1", False, False),
        (False, "192.0.2.1", True, True),
    ],
)
def test_passwords_in_clear_only_from_loopback(
    secure: bool, peer: str, allowed: bool, expected: bool
) -> None:
    assert plaintext_allowed(secure=secure, peer_host=peer, allow_plaintext=allowed) is expected


class _Table:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    def authenticate(self, user: str, password: bytes) -> str | None:
        self.calls.append((user, password))
        return user if password == b"right" else None


def _results(d: defer.Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def test_sign_in_uses_the_authenticator_and_the_imap_penalty() -> None:
    clock = Clock()
    penalty = AuthPenalty(clock, PenaltySettings(initial_delay=2, max_delay=8, ip_budget=3))
    table = _Table()
    ran: list[str] = []

    def run_blocking(fn: Any, *args: Any) -> defer.Deferred[Any]:
        ran.append(fn.__name__)
        return defer.succeed(fn(*args))

    signin = SignIn(table, penalty, run_blocking, clock)
    assert _results(signin.attempt("192.0.2.1", "alice", b"right")) == ["alice"]
    assert ran == ["authenticate"]
    wrong = _results(signin.attempt("192.0.2.1", "alice", b"wrong"))
    assert wrong == []  # answered only after the penalty delay
    clock.advance(2)
    assert wrong == [None]
    for _ in range(2):
        signin.attempt("192.0.2.1", "alice", b"wrong")
        clock.advance(8)
    checked = len(table.calls)
    refused = _results(signin.attempt("192.0.2.1", "alice", b"right"))
    clock.advance(8)
    assert len(refused) == 1 and refused[0].check(Refused)
    assert len(table.calls) == checked  # the password was not even checked


def test_oversized_names_and_passwords_are_not_hashed() -> None:
    table = _Table()
    signin = SignIn(table, None, lambda fn, *a: defer.succeed(fn(*a)), Clock())
    assert _results(signin.attempt("h", "x" * 300, b"right")) == [None]
    assert _results(signin.attempt("h", "alice", b"r" * 5000)) == [None]
    assert _results(signin.attempt("h", "", b"right")) == [None]
    assert table.calls == []
