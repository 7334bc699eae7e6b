"""RFC 2449 §6.8 LOGIN-DELAY in the poller, on a Clock: an upstream announcing
``LOGIN-DELAY 30`` never sees two passes start within 30 s, whatever asks for them."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from gateway.pop3.errors import LoginDelayed
from gateway.pop3.fetcher import FetchResult
from gateway.pop3.poller import UpstreamPoller
from gateway.pop3.upstream import Upstream


class QuickFetch:
    """Each pass takes ``duration`` seconds and reports LOGIN-DELAY ``delay``."""

    def __init__(self, clock: Clock, delay: float, duration: float = 0.2) -> None:
        self.clock = clock
        self.delay = delay
        self.duration = duration
        self.starts: list[float] = []
        self.fail_with: Exception | None = None

    def __call__(self, upstream: Any, store: Any, *, reactor: Any, progress: Any = None) -> Any:
        self.starts.append(self.clock.seconds())
        d: defer.Deferred[FetchResult] = defer.Deferred()

        def finish() -> None:
            if self.fail_with is not None:
                self.fail_with.result = FetchResult("isp", login_delay=self.delay)  # type: ignore[attr-defined]
                d.errback(self.fail_with)
            else:
                d.callback(FetchResult("isp", login_delay=self.delay))

        self.clock.callLater(self.duration, finish)
        return d


def start(clock: Clock, fetch: QuickFetch, poll_interval: float = 10.0) -> UpstreamPoller:
    up = Upstream(
        name="isp", owner="o", host="127.0.0.1", port=110, tls="none",
        username="u", password="p", poll_interval=poll_interval,
    )  # fmt: skip
    p = UpstreamPoller(up, None, reactor=clock, fetch=fetch, jitter=0.1, first_delay=1.0)
    p.startService()
    return p


def gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]


def test_triggers_in_a_loop_never_start_passes_within_the_login_delay() -> None:
    clock = Clock()
    fetch = QuickFetch(clock, delay=30)
    poller = start(clock, fetch)
    for _ in range(1200):  # a client SELECTing every half second for 10 minutes
        poller.trigger()
        clock.advance(0.5)
    assert len(fetch.starts) >= 15
    assert min(gaps(fetch.starts)) >= 30
    assert poller.health_dict()["login_delay"] == 30


def test_fetch_now_waits_for_the_login_delay_too() -> None:
    clock = Clock()
    fetch = QuickFetch(clock, delay=30)
    poller = start(clock, fetch)
    clock.advance(2)  # first pass done, LOGIN-DELAY learnt
    results: list[Any] = []
    poller.fetch_now().addBoth(results.append)
    clock.advance(1)
    assert len(fetch.starts) == 1 and not results
    clock.advance(30)
    clock.advance(1)
    assert len(fetch.starts) == 2 and isinstance(results[0], FetchResult)
    assert gaps(fetch.starts)[0] >= 30


def test_poll_interval_shorter_than_login_delay_is_stretched() -> None:
    clock = Clock()
    fetch = QuickFetch(clock, delay=45)
    start(clock, fetch, poll_interval=5)
    clock.pump([1] * 400)
    assert min(gaps(fetch.starts)) >= 45


def test_without_login_delay_the_old_spacing_holds() -> None:
    clock = Clock()
    fetch = QuickFetch(clock, delay=0)
    poller = start(clock, fetch)
    for _ in range(100):
        poller.trigger()
        clock.advance(0.5)
    assert min(gaps(fetch.starts)) < 30  # 5 s minimum spacing, as before


def test_a_login_delay_refusal_is_spaced_too() -> None:
    clock = Clock()
    fetch = QuickFetch(clock, delay=30)
    fetch.fail_with = LoginDelayed("[LOGIN-DELAY] too soon")
    poller = start(clock, fetch)
    for _ in range(400):
        poller.trigger()
        clock.advance(0.5)
    assert min(gaps(fetch.starts)) >= 30
    assert poller.health_dict()["last_error_kind"] == "login_delay"
