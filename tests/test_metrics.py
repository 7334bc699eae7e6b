"""Prometheus metrics: the exposition keeps every family's name, type and help, parses as
format 0.0.4, and the counters follow real work."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet import defer, task

from gateway.app.metrics import CONTENT_TYPE, GatewayMetrics, LagMonitor
from gateway.app.metrics_http import metrics_site
from gateway.imap.states import COMMANDS, State
from gateway.pop3.errors import LoginFailed
from gateway.pop3.fetcher import FetchResult
from gateway.testing.imapclient import global_reactor, on_reactor, running_server

SAMPLE_LINE = re.compile(
    r"^[a-zA-Z_:][a-zA-Z0-9_:]*"  # metric name
    r'(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})?'  # labels
    r" (NaN|[+-]Inf|-?[0-9.e+-]+)$"
)


def parse_exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A strict reader of format 0.0.4 (enough for these tests): every line is a HELP,
    a TYPE or a sample line; TYPE precedes the family's samples; values parse."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    typed: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            assert name not in typed, f"second TYPE line for {name}"
            typed[name] = kind
            continue
        assert SAMPLE_LINE.match(line), f"not a sample line: {line!r}"
        name, _, rest = line.partition("{") if "{" in line else (line.split(" ")[0], "", "")
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or base in typed, f"sample {name} before its TYPE line"
        labels: tuple[tuple[str, str], ...] = ()
        if rest:
            inner = rest[: rest.rindex("}")]
            labels = tuple(
                (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                for k, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', inner)
            )
        value = line.rsplit(" ", 1)[1]
        out[(name, labels)] = float(value.replace("Inf", "inf"))
    return out


def sample(source: Any, name: str, **labels: str) -> float | None:
    """The value of one sample of ``source`` (a registry or a prometheus-client metric)."""
    for metric in source.collect():
        for s in metric.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


# ---- the exposition ----------------------------------------------------------------------

FAMILIES = [
    ("popgate_build_info", "gauge", "Always 1; the version label says which popgate runs."),
    ("popgate_start_time_seconds", "gauge", "When this popgate process started (Unix time)."),
    ("popgate_imap_connections_total", "counter", "IMAP connections accepted."),
    (
        "popgate_imap_sessions",
        "gauge",
        "Open IMAP connections by session state (RFC 3501 §3).",
    ),
    (
        "popgate_imap_commands_total",
        "counter",
        "IMAP commands answered, by command name and tagged status (OK, NO, BAD).",
    ),
    (
        "popgate_imap_command_duration_seconds",
        "histogram",
        "Time from parsing an IMAP command to its tagged completion (IDLE excluded).",
    ),
    ("popgate_imap_auth_failures_total", "counter", "Failed IMAP LOGIN/AUTHENTICATE attempts."),
    (
        "popgate_fetch_passes_total",
        "counter",
        'POP3 fetch passes per upstream by result ("ok" or the error kind).',
    ),
    ("popgate_fetch_duration_seconds", "histogram", "Duration of POP3 fetch passes per upstream."),
    (
        "popgate_fetched_messages_total",
        "counter",
        "Messages fetched from each upstream and stored.",
    ),
    (
        "popgate_fetched_bytes_total",
        "counter",
        "Octets of messages fetched from each upstream and stored.",
    ),
    (
        "popgate_skipped_messages_total",
        "counter",
        "Messages an upstream listed that popgate skipped (too large, lines too long).",
    ),
    (
        "popgate_deleted_messages_total",
        "counter",
        "Messages deleted on each upstream by policy (keep_on_server = false).",
    ),
    (
        "popgate_upstream_last_success_timestamp_seconds",
        "gauge",
        "When the last fetch pass of each upstream succeeded (Unix time).",
    ),
    (
        "popgate_upstream_consecutive_failures",
        "gauge",
        "Fetch passes in a row that failed, per upstream (0 when healthy).",
    ),
    (
        "popgate_upstream_next_poll_timestamp_seconds",
        "gauge",
        "When the next fetch pass of each upstream is due (Unix time).",
    ),
    (
        "popgate_upstream_backlog_messages",
        "gauge",
        "New messages the upstream listed at its last pass that the pass did not store "
        "(non-zero after an interrupted pass).",
    ),
    (
        "popgate_store_size_bytes",
        "gauge",
        "Size of the SQLite store (main file plus write-ahead log).",
    ),
    (
        "popgate_reactor_lag_last_seconds",
        "gauge",
        "Lateness of the most recent reactor lag probe.",
    ),
    (
        "popgate_reactor_lag_seconds",
        "histogram",
        "How late the reactor ran a timer (seconds past its due time).",
    ),
]
"""Every family popgate exposes, in order, as dashboards and alerts know them."""


def families(text: str) -> list[tuple[str, str, str]]:
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    return [
        (name, kind, helps[name]) for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    ]


def test_every_family_keeps_its_name_type_and_help_and_nothing_else_appears(tmp_path):
    """prometheus-client adds ``_created`` series to counters and histograms; popgate's
    exposition is the same set of families it always was, in the same order."""
    clock = task.Clock()
    m = new_metrics(clock)
    lag = LagMonitor(reactor=clock)
    (tmp_path / "s.db").write_bytes(b"x")
    m.attach(store_path=tmp_path / "s.db", lag=lag)
    m.connection_opened()
    m.command_done("NOOP", 0.001, "OK", None)
    m.wrap_fetch(lambda *a, **k: defer.succeed(FetchResult("isp", fetched=1)))(
        SimpleNamespace(name="isp"), object()
    )
    text = m.render().decode()
    assert families(text) == FAMILIES
    assert "_created" not in text
    parse_exposition(text)


def test_label_values_are_escaped_and_read_back_as_written():
    m = new_metrics()
    name = 'isp "two"\\back\nslash'
    m.wrap_fetch(lambda *a, **k: defer.succeed(FetchResult(name, fetched=2)))(
        SimpleNamespace(name=name), object()
    )
    text = m.render().decode()
    assert 'upstream="isp \\"two\\"\\\\back\\nslash"' in text
    assert parse_exposition(text)[("popgate_fetched_messages_total", (("upstream", name),))] == 2


def test_histogram_buckets_are_cumulative_and_end_with_inf_sum_and_count():
    m = new_metrics()
    for v in (0.0005, 0.02, 0.02, 20.0):
        m.command_done("FETCH", v, "OK", None)
    samples = parse_exposition(m.render().decode())
    c = (("command", "FETCH"),)
    bucket = "popgate_imap_command_duration_seconds_bucket"
    assert samples[(bucket, (*c, ("le", "0.001")))] == 1
    assert samples[(bucket, (*c, ("le", "0.05")))] == 3
    assert samples[(bucket, (*c, ("le", "10.0")))] == 3
    assert samples[(bucket, (*c, ("le", "+Inf")))] == 4
    assert samples[("popgate_imap_command_duration_seconds_count", c)] == 4
    assert samples[("popgate_imap_command_duration_seconds_sum", c)] == pytest.approx(20.0405)


def test_each_gateway_has_its_own_registry():
    """Two services in one process (or two tests) never see each other's counts."""
    one, two = new_metrics(), new_metrics()
    one.connection_opened()
    assert sample(one.registry, "popgate_imap_connections_total") == 1
    assert sample(two.registry, "popgate_imap_connections_total") == 0


