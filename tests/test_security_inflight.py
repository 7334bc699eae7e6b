"""Password checks in flight count against the failure budgets (issue 20, item 4), and
checks beyond the budget wait for a turn instead of failing (issue 19).

A failure used to be recorded only once scrypt had run, and the budget was checked only
before it, so parallel LOGINs from one address each got a real password check (100
against a budget of 30). These tests hold every check at a gate, so all attempts are in
flight together, and count the checks an authenticator actually ran.
"""

from __future__ import annotations

import threading
from pathlib import Path

from twisted.internet import task

from gateway.imap.factory import IMAPServerFactory
from gateway.security.penalty import AuthPenalty, PenaltySettings
from gateway.testing.imapclient import HOST, PASSWORD, USER, RawClient, running_server

BUDGET = 30
PARALLEL = 100


class GatedPasswords:
    """An authenticator that counts the checks it runs and holds each one at a gate
    until the test opens it (so that many are in flight at once)."""

    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.gate = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def authenticate(self, user: str, password: bytes) -> str | None:
        with self._lock:
            self.calls += 1
        self.gate.wait(30)
        stored = self.passwords.get(user)
        return user if stored is not None and stored.encode() == password else None


def _settled(factory: IMAPServerFactory, connections: int) -> bool:
    """Every connection's LOGIN has been dealt with: answered, or waiting on its check
    or on its failure delay (the fake clock never runs it)."""
    protocols = list(factory.protocols)
    return len(protocols) == connections and all(
        p._current is None or p._login_delay_call is not None or p._blocking is not None
        for p in protocols
    )


def _answered(factory: IMAPServerFactory) -> int:
    return sum(1 for p in factory.protocols if p.session.last_reply is not None)


def test_parallel_wrong_logins_from_one_address_get_at_most_the_budget_of_checks(
    tmp_path: Path,
) -> None:
    """100 wrong LOGINs in parallel from one address: 30 are checked (and answered after
    their delay), 70 wait for a turn meanwhile and are refused unchecked with
    NO [UNAVAILABLE] once the 30 failures have spent the budget."""
    auth = GatedPasswords({USER: PASSWORD})
    settings = PenaltySettings(ip_budget=BUDGET, user_budget=0)
    with running_server(tmp_path, fake_clock=True, penalty=settings, authenticator=auth) as server:
        factory = server.factory
        clients = [RawClient(server.port) for _ in range(PARALLEL)]
        try:
            for i, client in enumerate(clients):
                client.greeting()
                client.send(f"w{i} LOGIN {USER} wrong\r\n".encode())
            server.wait_until(lambda: _settled(factory, PARALLEL), "every LOGIN taken up")
            penalty = factory.penalty
            assert isinstance(penalty, AuthPenalty)
            server.wait_until(lambda: penalty.in_flight(HOST) == BUDGET, "the budget's checks")
            assert server.call(penalty.waiting, HOST) == PARALLEL - BUDGET
            assert server.call(_answered, factory) == 0
            auth.gate.set()
            server.wait_until(
                lambda: all(
                    p._current is None or p._login_delay_call is not None for p in factory.protocols
                ),
                "every check finished",
            )
            assert auth.calls <= BUDGET
            assert auth.calls == BUDGET
            assert server.call(penalty.failures, HOST) == BUDGET
            assert server.call(penalty.in_flight, HOST) == 0
            assert server.call(penalty.waiting, HOST) == 0
            server.advance(60)  # let the checked failures' delays pass
            replies = [client.read_line() for client in clients]
            assert sum(b"NO [UNAVAILABLE]" in r for r in replies) == PARALLEL - BUDGET
            assert sum(b"NO [AUTHENTICATIONFAILED]" in r for r in replies) == BUDGET
        finally:
            auth.gate.set()
            for client in clients:
                client.close()


def test_a_client_that_hangs_up_during_its_check_still_pays_for_it(tmp_path: Path) -> None:
    """Closing the connection while the password is checked does not make the guess free:
    the failure is recorded when the check ends, and nothing stays in flight."""
    auth = GatedPasswords({USER: PASSWORD})
    with running_server(
        tmp_path, fake_clock=True, penalty=PenaltySettings(), authenticator=auth
    ) as server:
        penalty = server.factory.penalty
        assert isinstance(penalty, AuthPenalty)
        with server.connect() as client:
            client.greeting()
            client.send(f"h LOGIN {USER} wrong\r\n".encode())
            server.wait_until(lambda: auth.calls == 1, "check started")
        server.wait_until(lambda: not server.factory.protocols, "connection gone")
        auth.gate.set()
        server.wait_until(lambda: penalty.failures(HOST) == 1, "failure recorded")
        assert server.call(penalty.in_flight, HOST) == 0


def test_attempts_in_flight_count_against_the_user_budget_too() -> None:
    """Per user: checks under way from many sources count; a source that logged in as
    the user before stays exempt; ending an attempt (either way) releases it."""
    clock = task.Clock()
    penalty = AuthPenalty(clock, PenaltySettings(user_budget=3, ip_budget=0))
    home = "192.0.2.1"
    penalty.succeeded(home, "alice")
    attempts = [penalty.begin(f"203.0.113.{i}", "alice") for i in range(3)]
    assert penalty.refusal("203.0.113.99", "alice") == "user"
    assert penalty.refusal(home, "alice") is None
    assert penalty.refusal("203.0.113.99", "bob") is None
    attempts[0].abandoned()
    assert penalty.refusal("203.0.113.99", "alice") is None
    assert attempts[1].failed() == 2.0
    assert attempts[1].failed() == 0.0  # ended once only
    attempts[2].succeeded("alice")
    assert penalty.refusal("203.0.113.99", "alice") is None
    assert penalty.in_flight("203.0.113.1") == 0


def test_source_budget_counts_attempts_in_flight() -> None:
    clock = task.Clock()
    penalty = AuthPenalty(clock, PenaltySettings(ip_budget=2, user_budget=0))
    first = penalty.begin(HOST, "alice")
    assert penalty.refusal(HOST, "bob") is None
    penalty.begin(HOST, "bob")
    assert penalty.refusal(HOST, "carol") == "source"
    first.succeeded("alice")  # a success releases its slot (and resets the failures)
    assert penalty.refusal(HOST, "carol") is None


def test_web_sign_in_counts_checks_in_flight_too() -> None:
    """The household web page's sign-in shares the penalty: parallel attempts beyond the
    source's budget are refused without a password check."""
    from twisted.internet import defer

    from gateway.web.signin import Refused, SignIn

    clock = task.Clock()
    pending: list[defer.Deferred[str | None]] = []

    def run_blocking(*_args: object) -> defer.Deferred[str | None]:
        pending.append(defer.Deferred())
        return pending[-1]

    penalty = AuthPenalty(clock, PenaltySettings(ip_budget=2, user_budget=0))
    signin = SignIn(GatedPasswords({}), penalty, run_blocking, clock)
    results = [signin.attempt(HOST, "alice", b"wrong") for _ in range(5)]
    assert len(pending) == 2  # only the budget's worth of checks started
    refused: list[object] = []
    for result in results[2:]:
        result.addErrback(lambda f: refused.append(f.check(Refused)))
    assert refused == [Refused, Refused, Refused]
    for d in pending:
        d.callback(None)
    assert penalty.failures(HOST) == 2 and penalty.in_flight(HOST) == 0
    clock.advance(60)
