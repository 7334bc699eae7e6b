"""Reading TOML values: the table walker that collects every problem, and the value parsers.

A problem is recorded as ``FILE: key: problem`` and reading goes on, so one run reports
everything wrong with a file (:class:`ConfigError` carries them all). Durations and sizes
accept the units people write ("5m", "64M") as well as plain numbers.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any


class ConfigError(Exception):
    """One or more problems, each ``FILE: key: problem``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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


class Reader:
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


def check_secret_file(
    path: str, problems: list[str], where: str, *, group_read: bool = False
) -> None:
    """A file holding a secret must not be readable by others, nor by its group unless
    ``group_read`` (mode 0600, or 0640 where a group such as postgres' may share it)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        problems.append(f"{where}: cannot read: {e.strerror}")
        return
    refused = stat.S_IRWXO | (stat.S_IWGRP | stat.S_IXGRP if group_read else stat.S_IRWXG)
    if mode & refused:
        allowed = "0600 or 0640 (chmod 600)" if group_read else "0600 (chmod 600)"
        problems.append(
            f"{where}: {path} holds a password and is mode {stat.S_IMODE(mode):04o}; "
            f"make it {allowed}"
        )


def endpoint_problem(description: str) -> str | None:
    """Why a Twisted server endpoint string is unusable, or None if it parses."""
    from twisted.internet import endpoints

    try:
        endpoints.serverFromString(None, description)
    except Exception as e:  # any parse failure is a config problem
        return f"{description!r} is not a valid Twisted server endpoint: {e}"
    return None