# ---- the gateway's hooks -----------------------------------------------------------------


def new_metrics(clock: task.Clock | None = None) -> GatewayMetrics:
    return GatewayMetrics(reactor=clock or task.Clock(), known_commands=COMMANDS, version="9.9")


def test_commands_are_counted_by_name_and_status_with_latency_and_unknown_names_bounded():
    m = new_metrics()
    m.command_done("FETCH", 0.02, "OK", None)
    m.command_done("UID FETCH", 0.02, "OK", None)
    m.command_done("XYZZY", 0.0, "BAD", None)
    m.command_done("FOOBAR", 0.0, "BAD", None)
    m.command_done(None, 0.0, "BAD", None)
    m.command_done("IDLE", 600.0, "OK", None)
    assert sample(m.registry, "popgate_imap_commands_total", command="FETCH", status="OK") == 1
    assert sample(m.registry, "popgate_imap_commands_total", command="UID FETCH", status="OK") == 1
    assert sample(m.registry, "popgate_imap_commands_total", command="OTHER", status="BAD") == 2
    assert (
        sample(m.registry, "popgate_imap_commands_total", command="UNPARSEABLE", status="BAD") == 1
    )
    assert sample(m.registry, "popgate_imap_command_duration_seconds_count", command="FETCH") == 1
    assert (
        sample(m.registry, "popgate_imap_command_duration_seconds_count", command="IDLE") is None
    )  # waits for the client, not us


