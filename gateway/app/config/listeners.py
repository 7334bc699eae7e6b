"""The listeners: IMAP (``[server] imap``/``imaps`` and ``[[listeners]]`` tables), SMTP
submission (``[server] submission``/``submissions``) and ManageSieve (``[server]
managesieve``), each with its effective TLS mode and
whether it takes passwords before TLS.

Secure by default: a listener reachable from the network with no TLS to offer is refused
(passwords would travel in clear) unless ``server.allow_insecure_listener`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.app.config.reader import Reader, endpoint_problem
from gateway.app.config.settings import DEFAULT_IMAP, Listener, TLSSettings
from gateway.core.net import is_loopback_host

LISTENER_TLS = ("starttls", "implicit")

MIN_BACKLOG, MAX_BACKLOG = 1, 65535
"""The range of a ``[[listeners]]`` table's ``backlog`` (Linux keeps it in 16 bits; the
kernel then caps it at ``net.core.somaxconn``, see gateway/app/listening.py)."""


@dataclass(frozen=True)
class ServedListener:
    """One listening socket the gateway opens, as operators are shown it: its protocol
    ``kind`` ("imap", "imaps"; later "managesieve", "submission", "submissions") and its
    endpoint string."""

    kind: str
    endpoint: str

    def __str__(self) -> str:
        return f"{self.kind} {self.endpoint}"


def imap_listeners(cfg: Any) -> tuple[Listener, ...]:
    """The IMAP listeners to open: ``cfg.listeners`` (``[server] imap``/``imaps`` and
    ``[[listeners]]``), or, for a Config built without them, one local listener per
    ``imap`` endpoint."""
    return cfg.listeners or tuple(Listener(d, plaintext_auth=True, local=True) for d in cfg.imap)


def served_listeners(cfg: Any) -> tuple[ServedListener, ...]:
    """Every listener the config opens, with its kind, in config order: what
    ``check-config``, ``popgate status`` and the ``service.built`` event list. A new
    protocol's listeners are added here (the metrics endpoint and the control socket
    are shown separately)."""
    served = [
        ServedListener("imap" if listener.tls == "starttls" else "imaps", listener.endpoint)
        for listener in imap_listeners(cfg)
    ]
    served += [
        ServedListener(
            "submission" if listener.tls == "starttls" else "submissions", listener.endpoint
        )
        for listener in getattr(getattr(cfg, "submission", None), "listeners", ())
    ]
    served += [ServedListener("managesieve", m.endpoint) for m in getattr(cfg, "managesieve", ())]
    served += [ServedListener("web", w.endpoint) for w in getattr(cfg, "web", ())]
    return tuple(served)


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """A Twisted endpoint string as (type, positional args, keyword args); a backslash
    escapes a colon as in Twisted's own syntax."""
    parts: list[str] = []
    current = ""
    escaped = False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        if eq:
            kwargs[name] = value
        else:
            args.append(part)
    return parts[0].lower(), args, kwargs


def endpoint_is_local(description: str) -> bool:
    """True when an endpoint string only accepts local connections: a UNIX socket or a
    TCP listener bound to a loopback interface. Anything else (all interfaces, a LAN
    address, systemd-passed sockets) counts as reachable from the network."""
    kind, _args, kwargs = split_endpoint(description)
    if kind == "unix":
        return True
    if kind in ("tcp", "tcp6", "ssl"):
        return is_loopback_host(kwargs["interface"] if "interface" in kwargs else "")
    return False


def parse_listeners(
    path: str,
    problems: list[str],
    server: Reader,
    imap: list[str],
    imaps: list[Any],
    tables: list[Any],
    tls: TLSSettings | None,
    allow_insecure: bool,
) -> tuple[Listener, ...]:
    """Every listener with its effective TLS mode and plaintext-auth policy.

    Secure by default: passwords travel in clear only on local listeners. A listener
    reachable from the network with no TLS to offer is refused unless
    ``server.allow_insecure_listener`` says so (then it takes passwords in clear).
    """
    raw: list[tuple[str, str, str, bool | None]] = []  # (where, endpoint, tls, plaintext)
    backlogs: dict[str, int] = {}  # where -> a [[listeners]] table's backlog
    for i, description in enumerate(imap):
        mode = "endpoint" if split_endpoint(description)[0] == "ssl" else "starttls"
        raw.append((f"server.imap[{i}]", description, mode, None))
    for i, item in enumerate(imaps):
        if not isinstance(item, str):
            server.problem(f"imaps[{i}]", f"expected an endpoint string, got {item!r}")
        elif (why := endpoint_problem(item)) is not None:
            server.problem(f"imaps[{i}]", why)
        elif split_endpoint(item)[0] == "ssl":
            server.problem(f"imaps[{i}]", "give a plain endpoint (tcp:993); [tls] adds the TLS")
        else:
            raw.append((f"server.imaps[{i}]", item, "implicit", None))
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            problems.append(f"{path}: listeners[{i}]: expected a table ([[listeners]])")
            continue
        r = Reader(path, problems, f"listeners[{i}]", table)
        endpoint = r.get("endpoint", str)
        mode = r.get("tls", str, "starttls")
        plaintext = r.get("plaintext_auth", bool, None)
        backlog = r.get("backlog", int, None)
        r.finish()
        if backlog is not None and not MIN_BACKLOG <= backlog <= MAX_BACKLOG:
            r.problem("backlog", f"must be {MIN_BACKLOG} to {MAX_BACKLOG} (a listen queue length)")
            continue
        if backlog is not None and "backlog" in split_endpoint(endpoint or "")[2]:
            r.problem("backlog", "given twice: here and as backlog= in the endpoint string")
            continue
        if mode is not None and mode not in LISTENER_TLS:
            r.problem("tls", f"must be one of {', '.join(LISTENER_TLS)}")
            continue
        if endpoint is None or mode is None:
            continue
        if (why := endpoint_problem(endpoint)) is not None:
            r.problem("endpoint", why)
            continue
        if split_endpoint(endpoint)[0] == "ssl":
            mode = "endpoint"
        raw.append((r.prefix, endpoint, mode, plaintext))
        if backlog is not None:
            backlogs[r.prefix] = backlog
    if not server.table.get("imap", DEFAULT_IMAP) and not imaps and not tables:
        server.problem("imap", "needs at least one listener")
    return _effective(path, problems, raw, tls, allow_insecure, "an IMAPS listener", backlogs)


