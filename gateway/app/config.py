"""Loading and validating popgate's TOML configuration into typed, immutable settings.

Nothing starts half-configured: every problem is collected and reported as
``FILE: key: problem`` (all of them at once, so an operator fixes the file in one go),
and the service only ever sees a fully valid :class:`Config`.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.core.limits import DEFAULT_MAX_MESSAGE_SIZE
from gateway.core.net import is_loopback_host
from gateway.pop3.upstream import DEFAULT_POLL_INTERVAL, DEFAULT_TIMEOUT, Upstream
from gateway.security.passwords import is_hash
from gateway.store.interfaces import SHARED_OWNER_PREFIX

DEFAULT_STATE_DIR = "/var/lib/popgate"
DEFAULT_IMAP = ("tcp:1143:interface=127.0.0.1",)
MIN_POLL_INTERVAL = 10.0
TLS_MODES = ("implicit", "starttls", "none")
AUTH_MODES = ("auto", "user", "apop", "plain")
DELETED_IN_IMAP_MODES = ("keep", "delete")
USER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")
UPSTREAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")
DEFAULT_METRICS_LISTEN = "tcp:9143:interface=127.0.0.1"


class ConfigError(Exception):
    """One or more problems, each ``FILE: key: problem``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Limits:
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_line_length: int = 64 * 1024
    max_pipelined_commands: int = 100
    prelogin_timeout: float = 60.0
    idle_timeout: float = 30 * 60.0
    idle_command_timeout: float = 60 * 60.0


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    quota: int | None = None  # bytes of mail the user may keep (RFC 9208 STORAGE); None: no limit


@dataclass(frozen=True)
class Shared:
    """``[shared.NAME]``: a household's shared mailbox tree (owner ``shared:NAME`` in the
    store, ``Shared/NAME`` to its members; see gateway/access/households.py)."""

    name: str
    members: tuple[str, ...]
    quota: int | None = None  # bytes for the whole shared tree; None: no limit


@dataclass(frozen=True)
class Metrics:
    """The Prometheus endpoint ([metrics]): off unless enabled, loopback by default."""

    enabled: bool = False
    listen: str = DEFAULT_METRICS_LISTEN


LISTENER_TLS = ("starttls", "implicit")
TLS_MIN_VERSIONS = ("1.2", "1.3")


@dataclass(frozen=True)
class Listener:
    """One IMAP listener (``[server] imap``/``imaps`` or a ``[[listeners]]`` table).

    ``tls``: "starttls" (plaintext first, STARTTLS offered when ``[tls]`` is set),
    "implicit" (IMAPS: TLS from the first byte with the ``[tls]`` certificate) or
    "endpoint" (an ``ssl:`` endpoint string that does TLS itself). ``plaintext_auth``:
    LOGIN/AUTHENTICATE allowed before TLS (RFC 3501 §6.2.3 LOGINDISABLED otherwise).
    """

    endpoint: str
    tls: str = "starttls"
    plaintext_auth: bool = False
    local: bool = False


@dataclass(frozen=True)
class TLSSettings:
    """``[tls]``: the server certificate for STARTTLS and IMAPS (reloaded on SIGHUP)."""

    cert_file: str
    key_file: str
    min_version: str = "1.2"


@dataclass(frozen=True)
class Security:
    """``[security]``: login penalties, failure budgets and connection limits."""

    auth_penalty_initial: float = 2.0
    auth_penalty_max: float = 15.0
    auth_failure_window: float = 15 * 60.0
    auth_failures_per_ip: int = 30
    auth_failures_per_user: int = 100
    max_connections_per_user_ip: int = 50
    max_connections_per_ip: int = 1000


