"""``popgate status``: ask the running gateway (control socket) how it is."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.cli.common import add_state_dir_options, state_dir
from gateway.core.display import printable


def cmd_status(args: argparse.Namespace) -> int:
    """A table, or JSON with --json; exit 3 (LSB "program is not running") when it is not."""
    from gateway.app import control, status

    where = state_dir(args)
    if where is None:
        return 1
    try:
        result = control.request(where, {"command": "status"}, timeout=args.timeout)
    except control.GatewayNotRunning as e:
        print(printable(f"popgate: {e}"), file=sys.stderr)
        return 3  # LSB "program is not running"
    except (control.ControlError, TimeoutError, OSError) as e:
        print(printable(f"popgate: status failed: {e}"), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        sys.stdout.write(status.render(result))
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("status", help="show what the running gateway is doing")
    add_state_dir_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    p.set_defaults(func=cmd_status)
