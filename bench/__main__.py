"""``python -m bench``: prepare the data, start the peers and popgate, print one table.

Usage (from the repository root, as ``make bench`` does)::

    python -m bench                 # everything, 3 repeats, full sizes (< 15 minutes)
    python -m bench --quick         # small sizes, 1 repeat (a minute or two)
    python -m bench --only fetch --only qresync
    python -m bench --json results.json --keep

Everything runs on 127.0.0.1 under one temp dir in /tmp (the unprivileged Dovecot and
getmail6 user must be able to traverse it), removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import peers
from bench.importing import first_import
from bench.pgmode import postgres
from bench.report import as_json, notes, table
from bench.scenarios import SCENARIOS, Bench, Sizes, prepare, warm_up
from gateway.app import logs
from gateway.testing.dovecot import find_dovecot

IMAP_SCENARIOS = frozenset(
    {"mbsync", "compress", "fetch", "sort", "qresync", "concurrent", "postgres"}
)
"""Scenarios that need the big mailbox loaded into both IMAP servers."""


ALL_SCENARIOS = {**SCENARIOS, "import": first_import, "postgres": postgres}
"""Every scenario in run order; the 100,000-message first import (bench/importing.py)
and PostgreSQL mode (bench/pgmode.py) last."""

ON_REQUEST = frozenset({"push"})
"""Scenarios run only when named with ``--only``: ``push`` is a part of ``storm``."""


def machine() -> str:
    """nproc and the CPU model, as the README records them."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}){memory}, Python {platform.python_version()}"


PEERS_BY_SCENARIO = {
    "ingest": (("getmail", "getmail6"), ("fetchmail", "fetchmail")),
    "mbsync": (("mbsync", "isync"),),
    "compress": (("mbsync", "isync"),),
    "postgres": (("mbsync", "isync"),),
}
"""The peer programs a scenario runs besides Dovecot (the others compare popgate with
Dovecot, or with itself)."""


def check_peers(chosen: list[str]) -> None:
    """Fail at once, naming the packages, rather than after minutes of preparation."""
    find_dovecot()
    for name in chosen:
        for binary, package in PEERS_BY_SCENARIO.get(name, ()):
            peers.require(binary, package)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(ALL_SCENARIOS),
        help="run only this scenario (repeatable)",
    )
    parser.add_argument("--repeats", type=int, help="repeats per figure (default 3, quick 1)")
    parser.add_argument("--seed", type=int, default=9, help="sample-mail seed")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    parser.add_argument(
        "--fulltext-size",
        type=int,
        help="fulltext mailbox size (default: 100,000 capped at 20,000 for Xapian's sake;"
        " above the cap Dovecot + Xapian is left out)",
    )
    parser.add_argument(
        "--no-xapian", action="store_true", help="fulltext: leave out Dovecot + Xapian"
    )
    parser.add_argument(
        "--import-size",
        type=int,
        help="import: messages in the first-import maildrop (default 100,000, quick 10,000)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.repeats:
        sizes = replace(sizes, repeats=args.repeats)
    if args.fulltext_size:
        sizes = replace(sizes, fulltext_messages=args.fulltext_size)
    if args.no_xapian:
        sizes = replace(sizes, fulltext_xapian=False)
    if args.import_size:
        sizes = replace(sizes, import_messages=args.import_size)
    chosen = [
        name
        for name in ALL_SCENARIOS
        if (name in args.only if args.only else name not in ON_REQUEST)
    ]
    check_peers(chosen)
    logs.configure("warning", "console", stream=sys.stderr)  # the store logs each open
    began = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f}s] {text}", flush=True)

    root = Path(tempfile.mkdtemp(prefix="popgate-bench-", dir="/tmp"))
    os.chmod(root, 0o755)  # traversable by the unprivileged Dovecot/getmail6 user
    bench: Bench | None = None
    failures: list[str] = []
    try:
        need_imap = bool(IMAP_SCENARIOS.intersection(chosen))
        bench = prepare(root, sizes, args.seed, log, imap=need_imap)
        if need_imap:
            warm_up(bench)
        for name in chosen:
            log(f"{name} ...")
            try:
                ALL_SCENARIOS[name](bench)
            except Exception as error:  # one broken figure must not hide the others
                failures.append(f"{name}: {type(error).__name__}: {error}")
                log(f"{name} FAILED: {error}")
    finally:
        if bench is not None:
            bench.popgate.stop()
            bench.dovecot.stop()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows = bench.rows if bench is not None else []
    elapsed = time.perf_counter() - began
    print()
    print(f"popgate benchmark, {dt.date.today().isoformat()}, {machine()}")
    print(
        f"sizes: mailbox {sizes.mailbox}, ingest {sizes.ingest}, memory {sizes.memory_messages} "
        f"msgs / {sizes.idle_connections} IDLE, {sizes.load_clients} load clients; "
        f"median of {sizes.repeats} repeat(s); ratio = popgate / peer; total {elapsed:.0f}s"
    )
    print()
    print(table(rows))
    print()
    print(notes(rows))
    for failure in failures:
        print(f"FAILED {failure}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": as_json(rows)}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
