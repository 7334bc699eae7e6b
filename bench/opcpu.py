"""Server CPU per operation, one operation type at a time: popgate trees and Dovecot, interleaved.

``python -m bench.opcpu --trees /path/to/tree-a /path/to/tree-b --dovecot`` loads the
concurrent scenario's accounts (10 users x 200 sample messages, the bench's default seed,
:mod:`bench.scenarios`) into one SQLite store, starts each popgate tree's
``bench.worker serve`` on a copy of it (and, with ``--dovecot``, a private Dovecot with the
same mail), then for each round, operation and server runs :func:`bench.load.run_load`
with a mix of that operation alone (``{"fetch_headers": 1}``; ``mix`` is the scenario's
default mix) and prints the server's CPU per operation in the steady window. CPU seconds move far less with the machine's load
than wall-clock figures (bench/README.md, "Measuring on a shared machine"), so trees can
be compared while others work; read the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import peers
from bench.load import cpu_seconds, process_tree, run_load
from bench.popgate import free_port, load_store, write_config
from gateway.testing import samplemail
from gateway.testing.dovecot_process import group_members

SEED = 9
"""The bench's default sample-mail seed (``python -m bench --seed``)."""

ACCOUNTS = [(f"load{i:02d}", "load-bench-pw") for i in range(1, 11)]
"""The concurrent scenario's load accounts (:func:`bench.scenarios.load_accounts`)."""

MESSAGES = 200
"""Messages per account, as the scenario's ``Sizes.load_messages``."""


def _corpus(index: int, messages: int = MESSAGES) -> list[bytes]:
    return samplemail.generate(messages, SEED + 100 + index)


def _mix(op: str) -> dict[str, float] | None:
    """The mix one ``--ops`` entry names: ``mix`` (the scenario's default), a JSON object
    of weights (``{"select": 1, "flag": 1}``: SELECT with the mailbox changing between
    them, as in the mix, where an unchanged mailbox would be a select-cache hit), or one
    operation alone."""
    if op == "mix":
        return None
    if op.startswith("{"):
        return json.loads(op)
    return {op: 1}


def _start_popgate(root: Path, index: int, tree: Path, base: Path) -> tuple[subprocess.Popen, int]:
    """``bench.worker serve`` of ``tree`` over a copy of the ``base`` store."""
    state = root / f"state{index}"
    state.mkdir(mode=0o700)
    shutil.copy(base, state / "popgate.sqlite3")
    work = root / f"work{index}"
    work.mkdir()
    port = free_port()
    config = write_config(work, dict(ACCOUNTS), port=port, state_dir=state)
    env = dict(os.environ, PYTHONPATH=str(tree))
    with open(work / "popgate.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", "serve", "--config", str(config)]
            + ["--probe", str(work / "probe.json")],
            cwd=tree,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"popgate of {tree} did not listen: see {work / 'popgate.log'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path.cwd()])
    parser.add_argument("--ops", nargs="+", default=["fetch_headers", "fetch_body", "noop"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--dovecot", action="store_true", help="measure Dovecot too")
    parser.add_argument(
        "--messages", type=int, default=MESSAGES, help="messages per account's INBOX"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="popgate-opcpu-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)  # traversable by the unprivileged Dovecot user
        base = root / "base.sqlite3"
        for index, (name, _password) in enumerate(ACCOUNTS):
            load_store(base, name, _corpus(index, args.messages))
        servers: list[tuple[str, int, Callable[[], float]]] = []
        processes: list[subprocess.Popen] = []
        dovecot = None
        try:
            for index, tree in enumerate(args.trees):
                process, port = _start_popgate(root, index, tree.resolve(), base)
                processes.append(process)
                servers.append(
                    (
                        f"popgate {tree.resolve().name}",
                        port,
                        lambda pid=process.pid: cpu_seconds(process_tree(pid)),
                    )
                )
            if args.dovecot:
                dovecot = peers.start_dovecot(root)
                for index, (name, password) in enumerate(ACCOUNTS):
                    dovecot.add_user(name, password)
                    for raw in _corpus(index, args.messages):
                        dovecot.deliver(name, raw)
                dovecot.start()
                master = dovecot.master_pid or 0
                servers.append(
                    (
                        "dovecot",
                        dovecot.imap_port,
                        lambda: cpu_seconds(group_members(master, zombies=True)),
                    )
                )
            figures: dict[tuple[str, str], list[float]] = {}
            for number in range(args.rounds):
                for op in args.ops:
                    for name, port, cpu in servers:
                        before = cpu()
                        report = run_load(
                            "127.0.0.1",
                            port,
                            ACCOUNTS,
                            args.clients,
                            args.duration,
                            _mix(op),
                            server_cpu=cpu,
                        )
                        per_op = report.server_cpu_ms_per_op
                        if not per_op and report.operations:
                            # The window never opened (the last login came after the
                            # deadline: a server slow at this operation keeps its new
                            # clients waiting): the whole run, logins and all, instead.
                            per_op = (cpu() - before) * 1000 / report.operations
                        # Dovecot's CPU reads 0 now and then (its imap processes
                        # between the two reads of the window): left out.
                        if per_op and not report.errors:
                            figures.setdefault((op, name), []).append(per_op)
                        shown = f"{per_op:.3f}" if per_op else "-"
                        print(
                            f"round {number + 1} {op:14} {name:28} CPU/op {shown} ms"
                            f"  {report.throughput:.0f} ops/s  mean"
                            f" {report.latency_ms['mean']:.3f} ms  errors {report.errors}"
                            f"  load {os.getloadavg()[0]:.1f}",
                            flush=True,
                        )
            print("medians (ms of server CPU per operation):")
            for (op, name), values in sorted(figures.items()):
                values.sort()
                listed = " ".join(f"{v:.3f}" for v in values)
                print(f"  {op:14} {name:28} {values[len(values) // 2]:.3f}  [{listed}]")
        finally:
            for process in processes:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
            if dovecot is not None:
                dovecot.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
