"""``popgate migrate-store``: copy a single-node SQLite store into PostgreSQL (issue 13).

Not to be confused with ``popgate import-uidls`` (:mod:`gateway.cli.migrate`), which takes
over another fetcher's UIDL lists; this command moves popgate's own store between backends
(:mod:`gateway.app.migrate_store` does the work).
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.common import add_config_option


def cmd_migrate_store(args: argparse.Namespace) -> int:
    """Copy ``--from`` into the PostgreSQL database of ``--config``; 0 on success, 1 when
    refused or failed (the target then stays empty)."""
    from gateway.app import migrate_store

    return migrate_store.run(args.config, args.source)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "migrate-store",
        help="copy a SQLite store into the (empty) PostgreSQL database of --config",
        description=(
            "Copy everything in a single-node SQLite store (mailboxes with their UIDVALIDITY, "
            "UIDs, flags and modseqs, per-member \\Seen, subscriptions, the POP3 ledger, "
            "Sieve scripts, the outbound queue) into the PostgreSQL database that --config's "
            "[store] names, so no client resyncs and no mail is fetched twice. Stop the "
            "node first; the target database must be empty."
        ),
    )
    add_config_option(p)
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="SQLITE_FILE",
        help="the SQLite store, e.g. /var/lib/popgate/popgate.sqlite3 (opened read-only)",
    )
    p.set_defaults(func=cmd_migrate_store)
