"""A small household served by the web page in-process, for the web tests: real pollers
fetching sample mail from fake POP3 servers into a real SQLite store, the status dict
from the real StatusSource, and the history in the store's own file.

Who is who: alice (upstreams ``home``, healthy, and ``club``, whose configured password is
wrong), bob (``bobs``), carol (an admin), and the household ``family`` (alice and bob,
upstream ``family``). For the pictures, ``seed_history`` writes a plausible past week of
fetches and a month of store sizes *before* the real counts; the counts the tests check
("since the gateway started", the rise after "fetch now") are the real ones.
"""

from __future__ import annotations

import http.client
import random
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from gateway.access.quota import usage
from gateway.app.status import StatusSource
from gateway.pop3.poller import UpstreamPoller
from gateway.pop3.upstream import Upstream
from gateway.security.auth import PasswordTable
from gateway.security.passwords import hash_password
from gateway.security.penalty import AuthPenalty
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_timeseries import SQLiteTimeSeries
from gateway.store.timeseries import DAY, HOUR, Point
from gateway.testing import samplemail
from gateway.testing.fakepop3 import FakePOP3Server
from gateway.testing.reactor_thread import ReactorThread
from gateway.web.history import FETCHED_BYTES, FETCHED_MESSAGES, STORE_BYTES, HistoryRecorder
from gateway.web.resource import WebServices, web_site

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
HOUSEHOLDS = {"family": ["alice", "bob"]}
ADMINS = ["carol"]
QUOTAS = {"alice": 160 * 1024, "shared:family": 1024 * 1024}

# name → (owner, messages on the server at start, configured password is right)
UPSTREAMS = {
    "home": ("alice", 5, True),
    "club": ("alice", 2, False),
    "family": ("shared:family", 3, True),
    "bobs": ("bob", 2, True),
}


@dataclass
class WebWorld:
    runner: ReactorThread
    tmp: Path
    store: Any = None
    series: Any = None
    services: Any = None
    servers: dict[str, FakePOP3Server] = field(default_factory=dict)
    pollers: dict[str, UpstreamPoller] = field(default_factory=dict)
    recorder: Any = None
    ports: list[Any] = field(default_factory=list)
    url: str = ""
    mail_seed: int = 100

    def add_mail(self, upstream: str, count: int) -> None:
        """Put ``count`` new sample messages on an upstream's POP3 server."""

        def add() -> None:
            for raw in samplemail.generate(count, seed=self.mail_seed):
                self.servers[upstream].add_message(raw)
            self.mail_seed += 1

        self.runner.call(add)

    def listen(self, interface: str = "127.0.0.1", **tls: Any) -> str:
        """Serve the site on another port (TLS with ``context=``); its URL."""

        def start() -> str:
            site = web_site(self.services)
            if "context" in tls:
                port = reactor.listenSSL(0, site, tls["context"], interface=interface)
                scheme = "https"
            else:
                port = reactor.listenTCP(0, site, interface=interface)
                scheme = "http"
            self.ports.append(port)
            return f"{scheme}://{interface}:{port.getHost().port}"

        return self.runner.call(start)

    def close(self) -> None:
        def stop() -> defer.Deferred[Any]:
            ds = [defer.maybeDeferred(p.stopListening) for p in self.ports]
            ds += [defer.maybeDeferred(p.stopService) for p in self.pollers.values()]
            for server in self.servers.values():
                ds.append(defer.maybeDeferred(server.port.stopListening))
            return defer.gatherResults(ds).addBoth(lambda _: self.store.close())

        self.runner.call(stop)


