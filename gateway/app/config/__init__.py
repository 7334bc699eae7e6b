"""Loading and validating popgate's TOML configuration into typed, immutable settings.

Nothing starts half-configured: every problem is collected and reported as
``FILE: key: problem`` (all of them at once, so an operator fixes the file in one go),
and the service only ever sees a fully valid :class:`Config`.

The package, along its seams: ``reader`` (the table walker, durations, sizes),
``settings`` (the dataclasses), ``sections`` (``[server]``, ``[limits]``, ``[users]``,
``[shared]``, ``[metrics]``, ``[tls]``, ``[security]``), ``upstreams``, ``listeners`` and
``sending`` (``addresses``, ``[upstreams.smtp]``, ``[submission]``);
``web`` (the web page's listeners and admins); ``cluster`` (``[store]``, ``[cluster]``).
:func:`parse` only runs them in order.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any

from gateway.app.config.cluster import parse_cluster, parse_store
from gateway.app.config.listeners import (
    endpoint_is_local,
    parse_listeners,
    parse_managesieve,
    parse_submission_listeners,
)
from gateway.app.config.reader import ConfigError, Reader, parse_duration, parse_size
from gateway.app.config.sections import (
    USER_NAME_RE,
    parse_debug,
    parse_limits,
    parse_metrics,
    parse_security,
    parse_server,
    parse_shared,
    parse_tls,
    parse_users,
)
from gateway.app.config.sending import parse_sending, parse_submission
from gateway.app.config.settings import (
    Cluster,
    Config,
    Limits,
    Listener,
    Metrics,
    Security,
    Sending,
    Shared,
    StoreSettings,
    SubmissionSettings,
    TLSSettings,
    User,
    WebListener,
)
from gateway.app.config.upstreams import parse_upstreams
from gateway.app.config.web import parse_admins, parse_web
from gateway.pop3.upstream import Upstream

__all__ = [
    "USER_NAME_RE",
    "Cluster",
    "Config",
    "ConfigError",
    "Limits",
    "Listener",
    "Metrics",
    "Security",
    "Sending",
    "Shared",
    "StoreSettings",
    "SubmissionSettings",
    "TLSSettings",
    "Upstream",
    "User",
    "WebListener",
    "endpoint_is_local",
    "load",
    "parse",
    "parse_duration",
    "parse_size",
]


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from None
    return parse(data, path)


def parse(data: dict[str, Any], path: str = "<config>") -> Config:
    """Validate a loaded TOML document. Sections are read in file-documentation order
    (the order of the problems reported); later sections check names the earlier define
    (upstream owners and household members against ``[users]``, listeners against
    ``[tls]``)."""
    problems: list[str] = []
    top = Reader(path, problems, "", data)
    server = parse_server(top)
    limits = parse_limits(top)
    users_table = top.get("users", dict, {}) or {}
    users = parse_users(path, problems, users_table)
    shared = parse_shared(path, problems, top.get("shared", dict, {}) or {}, users_table)
    upstreams = parse_upstreams(
        path, problems, top.get("upstreams", list, []) or [], users_table, shared, limits
    )
    metrics = parse_metrics(top, path, problems)
    trace_users = parse_debug(top, path, problems, users_table)
    tls = parse_tls(path, problems, top.get("tls", dict, None))
    security = parse_security(path, problems, top.get("security", dict, {}) or {})
    listeners = parse_listeners(
        path,
        problems,
        server.reader,
        server.imap,
        server.imaps,
        top.get("listeners", list, []) or [],
        tls,
        server.allow_insecure,
    )
    managesieve = parse_managesieve(path, problems, server.managesieve, tls, server.allow_insecure)
    # Sending mail (issue 15): submission listeners, [submission], addresses and smtp.
    submission = parse_submission(
        top,
        parse_submission_listeners(
            path,
            problems,
            server.reader,
            server.submission,
            server.submissions,
            tls,
            server.allow_insecure,
        ),
    )
    sending = parse_sending(path, problems, top.get("upstreams", list, []) or [], upstreams)
    web = parse_web(path, problems, server.web, tls, server.allow_insecure)
    admins = parse_admins(path, problems, server.admins, users_table)
    store = parse_store(top)
    cluster = parse_cluster(top)
    top.finish()
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        state_dir=server.state_dir,
        imap=tuple(server.imap),
        log_level=server.log_level,
        log_format=server.log_format,
        limits=limits,
        users=users,
        upstreams=upstreams,
        metrics=metrics,
        tls=tls,
        listeners=listeners,
        security=security,
        shared=shared,
        managesieve=managesieve,
        submission=submission,
        sending=sending,
        web=web,
        admins=admins,
        allow_insecure_listener=server.allow_insecure,
        trace_users=trace_users,
        store=store,
        cluster=cluster,
    )
