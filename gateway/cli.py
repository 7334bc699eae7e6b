"""The ``popgate`` command: run the gateway, try the demo, and the operator's small tools.

Each sub-command is a function taking parsed arguments and returning an exit status,
so tests call them without a subprocess where that is enough.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from gateway import config as configmod
from gateway.passwords import hash_password

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


def run_reactor_with(build) -> int:
    """Start the service ``build(reactor)`` returns, run until SIGINT/SIGTERM, stop cleanly."""
    from twisted.internet import reactor

    from gateway import logs

    logs.route_twisted_logs()
    outcome = {"status": 0}

    def start() -> None:
        try:
            svc = build(reactor)
            svc.startService()
        except SystemExit as e:
            print(e, file=sys.stderr)
            outcome["status"] = 1
            reactor.stop()
            return
        except Exception as e:
            # a listener that cannot bind, a store that cannot open: say so, exit non-zero
            print(f"popgate: cannot start: {e}", file=sys.stderr)
            outcome["status"] = 1
            reactor.stop()
            return
        reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome["status"]


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.service import build_service

    try:
        cfg = configmod.load(args.config)
    except configmod.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 1
    logs.configure(cfg.log_level, cfg.log_format)
    return run_reactor_with(lambda reactor: build_service(cfg, reactor))


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway import demo

    return demo.run(state_dir=args.state_dir, port=args.port, interval=args.interval)


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
