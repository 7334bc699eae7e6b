"""`popgate fetch`: ask the running gateway for a fetch pass now and show its progress.

The pass runs inside the gateway (through the control socket, :mod:`gateway.app.control`,
command "fetch"), never in this process: there is one fetcher per upstream. Progress
lines become a bar (count, bytes, rate) redrawn in place on a terminal, or a plain line
every :data:`PLAIN_LINE_EVERY` messages otherwise; a summary per upstream ends it. Exit
status: 0 when every pass succeeded, 1 when one failed, 3 when the gateway is not running.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from gateway.cli.common import add_state_dir_options, state_dir
from gateway.core.display import printable

BAR_WIDTH = 24
"""Characters of the bar itself."""

REDRAW_INTERVAL = 0.1
"""Least seconds between two redraws of the terminal bar."""

PLAIN_LINE_EVERY = 500
"""Messages between two progress lines when the output is not a terminal."""

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUNNING = 0, 1, 3


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def progress_text(info: dict[str, Any]) -> str:
    """One upstream's progress as ``name [####....] 340/1000 16.2 MB 212 msg/s 1.1 MB/s``."""
    name = info.get("upstream", "?")
    received, total = int(info.get("received", 0)), int(info.get("to_fetch", 0))
    size, elapsed = float(info.get("bytes", 0)), float(info.get("elapsed", 0.0))
    phase = info.get("phase", "")
    if phase in ("", "listing") and not total:
        return printable(f"{name} listing...")
    done = BAR_WIDTH if not total else min(BAR_WIDTH, BAR_WIDTH * received // total)
    bar = "#" * done + "." * (BAR_WIDTH - done)
    rate = received / elapsed if elapsed > 0 else 0.0
    speed = size / elapsed if elapsed > 0 else 0.0
    return printable(
        f"{name} [{bar}] {received}/{total} {human_bytes(size)} "
        f"{rate:.0f} msg/s {human_bytes(speed)}/s"
    )


def summary_text(outcome: dict[str, Any]) -> str:
    """One line per upstream once its pass is over."""
    name = outcome.get("upstream", "?")
    r = outcome.get("result") or {}
    seconds = float(r.get("seconds", 0.0))
    fetched = int(r.get("fetched", 0))
    rate = f", {fetched / seconds:.0f} msg/s" if seconds > 0 and fetched else ""
    parts = [
        f"{fetched} new message{'s' if fetched != 1 else ''} "
        f"({human_bytes(float(r.get('bytes', 0)))}) in {seconds:.1f} s{rate}"
    ]
    for key, label in (
        ("deduplicated", "already stored via another upstream"),
        ("skipped", "skipped"),
        ("deleted", "deleted upstream"),
        ("errors", "errors"),
        ("backlog", "left for the next pass"),
    ):
        if r.get(key):
            parts.append(f"{r[key]} {label}")
    if outcome.get("ok"):
        return printable(f"{name}: " + "; ".join(parts))
    return printable(
        f"{name}: FAILED ({outcome.get('kind', 'error')}): {outcome.get('error')}"
        + (f" (before failing: {'; '.join(parts)})" if r else "")
    )


class ProgressView:
    """Turns progress dicts into output: an in-place bar on a terminal, sparse lines else."""

    def __init__(
        self, out: TextIO, *, tty: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.out = out
        self.tty = tty
        self.clock = clock
        self.latest: dict[str, dict[str, Any]] = {}
        self.last_draw = float("-inf")
        self.drawn = False
        self.printed_at: dict[str, int] = {}

    def __call__(self, info: dict[str, Any]) -> None:
        name = str(info.get("upstream", "?"))
        self.latest[name] = info
        if self.tty:
            now = self.clock()
            if now - self.last_draw >= REDRAW_INTERVAL or info.get("phase") == "done":
                self.last_draw = now
                line = " | ".join(progress_text(i) for i in self.latest.values())
                self.out.write("\r\x1b[K" + line)
                self.out.flush()
                self.drawn = True
            return
        received = int(info.get("received", 0))
        last = self.printed_at.get(name)
        if last is None or received - last >= PLAIN_LINE_EVERY or info.get("phase") == "done":
            if last != received or info.get("phase") == "done":
                self.printed_at[name] = received
                self.out.write(progress_text(info) + "\n")
                self.out.flush()

    def end(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\n")
            self.out.flush()


def run(
    state_dir: str,
    upstream: str | None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    tty: bool | None = None,
    timeout: float | None = None,
) -> int:
    """Trigger the pass, show progress and the summary; return the exit status. ``timeout``:
    seconds without any progress before giving up (default: the control client's)."""
    from gateway.app import control  # Twisted comes with it: only load it for this command

    if timeout is None:
        timeout = control.DEFAULT_CLIENT_TIMEOUT
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    view = ProgressView(out, tty=out.isatty() if tty is None else tty)
    payload: dict[str, Any] = {"command": "fetch"}
    if upstream:
        payload["upstream"] = upstream
    try:
        result = control.request(state_dir, payload, on_progress=view, timeout=timeout)
    except control.GatewayNotRunning as e:
        view.end()
        print(printable(f"popgate: {e}"), file=err)
        return EXIT_NOT_RUNNING
    except (control.ControlError, TimeoutError, OSError) as e:
        view.end()
        print(printable(f"popgate: fetch failed: {e}"), file=err)
        return EXIT_FAILED
    view.end()
    outcomes = result.get("upstreams") or []
    for outcome in outcomes:
        print(summary_text(outcome), file=out if outcome.get("ok") else err)
    return EXIT_OK if result.get("ok") and outcomes else EXIT_FAILED


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch now on the running gateway, with a progress bar."""
    where = state_dir(args)
    if where is None:
        return 1
    return run(where, args.upstream, timeout=args.timeout)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("fetch", help="fetch from the upstreams now (on the running gateway)")
    add_state_dir_options(p)
    p.add_argument("--upstream", "-u", help="only this upstream (default: all)")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds without any progress before giving up"
    )
    p.set_defaults(func=cmd_fetch)
