"""The ``[[upstreams]]`` tables: the POP3 mailboxes popgate fetches from, one table each.

Each becomes a :class:`~gateway.pop3.upstream.Upstream`. The checks here keep an
upstream from leaking its password: clear-text POP3 only to a loopback host unless
``allow_plaintext`` says otherwise, and a password written into the config (rather than
a ``password_file``) makes the config file itself a secret that must be mode 0600.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gateway.app.config.reader import Reader, check_secret_file, parse_duration, parse_size
from gateway.app.config.sending import SENDING_KEYS
from gateway.app.config.settings import Limits, Shared
from gateway.core.net import is_loopback_host
from gateway.oauth.settings import parse_oauth2_table
from gateway.pop3.upstream import (
    DEFAULT_NOTIFY_AFTER,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TIMEOUT,
    Upstream,
)
from gateway.store.interfaces import SHARED_OWNER_PREFIX

MIN_POLL_INTERVAL = 10.0
TLS_MODES = ("implicit", "starttls", "none")
AUTH_MODES = ("auto", "user", "apop", "plain", "oauth2")
DELETED_IN_IMAP_MODES = ("keep", "delete")
UPSTREAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_upstreams(
    path: str,
    problems: list[str],
    raw_upstreams: list[Any],
    users_table: dict[str, Any],
    shared: dict[str, Shared],
    limits: Limits,
) -> tuple[Upstream, ...]:
    """Every valid ``[[upstreams]]`` table; owners must be defined users or shared trees."""
    upstreams: list[Upstream] = []
    config_has_secret = False
    seen_names: set[str] = set()
    for i, table in enumerate(raw_upstreams):
        key = f"upstreams[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{path}: {key}: expected a table ([[upstreams]])")
            continue
        r = Reader(path, problems, key, table)
        name = r.get("name", str)
        if name is not None:
            if not UPSTREAM_NAME_RE.match(name):
                r.problem("name", "use 1-64 of A-Z a-z 0-9 . _ -")
            elif name in seen_names:
                r.problem("name", f"{name!r} is used by another upstream")
            seen_names.add(name)
            r.prefix = f"upstreams.{name}"
        owner = r.get("owner", str)
        if owner is not None and owner.startswith(SHARED_OWNER_PREFIX):
            group = owner[len(SHARED_OWNER_PREFIX) :]
            if group not in shared:
                r.problem("owner", f"no such shared mailbox {group!r} (define [shared.{group}])")
        elif owner is not None and owner not in users_table:
            r.problem("owner", f"no such user {owner!r} (define [users.{owner}])")
        host = r.get("host", str)
        tls = r.get("tls", str, "implicit")
        if tls is not None and tls not in TLS_MODES:
            r.problem("tls", f"must be one of {', '.join(TLS_MODES)}")
        port = r.get("port", int, 995 if tls == "implicit" else 110)
        if port is not None and not (0 < port < 65536):
            r.problem("port", "must be 1-65535")
        ca_file = r.get("ca_file", str, None)
        if ca_file is not None and not os.path.isfile(ca_file):
            r.problem("ca_file", f"{ca_file}: no such file")
        username = r.get("username", str)
        auth = r.get("auth", str, "auto")
        if auth is not None and auth not in AUTH_MODES:
            r.problem("auth", f"must be one of {', '.join(AUTH_MODES)}")
        oauth2 = None
        oauth2_table = r.get("oauth2", dict, None)
        if auth == "oauth2" and oauth2_table is None:
            r.problem("oauth2", 'is required with auth = "oauth2" (a [upstreams.oauth2] table)')
        elif oauth2_table is not None:
            if auth != "oauth2":
                r.problem("oauth2", 'only used with auth = "oauth2"')
            oauth2, oauth_problems = parse_oauth2_table(oauth2_table, prefix=r.key("oauth2"))
            problems.extend(f"{path}: {text}" for text in oauth_problems)
        password = r.get("password", str, None)
        password_file = r.get("password_file", str, None)
        secret = None
        if password is not None and password_file is not None:
            r.problem("password", "give password or password_file, not both")
        elif password is not None:
            secret = password
            config_has_secret = True
        elif password_file is not None:
            check_secret_file(password_file, problems, f"{path}: {r.key('password_file')}")
            try:
                secret = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError:
                pass  # reported by _check_secret_file
        elif auth == "oauth2":
            secret = ""  # the access token comes from state_dir/oauth/NAME.json
        else:
            r.problem("password_file", "is required (or password)")
        allow_plaintext = r.get("allow_plaintext", bool, False)
        if (
            tls == "none"
            and host is not None
            and not is_loopback_host(host)
            and not allow_plaintext
        ):
            r.problem(
                "tls",
                f'"none" sends the password in clear to {host}; use implicit or starttls '
                "(or set allow_plaintext = true if you really must)",
            )
        poll = r.get(
            "poll_interval", (int, float, str), DEFAULT_POLL_INTERVAL, convert=parse_duration
        )
        if poll is not None and poll < MIN_POLL_INTERVAL:
            r.problem("poll_interval", f"must be at least {MIN_POLL_INTERVAL:g}s")
        timeout = r.get("timeout", (int, float, str), DEFAULT_TIMEOUT, convert=parse_duration)
        keep = r.get("keep_on_server", bool, True)
        folder = r.get("folder", str, "INBOX")
        max_size = r.get(
            "max_message_size", (int, str), limits.max_message_size, convert=parse_size
        )
        delete_after = r.get("delete_after", (int, float, str), None, convert=parse_duration)
        if delete_after is not None and delete_after <= 0:
            r.problem("delete_after", 'must be a positive duration such as "30d"')
            delete_after = None
        quota = r.get("quota", (int, str), None, convert=parse_size)
        over_raw = r.get("delete_when_over", (int, str), None)
        delete_when_over: int | None = None
        if isinstance(over_raw, str) and over_raw.strip().endswith("%"):
            try:
                percent = float(over_raw.strip()[:-1])
            except ValueError:
                percent = -1.0
            if not 0 < percent <= 100:
                r.problem("delete_when_over", 'a percentage must be in (0, 100], e.g. "80%"')
            elif quota is None:
                r.problem("delete_when_over", f"{over_raw!r} is a share of quota: set quota too")
            else:
                delete_when_over = int(quota * percent / 100)
        elif over_raw is not None:
            try:
                delete_when_over = parse_size(over_raw)
            except ValueError as e:
                r.problem("delete_when_over", str(e))
        deleted_in_imap = r.get("deleted_in_imap", str, "keep")
        if deleted_in_imap is not None and deleted_in_imap not in DELETED_IN_IMAP_MODES:
            r.problem("deleted_in_imap", f"must be one of {', '.join(DELETED_IN_IMAP_MODES)}")
        dedup = r.get("dedup", bool, True)
        notify = r.get("notify", bool, True)
        notify_after = r.get(
            "notify_after", (int, float, str), DEFAULT_NOTIFY_AFTER, convert=parse_duration
        )
        if notify_after is not None and notify_after <= 0:
            r.problem("notify_after", 'must be a positive duration such as "6h"')
        r.seen.update(SENDING_KEYS)  # addresses, [upstreams.smtp]: config/sending.py
        r.finish()
        if None in (name, owner, host, tls, port, username, secret, auth, poll, timeout):
            continue
        if auth == "oauth2" and oauth2 is None:
            continue
        upstreams.append(
            Upstream(
                name=name,
                owner=owner,
                host=host,
                port=port,
                tls=tls,
                username=username,
                password=secret,
                ca_file=ca_file,
                folder=folder if folder.upper() != "INBOX" else "INBOX",
                poll_interval=poll,
                keep_on_server=keep,
                timeout=timeout,
                auth=auth,
                allow_plaintext=bool(allow_plaintext),
                max_message_size=max_size or limits.max_message_size,
                delete_after=delete_after,
                delete_when_over=delete_when_over,
                quota=quota,
                deleted_in_imap=deleted_in_imap or "keep",
                dedup=bool(dedup),
                oauth2=oauth2,
                notify=bool(notify),
                notify_after=notify_after or DEFAULT_NOTIFY_AFTER,
            )
        )
    if config_has_secret and os.path.exists(path):
        check_secret_file(path, problems, f"{path}: upstreams.password")
    return tuple(upstreams)