def _seed_history(series: SQLiteTimeSeries, now: float, store_sizes: dict[str, int]) -> None:
    """A plausible past: mail arriving by day more than by night, store sizes growing."""
    rng = random.Random(18)
    start = now - 7 * DAY
    for name, busy in (("home", 1.0), ("family", 0.5)):
        total, points, octets = 0.0, [], []
        hour = start
        while hour < now - HOUR:
            day_hour = int(hour // HOUR) % 24
            rate = busy * (2.2 if 7 <= day_hour <= 21 else 0.3)
            total += sum(1 for _ in range(6) if rng.random() < rate / 6)
            points.append(Point(hour, total))
            octets.append(Point(hour, total * 4200))
            hour += HOUR
        series.record(FETCHED_MESSAGES + name, points)
        series.record(FETCHED_BYTES + name, octets)
    for owner, size in store_sizes.items():
        points = [
            Point(now - (30 - d) * DAY, size * (0.55 + 0.4 * d / 30 + rng.uniform(-0.02, 0.02)))
            for d in range(30)
        ]
        series.record(STORE_BYTES + owner, points)


def start_world(tmp: Path, *, seed_history: bool = True) -> WebWorld:
    """Build and start the household in the reactor thread, run one pass of every
    upstream, record one history sample, and serve the page on a loopback port."""
    runner = ReactorThread.shared(reactor)
    world = WebWorld(runner, tmp)

    def build() -> defer.Deferred[Any]:
        world.store = store = SQLiteStore(tmp / "store.sqlite")
        world.series = SQLiteTimeSeries(store.db)  # the history lives in the store's file
        for user in (*PASSWORDS, "shared:family"):
            store.ensure_user(user)
        for i, (name, (owner, count, right)) in enumerate(sorted(UPSTREAMS.items())):
            server = FakePOP3Server(name, "right", messages=samplemail.generate(count, seed=i))
            server.port = server.listen(reactor)
            world.servers[name] = server
            upstream = Upstream(
                name=name,
                owner=owner,
                host="127.0.0.1",
                port=server.port.getHost().port,
                tls="none",
                username=name,
                password="right" if right else "wrong",
                poll_interval=3600,
            )
            poller = UpstreamPoller(upstream, store, reactor=reactor, first_delay=3600, jitter=0)
            poller.startService()
            world.pollers[name] = poller
        status = StatusSource(
            reactor=reactor,
            version="0.1.0",
            config_path=str(tmp / "popgate.toml"),
            state_dir=str(tmp),
            imap_listeners=["tcp:1143:interface=127.0.0.1"],
            factory=SimpleNamespace(protocols=()),
            pollers=world.pollers,
            store_path=store.path,
            store=store,
            owners=lambda: [*sorted(PASSWORDS), "shared:family"],
        )
        owners = [*sorted(PASSWORDS), "shared:family"]
        world.recorder = HistoryRecorder(
            world.series,
            clock=reactor,
            fetched=lambda: {
                n: (p.health.fetched_total, p.health.bytes_total) for n, p in world.pollers.items()
            },
            store_sizes=lambda: {o: usage(store, o) for o in owners},
        )
        table = PasswordTable({u: hash_password(p) for u, p in PASSWORDS.items()})
        world.services = WebServices(
            authenticator=table,
            run_blocking=deferToThread,
            clock=reactor,
            status=status.collect,
            fetch_now=lambda name: world.pollers[name].fetch_now(),
            admins=lambda: ADMINS,
            households=lambda: HOUSEHOLDS,
            penalty=AuthPenalty(reactor),
            series=world.series,
            recorder=world.recorder,
            quota_limit=QUOTAS.get,
        )
        passes = [p.fetch_now().addErrback(lambda f: None) for p in world.pollers.values()]

        def after(_: Any) -> None:
            if seed_history:
                now = reactor.seconds()
                _seed_history(world.series, now, {o: usage(store, o) for o in owners})
            world.recorder.sample()

        return defer.gatherResults(passes).addCallback(after)

    runner.call(build)
    world.url = world.listen()
    return world


# ---- a plain HTTP client (no browser) ------------------------------------------------------


class Client:
    """Cookies and forms over http.client, enough to drive the page without a browser."""

    def __init__(self, url: str, **context: Any) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.https = parts.scheme == "https"
        self.context = context.get("context")
        self.cookie: str | None = None

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, **headers: str
    ) -> tuple[int, dict[str, str], str]:
        if self.https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=30
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        sent = {k.replace("_", "-"): v for k, v in headers.items()}
        if body is not None:
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if self.cookie:
            sent["Cookie"] = self.cookie
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        text = response.read().decode("utf-8")
        got = {k.lower(): v for k, v in response.getheaders()}
        if "set-cookie" in got:
            self.cookie = got["set-cookie"].split(";")[0]
        conn.close()
        return response.status, got, text

    def csrf(self, path: str = "/") -> str:
        status, _, text = self.request("GET", path)
        match = re.search(r'name="csrf" value="([^"]+)"', text)
        assert match, (status, text[:500])
        return match.group(1)

    def sign_in(self, user: str, password: str | None = None) -> int:
        token = self.csrf("/signin")
        form = {"csrf": token, "user": user, "password": password or PASSWORDS[user]}
        return self.request("POST", "/signin", form)[0]
