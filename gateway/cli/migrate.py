"""``popgate import-uidls``: take over from fetchmail or getmail without fetching again."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.common import add_config_option


def cmd_import_uidls(args: argparse.Namespace) -> int:
    """Mark UIDLs from a fetchmail/getmail state file as known (gateway/app/migrate.py)."""
    from gateway.app import migrate

    return migrate.run_import(args.config, args.upstream, args.file, account=args.account)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "import-uidls",
        help="take over a fetchmail .fetchids / getmail oldmail-* file (no refetch)",
    )
    p.add_argument("file", help="the .fetchids or oldmail-* file")
    add_config_option(p)
    p.add_argument("--upstream", "-u", required=True, help="the [[upstreams]] name to record for")
    p.add_argument("--account", help="fetchmail: the user@host whose lines to take (when several)")
    p.set_defaults(func=cmd_import_uidls)