@dataclass(frozen=True)
class Config:
    path: str
    state_dir: str
    imap: tuple[str, ...]
    log_level: str
    log_format: str
    limits: Limits
    users: dict[str, User]
    upstreams: tuple[Upstream, ...]
    metrics: Metrics = Metrics()
    tls: TLSSettings | None = None
    listeners: tuple[Listener, ...] = ()
    security: Security = Security()
    shared: dict[str, Shared] = field(default_factory=dict)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)i?[bB]?\s*$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: Any) -> float:
    """``"5m"``, ``"30s"``, ``"1h"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration like "5m" or a number of seconds')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f'expected a duration like "5m" or a number of seconds, got {value!r}')
    if seconds < 0:
        raise ValueError("duration must not be negative")
    return seconds


def parse_size(value: Any) -> int:
    """``"64M"``, ``"512k"``, ``"1G"`` or a number of bytes."""
    if isinstance(value, bool):
        raise ValueError('expected a size like "64M" or a number of bytes')
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    else:
        raise ValueError(f'expected a size like "64M" or a number of bytes, got {value!r}')
    if size <= 0:
        raise ValueError("size must be positive")
    return size


class _Reader:
    """Walks one TOML table, recording problems instead of stopping at the first."""

    def __init__(self, path: str, problems: list[str], prefix: str, table: dict[str, Any]) -> None:
        self.path, self.problems, self.prefix, self.table = path, problems, prefix, table
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def problem(self, name: str, text: str) -> None:
        self.problems.append(f"{self.path}: {self.key(name)}: {text}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ..., *, convert=None):
        self.seen.add(name)
        if name not in self.table:
            if default is ...:
                self.problem(name, "is required")
                return None
            return default
        value = self.table[name]
        if kind is not None and (
            not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)
        ):
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            self.problem(
                name, f"expected {_toml_type(names)}, got {type(value).__name__} {value!r}"
            )
            return None if default is ... else default
        if convert is not None:
            try:
                return convert(value)
            except ValueError as e:
                self.problem(name, str(e))
                return None if default is ... else default
        return value

    def finish(self) -> None:
        for extra in sorted(set(self.table) - self.seen):
            self.problem(extra, "unknown key")


def _toml_type(names: str) -> str:
    return (
        names.replace("str", "a string")
        .replace("int", "an integer")
        .replace("float", "a number")
        .replace("bool", "true or false")
        .replace("list", "a list")
        .replace("dict", "a table")
    )


def _check_secret_file(path: str, problems: list[str], where: str) -> None:
    """A file holding a secret must not be readable by group or others (mode 0600)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        problems.append(f"{where}: cannot read: {e.strerror}")
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        problems.append(
            f"{where}: {path} holds a password and is mode {stat.S_IMODE(mode):04o}; "
            "make it 0600 (chmod 600)"
        )


