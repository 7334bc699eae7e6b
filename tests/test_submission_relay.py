"""The relay service's decisions (gateway/submission/relay.py) with a scripted delivery
function and a fake clock: retry with backoff, partial delivery, permanent failure,
expiry, and bounces owed across a crash. No network, no reactor thread."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import task

from gateway.store.memory_queue import MemoryOutboundQueue
from gateway.store.queue import EXPIRED, FAILED, QUEUED, SENT, NewOutbound
from gateway.submission.client import RelayOutcome
from gateway.submission.policy import SmtpUpstream
from gateway.submission.relay import RelayService

UPSTREAM = SmtpUpstream(host="smtp.example")
RAW = b"From: alice@isp.example\r\nSubject: hi\r\n\r\nbody\r\n"


class Script:
    """Answers each delivery attempt with the next outcome."""

    def __init__(self, *outcomes: RelayOutcome) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, upstream: SmtpUpstream, **kw: Any) -> RelayOutcome:
        self.calls.append({"upstream": upstream, **kw})
        return self.outcomes.pop(0)


@pytest.fixture
def clock() -> task.Clock:
    c = task.Clock()
    c.advance(1_000_000)
    return c


def service(
    clock: task.Clock, script: Script, bounces: list[tuple[str, bytes]], fail_filing: int = 0
) -> tuple[RelayService, MemoryOutboundQueue]:
    queue = MemoryOutboundQueue()
    failures = [fail_filing]

    def file_bounce(user: str, raw: bytes) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError("store busy")
        bounces.append((user, raw))

    relay = RelayService(
        queue,
        lambda name: UPSTREAM if name == "isp" else None,
        reactor=clock,
        clock=clock,
        file_bounce=file_bounce,
        hostname="gw.test",
        schedule=(60.0, 600.0),
        deliver=script,
    )
    return relay, queue


def enqueue(queue: MemoryOutboundQueue, clock: task.Clock, *rcpts: str, route: str = "isp") -> int:
    item = NewOutbound("alice", route, "alice@isp.example", rcpts or ("b@x.example",), RAW)
    return queue.enqueue(item, now=clock.seconds(), lifetime=3600).id


def run(relay: RelayService) -> None:
    done = relay.kick()
    assert done.called  # the scripted deliveries finish synchronously


@pytest.fixture
def bounces() -> Iterator[list[tuple[str, bytes]]]:
    yield []


def test_temporary_failure_retries_on_schedule_then_sends(clock, bounces) -> None:  # type: ignore[no-untyped-def]
    script = Script(
        RelayOutcome(error="smtp.example refused the connection"),
        RelayOutcome(error="421 busy"),
        RelayOutcome(reply="250 2.0.0 ok", delivered=("b@x.example",)),
    )
    relay, queue = service(clock, script, bounces)
    item_id = enqueue(queue, clock)
    run(relay)
    assert queue.get(item_id).next_attempt == clock.seconds() + 60
    clock.advance(59)
    run(relay)
    assert len(script.calls) == 1  # not due yet
    clock.advance(1)
    run(relay)
    assert queue.get(item_id).next_attempt == clock.seconds() + 600  # the schedule grows
    clock.advance(600)
    run(relay)
    item = queue.get(item_id)
    assert item.state == SENT and item.last_reply == "250 2.0.0 ok" and item.attempts == 3
    assert script.calls[0]["content"] == RAW and script.calls[0]["upstream"] is UPSTREAM
    assert bounces == []


def test_partial_delivery_keeps_the_deferred_and_bounces_the_refused(clock, bounces) -> None:  # type: ignore[no-untyped-def]
    script = Script(
        RelayOutcome(
            reply="250 ok",
            delivered=("a@x.example",),
            deferred=(("b@x.example", "450 4.2.1 busy"),),
            failed=(("c@x.example", "5.1.1", "550 5.1.1 unknown"),),
        ),
        RelayOutcome(reply="250 ok", delivered=("b@x.example",)),
    )
    relay, queue = service(clock, script, bounces)
    item_id = enqueue(queue, clock, "a@x.example", "b@x.example", "c@x.example")
    run(relay)
    item = queue.get(item_id)
    assert item.state == QUEUED and item.recipients == ("b@x.example",)
    ((user, report),) = bounces
    assert user == "alice" and b"c@x.example" in report and b"a@x.example" not in report
    clock.advance(60)
    run(relay)
    assert queue.get(item_id).state == SENT
    assert script.calls[1]["recipients"] == ("b@x.example",)


def test_permanent_failure_bounces_once(clock, bounces) -> None:  # type: ignore[no-untyped-def]
    script = Script(
        RelayOutcome(error="smtp.example refused MAIL FROM: 550 5.7.1 no", permanent=True)
    )
    relay, queue = service(clock, script, bounces)
    item_id = enqueue(queue, clock)
    run(relay)
    assert queue.get(item_id).state == FAILED and queue.get(item_id).bounced
    assert len(bounces) == 1 and b"Status: 5.7.1" in bounces[0][1]
    run(relay)
    assert len(bounces) == 1


def test_every_recipient_refused_is_a_failure_with_their_reasons(clock, bounces) -> None:  # type: ignore[no-untyped-def]
    script = Script(RelayOutcome(failed=(("b@x.example", "5.1.1", "550 5.1.1 no such user"),)))
    relay, queue = service(clock, script, bounces)
    item_id = enqueue(queue, clock)
    run(relay)
    assert queue.get(item_id).state == FAILED and queue.get(item_id).bounced
    assert b"Diagnostic-Code: smtp; 550 5.1.1 no such user" in bounces[0][1]


def test_expiry_bounces_with_4_4_7_and_a_failed_filing_is_retried(clock, bounces) -> None:  # type: ignore[no-untyped-def]
    script = Script(*[RelayOutcome(error="refused the connection")] * 10)
    relay, queue = service(clock, script, bounces, fail_filing=1)
    item_id = enqueue(queue, clock)
    for _ in range(8):
        run(relay)
        clock.advance(600)
    item = queue.get(item_id)
    assert item.state == EXPIRED and item.bounced
    ((_, report),) = bounces  # the first filing failed; the next pass filed it
    assert b"Status: 4.4.7" in report and b"refused the connection" in report


def test_a_route_without_smtp_waits(clock, bounces) -> None:  # type: ignore[no-untyped-def]
    relay, queue = service(clock, Script(), bounces)
    item_id = enqueue(queue, clock, route="gone")
    run(relay)
    item = queue.get(item_id)
    assert item.state == QUEUED and "no SMTP server configured" in (item.last_error or "")
