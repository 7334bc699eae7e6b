"""The per-section parsers of the config: ``[server]``, ``[limits]``, ``[users]``,
``[shared]``, ``[metrics]``, ``[tls]`` and ``[security]``.

Each reads its table with a :class:`~gateway.app.config.reader.Reader`, appends every
problem it finds to the shared list and returns what it could read, so
:func:`gateway.app.config.parse` can go on and report all problems at once.
(``[[upstreams]]`` and the listeners have modules of their own.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.app.config.reader import Reader, endpoint_problem, parse_duration, parse_size
from gateway.app.config.settings import (
    DEFAULT_IMAP,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_STATE_DIR,
    Limits,
    Metrics,
    Security,
    Shared,
    TLSSettings,
    User,
)
from gateway.security.passwords import is_hash

USER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
TLS_MIN_VERSIONS = ("1.2", "1.3")
NAME_RULE = "are 1-64 of a-z 0-9 . _ @ + - (lower case), starting with a letter or digit"
"""What :data:`USER_NAME_RE` accepts, as problems and the user commands say it."""


@dataclass
class Server:
    """What ``[server]`` says; its reader stays open for the listener checks that report
    under ``server.`` (``imaps``, "needs at least one listener")."""

    reader: Reader
    state_dir: str
    imap: list[str]
    imaps: list[Any]
    managesieve: list[str]
    allow_insecure: bool
    log_level: str
    log_format: str
    submission: list[Any] = field(default_factory=list)
    """``submission``/``submissions`` endpoints (issue 15), checked by the listener rules."""
    submissions: list[Any] = field(default_factory=list)
    web: list[Any] = field(default_factory=list)  # checked by config/web.py
    admins: list[Any] = field(default_factory=list)


def parse_server(top: Reader) -> Server:
    """``[server]``: state directory, IMAP endpoints, logging; the web page's ``web`` and
    ``admins`` are only read here (config/web.py checks them against [tls] and [users])."""
    path, problems = top.path, top.problems
    server_table = top.get("server", dict, {})
    server = Reader(path, problems, "server", server_table or {})
    state_dir = server.get("state_dir", str, DEFAULT_STATE_DIR)
    imap = server.get("imap", list, list(DEFAULT_IMAP))
    listeners: list[str] = []
    for i, item in enumerate(imap or []):
        if not isinstance(item, str):
            server.problem(f"imap[{i}]", f"expected an endpoint string, got {item!r}")
        elif (why := endpoint_problem(item)) is not None:
            server.problem(f"imap[{i}]", why)
        else:
            listeners.append(item)
    imaps = server.get("imaps", list, [])
    managesieve: list[str] = []
    for i, item in enumerate(server.get("managesieve", list, []) or []):
        if not isinstance(item, str):
            server.problem(f"managesieve[{i}]", f"expected an endpoint string, got {item!r}")
        elif item.split(":", 1)[0].lower() == "ssl":
            server.problem(
                f"managesieve[{i}]",
                "ManageSieve uses STARTTLS (RFC 5804 §2.2); give a plain endpoint (tcp:4190)",
            )
        elif (why := endpoint_problem(item)) is not None:
            server.problem(f"managesieve[{i}]", why)
        else:
            managesieve.append(item)
    allow_insecure = server.get("allow_insecure_listener", bool, False)
    log_level = server.get("log_level", str, "info")
    if log_level is not None and log_level not in LOG_LEVELS:
        server.problem("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    log_format = server.get("log_format", str, "auto")
    if log_format is not None and log_format not in LOG_FORMATS:
        server.problem("log_format", f"must be one of {', '.join(LOG_FORMATS)}")
    submission = server.get("submission", list, [])
    submissions = server.get("submissions", list, [])
    web = server.get("web", list, [])
    admins = server.get("admins", list, [])
    server.finish()
    return Server(
        server,
        state_dir,
        listeners,
        imaps or [],
        managesieve,
        bool(allow_insecure),
        log_level,
        log_format,
        submission or [],
        submissions or [],
        web or [],
        admins or [],
    )


def parse_limits(top: Reader) -> Limits:
    """``[limits]``: sizes and timeouts of IMAP connections; a bad value keeps its default."""
    path, problems = top.path, top.problems
    limits_table = top.get("limits", dict, {})
    lim = Reader(path, problems, "limits", limits_table or {})
    d = Limits()
    limits = Limits(
        max_message_size=lim.get(
            "max_message_size", (int, str), d.max_message_size, convert=parse_size
        )
        or d.max_message_size,
        max_line_length=lim.get(
            "max_line_length", (int, str), d.max_line_length, convert=parse_size
        )
        or d.max_line_length,
        max_pipelined_commands=lim.get("max_pipelined_commands", int, d.max_pipelined_commands)
        or d.max_pipelined_commands,
        prelogin_timeout=lim.get(
            "prelogin_timeout", (int, float, str), d.prelogin_timeout, convert=parse_duration
        )
        or d.prelogin_timeout,
        idle_timeout=lim.get(
            "idle_timeout", (int, float, str), d.idle_timeout, convert=parse_duration
        )
        or d.idle_timeout,
        idle_command_timeout=lim.get(
            "idle_command_timeout",
            (int, float, str),
            d.idle_command_timeout,
            convert=parse_duration,
        )
        or d.idle_command_timeout,
    )
    lim.finish()
    return limits


def named_tables(
    path: str, problems: list[str], section: str, table: dict[str, Any], what: str
) -> Iterator[tuple[str, Reader]]:
    """Each ``[SECTION.NAME]`` table with a reader, when NAME follows the user-name rules
    and the value is a table; the others are reported as problems and skipped."""
    for name, item in table.items():
        key = f"{section}.{name}"
        if not USER_NAME_RE.match(name):
            problems.append(f"{path}: {key}: {what} names {NAME_RULE}")
            continue
        if not isinstance(item, dict):
            problems.append(f"{path}: {key}: expected a table")
            continue
        yield name, Reader(path, problems, key, item)


def parse_users(path: str, problems: list[str], users_table: dict[str, Any]) -> dict[str, User]:
    """``[users.NAME]``: a password hash (``popgate hash-password``) and an optional quota."""
    users: dict[str, User] = {}
    for name, r in named_tables(path, problems, "users", users_table, "user"):
        pw = r.get("password", str)
        if pw is not None and not is_hash(pw):
            r.problem("password", "is not a password hash; create one with `popgate hash-password`")
        quota = r.get("quota", (int, str), None, convert=parse_size)
        r.finish()
        if pw is not None:
            users[name] = User(name, pw, quota)
    return users


def parse_shared(
    path: str, problems: list[str], table: dict[str, Any], users_table: dict[str, Any]
) -> dict[str, Shared]:
    """``[shared.NAME]`` tables: ``members`` (a list of defined users). NAME follows the
    user-name rules (it becomes the mailbox name ``Shared/NAME``)."""
    out: dict[str, Shared] = {}
    for name, r in named_tables(path, problems, "shared", table, "shared mailbox"):
        members = r.get("members", list)
        quota = r.get("quota", (int, str), None, convert=parse_size)
        r.finish()
        if members is None:
            out[name] = Shared(name, (), quota)  # reported once; upstreams may still name it
            continue
        good: list[str] = []
        for i, member in enumerate(members):
            if not isinstance(member, str):
                r.problem(f"members[{i}]", f"expected a user name, got {member!r}")
            elif member not in users_table:
                r.problem(f"members[{i}]", f"no such user {member!r} (define [users.{member}])")
            elif member in good:
                r.problem(f"members[{i}]", f"{member!r} is listed twice")
            else:
                good.append(member)
        if not members:
            r.problem("members", "a shared mailbox needs at least one member")
        out[name] = Shared(name, tuple(good), quota)
    return out


def parse_metrics(top: Reader, path: str, problems: list[str]) -> Metrics:
    """The [metrics] table: ``enabled`` and ``listen`` (a Twisted server endpoint)."""
    table = top.get("metrics", dict, {}) or {}
    r = Reader(path, problems, "metrics", table)
    enabled = r.get("enabled", bool, False)
    listen = r.get("listen", str, DEFAULT_METRICS_LISTEN)
    if listen is not None and (why := endpoint_problem(listen)) is not None:
        r.problem("listen", why)
    r.finish()
    return Metrics(enabled=bool(enabled), listen=listen or DEFAULT_METRICS_LISTEN)


def parse_debug(
    top: Reader, path: str, problems: list[str], users: dict[str, Any]
) -> tuple[str, ...]:
    """``[debug] trace_users``: users whose IMAP connections are traced (masked) under
    ``state_dir/trace/USER/`` (gateway.imap.tracefile); each must be in ``[users]``."""
    table = top.get("debug", dict, {}) or {}
    r = Reader(path, problems, "debug", table)
    names = r.get("trace_users", list, []) or []
    r.finish()
    traced: list[str] = []
    for name in names:
        if not isinstance(name, str) or name not in users:
            r.problem("trace_users", f"{name!r} is not a user in [users]")
        elif name not in traced:
            traced.append(name)
    return tuple(traced)


def parse_tls(path: str, problems: list[str], table: dict[str, Any] | None) -> TLSSettings | None:
    """``[tls]``: the files are loaded now, so a broken certificate stops the start."""
    if table is None:
        return None
    r = Reader(path, problems, "tls", table)
    cert_file = r.get("cert_file", str)
    key_file = r.get("key_file", str)
    min_version = r.get("min_version", str, "1.2")
    r.finish()
    if min_version is not None and min_version not in TLS_MIN_VERSIONS:
        r.problem("min_version", f"must be one of {', '.join(TLS_MIN_VERSIONS)}")
        return None
    if cert_file is None or key_file is None or min_version is None:
        return None
    from gateway.security.tls import TLSConfigError, TLSFiles, build_context

    try:
        build_context(TLSFiles(cert_file, key_file, min_version))
    except TLSConfigError as e:
        r.problem("key_file" if key_file in str(e) else "cert_file", str(e))
        return None
    return TLSSettings(cert_file, key_file, min_version)


def parse_security(path: str, problems: list[str], table: dict[str, Any]) -> Security:
    """``[security]``: login penalty and budgets, connection limits (0 means none)."""
    r = Reader(path, problems, "security", table)
    d = Security()
    duration = (int, float, str)

    def count(name: str, default: int) -> int:
        value = r.get(name, int, default)
        if value is not None and value < 0:
            r.problem(name, "must be 0 (no limit) or more")
            return default
        return default if value is None else value

    def seconds(name: str, default: float) -> float:
        value = r.get(name, duration, default, convert=parse_duration)
        return default if value is None else value

    security = Security(
        auth_penalty_initial=seconds("auth_penalty_initial", d.auth_penalty_initial),
        auth_penalty_max=seconds("auth_penalty_max", d.auth_penalty_max),
        auth_failure_window=seconds("auth_failure_window", d.auth_failure_window),
        auth_failures_per_ip=count("auth_failures_per_ip", d.auth_failures_per_ip),
        auth_failures_per_user=count("auth_failures_per_user", d.auth_failures_per_user),
        max_connections_per_user_ip=count(
            "max_connections_per_user_ip", d.max_connections_per_user_ip
        ),
        max_connections_per_ip=count("max_connections_per_ip", d.max_connections_per_ip),
        auth_cache_size=count("auth_cache_size", d.auth_cache_size),
        auth_cache_ttl=seconds("auth_cache_ttl", d.auth_cache_ttl),
    )
    if security.auth_penalty_initial > security.auth_penalty_max:
        r.problem("auth_penalty_max", "must not be less than auth_penalty_initial")
    r.finish()
    return security