def _endpoint_problem(description: str) -> str | None:
    """Why a Twisted server endpoint string is unusable, or None if it parses."""
    from twisted.internet import endpoints

    try:
        endpoints.serverFromString(None, description)
    except Exception as e:  # any parse failure is a config problem
        return f"{description!r} is not a valid Twisted server endpoint: {e}"
    return None


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
    problems: list[str] = []
    top = _Reader(path, problems, "", data)

    server_table = top.get("server", dict, {})
    server = _Reader(path, problems, "server", server_table or {})
    state_dir = server.get("state_dir", str, DEFAULT_STATE_DIR)
    imap = server.get("imap", list, list(DEFAULT_IMAP))
    listeners: list[str] = []
    for i, item in enumerate(imap or []):
        if not isinstance(item, str):
            server.problem(f"imap[{i}]", f"expected an endpoint string, got {item!r}")
        elif (why := _endpoint_problem(item)) is not None:
            server.problem(f"imap[{i}]", why)
        else:
            listeners.append(item)
    imaps = server.get("imaps", list, [])
    allow_insecure = server.get("allow_insecure_listener", bool, False)
    log_level = server.get("log_level", str, "info")
    if log_level is not None and log_level not in LOG_LEVELS:
        server.problem("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    log_format = server.get("log_format", str, "auto")
    if log_format is not None and log_format not in LOG_FORMATS:
        server.problem("log_format", f"must be one of {', '.join(LOG_FORMATS)}")
    server.finish()

    limits_table = top.get("limits", dict, {})
    lim = _Reader(path, problems, "limits", limits_table or {})
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

    users: dict[str, User] = {}
    users_table = top.get("users", dict, {}) or {}
    for name, table in users_table.items():
        key = f"users.{name}"
        if not USER_NAME_RE.match(name):
            problems.append(
                f"{path}: {key}: user names are 1-64 of a-z 0-9 . _ @ + - (lower case), "
                "starting with a letter or digit"
            )
            continue
        if not isinstance(table, dict):
            problems.append(f"{path}: {key}: expected a table")
            continue
        r = _Reader(path, problems, key, table)
        pw = r.get("password", str)
        if pw is not None and not is_hash(pw):
            r.problem("password", "is not a password hash; create one with `popgate hash-password`")
        quota = r.get("quota", (int, str), None, convert=parse_size)
        r.finish()
        if pw is not None:
            users[name] = User(name, pw, quota)

    shared = _parse_shared(path, problems, top.get("shared", dict, {}) or {}, users_table)

    upstreams: list[Upstream] = []
    raw_upstreams = top.get("upstreams", list, []) or []
    config_has_secret = False
    seen_names: set[str] = set()
    for i, table in enumerate(raw_upstreams):
        key = f"upstreams[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{path}: {key}: expected a table ([[upstreams]])")
            continue
        r = _Reader(path, problems, key, table)
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
        password = r.get("password", str, None)
        password_file = r.get("password_file", str, None)
        secret = None
        if password is not None and password_file is not None:
            r.problem("password", "give password or password_file, not both")
        elif password is not None:
            secret = password
            config_has_secret = True
        elif password_file is not None:
            _check_secret_file(password_file, problems, f"{path}: {r.key('password_file')}")
            try:
                secret = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError:
                pass  # reported by _check_secret_file
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
        auth = r.get("auth", str, "auto")
        if auth is not None and auth not in AUTH_MODES:
            r.problem("auth", f"must be one of {', '.join(AUTH_MODES)}")
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
        r.finish()
        if None in (name, owner, host, tls, port, username, secret, auth, poll, timeout):
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
            )
        )
    if config_has_secret and os.path.exists(path):
        _check_secret_file(path, problems, f"{path}: upstreams.password")
    metrics = _parse_metrics(top, path, problems)
    tls_settings = _parse_tls(path, problems, top.get("tls", dict, None))
    security = _parse_security(path, problems, top.get("security", dict, {}) or {})
    all_listeners = _parse_listeners(
        path,
        problems,
        server,
        listeners,
        imaps or [],
        top.get("listeners", list, []) or [],
        tls_settings,
        bool(allow_insecure),
    )
    top.finish()

    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        state_dir=state_dir,
        imap=tuple(listeners),
        log_level=log_level,
        log_format=log_format,
        limits=limits,
        users=users,
        upstreams=tuple(upstreams),
        metrics=metrics,
        tls=tls_settings,
        listeners=all_listeners,
        security=security,
        shared=shared,
    )


def _parse_shared(
    path: str, problems: list[str], table: dict[str, Any], users_table: dict[str, Any]
) -> dict[str, Shared]:
    """``[shared.NAME]`` tables: ``members`` (a list of defined users). NAME follows the
    user-name rules (it becomes the mailbox name ``Shared/NAME``)."""
    out: dict[str, Shared] = {}
    for name, item in table.items():
        key = f"shared.{name}"
        if not USER_NAME_RE.match(name):
            problems.append(
                f"{path}: {key}: shared mailbox names are 1-64 of a-z 0-9 . _ @ + - "
                "(lower case), starting with a letter or digit"
            )
            continue
        if not isinstance(item, dict):
            problems.append(f"{path}: {key}: expected a table")
            continue
        r = _Reader(path, problems, key, item)
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


