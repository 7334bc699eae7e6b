"""What `popgate status` reports: collecting a running gateway's state into one JSON-safe
dict (in the gateway), and rendering that dict as a table (in the CLI).

The dict is the contract between the two processes, so it holds only plain values:
times are Unix seconds (the reactor's clock), durations are seconds, and every section
is present even when empty. Keys, by section:

* ``version``, ``pid``, ``config``, ``state_dir``, ``started_at``, ``now``, ``uptime_seconds``;
* ``listeners``: ``served`` (every listener: ``kind`` and ``endpoint``), ``imap`` (the plain
  IMAP endpoints), ``managesieve``, ``submission`` and ``web`` (endpoints), ``metrics``
  (string or None), ``control``;
* ``clients``: ``total``, ``by_state`` (RFC 3501 §3 state → count) and ``by_user``
  (user → state → count; connections not yet logged in only count in ``by_state``);
* ``upstreams``: one dict per upstream: ``name``, ``owner``, ``folder``, ``host``,
  ``state`` (see :func:`upstream_state`), the poller's health fields and ``next_poll_in``;
  and what the web page shows (:func:`upstream_extras`): ``node`` (the cluster node
  holding its lease; None with a single-node store, or while nobody holds it), ``failing_since`` (the first failure of the current
  episode; None when not failing) and ``oauth2`` (``{"expires_at", "login_command"}``
  for an OAuth2 upstream, None otherwise);
  ``ownership`` (this node's view of its lease: ``node``, ``held``, ``token``,
  ``holder``) and ``lease`` (PostgreSQL only, else None: the lease row as the database
  has it, ``node``, ``token``, ``expires_in`` seconds on the database's clock, ``held``);
* ``store``: ``path`` and ``size_bytes``;
* ``recent_errors``: the last warning/error log events, oldest first (scrubbed);
* ``submission`` (issue 15): ``enabled``, and ``queue``, one dict per upstream SMTP with
  anything queued or a last error: ``route``, ``queued``, ``oldest`` (Unix seconds),
  ``oldest_age`` (seconds), ``last_error``; ``listeners.submission`` lists its endpoints.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway.app.metrics import file_size
from gateway.core.display import printable_tree
from gateway.web.text import duration as _duration
from gateway.web.text import size as _size

RECENT_ERRORS_SHOWN = 10
"""How many of the recent errors the table shows (``--json`` has all that are kept)."""

SESSION_STATES = ("not authenticated", "authenticated", "selected", "logout")
"""RFC 3501 §3 states, in the order the table lists them."""

_HEALTH_FIELDS = {
    "last_success": "last_success",
    "last_attempt": "last_attempt",
    "last_error": "last_error",
    "last_error_kind": "last_error_kind",
    "last_error_at": "last_error_at",
    "consecutive_failures": "consecutive_failures",
    "failing_since": "failing_since",
    "messages_fetched": "fetched_total",
    "bytes_fetched": "bytes_total",
    "passes": "passes",
    "in_flight": "in_flight",
    "next_poll_at": "next_poll_at",
    "backlog": "backlog",
}
"""Status key → :class:`~gateway.pop3.poller.PollerHealth` attribute, for a poller
without ``health_dict()`` (the keys match what ``health_dict()`` returns)."""


def _plain(value: Any) -> Any:
    """A JSON-safe copy: dataclasses become dicts, unknown objects their text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def poller_health(poller: Any, ledger: list[Any] | None = None) -> dict[str, Any]:
    """The poller's health as a plain dict: its own ``health_dict()`` when it has one,
    otherwise the fields of its ``health`` record. ``ledger``: the upstream's ledger
    entries when already read (off the reactor, for a store that does not run inline)."""
    health_dict = getattr(poller, "health_dict", None)
    if callable(health_dict):
        return _plain(health_dict() if ledger is None else health_dict(ledger=ledger))
    health = getattr(poller, "health", None)
    out = {key: _plain(getattr(health, attr, None)) for key, attr in _HEALTH_FIELDS.items()}
    result = getattr(health, "last_result", None)
    if result is not None:
        out["last_result"] = _plain(result)
    return out


