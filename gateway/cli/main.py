"""The ``popgate`` command: builds the argument parser from the command groups and dispatches.

Each group is a module of this package (serve, status, fetch, migrate, users, backup,
migrate_store, oauth, sieve) with an ``add_parsers`` function; each sub-command is a
function taking parsed arguments and returning an exit status, so tests call them without
a subprocess where that is enough.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.cli import (
    backup,
    fetch,
    migrate,
    migrate_store,
    oauth,
    serve,
    sieve,
    status,
    users,
)
from gateway.cli.common import DEFAULT_CONFIG

__all__ = ["DEFAULT_CONFIG", "build_parser", "main"]

GROUPS = (serve, status, fetch, migrate, users, backup, migrate_store, oauth, sieve)
"""The command groups, in the order ``popgate --help`` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popgate", description="POP3-to-IMAP gateway: POP3 upstreams in, IMAP4rev1 out."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
