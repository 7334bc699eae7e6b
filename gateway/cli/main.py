"""The ``popgate`` command: run the gateway, try the demo, and the operator's small tools.

Each sub-command is a function taking parsed arguments and returning an exit status,
so tests call them without a subprocess where that is enough.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence

from gateway.app import config as configmod
from gateway.app.runner import run_reactor_with
from gateway.security.passwords import hash_password

DEFAULT_CONFIG = "/etc/popgate/popgate.toml"


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Read a password without echo (or from stdin when piped) and print its hash."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            print("popgate: passwords differ", file=sys.stderr)
            return 1
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("popgate: empty password refused", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    print(
        f"{cfg.path}: ok ({len(cfg.users)} users, {len(cfg.upstreams)} upstreams, "
        f"listeners: {', '.join(cfg.imap)})"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.app import logs
    from gateway.app.service import build_service

    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    logs.configure(cfg.log_level, cfg.log_format)
    return run_reactor_with(lambda reactor: build_service(cfg, reactor))


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli import demo

    return demo.run(state_dir=args.state_dir, port=args.port, interval=args.interval)


def _state_dir(args: argparse.Namespace) -> str | None:
    """``--state-dir`` if given, else the config's state_dir (None after printing why not)."""
    if getattr(args, "state_dir", None):
        return args.state_dir
    try:
        return configmod.load(args.config).state_dir
    except configmod.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    """Ask the running gateway (control socket) how it is; a table, or JSON with --json."""
    import json

    from gateway.app import control, status

    state_dir = _state_dir(args)
    if state_dir is None:
        return 1
    try:
        result = control.request(state_dir, {"command": "status"}, timeout=args.timeout)
    except control.GatewayNotRunning as e:
        print(f"popgate: {e}", file=sys.stderr)
        return 3  # LSB "program is not running"
    except (control.ControlError, TimeoutError, OSError) as e:
        print(f"popgate: status failed: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        sys.stdout.write(status.render(result))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch now on the running gateway, with a progress bar (gateway/cli/fetch.py)."""
    from gateway.cli import fetch as fetchcli

    state_dir = _state_dir(args)
    if state_dir is None:
        return 1
    return fetchcli.run(state_dir, args.upstream, timeout=args.timeout)


def cmd_import_uidls(args: argparse.Namespace) -> int:
    """Mark UIDLs from a fetchmail/getmail state file as known (gateway/app/migrate.py)."""
    from gateway.app import migrate

    return migrate.run_import(args.config, args.upstream, args.file, account=args.account)


def cmd_backup(args: argparse.Namespace) -> int:
    """Consistent online copy of the store (SQLite backup API); safe while serving."""
    from gateway.app import backup
    from gateway.app.storage import STORE_FILE

    state_dir = _state_dir(args)
    if state_dir is None:
        return 1
    try:
        result = backup.backup(os.path.join(state_dir, STORE_FILE), args.dest)
    except backup.BackupError as e:
        print(f"popgate: backup failed: {e}", file=sys.stderr)
        return 1
    print(
        f"{result.path}: {result.size} bytes, {result.mailboxes} mailboxes, "
        f"{result.messages} messages, integrity ok"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Replace the store with a backup; refused while the gateway runs."""
    from gateway.app import backup, control
    from gateway.app.storage import STORE_FILE

    state_dir = _state_dir(args)
    if state_dir is None:
        return 1
    try:
        control.request(state_dir, {"command": "status"}, timeout=10)
    except control.GatewayNotRunning:
        pass
    except (control.ControlError, TimeoutError, OSError) as e:
        print(
            f"popgate: cannot tell whether popgate is running ({e}); stop it first", file=sys.stderr
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
        result = backup.restore(args.src, os.path.join(state_dir, STORE_FILE))
    except backup.BackupError as e:
        print(f"popgate: restore failed: {e}", file=sys.stderr)
        return 1
    print(f"{result.path}: restored from {args.src} ({result.messages} messages)")
    if result.previous is not None:
        print(f"the store it replaced is kept as {result.previous}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="popgate", description="POP3-to-IMAP gateway: POP3 upstreams in, IMAP4rev1 out."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway in the foreground")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("hash-password", help="print a password hash for [users.NAME] password")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("demo", help="run a self-contained demo (embedded POP3 upstream)")
    p.add_argument("--state-dir", default="demo-state")
    p.add_argument("--port", type=int, default=1143)
    p.add_argument("--interval", type=float, default=60.0, help="seconds between new demo messages")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="show what the running gateway is doing")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.add_argument("--state-dir", help="instead of reading it from the config")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("fetch", help="fetch from the upstreams now (on the running gateway)")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.add_argument("--state-dir", help="instead of reading it from the config")
    p.add_argument("--upstream", "-u", help="only this upstream (default: all)")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds without any progress before giving up"
    )
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser(
        "import-uidls",
        help="take over a fetchmail .fetchids / getmail oldmail-* file (no refetch)",
    )
    p.add_argument("file", help="the .fetchids or oldmail-* file")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.add_argument("--upstream", "-u", required=True, help="the [[upstreams]] name to record for")
    p.add_argument("--account", help="fetchmail: the user@host whose lines to take (when several)")
    p.set_defaults(func=cmd_import_uidls)

    from gateway.app import admin

    p = sub.add_parser("adduser", help="add [users.NAME] to the config (password from tty/stdin)")
    p.add_argument("name")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.set_defaults(func=admin.run)

    p = sub.add_parser("passwd", help="set a user's password in the config")
    p.add_argument("name")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.set_defaults(func=admin.run)

    p = sub.add_parser("deluser", help="remove a user from the config (mail kept unless --purge)")
    p.add_argument("name")
    p.add_argument("--purge", action="store_true", help="also delete the user's mail")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.set_defaults(func=admin.run)

    p = sub.add_parser("users", help="list users with their folders, messages and sizes")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.set_defaults(func=admin.run)

    p = sub.add_parser("backup", help="copy the store to DEST (safe while running)")
    p.add_argument("dest", help="new file, or a directory for a timestamped file")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.add_argument("--state-dir", help="instead of reading it from the config")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("restore", help="replace the store with a backup (gateway stopped)")
    p.add_argument("src", help="a file made by popgate backup")
    p.add_argument("--config", "-c", default=DEFAULT_CONFIG)
    p.add_argument("--state-dir", help="instead of reading it from the config")
    p.set_defaults(func=cmd_restore)

    from gateway.cli import oauth

    oauth.add_parser(sub, DEFAULT_CONFIG)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