def upstream_state(health: Mapping[str, Any]) -> str:
    """One word for the table: ``fetching`` (a pass runs now), ``standby`` (another node
    holds the upstream's lease), ``failing`` (the last pass failed), ``ok`` (the last
    pass succeeded) or ``waiting`` (no pass finished yet)."""
    if health.get("in_flight"):
        return "fetching"
    ownership = health.get("ownership") or {}
    if ownership.get("lease_seconds") and not ownership.get("held"):
        return "standby"
    if health.get("consecutive_failures"):
        return "failing"
    if health.get("last_success") is not None:
        return "ok"
    return "waiting"


def upstream_extras(
    poller: Any, health: Mapping[str, Any], *, state_dir: str, config_path: str
) -> dict[str, Any]:
    """The web page's per-upstream fields (issue 18): ``node``, ``failing_since`` and
    ``oauth2``. ``failing_since`` is the earlier of the poller's (this process) and the
    failure notifier's episode (kept on disk, so it survives a restart)."""
    since = health.get("failing_since")
    if health.get("consecutive_failures"):
        episode = getattr(getattr(poller, "notifier", None), "episode", None)
        kept = getattr(episode, "failing_since", None)
        if isinstance(kept, int | float) and (since is None or kept < since):
            since = kept
    else:
        since = None
    up = getattr(poller, "upstream", None)
    oauth2 = None
    if getattr(up, "auth", None) == "oauth2":
        oauth2 = oauth2_status(str(up.name), state_dir=state_dir, config_path=config_path)
    return {"node": None, "failing_since": since, "oauth2": oauth2}


def lease_fields(lease: Mapping[str, Any] | None) -> dict[str, Any]:
    """``lease`` (the database's lease row, None without one) and ``node`` (who holds
    it now, None when nobody does) for one upstream's status."""
    if lease is None:
        return {"lease": None, "node": None}
    return {"lease": dict(lease), "node": lease.get("node") if lease.get("held") else None}


def oauth2_status(name: str, *, state_dir: str, config_path: str) -> dict[str, Any]:
    """An OAuth2 upstream's access-token expiry (None: not signed in, or the provider did
    not say) and the command that signs it in again."""
    from gateway.oauth.tokenfile import TokenFileError, load_tokens, token_path

    try:
        tokens = load_tokens(token_path(state_dir, name))
    except (TokenFileError, OSError):
        tokens = None
    command = f"popgate oauth login --config {shlex.quote(config_path)} {shlex.quote(name)}"
    return {
        "expires_at": tokens.expires_at if tokens is not None else None,
        "login_command": command,
    }


def clients(protocols: Iterable[Any]) -> dict[str, Any]:
    """Connected IMAP clients counted by session state and by user."""
    by_state = dict.fromkeys(SESSION_STATES, 0)
    by_user: dict[str, dict[str, int]] = {}
    total = 0
    for protocol in list(protocols):
        session = getattr(protocol, "session", None)
        if session is None:
            continue
        total += 1
        state = getattr(getattr(session, "state", None), "value", "unknown")
        by_state[state] = by_state.get(state, 0) + 1
        user = getattr(session, "user", None)
        if user is not None:
            per_user = by_user.setdefault(user, {})
            per_user[state] = per_user.get(state, 0) + 1
    return {"total": total, "by_state": by_state, "by_user": dict(sorted(by_user.items()))}


def mailbox_usage(store: Any, owner: str) -> dict[str, Any]:
    """One owner's folders with message, unseen and byte counts, and their totals:
    what `popgate status` and `popgate users` show per user (and per household)."""
    folders = []
    for mailbox in sorted(store.list_mailboxes(owner), key=lambda m: m.name):
        counts = store.counts(mailbox.id)
        folders.append(
            {
                "mailbox": mailbox.name,
                "messages": counts.messages,
                "unseen": counts.unseen,
                "size_bytes": counts.size,
            }
        )
    return {
        "owner": owner,
        "mailboxes": folders,
        "messages": sum(f["messages"] for f in folders),
        "size_bytes": sum(f["size_bytes"] for f in folders),
    }