def test_a_failed_login_counts_as_an_auth_failure():
    m = new_metrics()
    m.command_done("LOGIN", 0.05, "NO", "AUTHENTICATIONFAILED")
    m.command_done("LOGIN", 0.05, "OK", "CAPABILITY IMAP4rev1")
    m.command_done("AUTHENTICATE", 0.05, "NO", "AUTHENTICATIONFAILED")
    assert sample(m.registry, "popgate_imap_auth_failures_total") == 2


def test_sessions_are_read_by_state_from_the_live_connections():
    m = new_metrics()
    protocols = [
        SimpleNamespace(session=SimpleNamespace(state=State.SELECTED)),
        SimpleNamespace(session=SimpleNamespace(state=State.SELECTED)),
        SimpleNamespace(session=SimpleNamespace(state=State.NOT_AUTHENTICATED)),
    ]
    m.attach(factory=SimpleNamespace(protocols=set()))
    m.factory.protocols = protocols
    samples = parse_exposition(m.render().decode())
    assert samples[("popgate_imap_sessions", (("state", "selected"),))] == 2
    assert samples[("popgate_imap_sessions", (("state", "not_authenticated"),))] == 1
    assert samples[("popgate_imap_sessions", (("state", "authenticated"),))] == 0


def test_fetch_passes_are_counted_per_upstream_with_messages_bytes_and_backlog():
    clock = task.Clock()
    m = new_metrics(clock)
    up = SimpleNamespace(name="isp")
    store = object()

    def fetch(upstream, store, *, reactor):
        clock.advance(2)
        return defer.succeed(
            FetchResult("isp", listed=7, fetched=3, bytes=3000, skipped=1, deleted=2, backlog=2)
        )

    results = []
    m.wrap_fetch(fetch)(up, store, reactor=clock).addCallback(results.append)
    assert results[0].fetched == 3  # the result passes through untouched
    assert sample(m.registry, "popgate_fetch_passes_total", upstream="isp", result="ok") == 1
    assert sample(m.registry, "popgate_fetched_messages_total", upstream="isp") == 3
    assert sample(m.registry, "popgate_fetched_bytes_total", upstream="isp") == 3000
    assert sample(m.registry, "popgate_skipped_messages_total", upstream="isp") == 1
    assert sample(m.registry, "popgate_deleted_messages_total", upstream="isp") == 2
    samples = parse_exposition(m.render().decode())
    assert samples[("popgate_upstream_backlog_messages", (("upstream", "isp"),))] == 2
    assert samples[("popgate_upstream_last_success_timestamp_seconds", (("upstream", "isp"),))] == 2
    assert samples[("popgate_fetch_duration_seconds_count", (("upstream", "isp"),))] == 1


def test_a_failed_pass_counts_its_error_kind_and_what_it_fetched_before_failing():
    m = new_metrics()
    up = SimpleNamespace(name="isp")
    error = LoginFailed("bad password")
    error.result = FetchResult("isp", fetched=1, bytes=10)

    failures = []
    d = m.wrap_fetch(lambda *a, **k: defer.fail(error))(up, object(), reactor=None)
    d.addErrback(failures.append)
    assert failures and failures[0].value is error  # the failure passes through
    assert sample(m.registry, "popgate_fetch_passes_total", upstream="isp", result="auth") == 1
    assert sample(m.registry, "popgate_fetched_messages_total", upstream="isp") == 1


def test_store_size_counts_the_file_and_its_write_ahead_log(tmp_path):
    (tmp_path / "s.db").write_bytes(b"x" * 100)
    (tmp_path / "s.db-wal").write_bytes(b"x" * 20)
    m = new_metrics()
    m.attach(store_path=tmp_path / "s.db")
    samples = parse_exposition(m.render().decode())
    assert samples[("popgate_store_size_bytes", ())] == 120


