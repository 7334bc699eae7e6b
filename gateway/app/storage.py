"""Where a gateway's store lives and how it is opened: the one place that picks a backend.

The CLI's offline commands (backup, restore, user admin, UIDL import) and the running
service all open the store through here, so none of them needs to know file names.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from gateway.app import config as configmod
from gateway.store.sqlite import SQLiteStore

log = structlog.get_logger(__name__)

STORE_FILE = "popgate.sqlite3"
"""The SQLite store's file name inside ``state_dir``."""


def store_path(state_dir: str | os.PathLike[str]) -> Path:
    """The SQLite store file of a state dir (which need not exist yet)."""
    return Path(state_dir) / STORE_FILE


def prepare_state_dir(path: str) -> Path:
    """Create the state dir 0700 (it holds everyone's mail) and refuse a group/world-open one."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(p, 0o700)
        log.warning("state_dir.permissions_fixed", path=str(p), old_mode=f"{mode:04o}")
    return p


def open_store(cfg: configmod.Config) -> SQLiteStore:
    """The configured store, opened (the state dir is created 0700 first)."""
    state = prepare_state_dir(cfg.state_dir)
    return SQLiteStore(state / STORE_FILE, max_message_size=cfg.limits.max_message_size)
