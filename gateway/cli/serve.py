"""``popgate serve``, ``check-config``, ``hash-password`` and ``demo``: running a gateway
and preparing its config."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.common import DEFAULT_CONFIG, add_config_option, load_config
from gateway.core.display import printable


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.app.runner import pause_gc_for_startup, run_reactor_with

    cfg = load_config(args.config)
    if cfg is None:
        return 1
    pause_gc_for_startup()  # until the service has started (gateway/app/runner.py)
    from gateway.app import logs
    from gateway.app.service import build_service

    logs.configure(cfg.log_level, cfg.log_format)
    return run_reactor_with(lambda reactor: build_service(cfg, reactor))


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the file, then reach the store: in PostgreSQL mode, connect and report
    the schema version (or what is wrong: unreachable, refused, too new)."""
    from gateway.app.storage import StoreCheckFailed, describe_store

    cfg = load_config(args.config)
    if cfg is None:
        return 1
    try:
        store_line = describe_store(cfg)
    except StoreCheckFailed as e:
        print(printable(f"{cfg.path}: {e}"), file=sys.stderr)
        return 1
    from gateway.app.config.listeners import served_listeners

    listeners = ", ".join(str(listener) for listener in served_listeners(cfg))
    print(
        printable(
            f"{cfg.path}: ok ({len(cfg.users)} users, {len(cfg.upstreams)} upstreams, "
            f"listeners: {listeners})"
        )
    )
    print(printable(store_line))
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Read a password without echo (or from stdin when piped) and print its hash."""
    from gateway.app.admin import AdminError, read_password
    from gateway.security.passwords import hash_password

    try:
        password = read_password(sys.stdin, first_prompt="Password: ")
    except AdminError as e:
        print(printable(f"popgate: {e}"), file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli import demo

    return demo.run(
        state_dir=args.state_dir,
        port=args.port,
        interval=args.interval,
        web_port=args.web_port or demo.DEMO_WEB_PORT,
    )


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the gateway in the foreground")
    add_config_option(p)
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
    p.add_argument("--web-port", type=int, help="port of the web page (loopback; default 8025)")
    p.set_defaults(func=cmd_demo)
