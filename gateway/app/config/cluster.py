"""The ``[store]`` and ``[cluster]`` sections: where mail lives and which node this is.

``[store] backend`` picks the store: "sqlite" (the default, the file in ``state_dir``) or
"postgresql" (issue 13: several nodes on one database), whose ``dsn`` is a libpq URI
with no password inside (it would end up in logs and ``ps``); the password comes from
``password_file``, a secret file checked like the others (mode 0600 or 0640).
``[cluster]`` names this node (``node``, default the host name) and sets how long its
claim on an upstream lasts unless renewed (``lease``, at least 5 seconds).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from gateway.app.config.reader import Reader, check_secret_file, parse_duration
from gateway.app.config.settings import (
    DEFAULT_LEASE,
    MIN_LEASE,
    STORE_BACKENDS,
    Cluster,
    StoreSettings,
)
from gateway.imap.durability import FLAG_FSYNC_MODES

NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
"""Node names: what host names allow, so the default (the host name) always fits."""


def dsn_problem(dsn: str) -> str | None:
    """Why ``dsn`` cannot name the store's database, or None."""
    import psycopg

    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:
        return f"is not a valid libpq connection URI: {str(e).splitlines()[0]}"
    if "password" in info:
        return "must not contain a password; put it in [store] password_file"
    return None


def parse_store(top: Reader) -> StoreSettings:
    """``[store]``: backend, dsn, password_file, flag_fsync."""
    table = top.get("store", dict, {}) or {}
    r = Reader(top.path, top.problems, "store", table)
    backend = r.get("backend", str, "sqlite")
    dsn = r.get("dsn", str, None)
    password_file = r.get("password_file", str, None)
    flag_fsync = r.get("flag_fsync", str, None)
    r.finish()
    if backend not in STORE_BACKENDS:
        r.problem("backend", f"must be one of {', '.join(STORE_BACKENDS)}")
        return StoreSettings()
    if backend == "sqlite":
        for key, value in (("dsn", dsn), ("password_file", password_file)):
            if value is not None:
                r.problem(key, 'is only used with backend = "postgresql"')
    if flag_fsync is not None and flag_fsync not in FLAG_FSYNC_MODES:
        r.problem("flag_fsync", f"must be one of {', '.join(FLAG_FSYNC_MODES)}")
        flag_fsync = None
    flags = {} if flag_fsync is None else {"flag_fsync": flag_fsync}
    if backend == "sqlite":
        return StoreSettings(**flags)
    if dsn is None:
        r.problem("dsn", 'is required with backend = "postgresql"')
    elif (why := dsn_problem(dsn)) is not None:
        r.problem("dsn", why)
    password = None
    if password_file is not None:
        before = len(top.problems)
        check_secret_file(
            password_file, top.problems, f"{top.path}: {r.key('password_file')}", group_read=True
        )
        if len(top.problems) == before:
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                r.problem("password_file", f"cannot read: {e}")
    return StoreSettings(backend, dsn, password_file, password, **flags)


def parse_cluster(top: Reader) -> Cluster:
    """``[cluster]``: node (default the host name) and lease (≥ 5 s, default 30 s)."""
    table = top.get("cluster", dict, {}) or {}
    r = Reader(top.path, top.problems, "cluster", table)
    node = r.get("node", str, None)
    lease = r.get("lease", (int, float, str), DEFAULT_LEASE, convert=parse_duration)
    r.finish()
    if node is None:
        node = socket.gethostname() or "localhost"
    elif not NODE_RE.match(node):
        r.problem(
            "node", "node names are 1-63 of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )
    if lease is None:
        lease = DEFAULT_LEASE
    elif lease < MIN_LEASE:
        r.problem("lease", f"must be at least {MIN_LEASE:g}s")
    return Cluster(node, lease)