class StatusSource:
    """Everything ``status`` reads, gathered once when the service is built; calling
    :meth:`collect` (from the control socket's handler) takes a fresh snapshot."""

    def __init__(
        self,
        *,
        reactor: Any,
        version: str | Callable[[], str],
        config_path: str,
        state_dir: str,
        imap_listeners: Iterable[str] = (),
        factory: Any,
        pollers: Mapping[str, Any],
        store_path: str | Path | None,
        recent_errors: Callable[[], list[dict[str, Any]]] = list,
        metrics_listener: str | None = None,
        control_path: str | Path | None = None,
        store: Any = None,
        owners: Callable[[], Iterable[str]] = tuple,
        served_listeners: Iterable[tuple[str, str]] | None = None,
        runner: Any = None,
    ) -> None:
        """``served_listeners``: every (kind, endpoint) the gateway listens on
        (``gateway.app.config.listeners.served_listeners``); ``imap_listeners`` is the
        shorthand for plain IMAP endpoints only."""
        self.store = store
        self.runner = runner
        """A thread runner when the store does not run inline: its facts are then read
        on a store thread and the rest of the status on the reactor."""
        self.owners = owners
        self.reactor = reactor
        self._version = version
        self.config_path = config_path
        self.state_dir = state_dir
        if served_listeners is None:
            served_listeners = [("imap", endpoint) for endpoint in imap_listeners]
        self.served_listeners = [(str(k), str(e)) for k, e in served_listeners]
        self.factory = factory
        self.pollers = pollers
        self.store_path = Path(store_path) if store_path is not None else None
        self.recent_errors = recent_errors
        self.metrics_listener = metrics_listener
        self.control_path = str(control_path) if control_path is not None else None
        self.started_at = reactor.seconds()
        self.sending: Any = None
        """The submission relay's parts (gateway.app.sending.SendingParts) or None."""

    @property
    def version(self) -> str:
        """popgate's version; given as a callable, asked at the first status (the
        service's ``importlib.metadata`` lookup is not start-up work, issue 19)."""
        if callable(self._version):
            self._version = self._version()
        return self._version

    def store_facts(self, names: list[str], owners: list[str]) -> dict[str, Any]:
        """What the status needs from the store (one call, on a store thread when the
        store does not run inline): each upstream's ledger, each owner's usage and the
        outbound queue's rows (when the relay runs; the queue is in the store) and the
        upstream leases (PostgreSQL: which node polls what)."""
        queue = self.sending.queue.status() if self.sending is not None else []
        if self.store is None:
            return {"ledger": {}, "users": [], "queue": queue, "leases": {}}
        from gateway.store.leases import leases_of  # at a status request, not at start-up

        leases = leases_of(self.store)
        return {
            "ledger": {name: self.store.ledger_entries(name) for name in names},
            "users": [mailbox_usage(self.store, o) for o in owners],
            "queue": queue,
            "leases": {lease.upstream: _plain(lease) for lease in leases.holders()},
        }

    def collect(self, facts: dict[str, Any] | None = None) -> dict[str, Any]:
        """The status; ``facts`` (:meth:`store_facts`) when already read elsewhere."""
        now = self.reactor.seconds()
        upstreams = []
        ledger = facts["ledger"] if facts is not None else {}
        leases = facts.get("leases", {}) if facts is not None else {}
        for name, poller in sorted(self.pollers.items()):
            health = poller_health(poller, ledger.get(name))
            up = getattr(poller, "upstream", None)
            next_at = health.get("next_poll_at")
            upstreams.append(
                {
                    "name": name,
                    "owner": getattr(up, "owner", None),
                    "folder": getattr(up, "folder", None),
                    "host": getattr(up, "host", None),
                    "state": upstream_state(health),
                    **health,
                    "next_poll_in": None if next_at is None else max(0.0, next_at - now),
                    **upstream_extras(
                        poller, health, state_dir=self.state_dir, config_path=self.config_path
                    ),
                    **lease_fields(leases.get(name)),
                }
            )
        status: dict[str, Any] = {
            "version": self.version,
            "pid": os.getpid(),
            "config": self.config_path,
            "state_dir": self.state_dir,
            "started_at": self.started_at,
            "now": now,
            "uptime_seconds": max(0.0, now - self.started_at),
            "listeners": {
                "imap": [e for k, e in self.served_listeners if k == "imap"],
                "managesieve": [e for k, e in self.served_listeners if k == "managesieve"],
                "served": [{"kind": k, "endpoint": e} for k, e in self.served_listeners],
                "metrics": self.metrics_listener,
                "control": self.control_path,
                "web": [e for k, e in self.served_listeners if k == "web"],
            },
            "clients": clients(getattr(self.factory, "protocols", ())),
            "upstreams": upstreams,
            "store": {
                "path": str(self.store_path) if self.store_path is not None else None,
                "size_bytes": file_size(self.store_path) if self.store_path is not None else None,
            },
            "users": facts["users"]
            if facts is not None
            else [mailbox_usage(self.store, o) for o in self.owners()]
            if self.store is not None
            else [],
            "recent_errors": [_plain(e) for e in self.recent_errors()],
            "submission": self._submission(now, facts),
        }
        status["listeners"]["submission"] = list(getattr(self.sending, "listeners", ()))
        return status

    def _submission(self, now: float, facts: dict[str, Any] | None) -> dict[str, Any]:
        from gateway.app.sending import queue_rows

        if self.sending is None:
            return {"enabled": False, "queue": []}
        rows = facts["queue"] if facts is not None else self.sending.queue.status()
        return {"enabled": True, "queue": queue_rows(rows, now)}

    def snapshot(self) -> Any:
        """The status now: a dict (inline store), or a Deferred of it whose store facts
        were read on a store thread (what the web page and the control socket call)."""
        runner = self.runner
        if runner is None or runner.inline:
            return self.collect()
        d = runner.run(self.store_facts, sorted(self.pollers), list(self.owners()))
        d.addCallback(self.collect)
        return d

    def handle(self, request: dict[str, Any], progress: Callable[[dict[str, Any]], None]) -> Any:
        """The control socket's ``status`` command (it takes no arguments)."""
        return self.snapshot()