def _effective(
    path: str,
    problems: list[str],
    raw: list[tuple[str, str, str, bool | None]],
    tls: TLSSettings | None,
    allow_insecure: bool,
    implicit_name: str,
    backlogs: dict[str, int] | None = None,
) -> tuple[Listener, ...]:
    """The listeners of ``raw`` (where, endpoint, tls mode, plaintext_auth or None) with
    the secure-by-default rules applied; refused ones are reported in ``problems``.
    ``backlogs``: listen queues by ``where`` (``[[listeners]]`` tables that set one)."""
    out: list[Listener] = []
    for where, endpoint, mode, plaintext in raw:
        local = endpoint_is_local(endpoint)
        if mode == "implicit" and tls is None:
            problems.append(f"{path}: {where}: {implicit_name} needs [tls] cert_file and key_file")
            continue
        if mode == "starttls" and tls is None and not local and not allow_insecure:
            problems.append(
                f"{path}: {where}: {endpoint!r} is reachable from the network but no TLS is "
                "configured, so passwords would travel in clear; set [tls] cert_file and "
                "key_file, or server.allow_insecure_listener = true to run it anyway"
            )
            continue
        if plaintext is None:
            plaintext = local or (mode == "starttls" and tls is None and allow_insecure)
        backlog = (backlogs or {}).get(where)
        out.append(Listener(endpoint, mode, plaintext, local, backlog))
    return tuple(out)


def parse_managesieve(
    path: str,
    problems: list[str],
    endpoints: list[str],
    tls: TLSSettings | None,
    allow_insecure: bool,
) -> tuple[Listener, ...]:
    """``[server] managesieve``: STARTTLS listeners (RFC 5804 §2.2) under the IMAP rule:
    passwords in clear only on local listeners; a listener reachable from the network
    needs ``[tls]`` (then passwords only after STARTTLS) or ``allow_insecure_listener``."""
    out: list[Listener] = []
    for i, endpoint in enumerate(endpoints):
        local = endpoint_is_local(endpoint)
        if tls is None and not local and not allow_insecure:
            problems.append(
                f"{path}: server.managesieve[{i}]: {endpoint!r} is reachable from the network "
                "but no TLS is configured, so passwords would travel in clear; set [tls] "
                "cert_file and key_file, or server.allow_insecure_listener = true to run it anyway"
            )
            continue
        plaintext = local or (tls is None and allow_insecure)
        out.append(Listener(endpoint, "starttls", plaintext, local))
    return tuple(out)


def parse_submission_listeners(
    path: str,
    problems: list[str],
    server: Reader,
    submission: list[Any],
    submissions: list[Any],
    tls: TLSSettings | None,
    allow_insecure: bool,
) -> tuple[Listener, ...]:
    """``[server] submission`` (RFC 6409, STARTTLS with ``[tls]``) and ``submissions``
    (RFC 8314 implicit TLS) with the same rules as the IMAP listeners: a plain listener
    reachable from the network needs ``[tls]`` (or ``allow_insecure_listener``), and
    AUTH is taken before TLS only on loopback (RFC 8314 §3.3 prefers implicit TLS)."""
    raw: list[tuple[str, str, str, bool | None]] = []
    for key, items, mode in (
        ("submission", submission, "starttls"),
        ("submissions", submissions, "implicit"),
    ):
        for i, item in enumerate(items):
            if not isinstance(item, str):
                server.problem(f"{key}[{i}]", f"expected an endpoint string, got {item!r}")
            elif (why := endpoint_problem(item)) is not None:
                server.problem(f"{key}[{i}]", why)
            elif split_endpoint(item)[0] == "ssl":
                server.problem(f"{key}[{i}]", "give a plain endpoint (tcp:465); [tls] adds the TLS")
            else:
                raw.append((f"server.{key}[{i}]", item, mode, None))
    return _effective(path, problems, raw, tls, allow_insecure, "a submissions listener")
