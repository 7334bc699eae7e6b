"""SASL PLAIN's authorization rule, the same in IMAP, ManageSieve and submission
(issue 20, item 14): a foreign authzid with a correct password is a failed login in
every respect: the same answer, after the same delay, counted in the same budgets, and
it neither resets the source's penalty nor makes the address a known one."""

from __future__ import annotations

import base64
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.security.penalty import PenaltySettings
from gateway.security.sasl import MalformedPlain, PlainCredentials, check_plain, decode_plain
from gateway.testing.imapclient import HOST, PASSWORD, USER, running_server
from gateway.testing.managesieved import PASSWORD as SIEVE_PASSWORD
from gateway.testing.managesieved import USER as SIEVE_USER
from gateway.testing.managesieved import popgate_managesieve
from gateway.testing.ports import free_port
from gateway.testing.submission import USERS, SubmissionGateway, running_gateway, upstream_for
from gateway.testing.tlsca import CA

FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"


def _plain(authzid: str, authcid: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


class Counting:
    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.calls = 0

    def authenticate(self, user: str, password: bytes) -> str | None:
        self.calls += 1
        stored = self.passwords.get(user)
        return user if stored is not None and stored.encode() == password else None


def _eventually(predicate: Callable[[], bool], limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


# ---- the shared helper -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"\0alice\0pw", PlainCredentials("", "alice", b"pw")),
        (b"alice\0alice\0p\xffw", PlainCredentials("alice", "alice", b"p\xffw")),
        ("b\u00f6b\0alice\0".encode(), PlainCredentials("b\u00f6b", "alice", b"")),
    ],
)
def test_decode_plain(message: bytes, expected: PlainCredentials) -> None:
    assert decode_plain(message) == expected


@pytest.mark.parametrize("message", [b"alice\0pw", b"a\0b\0c\0d", b"", b"\0al\xffice\0pw"])
def test_decode_plain_refuses_malformed_messages(message: bytes) -> None:
    with pytest.raises(MalformedPlain):
        decode_plain(message)


def test_the_password_is_never_in_the_repr() -> None:
    assert "secret" not in repr(PlainCredentials("", "alice", b"secret"))


@pytest.mark.parametrize(
    ("authzid", "password", "expected"),
    [
        ("", "pw", "alice"),
        ("alice", "pw", "alice"),
        ("bob", "pw", None),  # acting as another user: a failure
        ("bob", "wrong", None),
        ("", "wrong", None),
    ],
)
def test_check_plain_always_checks_the_password(
    authzid: str, password: str, expected: str | None
) -> None:
    auth = Counting({"alice": "pw"})
    credentials = PlainCredentials(authzid, "alice", password.encode())
    assert check_plain(auth, credentials) == expected
    assert auth.calls == 1  # the same work whatever the outcome


# ---- IMAP ------------------------------------------------------------------------------


def test_imap_foreign_authzid_is_a_delayed_counted_failure(tmp_path: Path) -> None:
    with running_server(tmp_path, fake_clock=True, penalty=PenaltySettings()) as server:
        penalty = server.factory.penalty
        assert penalty is not None
        with server.connect() as client:
            client.greeting()
            client.send(f"a AUTHENTICATE PLAIN {_plain('bob', USER, PASSWORD)}\r\n".encode())
            server.wait_until(lambda: penalty.failures(HOST) == 1, "failure recorded")
            limit = server.factory.limits.prelogin_timeout
            assert [d for d in server.pending_delays() if d < limit] == [2.0]
            server.advance(2.0)
            assert client.read_line() == b"a " + FAILED
            assert not server.call(penalty.known, HOST, USER)
            # the same connection may still log in properly (and the penalty resets)
            ok = client.command("b", f"AUTHENTICATE PLAIN {_plain(USER, USER, PASSWORD)}")
            assert ok.startswith(b"b OK")
            assert server.call(penalty.failures, HOST) == 0
            assert server.call(penalty.known, HOST, USER)


# ---- ManageSieve -----------------------------------------------------------------------


def test_managesieve_foreign_authzid_is_a_delayed_counted_failure() -> None:
    with popgate_managesieve(penalty=True, fake_clock=True) as server:
        clock = server.clock
        penalty = server.factory.penalty
        assert clock is not None and penalty is not None
        with server.connect() as client:
            client.response()
            token = _plain("someone-else", SIEVE_USER, SIEVE_PASSWORD)
            client.send(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())
            _eventually(lambda: server.call(penalty.failures, "127.0.0.1") == 1)
            assert not server.call(penalty.known, "127.0.0.1", SIEVE_USER)
            server.call(clock.advance, penalty.settings.initial_delay)
            assert client.response() == [b'NO "Authentication failed"\r\n']


# ---- submission ------------------------------------------------------------------------


@pytest.fixture
def submission(tmp_path: Path, tls_ca: CA) -> Iterator[SubmissionGateway]:
    dead = upstream_for(free_port(), tls_ca)
    with running_gateway(tmp_path, tls_ca, dead, relay_running=False) as gateway:
        yield gateway


def test_submission_foreign_authzid_is_a_counted_failure(
    submission: SubmissionGateway, tls_ca: CA
) -> None:
    context = tls_ca.client_context()
    context.check_hostname = False
    with smtplib.SMTP(HOST, submission.port, timeout=20) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=context)
        smtp.ehlo("client.test")
        code, _text = smtp.docmd("AUTH", "PLAIN " + _plain("bob", "alice", USERS["alice"]))
        assert code == 535
        penalty = submission.factory.penalty
        assert penalty is not None
        assert submission.call(penalty.failures, HOST) == 1
        assert not submission.call(penalty.known, HOST, "alice")
