"""Prometheus metrics: the text format 0.0.4 is exact, and the counters follow real work."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task
from twisted.web.test.requesthelper import DummyRequest

from gateway.app.metrics import (
    CONTENT_TYPE,
    Counter,
    Family,
    GatewayMetrics,
    Histogram,
    LagMonitor,
    Sample,
    escape_help,
    escape_label_value,
    exposition,
    format_value,
    metrics_site,
)
from gateway.imap.session import COMMANDS, State
from gateway.pop3.client import LoginFailed
from gateway.pop3.fetcher import FetchResult
from gateway.testing.imapclient import running_server

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


# ---- format ------------------------------------------------------------------------------


def test_help_and_label_values_are_escaped_as_format_0_0_4_requires():
    assert escape_help('a\\b\nc"d') == 'a\\\\b\\nc"d'  # quotes stay in HELP
    assert escape_label_value('a\\b\nc"d') == 'a\\\\b\\nc\\"d'


def test_special_values_are_written_the_way_prometheus_parses_them():
    assert format_value(float("inf")) == "+Inf"
    assert format_value(float("-inf")) == "-Inf"
    assert format_value(float("nan")) == "NaN"
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"


def test_exposition_has_one_help_and_type_line_per_family_then_its_samples():
    family = Family(
        "x_total",
        "counter",
        "Things.\nCounted",
        (Sample("x_total", (("user", 'bob "b"'),), 2),),
    )
    text = exposition([family]).decode()
    assert (
        text
        == '# HELP x_total Things.\\nCounted\n# TYPE x_total counter\nx_total{user="bob \\"b\\""} 2\n'
    )
    assert parse_exposition(text) == {("x_total", (("user", 'bob "b"'),)): 2.0}


def test_histogram_buckets_are_cumulative_and_end_with_inf_sum_and_count():
    h = Histogram("lat_seconds", "Latency.", (0.1, 1.0), ("command",))
    for v in (0.05, 0.5, 0.5, 7.0):
        h.observe(v, command="FETCH")
    samples = parse_exposition(exposition([h.family()]).decode())
    c = (("command", "FETCH"),)
    assert samples[("lat_seconds_bucket", (*c, ("le", "0.1")))] == 1
    assert samples[("lat_seconds_bucket", (*c, ("le", "1")))] == 3
    assert samples[("lat_seconds_bucket", (*c, ("le", "+Inf")))] == 4
    assert samples[("lat_seconds_count", c)] == 4
    assert samples[("lat_seconds_sum", c)] == pytest.approx(8.05)


def test_a_counter_refuses_to_go_down_and_wrong_labels():
    c = Counter("n_total", "N.", ("a",))
    c.inc(2, a="x")
    assert c.value(a="x") == 2
    with pytest.raises(ValueError):
        c.inc(-1, a="x")
    with pytest.raises(ValueError):
        c.inc(1, b="x")


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
    assert m.commands.value(command="FETCH", status="OK") == 1
    assert m.commands.value(command="UID FETCH", status="OK") == 1
    assert m.commands.value(command="OTHER", status="BAD") == 2
    assert m.commands.value(command="UNPARSEABLE", status="BAD") == 1
    assert m.command_seconds.count(command="FETCH") == 1
    assert m.command_seconds.count(command="IDLE") == 0  # waits for the client, not us


def test_a_failed_login_counts_as_an_auth_failure():
    m = new_metrics()
    m.command_done("LOGIN", 0.05, "NO", "AUTHENTICATIONFAILED")
    m.command_done("LOGIN", 0.05, "OK", "CAPABILITY IMAP4rev1")
    m.command_done("AUTHENTICATE", 0.05, "NO", "AUTHENTICATIONFAILED")
    assert m.auth_failures.value() == 2


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
    assert m.fetch_passes.value(upstream="isp", result="ok") == 1
    assert m.fetched_messages.value(upstream="isp") == 3
    assert m.fetched_bytes.value(upstream="isp") == 3000
    assert m.skipped_messages.value(upstream="isp") == 1
    assert m.deleted_messages.value(upstream="isp") == 2
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
    assert m.fetch_passes.value(upstream="isp", result="auth") == 1
    assert m.fetched_messages.value(upstream="isp") == 1


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
        assert lag.histogram.count() == 2
    finally:
        lag.stopService()


# ---- the endpoint ------------------------------------------------------------------------


def render(site, path: bytes) -> tuple[int, bytes, bytes | None]:
    request = DummyRequest(path.strip(b"/").split(b"/"))
    request.uri = path
    request.method = b"GET"
    resource = site.getResourceFor(request)
    body = resource.render(request)
    return (
        request.responseCode or 200,
        body,
        request.responseHeaders.getRawHeaders(b"content-type", [None])[0],
    )


def test_metrics_path_serves_the_exposition_with_its_content_type():
    m = new_metrics()
    m.command_done("NOOP", 0.001, "OK", None)
    code, body, ctype = render(metrics_site(m), b"/metrics")
    assert code == 200 and ctype == CONTENT_TYPE
    samples = parse_exposition(body.decode())
    assert samples[("popgate_imap_commands_total", (("command", "NOOP"), ("status", "OK")))] == 1
    assert samples[("popgate_build_info", (("version", "9.9"),))] == 1


def test_other_paths_are_not_found():
    code, _, _ = render(metrics_site(new_metrics()), b"/secret")
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