# ---- rendering for humans ------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``: two units at most, for a table."""
    return _duration(seconds, missing="-")


def size(octets: float | None) -> str:
    """``512 B``, ``1.5 KiB``, ``12.0 MiB``, for a table."""
    return _size(octets, missing="-")


def timestamp(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    when = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(epoch: float | None, now: float) -> str:
    return "never" if epoch is None else f"{duration(now - epoch)} ago"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return out


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_line(event: Mapping[str, Any]) -> str:
    skip = {"event", "level", "timestamp", "logger"}
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    stamp = event.get("timestamp", "")
    return _shorten(f"{stamp} {event.get('level', '?')} {event.get('event', '?')} {fields}", 160)


def render(status: Mapping[str, Any]) -> str:
    """The status as text for a terminal: a summary, then the upstream table and errors.
    Every string in it is escaped first (user names from failed logins, upstream error
    texts: gateway/core/display.py)."""
    status = printable_tree(status)
    now = status.get("now") or 0.0
    lines = [
        f"popgate {status.get('version')}, up {duration(status.get('uptime_seconds'))} "
        f"(pid {status.get('pid')}), config {status.get('config')}"
    ]
    listeners = status.get("listeners", {})
    served = listeners.get("served")
    if served is None:  # a gateway from before "served" existed
        served = [{"kind": "imap", "endpoint": e} for e in listeners.get("imap") or []]
    by_kind: dict[str, list[str]] = {}
    for item in served:
        by_kind.setdefault(str(item.get("kind")), []).append(str(item.get("endpoint")))
    parts = [f"{kind} {', '.join(endpoints)}" for kind, endpoints in by_kind.items()] or ["-"]
    if listeners.get("metrics"):
        parts.append(f"metrics {listeners['metrics']}")
    if listeners.get("control"):
        parts.append(f"control {listeners['control']}")
    if listeners.get("web"):
        parts.append(f"web {', '.join(listeners['web'])}")
    lines.append("Listeners: " + "; ".join(parts))
    store = status.get("store", {})
    lines.append(f"Store: {store.get('path')} ({size(store.get('size_bytes'))})")

    c = status.get("clients", {})
    users = [
        f"{user} ({', '.join(f'{n} {state}' for state, n in states.items())})"
        for user, states in (c.get("by_user") or {}).items()
    ]
    waiting = (c.get("by_state") or {}).get("not authenticated", 0)
    summary = f"Clients: {c.get('total', 0)} connected"
    if users:
        summary += ": " + "; ".join(users)
    if waiting:
        summary += f"; {waiting} not logged in"
    lines.append(summary)

    lines.append("")
    upstreams = status.get("upstreams") or []
    if upstreams:
        rows = []
        for up in upstreams:
            next_in = up.get("next_poll_in")
            rows.append(
                [
                    str(up.get("name")),
                    f"{up.get('owner')}/{up.get('folder')}",
                    str(up.get("state")),
                    _ago(up.get("last_success"), now),
                    "now"
                    if up.get("in_flight")
                    else ("-" if next_in is None else f"in {duration(next_in)}"),
                    str(up.get("messages_fetched", 0)),
                    str(up.get("consecutive_failures", 0)),
                    _shorten(
                        f"{up.get('last_error_kind')}: {up.get('last_error')}"
                        if up.get("last_error")
                        else "-",
                        60,
                    ),
                ]
            )
        lines += _table(
            [
                "UPSTREAM",
                "DELIVERS TO",
                "STATE",
                "LAST SUCCESS",
                "NEXT POLL",
                "FETCHED",
                "FAILURES",
                "LAST ERROR",
            ],
            rows,
        )
    else:
        lines.append("No upstreams configured.")

    owners = status.get("users") or []
    if owners:
        lines.append("")
        lines += _table(
            ["USER", "FOLDERS", "MESSAGES", "SIZE", "LARGEST FOLDERS"],
            [
                [
                    str(u.get("owner")),
                    str(len(u.get("mailboxes") or [])),
                    str(u.get("messages", 0)),
                    size(u.get("size_bytes")),
                    _shorten(
                        ", ".join(
                            f"{f['mailbox']} {f['messages']}"
                            for f in sorted(u.get("mailboxes") or [], key=lambda f: -f["messages"])[
                                :3
                            ]
                        )
                        or "-",
                        50,
                    ),
                ]
                for u in owners
            ],
        )

    lines += _render_leases(upstreams)
    lines += _render_queue(status.get("submission") or {}, now)

    errors = status.get("recent_errors") or []
    lines.append("")
    if errors:
        shown = errors[-RECENT_ERRORS_SHOWN:]
        lines.append(f"Recent errors (last {len(shown)} of {len(errors)} kept):")
        lines += ["  " + _error_line(e) for e in shown]
    else:
        lines.append("Recent errors: none")
    return "\n".join(lines) + "\n"


def _render_leases(upstreams: list[Mapping[str, Any]]) -> list[str]:
    """Which node polls each upstream (PostgreSQL: several nodes; nothing otherwise)."""
    rows = []
    for up in upstreams:
        lease = up.get("lease")
        if not lease:
            continue
        held = bool(lease.get("held"))
        rows.append(
            [
                str(up.get("name")),
                str(lease.get("node")) if held else f"nobody (last: {lease.get('node')})",
                str(lease.get("token")),
                f"in {duration(max(0.0, float(lease.get('expires_in') or 0)))}" if held else "-",
            ]
        )
    if not rows:
        return []
    return ["", *_table(["UPSTREAM", "POLLED BY NODE", "TOKEN", "LEASE EXPIRES"], rows)]


def _render_queue(submission: Mapping[str, Any], now: float) -> list[str]:
    """The outbound queue per upstream SMTP (nothing when the relay is off)."""
    if not submission.get("enabled"):
        return []
    queue = submission.get("queue") or []
    if not queue:
        return ["", "Outbound queue: empty"]
    rows = [
        [
            str(q.get("route")),
            str(q.get("queued", 0)),
            _ago(q.get("oldest"), now) if q.get("oldest") else "-",
            _shorten(str(q.get("last_error") or "-"), 60),
        ]
        for q in queue
    ]
    return ["", *_table(["OUTBOUND VIA", "QUEUED", "OLDEST", "LAST ERROR"], rows)]