def test_reactor_lag_is_how_late_the_probe_ran():
    clock = task.Clock()
    lag = LagMonitor(reactor=clock, interval=1.0)
    lag.startService()
    try:
        clock.advance(1.0)
        assert lag.last_lag == 0
        clock.advance(3.5)  # a stall: the probe due at 2.0 runs at 4.5
        assert lag.last_lag == pytest.approx(2.5)
        assert sample(lag.histogram, "popgate_reactor_lag_seconds_count") == 2
    finally:
        lag.stopService()


# ---- the endpoint ------------------------------------------------------------------------


@contextmanager
def serving(m: GatewayMetrics) -> Iterator[str]:
    """The metrics site on a loopback port of the real reactor; yields its base URL."""
    reactor = global_reactor()
    port = on_reactor(lambda: reactor.listenTCP(0, metrics_site(m, reactor), interface="127.0.0.1"))
    try:
        yield f"http://127.0.0.1:{port.getHost().port}"
    finally:
        on_reactor(port.stopListening)


def get(url: str) -> tuple[int, bytes, str | None]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers["content-type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers["content-type"]


def test_metrics_path_serves_the_exposition_with_its_content_type():
    m = new_metrics()
    m.command_done("NOOP", 0.001, "OK", None)
    with serving(m) as base:
        code, body, ctype = get(f"{base}/metrics")
        index = get(f"{base}/")
    assert code == 200 and ctype == CONTENT_TYPE
    samples = parse_exposition(body.decode())
    assert samples[("popgate_imap_commands_total", (("command", "NOOP"), ("status", "OK")))] == 1
    assert samples[("popgate_build_info", (("version", "9.9"),))] == 1
    assert index[0] == 200 and b"/metrics" in index[1]


def test_other_paths_are_not_found():
    with serving(new_metrics()) as base:
        code, _, _ = get(f"{base}/secret")
    assert code == 404


# ---- the IMAP server's observer, over a real socket --------------------------------------


def test_a_real_imap_connection_moves_the_connection_command_and_auth_counters(tmp_path):
    from twisted.internet import reactor

    m = GatewayMetrics(reactor=reactor, known_commands=COMMANDS)
    with running_server(tmp_path) as server:
        server.call(lambda: setattr(server.factory, "observer", m))
        m.attach(factory=server.factory)
        client = server.connect()
        client.greeting()
        assert client.command("a", 'LOGIN alice "wrong"').startswith(b"a NO")
        client.command("b", 'LOGIN alice "alice-password"')
        client.command("c", "SELECT INBOX")
        client.command("d", "UID FETCH 1:* FLAGS")
        client.command("e", "FROBNICATE")  # unknown words fail to parse
        text = server.call(lambda: m.render().decode())
        client.command("z", "LOGOUT")
    samples = parse_exposition(text)
    assert samples[("popgate_imap_connections_total", ())] == 1
    assert samples[("popgate_imap_auth_failures_total", ())] == 1
    assert samples[("popgate_imap_commands_total", (("command", "LOGIN"), ("status", "NO")))] == 1
    assert samples[("popgate_imap_commands_total", (("command", "LOGIN"), ("status", "OK")))] == 1
    assert (
        samples[("popgate_imap_commands_total", (("command", "UID FETCH"), ("status", "OK")))] == 1
    )
    assert (
        samples[("popgate_imap_commands_total", (("command", "UNPARSEABLE"), ("status", "BAD")))]
        == 1
    )
    assert samples[("popgate_imap_sessions", (("state", "selected"),))] == 1
    count = samples[("popgate_imap_command_duration_seconds_count", (("command", "SELECT"),))]
    assert count == 1


def test_a_version_given_as_a_callable_is_asked_at_the_first_scrape_only():
    """The service passes its importlib.metadata lookup, not its result (issue 19: that
    lookup is start-up time serving IMAP does not need)."""
    asked = []

    def version() -> str:
        asked.append(1)
        return "7.7"

    m = GatewayMetrics(reactor=task.Clock(), known_commands=COMMANDS, version=version)
    assert asked == []
    for _ in range(2):
        samples = parse_exposition(m.render().decode())
        assert samples[("popgate_build_info", (("version", "7.7"),))] == 1
    assert asked == [1]
