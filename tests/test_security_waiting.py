"""Checks beyond a source's budget wait for a turn instead of failing (issue 19): a crowded
NAT is never refused for its own size, and a brute-forcer still gets at most the budget.

The unit tests drive :meth:`AuthPenalty.enter` on a fake clock and end attempts by hand;
the last one runs 60 right-password LOGINs from one address through a real IMAP server
with every check held at a gate.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import task

from gateway.security.penalty import AuthPenalty, LoginAttempt, PenaltySettings
from gateway.testing.imapclient import HOST, PASSWORD, USER, RawClient, running_server
from tests.test_security_inflight import GatedPasswords

BUDGET = 30


class Turns:
    """Records what each entered attempt was told: started (its attempt) or refused."""

    def __init__(self) -> None:
        self.started: list[LoginAttempt] = []
        self.refused: list[str] = []

    def __call__(self, attempt: LoginAttempt | None, reason: str | None) -> None:
        if attempt is not None:
            self.started.append(attempt)
        else:
            assert reason is not None
            self.refused.append(reason)


def _penalty(budget: int = BUDGET, **more: int) -> AuthPenalty:
    return AuthPenalty(task.Clock(), PenaltySettings(ip_budget=budget, user_budget=0, **more))


def test_exactly_the_budget_starts_at_once_and_nothing_waits() -> None:
    penalty, turns = _penalty(), Turns()
    for i in range(BUDGET):
        assert penalty.enter(HOST, f"u{i}", turns) is None
    assert len(turns.started) == BUDGET and not turns.refused
    assert penalty.waiting(HOST) == 0 and penalty.in_flight(HOST) == BUDGET


def test_budget_plus_one_waits_and_starts_when_a_check_succeeds() -> None:
    penalty, turns = _penalty(), Turns()
    for i in range(BUDGET + 1):
        penalty.enter(HOST, f"u{i}", turns)
    assert len(turns.started) == BUDGET and not turns.refused
    assert penalty.waiting(HOST) == 1
    turns.started[0].succeeded("u0")
    assert len(turns.started) == BUDGET + 1 and penalty.waiting(HOST) == 0
    assert penalty.in_flight(HOST) == BUDGET


def test_a_waiting_attempt_is_served_after_a_failure_that_leaves_budget() -> None:
    """One failure out of 30 slots: 29 in flight + 1 failure = the budget, so the waiter
    starts only when a second check ends without spending it."""
    penalty, turns = _penalty(), Turns()
    for i in range(BUDGET + 1):
        penalty.enter(HOST, f"u{i}", turns)
    assert turns.started[0].failed() > 0
    assert len(turns.started) == BUDGET and penalty.waiting(HOST) == 1
    turns.started[1].succeeded("u1")  # resets the source's failures
    assert len(turns.started) == BUDGET + 1 and not turns.refused


def test_a_waiting_attempt_whose_source_gets_blocked_is_refused() -> None:
    penalty, turns = _penalty(), Turns()
    for i in range(BUDGET + 5):
        penalty.enter(HOST, f"u{i}", turns)
    for attempt in list(turns.started):
        attempt.failed()
    assert len(turns.started) == BUDGET
    assert turns.refused == ["source"] * 5
    assert penalty.waiting(HOST) == 0 and penalty.in_flight(HOST) == 0
    assert penalty.failures(HOST) == BUDGET


def test_a_hundred_parallel_wrong_passwords_get_at_most_the_budget_of_checks() -> None:
    penalty, turns = _penalty(), Turns()
    for _ in range(100):
        penalty.enter(HOST, "alice", turns)
    checked = 0
    while turns.started[checked:]:
        turns.started[checked].failed()
        checked += 1
    assert checked == BUDGET and turns.refused == ["source"] * (100 - BUDGET)
    assert penalty.enter(HOST, "alice", turns) is None and turns.refused[-1] == "source"


def test_a_nat_herd_of_sixty_right_passwords_all_get_in_in_arrival_order() -> None:
    penalty, turns = _penalty(), Turns()
    for i in range(60):
        penalty.enter(HOST, f"u{i}", turns)
    done = 0
    while done < len(turns.started):
        turns.started[done].succeeded(f"u{done}")
        done += 1
    assert done == 60 and not turns.refused
    assert [a.user for a in turns.started] == [f"u{i}" for i in range(60)]


def test_a_withdrawn_waiter_is_never_called_and_the_queue_is_bounded() -> None:
    penalty, turns = _penalty(budget=1, ip_waiting=2), Turns()
    penalty.enter(HOST, "a", turns)
    withdraw = penalty.enter(HOST, "b", turns)
    penalty.enter(HOST, "c", turns)
    assert withdraw is not None and penalty.waiting(HOST) == 2
    penalty.enter(HOST, "d", turns)  # the queue is full: refused as a spent budget
    assert turns.refused == ["source"]
    withdraw()
    turns.started[0].succeeded("a")
    assert [a.user for a in turns.started] == ["a", "c"]


def test_other_sources_never_wait_behind_a_crowded_one() -> None:
    penalty, turns = _penalty(budget=1), Turns()
    penalty.enter(HOST, "a", turns)
    penalty.enter(HOST, "b", turns)
    penalty.enter("198.51.100.7", "c", turns)
    assert [a.user for a in turns.started] == ["a", "c"] and penalty.waiting(HOST) == 1


def test_a_nat_herd_of_sixty_imap_logins_all_succeed(tmp_path: Path) -> None:
    """60 right-password LOGINs at once from one address with the default budget of 30:
    every one is answered OK (none refused), 30 checks under way at most. Three users
    of 20 devices each (the cap of connections per user and address is another limit)."""
    users = [f"{USER}{i % 3}" for i in range(60)]
    auth = GatedPasswords({user: PASSWORD for user in users})
    settings = PenaltySettings(ip_budget=BUDGET, user_budget=100)
    with running_server(tmp_path, fake_clock=True, penalty=settings, authenticator=auth) as server:
        penalty = server.factory.penalty
        assert isinstance(penalty, AuthPenalty)
        clients = [RawClient(server.port) for _ in range(60)]
        try:
            for i, client in enumerate(clients):
                client.greeting()
                client.send(f"n{i} LOGIN {users[i]} {PASSWORD}\r\n".encode())
            server.wait_until(lambda: penalty.in_flight(HOST) == BUDGET, "the budget's checks")
            server.wait_until(lambda: penalty.waiting(HOST) == 60 - BUDGET, "the rest waiting")
            auth.gate.set()
            replies = [client.read_line() for client in clients]
            assert [r for r in replies if b" OK " not in r] == []
            assert auth.calls == 60
            assert server.call(penalty.in_flight, HOST) == 0
        finally:
            auth.gate.set()
            for client in clients:
                client.close()
