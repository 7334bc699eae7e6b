"""What the status page shows, built from a (filtered) status dict and the history:
plain dataclasses holding words and numbers, so the HTML templates do no thinking
and every sentence the page says can be tested without a browser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.store.interfaces import SHARED_OWNER_PREFIX
from gateway.store.timeseries import DAY, TimeSeries
from gateway.web import history as hist
from gateway.web import svg
from gateway.web.text import ago, duration, size, utc

ERROR_WORDS = {
    "auth": "wrong password: the upstream refused the login",
    "connect": "cannot connect to the upstream",
    "tls_verify": "the upstream's TLS certificate is not trusted",
    "tls": "TLS with the upstream failed",
    "starttls_unavailable": "the upstream does not offer STARTTLS",
    "insecure": "refused to send the password without TLS",
    "timeout": "the upstream stopped answering",
    "connection_lost": "the connection to the upstream was lost",
    "server_error": "the upstream reported an error",
    "protocol": "the upstream broke the POP3 protocol",
    "uidl_unsupported": "the upstream does not support UIDL",
    "line_too_long": "the upstream sent a line that is too long",
    "store": "storing the mail failed (over quota or disk full?)",
    "too_large": "a message was larger than allowed",
    "config": "the upstream's settings are wrong",
    "cancelled": "the pass was cancelled",
}
"""A failure kind (:mod:`gateway.pop3.errors`) in words for people; the error text
itself is shown after it."""

STATE_LABELS = {
    "ok": "OK",
    "failing": "Failing",
    "fetching": "Fetching",
    "waiting": "Waiting",
    "standby": "Polled by another node",  # issue 13: another node holds the lease
}
STATE_SYMBOLS = {"ok": "✓", "failing": "✗", "fetching": "↻", "waiting": "…", "standby": "⇄"}
"""States are written as words and symbols, never only coloured."""

HISTORY_DAYS = 7
STORE_HISTORY_DAYS = 30


@dataclass
class UpstreamView:
    name: str
    owner: str
    folder: str
    host: str
    state: str
    state_text: str
    last_success: str
    next_poll: str
    last_error: str | None
    messages_day: int
    bytes_day: str
    messages_week: int
    bytes_week: str
    messages_total: int
    node: str | None
    oauth_expiry: str | None
    oauth_login: str | None
    backlog: int
    chart: str | None


@dataclass
class OwnerView:
    owner: str
    label: str
    messages: int
    size_bytes: int
    quota_bytes: int | None
    folders: list[dict[str, Any]]
    chart: str | None


@dataclass
class QueueView:
    count: int
    items: list[dict[str, Any]]


@dataclass
class PageView:
    user: str
    admin: bool
    csrf: str
    now: float
    version: str
    upstreams: list[UpstreamView]
    owners: list[OwnerView]
    queue: QueueView | None
    notice: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


def owner_label(owner: str) -> str:
    """``alice``, or ``Shared/family (household)`` for a shared tree."""
    if owner.startswith(SHARED_OWNER_PREFIX):
        return f"Shared/{owner[len(SHARED_OWNER_PREFIX) :]} (household)"
    return owner


def state_text(up: Mapping[str, Any], now: float) -> str:
    """The state in a sentence: ``Failing since 2025-06-15 14:03 UTC (3 passes)``."""
    state = up.get("state")
    if state == "failing":
        failures = int(up.get("consecutive_failures") or 0)
        since = up.get("failing_since")
        if since is None and failures <= 1:
            since = up.get("last_error_at")
        passes = f"{failures} failed pass{'es' if failures != 1 else ''} in a row"
        if since is not None:
            return f"Failing since {utc(since)} ({passes})"
        return f"Failing ({passes}, the last {ago(up.get('last_error_at'), now)})"
    if state == "fetching":
        progress = up.get("progress") or {}
        done = progress.get("fetched")
        return "Fetching now" + (f" ({done} messages so far)" if done else "")
    if state == "waiting":
        return "Waiting for the first pass"
    return STATE_LABELS.get(str(state), str(state))


def error_text(up: Mapping[str, Any]) -> str | None:
    if not up.get("last_error"):
        return None
    kind = up.get("last_error_kind")
    words = ERROR_WORDS.get(str(kind))
    detail = str(up["last_error"])
    return f"{words} ({detail})" if words else detail


def next_poll(up: Mapping[str, Any]) -> str:
    if up.get("in_flight"):
        return "now"
    next_in = up.get("next_poll_in")
    return "not scheduled" if next_in is None else f"in {duration(next_in)}"


def _oauth(up: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Token expiry and the login command of an OAuth2 upstream, when the status has them
    (``oauth2: {"expires_at", "login_command"}``)."""
    oauth = up.get("oauth2")
    if not isinstance(oauth, Mapping):
        return None, None
    expires = oauth.get("expires_at")
    expiry = None
    if isinstance(expires, int | float):
        expiry = utc(expires) + (" (expired)" if expires <= float(up.get("_now", 0)) else "")
    login = oauth.get("login_command")
    return expiry, str(login) if login else None


