"""The web page's settings in ``[server]``: ``web`` (its listeners) and ``admins`` (who
may see every user, household and upstream).

Secure by default, by the rule the IMAP listeners follow (:mod:`.listeners`): HTTP has no
STARTTLS, so a plain ``tcp:`` web listener reachable from the network would take
passwords in clear and is refused unless ``server.allow_insecure_listener`` says so. An
``ssl:`` listener with no certificate of its own (``ssl:8443``) is HTTPS with the
``[tls]`` certificate, the way ``imaps`` listeners are (and SIGHUP reloads it); one that
names ``privateKey=``/``certKey=`` does its TLS itself.
"""

from __future__ import annotations

from typing import Any

from gateway.app.config.listeners import endpoint_is_local, split_endpoint
from gateway.app.config.reader import endpoint_problem
from gateway.app.config.settings import TLSSettings, WebListener

OWN_CERTIFICATE_KEYS = frozenset({"privateKey", "certKey"})
"""``ssl:`` endpoint arguments that make a listener bring its own certificate."""

PLAIN_TCP_KEYS = frozenset({"interface", "backlog"})
"""The arguments an ``ssl:`` listener on the ``[tls]`` certificate may have (those of
``tcp:``; it is listened on as ``tcp:`` and wrapped in TLS)."""


def _tcp_form(description: str) -> str:
    """``ssl:8443:interface=::1`` → ``tcp:8443:interface=::1`` (same port and arguments)."""
    return "tcp:" + description.split(":", 1)[1] if ":" in description else "tcp"


def parse_web(
    path: str,
    problems: list[str],
    items: list[Any],
    tls: TLSSettings | None,
    allow_insecure: bool,
) -> tuple[WebListener, ...]:
    """``[server] web``: every listener with its TLS mode, or a problem saying why not."""
    out: list[WebListener] = []
    for i, item in enumerate(items):
        where = f"{path}: server.web[{i}]"
        if not isinstance(item, str):
            problems.append(f"{where}: expected an endpoint string, got {item!r}")
            continue
        kind, _args, kwargs = split_endpoint(item)
        if kind == "ssl" and not OWN_CERTIFICATE_KEYS & kwargs.keys():
            if extra := sorted(set(kwargs) - PLAIN_TCP_KEYS):
                problems.append(
                    f"{where}: {', '.join(extra)} need privateKey= and certKey= here; "
                    "an ssl: listener on the [tls] certificate takes interface and backlog"
                )
                continue
            if tls is None:
                problems.append(
                    f"{where}: an HTTPS listener ({item!r}) uses the [tls] certificate; "
                    "set [tls] cert_file and key_file"
                )
                continue
            listen = _tcp_form(item)
            if (why := endpoint_problem(listen)) is not None:
                problems.append(f"{where}: {why}")
                continue
            out.append(WebListener(item, listen, "implicit", endpoint_is_local(listen)))
            continue
        if (why := endpoint_problem(item)) is not None:
            problems.append(f"{where}: {why}")
            continue
        local = endpoint_is_local(item)
        if kind == "ssl":
            out.append(WebListener(item, item, "endpoint", local))
            continue
        if not local and not allow_insecure:
            problems.append(
                f"{where}: {item!r} is reachable from the network but serves plain HTTP, so "
                "passwords would travel in clear; use ssl:PORT with [tls] cert_file and "
                "key_file, or server.allow_insecure_listener = true to run it anyway"
            )
            continue
        out.append(WebListener(item, item, "none", local))
    return tuple(out)


def parse_admins(
    path: str, problems: list[str], items: list[Any], users_table: dict[str, Any]
) -> tuple[str, ...]:
    """``[server] admins``: defined users who may see everything on the web page."""
    out: list[str] = []
    for i, name in enumerate(items):
        where = f"{path}: server.admins[{i}]"
        if not isinstance(name, str):
            problems.append(f"{where}: expected a user name, got {name!r}")
        elif name not in users_table:
            problems.append(f"{where}: no such user {name!r} (define [users.{name}])")
        elif name in out:
            problems.append(f"{where}: {name!r} is listed twice")
        else:
            out.append(name)
    return tuple(out)
