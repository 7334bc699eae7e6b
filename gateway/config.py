"""Loading and validating popgate's TOML configuration into typed, immutable settings.

Nothing starts half-configured: every problem is collected and reported as
``FILE: key: problem`` (all of them at once, so an operator fixes the file in one go),
and the service only ever sees a fully valid :class:`Config`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.passwords import is_hash

DEFAULT_STATE_DIR = "/var/lib/popgate"
DEFAULT_IMAP = ("tcp:1143:interface=127.0.0.1",)
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
DEFAULT_POLL_INTERVAL = 300.0
MIN_POLL_INTERVAL = 10.0
DEFAULT_TIMEOUT = 60.0
TLS_MODES = ("implicit", "starttls", "none")
AUTH_MODES = ("auto", "user", "apop", "plain")
USER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")
UPSTREAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


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


@dataclass(frozen=True)
class Upstream:
    name: str
    owner: str
    host: str
    port: int
    tls: str
    username: str
    password: str = field(repr=False)
    ca_file: str | None = None
    folder: str = "INBOX"
    poll_interval: float = DEFAULT_POLL_INTERVAL
    keep_on_server: bool = True
    timeout: float = DEFAULT_TIMEOUT
    auth: str = "auto"
    allow_plaintext: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE


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


def is_loopback_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    if imap is not None and not imap:
        server.problem("imap", "needs at least one listener")
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
        r.finish()
        if pw is not None:
            users[name] = User(name, pw)

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
        if owner is not None and owner not in users_table:
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
            )
        )
    if config_has_secret and os.path.exists(path):
        _check_secret_file(path, problems, f"{path}: upstreams.password")
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
    )