def upstream_view(up: Mapping[str, Any], now: float, series: TimeSeries | None) -> UpstreamView:
    name = str(up.get("name"))
    day = week = (0.0, 0.0)
    chart = None
    if series is not None:
        m, b = hist.FETCHED_MESSAGES + name, hist.FETCHED_BYTES + name
        day = (hist.increase(series, m, now - DAY, now), hist.increase(series, b, now - DAY, now))
        since = now - HISTORY_DAYS * DAY
        week = (hist.increase(series, m, since, now), hist.increase(series, b, since, now))
        start, hourly = hist.hourly_increments(series, m, now, HISTORY_DAYS * 24)
        chart = svg.bar_chart(
            hourly, start=start, step=3600.0, what=f"Messages per hour from {name}, 7 days"
        )
    expiry, login = _oauth({**up, "_now": now})
    return UpstreamView(
        name=name,
        owner=str(up.get("owner")),
        folder=str(up.get("folder")),
        host=str(up.get("host")),
        state=str(up.get("state")),
        state_text=state_text(up, now),
        last_success=ago(up.get("last_success"), now),
        next_poll=next_poll(up),
        last_error=error_text(up),
        messages_day=int(day[0]),
        bytes_day=size(day[1]),
        messages_week=int(week[0]),
        bytes_week=size(week[1]),
        messages_total=int(up.get("messages_fetched") or 0),
        node=str(up["node"]) if up.get("node") else None,
        oauth_expiry=expiry,
        oauth_login=login,
        backlog=int(up.get("backlog") or 0),
        chart=chart,
    )


def owner_view(
    usage: Mapping[str, Any],
    now: float,
    series: TimeSeries | None,
    quota_limit: Callable[[str], int | None],
) -> OwnerView:
    owner = str(usage.get("owner"))
    chart = None
    if series is not None:
        start = now - STORE_HISTORY_DAYS * DAY
        points = hist.gauge_points(series, hist.STORE_BYTES + owner, start, now)
        chart = svg.line_chart(
            [(p.at, p.value) for p in points],
            start=start,
            end=now,
            what=f"Mail kept by {owner_label(owner)}, 30 days",
            y_label=size,
            y_nice=svg.nice_max_bytes,
        )
    return OwnerView(
        owner=owner,
        label=owner_label(owner),
        messages=int(usage.get("messages") or 0),
        size_bytes=int(usage.get("size_bytes") or 0),
        quota_bytes=quota_limit(owner),
        folders=[dict(f) for f in usage.get("mailboxes") or []],
        chart=chart,
    )


def page_view(
    status: Mapping[str, Any],
    *,
    user: str,
    admin: bool,
    csrf: str,
    series: TimeSeries | None,
    quota_limit: Callable[[str], int | None],
    queue: Mapping[str, Any] | None,
    notice: str | None = None,
) -> PageView:
    """Everything the status page shows; ``status`` is already filtered for ``user``."""
    now = float(status.get("now") or 0.0)
    return PageView(
        user=user,
        admin=admin,
        csrf=csrf,
        now=now,
        version=str(status.get("version") or ""),
        upstreams=[upstream_view(u, now, series) for u in status.get("upstreams") or []],
        owners=[owner_view(u, now, series, quota_limit) for u in status.get("users") or []],
        queue=QueueView(
            int(queue.get("count", len(queue.get("items") or []))), list(queue.get("items") or [])
        )
        if queue is not None
        else None,
        notice=notice,
        errors=list(status.get("recent_errors") or [])[-10:] if admin else [],
    )
