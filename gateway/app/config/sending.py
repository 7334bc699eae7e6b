"""Sending mail through popgate (issue 15): ``addresses`` and ``[upstreams.smtp]`` of each
``[[upstreams]]`` table, and the ``[submission]`` table (limits, queue lifetime).

The keys sit in the upstream tables the POP3 reader walks (``upstreams.py`` leaves these
two to this module). The rules mirror the POP3 side: a password never travels in clear
(``tls = "none"`` only to a loopback host), a password file must be mode 0600, the
certificate is always verified (``ca_file`` to trust a private CA). By default an
upstream sends as its POP3 ``username`` when that is an address, and logs in to SMTP
with the POP3 credentials (or its OAuth2 token), which is what providers expect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gateway.app.config.reader import Reader, check_secret_file, parse_duration, parse_size
from gateway.app.config.settings import Listener, Sending, SubmissionSettings
from gateway.core.net import is_loopback_host
from gateway.pop3.upstream import Upstream
from gateway.submission.policy import SmtpUpstream, normalize_address

SMTP_TLS_MODES = ("implicit", "starttls", "none")
SENDING_KEYS = ("addresses", "smtp")
"""Keys of an ``[[upstreams]]`` table read here rather than by ``upstreams.py``."""


def relay_wanted(cfg: Any) -> bool:
    """Whether the gateway runs the submission relay (and imports its modules): when
    something can submit or send, a ``[server] submission`` listener or an upstream with
    ``[upstreams.smtp]``. ``cfg`` is a :class:`~gateway.app.config.Config`."""
    return bool(cfg.submission.listeners) or any(s.smtp is not None for s in cfg.sending)


def parse_submission(top: Reader, listeners: tuple[Listener, ...]) -> SubmissionSettings:
    """``[submission]``: the bounds of the submission server and the queue lifetime."""
    table = top.get("submission", dict, {}) or {}
    r = Reader(top.path, top.problems, "submission", table)
    d = SubmissionSettings()

    def count(name: str, default: int, minimum: int) -> int:
        value = r.get(name, int, default)
        if value is not None and value < minimum:
            r.problem(name, f"must be at least {minimum}")
            return default
        return default if value is None else value

    size = r.get("max_message_size", (int, str), d.max_message_size, convert=parse_size)
    lifetime = r.get("queue_lifetime", (int, float, str), d.queue_lifetime, convert=parse_duration)
    if lifetime is not None and lifetime < 60:
        r.problem("queue_lifetime", 'must be at least a minute, e.g. "2d"')
        lifetime = None
    retry = r.get("retry_intervals", list, list(d.retry_intervals))
    intervals: list[float] = []
    for i, item in enumerate(retry or []):
        try:
            intervals.append(parse_duration(item))
        except ValueError as e:
            r.problem(f"retry_intervals[{i}]", str(e))
    if retry is not None and not retry:
        r.problem("retry_intervals", 'needs at least one duration, e.g. ["1m", "5m", "1h"]')
    if any(x <= 0 for x in intervals):
        r.problem("retry_intervals", "durations must be positive")
        intervals = []
    settings = SubmissionSettings(
        listeners=listeners,
        max_message_size=size or d.max_message_size,
        # RFC 5321 §4.5.3.1.8 asks for at least 100; fewer is allowed for a person's outbox
        max_recipients=count("max_recipients", d.max_recipients, 1),
        max_messages_per_hour=count("max_messages_per_hour", d.max_messages_per_hour, 0),
        queue_lifetime=lifetime or d.queue_lifetime,
        retry_intervals=tuple(intervals) or d.retry_intervals,
    )
    r.finish()
    return settings


def parse_sending(
    path: str,
    problems: list[str],
    raw_upstreams: list[Any],
    upstreams: tuple[Upstream, ...],
) -> tuple[Sending, ...]:
    """The sending side of every valid upstream, in config order."""
    by_name = {u.name: u for u in upstreams}
    owners: dict[str, str] = {}  # normalized address → upstream that sends for it
    out: list[Sending] = []
    for table in raw_upstreams:
        if not isinstance(table, dict) or table.get("name") not in by_name:
            continue  # reported by upstreams.py
        up = by_name[table["name"]]
        r = Reader(path, problems, f"upstreams.{up.name}", table)
        addresses = _addresses(r, up)
        for address in addresses:
            key = normalize_address(address)
            if key in owners and owners[key] != up.name:
                r.problem("addresses", f"{address} is already sent for by upstream {owners[key]}")
            owners[key] = up.name
        smtp_table = r.get("smtp", dict, None)
        smtp = None
        if smtp_table is not None:
            smtp = _smtp(Reader(path, problems, r.key("smtp"), smtp_table), up)
            if smtp is not None and not addresses:
                r.problem(
                    "addresses",
                    "is needed to send through [upstreams.smtp] (username is not an address)",
                )
        token = up.auth == "oauth2" and "password_file" not in (smtp_table or {})
        out.append(Sending(up.name, up.owner, addresses, smtp, oauth2=token))
    return tuple(out)


def _addresses(r: Reader, up: Upstream) -> tuple[str, ...]:
    default = [up.username] if "@" in up.username else []
    raw = r.get("addresses", list, default)
    good: list[str] = []
    for i, item in enumerate(raw or []):
        if not isinstance(item, str) or not _looks_like_address(item):
            r.problem(
                f"addresses[{i}]", f"expected an address like alice@isp.example, got {item!r}"
            )
        elif normalize_address(item) in {normalize_address(a) for a in good}:
            r.problem(f"addresses[{i}]", f"{item} is listed twice")
        else:
            good.append(item.strip())
    return tuple(good)


def _looks_like_address(text: str) -> bool:
    local, at, domain = text.strip().rpartition("@")
    return bool(at and local and domain) and not any(c.isspace() or c in "<>,;" for c in text)


def _smtp(r: Reader, up: Upstream) -> SmtpUpstream | None:
    """``[upstreams.smtp]`` (RFC 6409 submission to the provider)."""
    host = r.get("host", str)
    tls = r.get("tls", str, "starttls")
    if tls is not None and tls not in SMTP_TLS_MODES:
        r.problem("tls", f"must be one of {', '.join(SMTP_TLS_MODES)}")
        tls = None
    port = r.get("port", int, 465 if tls == "implicit" else 587)
    if port is not None and not (0 < port < 65536):
        r.problem("port", "must be 1-65535")
        port = None
    ca_file = r.get("ca_file", str, None)
    if ca_file is not None and not os.path.isfile(ca_file):
        r.problem("ca_file", f"{ca_file}: no such file")
    username = r.get("username", str, up.username)
    password_file = r.get("password_file", str, None)
    password: str | None = up.password  # the POP3 password, or "" for an OAuth2 token
    if password_file is not None:
        check_secret_file(password_file, r.problems, f"{r.path}: {r.key('password_file')}")
        try:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError:
            password = None  # reported by check_secret_file
    if tls == "none" and host is not None and not is_loopback_host(host):
        r.problem("tls", f'"none" sends the password in clear to {host}; use implicit or starttls')
        tls = None
    r.finish()
    if None in (host, tls, port, username, password):
        return None
    return SmtpUpstream(
        host=host,
        port=port,
        tls=tls,
        ca_file=ca_file,
        username=username,
        password=password,
        timeout=up.timeout,
    )
