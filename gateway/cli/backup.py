"""``popgate backup`` and ``restore``: a consistent copy of the store, and putting one back."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from gateway.cli.common import add_state_dir_options, load_config, state_dir
from gateway.core.display import printable


def _postgresql_refusal(args: argparse.Namespace) -> bool:
    """In PostgreSQL mode, say to use pg_dump/pg_restore (True: the command stops)."""
    from gateway.app.storage import PG_DUMP_HINT, uses_postgresql

    if getattr(args, "state_dir", None):
        return False  # an explicit state dir names a SQLite store
    cfg = load_config(args.config)
    if cfg is None or not uses_postgresql(cfg):
        return False
    print(f"popgate: {PG_DUMP_HINT.format(dsn=cfg.store.dsn)}", file=sys.stderr)
    return True


def cmd_backup(args: argparse.Namespace) -> int:
    """Consistent online copy of the store (SQLite backup API); safe while serving."""
    from gateway.app import backup
    from gateway.app.storage import STORE_FILE

    if _postgresql_refusal(args):
        return 1
    where = state_dir(args)
    if where is None:
        return 1
    try:
        result = backup.backup(os.path.join(where, STORE_FILE), args.dest)
    except backup.BackupError as e:
        print(printable(f"popgate: backup failed: {e}"), file=sys.stderr)
        return 1
    print(
        printable(
            f"{result.path}: {result.size} bytes, {result.mailboxes} mailboxes, "
            f"{result.messages} messages, integrity ok"
        )
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Replace the store with a backup; refused while the gateway runs."""
    from gateway.app import backup, control
    from gateway.app.storage import STORE_FILE

    if _postgresql_refusal(args):
        return 1
    where = state_dir(args)
    if where is None:
        return 1
    try:
        control.request(where, {"command": "status"}, timeout=10)
    except control.GatewayNotRunning:
        pass
    except (control.ControlError, TimeoutError, OSError) as e:
        print(
            printable(f"popgate: cannot tell whether popgate is running ({e}); stop it first"),
            file=sys.stderr,
        )
        return 1
    else:
        print(
            "popgate: the gateway is running; stop it first (systemctl stop popgate), "
            "then restore, then start it",
            file=sys.stderr,
        )
        return 1
    try:
        result = backup.restore(args.src, os.path.join(where, STORE_FILE))
    except backup.BackupError as e:
        print(printable(f"popgate: restore failed: {e}"), file=sys.stderr)
        return 1
    print(printable(f"{result.path}: restored from {args.src} ({result.messages} messages)"))
    if result.previous is not None:
        print(printable(f"the store it replaced is kept as {result.previous}"))
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("backup", help="copy the store to DEST (safe while running)")
    p.add_argument("dest", help="new file, or a directory for a timestamped file")
    add_state_dir_options(p)
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="replace the store with a backup (gateway stopped)")
    p.add_argument("src", help="a file made by popgate backup")
    add_state_dir_options(p)
    p.set_defaults(func=cmd_restore)
