"""The poller's scheduling (gateway.pop3.poller): first pass, intervals, jitter, backoff,
triggers and their spacing, stopping, ``fetch_now`` and health, on a ``task.Clock`` with a
scripted fetch; and a few passes with real fetches against FakePOP3Server."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock, deferLater

from gateway.pop3.errors import FetchError
from gateway.pop3.fetcher import FetchResult
from gateway.pop3.poller import UpstreamPoller
from gateway.pop3.upstream import Upstream
from gateway.testing import samplemail
from gateway.testing.pop3fetch import OWNER


def sample(count: int, seed: int = 1) -> list[bytes]:
    return samplemail.generate(count, seed)


# ---- the poller, on a Clock -----------------------------------------------------------------


class ScriptedFetch:
    """A fetch function whose passes the test finishes by hand."""

    def __init__(self) -> None:
        self.calls: list[defer.Deferred[FetchResult]] = []
        self.reporters: list[Any] = []

    def __call__(self, upstream, store, *, reactor, progress=None) -> defer.Deferred[FetchResult]:
        d: defer.Deferred[FetchResult] = defer.Deferred()
        self.calls.append(d)
        self.reporters.append(progress)
        return d

    def progress(self, info: dict[str, Any]) -> None:
        """Report progress from the latest pass, as fetch_once would."""
        self.reporters[-1](info)

    def succeed(self, fetched: int = 0, size: int = 0) -> None:
        self.calls[-1].callback(FetchResult("isp", fetched=fetched, bytes=size))

    def fail(self, fetched: int = 0) -> None:
        error = FetchError("boom")
        error.result = FetchResult("isp", fetched=fetched)
        self.calls[-1].errback(error)


def poller(clock: Clock, fetch: ScriptedFetch, **kw: Any) -> UpstreamPoller:
    upstream = Upstream(
        name="isp",
        owner=OWNER,
        host="127.0.0.1",
        port=110,
        tls="none",
        username="u",
        password="p",
        poll_interval=300.0,
    )
    kw.setdefault("jitter", 0.0)
    p = UpstreamPoller(upstream, None, reactor=clock, fetch=fetch, **kw)
    p.startService()
    return p


def test_poller_fetches_shortly_after_start_then_every_poll_interval() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=1.0)
    clock.advance(0.9)
    assert fetch.calls == []
    clock.advance(0.1)
    assert len(fetch.calls) == 1
    fetch.succeed(fetched=2, size=100)
    assert p.health.next_poll_at == clock.seconds() + 300.0
    clock.advance(299.9)
    assert len(fetch.calls) == 1
    clock.advance(0.1)
    assert len(fetch.calls) == 2
    assert p.health.fetched_total == 2 and p.health.bytes_total == 100
    assert p.health.last_success == 1.0


def test_poll_delays_are_jittered_within_bounds() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, jitter=0.1, rng=random.Random(3), first_delay=0)
    delays = []
    for _ in range(30):
        clock.advance(p.health.next_poll_at - clock.seconds())
        fetch.succeed()
        delays.append(p.health.next_poll_at - clock.seconds())
    assert all(270.0 <= d <= 330.0 for d in delays)
    assert len(set(delays)) > 1


def test_failures_back_off_exponentially_up_to_the_cap_and_success_resets() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, backoff_base=10.0, backoff_cap=50.0)
    clock.advance(0)
    waits = []
    for _ in range(5):
        fetch.fail()
        waits.append(p.health.next_poll_at - clock.seconds())
        clock.advance(waits[-1])
    assert waits == [10.0, 20.0, 40.0, 50.0, 50.0]
    assert p.health.consecutive_failures == 5
    assert p.health.last_error == "boom" and p.health.last_error_kind == "error"
    fetch.succeed()
    assert p.health.consecutive_failures == 0
    assert p.health.next_poll_at - clock.seconds() == 300.0


def test_failing_since_is_the_first_failure_of_the_episode_and_clears_on_success() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, backoff_base=10.0)
    clock.advance(5)
    fetch.fail()
    assert p.health.failing_since == 5.0
    clock.advance(p.health.next_poll_at - clock.seconds())
    fetch.fail()
    assert p.health.failing_since == 5.0 and p.health_dict()["failing_since"] == 5.0
    clock.advance(p.health.next_poll_at - clock.seconds())
    fetch.succeed()
    assert p.health.failing_since is None


def test_failed_pass_still_counts_what_it_delivered() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0)
    clock.advance(0)
    fetch.fail(fetched=3)
    assert p.health.fetched_total == 3


def test_trigger_runs_a_pass_now_when_idle_and_spacing_allows() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=1.0, min_spacing=5.0)
    clock.advance(1.0)
    fetch.succeed()
    clock.advance(10.0)
    p.trigger()
    clock.advance(0)
    assert len(fetch.calls) == 2


def test_trigger_respects_the_minimum_spacing_between_passes() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, min_spacing=5.0)
    clock.advance(0)
    fetch.succeed()
    clock.advance(1.0)
    p.trigger()
    p.trigger()
    clock.advance(3.9)
    assert len(fetch.calls) == 1
    clock.advance(0.1)
    assert len(fetch.calls) == 2


def test_triggers_during_a_pass_schedule_exactly_one_more_after_it() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, min_spacing=5.0)
    clock.advance(0)
    p.trigger()
    p.trigger()
    p.trigger()
    clock.advance(10.0)
    assert len(fetch.calls) == 1  # never two in flight
    fetch.succeed()
    clock.advance(0)
    assert len(fetch.calls) == 2
    fetch.succeed()
    clock.advance(299.0)
    assert len(fetch.calls) == 2


def test_stop_cancels_timers_and_waits_for_the_pass_in_flight() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, stop_grace=10.0)
    clock.advance(0)
    stopped = p.stopService()
    assert stopped is not None and not stopped.called
    fetch.succeed()
    assert stopped.called
    clock.advance(10_000)
    assert len(fetch.calls) == 1
    assert clock.getDelayedCalls() == []
    p.trigger()
    clock.advance(10)
    assert len(fetch.calls) == 1


def test_stop_cancels_a_pass_that_outlives_the_grace_period() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, stop_grace=10.0)
    clock.advance(0)
    stopped = p.stopService()
    clock.advance(10.0)
    assert stopped.called
    assert fetch.calls[0].called  # cancelled
    assert p.health.consecutive_failures == 0


def test_poller_drives_real_fetches_into_the_store(fake_upstream, rt) -> None:
    h = fake_upstream(messages=sample(3))
    up = h.upstream(poll_interval=300.0)

    def start() -> UpstreamPoller:
        p = UpstreamPoller(up, h.store, reactor=global_reactor, first_delay=0)
        p.startService()
        return p

    p = rt.call(start)
    done = rt.call(lambda: _wait_for(lambda: p.health.passes >= 1))
    assert done
    assert p.health.fetched_total == 3 and p.health.last_error is None
    rt.call(p.stopService)
    rt.call(h.server.when_idle)
    assert len(h.inbox()) == 3


def test_stopping_the_poller_abandons_a_stalled_pass_without_deleting_anything(
    fake_upstream, rt
) -> None:
    h = fake_upstream(messages=sample(3))
    h.server.faults.stall_on = {"RETR"}
    up = h.upstream(keep_on_server=False, timeout=60.0)

    def start() -> UpstreamPoller:
        p = UpstreamPoller(up, h.store, reactor=global_reactor, first_delay=0, stop_grace=0.2)
        p.startService()
        return p

    p = rt.call(start)
    assert rt.call(lambda: _wait_for(lambda: "RETR" in h.verbs()))
    assert p.health.in_flight
    rt.call(p.stopService)
    rt.call(h.server.when_idle)
    assert not p.health.in_flight
    assert p.health.consecutive_failures == 0 and p.health.last_error is None
    assert len(h.server.messages) == 3 and "QUIT" not in h.verbs()
    assert h.inbox() == []


def _wait_for(predicate, interval: float = 0.01, attempts: int = 2000) -> defer.Deferred[bool]:
    async def loop() -> bool:
        for _ in range(attempts):
            if predicate():
                return True
            await deferLater(global_reactor, interval, lambda: None)
        return False

    return defer.Deferred.fromCoroutine(loop())


# ---- fetch_now (popgate fetch) and health ---------------------------------------------------


def test_fetch_now_starts_a_pass_at_once_ignoring_spacing_and_returns_its_result() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, min_spacing=60.0)
    clock.advance(0)
    fetch.succeed()
    clock.advance(1.0)
    results: list[FetchResult] = []
    p.fetch_now().addCallback(results.append)
    assert len(fetch.calls) == 2  # no waiting for the 60 s spacing: an operator asked
    fetch.succeed(fetched=4)
    assert [r.fetched for r in results] == [4]


def test_fetch_now_during_a_pass_waits_for_the_next_one_and_hears_its_progress() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0)
    clock.advance(0)
    progress: list[dict[str, Any]] = []
    results: list[FetchResult] = []
    p.fetch_now(progress=progress.append).addCallback(results.append)
    fetch.progress({"upstream": "isp", "received": 1, "backlog": 5})  # the old pass
    fetch.succeed(fetched=1)
    assert results == [] and progress == []
    clock.advance(0)
    assert len(fetch.calls) == 2
    fetch.progress({"upstream": "isp", "received": 2, "backlog": 3})
    assert progress == [{"upstream": "isp", "received": 2, "backlog": 3}]
    assert p.health.backlog == 3 and p.health_dict()["progress"]["received"] == 2
    fetch.succeed(fetched=7)
    assert [r.fetched for r in results] == [7]


def test_fetch_now_failure_reaches_the_caller() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=100)
    failures: list[Any] = []
    p.fetch_now().addErrback(failures.append)
    fetch.fail(fetched=2)
    assert failures and failures[0].check(FetchError)
    assert failures[0].value.result.fetched == 2


def test_waiters_are_cancelled_when_the_poller_stops() -> None:
    clock, fetch = Clock(), ScriptedFetch()
    p = poller(clock, fetch, first_delay=0, stop_grace=1.0)
    clock.advance(0)
    failures: list[Any] = []
    p.fetch_now().addErrback(failures.append)
    p.stopService()
    assert failures and failures[0].check(defer.CancelledError)
    clock.advance(1.0)


def test_health_dict_reports_state_counts_errors_and_skipped_messages(fake_upstream, rt) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n"
    h = fake_upstream(messages=[("a", b"A\r\n"), ("big", big)])
    up = h.upstream(max_message_size=1000)
    p = UpstreamPoller(up, h.store, reactor=global_reactor, first_delay=3600)
    rt.call(p.startService)
    try:
        assert rt.call(p.health_dict)["state"] == "waiting"
        result = rt.call(p.fetch_now)
        assert result.fetched == 1 and result.skipped == 1
        health = rt.call(p.health_dict)
        assert health["state"] == "ok" and health["consecutive_failures"] == 0
        assert health["messages_fetched"] == 1 and health["bytes_fetched"] == 3
        assert health["backlog"] == 0 and health["last_result"]["skipped"] == 1
        assert health["skipped_count"] == 1
        assert health["skipped"][0]["uidl"] == "big"
        assert "too large" in health["skipped"][0]["reason"]
        h.server.faults.no_uidl = h.server.faults.no_top = True
        with pytest.raises(FetchError):
            rt.call(p.fetch_now)
        health = rt.call(p.health_dict)
        assert health["state"] == "failing" and health["consecutive_failures"] == 1
        assert health["last_error_kind"] == "uidl_unsupported"
        assert health["last_success"] is not None and health["last_error_at"] is not None
        json.dumps(health)  # JSON-ready for the control socket
    finally:
        rt.call(p.stopService)
        rt.call(h.server.when_idle)