def _parse_metrics(top: _Reader, path: str, problems: list[str]) -> Metrics:
    """The [metrics] table: ``enabled`` and ``listen`` (a Twisted server endpoint)."""
    table = top.get("metrics", dict, {}) or {}
    r = _Reader(path, problems, "metrics", table)
    enabled = r.get("enabled", bool, False)
    listen = r.get("listen", str, DEFAULT_METRICS_LISTEN)
    if listen is not None and (why := _endpoint_problem(listen)) is not None:
        r.problem("listen", why)
    r.finish()
    return Metrics(enabled=bool(enabled), listen=listen or DEFAULT_METRICS_LISTEN)


# ---- network security: [tls], [security], listeners (issue 7) ------------------------


def _split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
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
    kind, _args, kwargs = _split_endpoint(description)
    if kind == "unix":
        return True
    if kind in ("tcp", "tcp6", "ssl"):
        return is_loopback_host(kwargs["interface"] if "interface" in kwargs else "")
    return False


def _parse_tls(path: str, problems: list[str], table: dict[str, Any] | None) -> TLSSettings | None:
    """``[tls]``: the files are loaded now, so a broken certificate stops the start."""
    if table is None:
        return None
    r = _Reader(path, problems, "tls", table)
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


def _parse_security(path: str, problems: list[str], table: dict[str, Any]) -> Security:
    """``[security]``: login penalty and budgets, connection limits (0 means none)."""
    r = _Reader(path, problems, "security", table)
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
    )
    if security.auth_penalty_initial > security.auth_penalty_max:
        r.problem("auth_penalty_max", "must not be less than auth_penalty_initial")
    r.finish()
    return security


def _parse_listeners(
    path: str,
    problems: list[str],
    server: _Reader,
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
    for i, description in enumerate(imap):
        mode = "endpoint" if _split_endpoint(description)[0] == "ssl" else "starttls"
        raw.append((f"server.imap[{i}]", description, mode, None))
    for i, item in enumerate(imaps):
        if not isinstance(item, str):
            server.problem(f"imaps[{i}]", f"expected an endpoint string, got {item!r}")
        elif (why := _endpoint_problem(item)) is not None:
            server.problem(f"imaps[{i}]", why)
        elif _split_endpoint(item)[0] == "ssl":
            server.problem(f"imaps[{i}]", "give a plain endpoint (tcp:993); [tls] adds the TLS")
        else:
            raw.append((f"server.imaps[{i}]", item, "implicit", None))
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            problems.append(f"{path}: listeners[{i}]: expected a table ([[listeners]])")
            continue
        r = _Reader(path, problems, f"listeners[{i}]", table)
        endpoint = r.get("endpoint", str)
        mode = r.get("tls", str, "starttls")
        plaintext = r.get("plaintext_auth", bool, None)
        r.finish()
        if mode is not None and mode not in LISTENER_TLS:
            r.problem("tls", f"must be one of {', '.join(LISTENER_TLS)}")
            continue
        if endpoint is None or mode is None:
            continue
        if (why := _endpoint_problem(endpoint)) is not None:
            r.problem("endpoint", why)
            continue
        if _split_endpoint(endpoint)[0] == "ssl":
            mode = "endpoint"
        raw.append((r.prefix, endpoint, mode, plaintext))
    if not server.table.get("imap", DEFAULT_IMAP) and not imaps and not tables:
        server.problem("imap", "needs at least one listener")
    out: list[Listener] = []
    for where, endpoint, mode, plaintext in raw:
        local = endpoint_is_local(endpoint)
        if mode == "implicit" and tls is None:
            problems.append(
                f"{path}: {where}: an IMAPS listener needs [tls] cert_file and key_file"
            )
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
        out.append(Listener(endpoint, mode, plaintext, local))
    return tuple(out)
