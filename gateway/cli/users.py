"""``popgate adduser``, ``passwd``, ``deluser`` and ``users``: the config's users, edited in
place (gateway/app/admin.py)."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.common import add_config_option


def cmd_users(args: argparse.Namespace) -> int:
    """All four commands: ``args.command`` says which."""
    from gateway.app import admin

    return admin.run(args)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("adduser", help="add [users.NAME] to the config (password from tty/stdin)")
    p.add_argument("name")
    add_config_option(p)
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("passwd", help="set a user's password in the config")
    p.add_argument("name")
    add_config_option(p)
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("deluser", help="remove a user from the config (mail kept unless --purge)")
    p.add_argument("name")
    p.add_argument("--purge", action="store_true", help="also delete the user's mail")
    add_config_option(p)
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("users", help="list users with their folders, messages and sizes")
    add_config_option(p)
    p.set_defaults(func=cmd_users)
