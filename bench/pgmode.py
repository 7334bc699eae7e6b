"""The PostgreSQL-mode rows (``--only postgres``, issue 13; registered in
:mod:`bench.__main__`, after the scenarios it builds on): popgate on a private PostgreSQL
next to popgate on SQLite and Dovecot, same data, same run.

The big mailbox and the load accounts are appended to a PostgreSQL store (through
:meth:`PostgresStore.append_many`, the IMAP MULTIAPPEND path, analysis included) with
the same bytes, order and INTERNALDATEs as the SQLite store and Dovecot's Maildir, so
UIDs match everywhere. Three ``python -m bench.worker serve`` nodes run on that one
database (``[store] backend = "postgresql"``, ``[cluster] node``): node 1 alone serves
the one-node figures; the three-node load spreads its clients over them round-robin.
The database is durable (fsync and synchronous commit on), as SQLite is.

Every row is PostgreSQL mode / SQLite mode (target: PostgreSQL at least half as fast,
i.e. ratio >= 0.5 for rates, <= 2 for times); Dovecot's figure of the same run is in
the note. Repeats are interleaved (SQLite, PostgreSQL, three nodes, Dovecot) so that a
noisy minute hurts all alike.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import peers
from bench.imapwire import IMAPConnection
from bench.load import run_load, run_queue_seconds
from bench.popgate import GatewayServer, date_of, fetch_import
from bench.report import Target, median
from bench.scenarios import FETCH_ITEMS, MAILBOX_USER, POP_USER, load_accounts
from gateway.store.interfaces import NewMessage
from gateway.testing import samplemail
from gateway.testing.postgres import Postgres

NODES = 3
"""popgate nodes on the one database for the several-nodes figure."""

LOAD_BATCH = 50
"""Messages per MULTIAPPEND transaction while loading the PostgreSQL store."""

FASTER = Target(0.5, at_least=True)
"""A rate in PostgreSQL mode is at least half SQLite mode's."""

SLOWER = Target(2.0, at_least=False)
"""A time in PostgreSQL mode is at most twice SQLite mode's (the same target, as a time)."""


def _pg_lines(pg: Postgres, password_file: Path, node: str) -> list[str]:
    """The ``[store]`` and ``[cluster]`` sections an operator writes for one node."""
    return [
        "",
        "[store]",
        'backend = "postgresql"',
        f"dsn = {json.dumps(pg.dsn)}",
        f"password_file = {json.dumps(str(password_file))}",
        "",
        "[cluster]",
        f"node = {json.dumps(node)}",
    ]


def _load_postgres(bench: Any, pg: Postgres, users: dict[str, str]) -> None:
    """The same mail as :func:`bench.scenarios.prepare` loaded into SQLite and Dovecot."""
    from gateway.store.postgres import PostgresStore

    sizes, seed = bench.sizes, bench.seed
    store = PostgresStore(pg.dsn, password=pg.password, pool_size=2)
    try:
        for name in users:
            store.ensure_user(name)

        def fill(user: str, messages: Iterator[bytes] | list[bytes], dated: bool) -> None:
            box = store.get_mailbox(user, "INBOX")
            batch: list[NewMessage] = []
            for raw in messages:
                batch.append(NewMessage(raw, (), date_of(raw) if dated else None))
                if len(batch) >= LOAD_BATCH:
                    store.append_many(box.id, batch)
                    batch = []
            if batch:
                store.append_many(box.id, batch)

        fill(
            MAILBOX_USER[0],
            samplemail.iter_messages(sizes.mailbox, seed, size_profile="realistic"),
            True,
        )
        for index, (name, _password) in enumerate(load_accounts(sizes)):
            fill(name, samplemail.generate(sizes.load_messages, seed + 100 + index), False)
    finally:
        store.close()


def postgres(bench: Any) -> None:
    """PostgreSQL mode next to SQLite mode and Dovecot: ingest, FETCH 1:*, mbsync, the
    50-client mix on one node and on three, reactor lag under that load."""
    sizes = bench.sizes
    users = dict([MAILBOX_USER, *load_accounts(sizes)])
    with ExitStack() as stack:
        pg = stack.enter_context(Postgres(durable=True, base_dir=bench.root / "postgresql"))
        password_file = pg.write_password_file(bench.root / "pg-password")
        started = time.perf_counter()
        _load_postgres(bench, pg, users)
        bench.log(f"postgres: loaded the store in {time.perf_counter() - started:.0f}s")
        nodes = []
        for number in range(1, NODES + 1):
            state = bench.root / f"pg-node-{number}-state"
            state.mkdir(mode=0o700)
            node = GatewayServer(
                bench.root / f"pg-node-{number}",
                users,
                state_dir=state,
                extra_config=_pg_lines(pg, password_file, f"bench-{number}"),
            )
            nodes.append(stack.enter_context(node))
        with IMAPConnection("127.0.0.1", nodes[0].port) as imap:  # warm up, as warm_up()
            imap.login(*MAILBOX_USER)
            imap.command(b"SELECT INBOX")
            imap.command(FETCH_ITEMS)
            imap.logout()
        _ingest(bench, pg, password_file, POP_USER)
        _fetch_and_mbsync(bench, nodes[0], MAILBOX_USER, FETCH_ITEMS)
        _load(bench, nodes, list(load_accounts(sizes)))


def _ingest(bench: Any, pg: Postgres, password_file: Path, pop_user: tuple[str, str]) -> None:
    sizes, dovecot = bench.sizes, bench.dovecot
    count = sizes.ingest
    times: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    for repeat in range(sizes.repeats):
        for mode in times:
            work = bench.work_dir(f"pg-ingest-{mode}-{repeat}")
            target = None
            if mode == "postgresql":
                database = f"ingest{repeat}"
                pg.psql(f"CREATE DATABASE {database} OWNER {pg.role};")
                target = (pg.dsn.rsplit("/", 1)[0] + "/" + database, password_file)
            try:
                seconds, report = fetch_import(
                    work,
                    host=dovecot.host,
                    port=dovecot.pop3_port,
                    user=pop_user[0],
                    password=pop_user[1],
                    postgresql=target,
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if report.get("fetched") != count:
                raise RuntimeError(f"popgate ({mode}) fetched {report} of {count}")
            times[mode].append(count / seconds)
        bench.log(
            f"postgres ingest repeat {repeat + 1}: SQLite {times['sqlite'][-1]:.0f} msgs/s, "
            f"PostgreSQL {times['postgresql'][-1]:.0f} msgs/s"
        )
    bench.row(
        f"PG: ingest {count} msgs",
        "msgs/s",
        "SQLite mode",
        times["postgresql"],
        times["sqlite"],
        FASTER,
        note="one fetch_once pass into an empty store in a fresh process; PostgreSQL: its"
        " calls on the store's threads (ThreadRunner), one transaction per batch (as SQLite"
        " mode: up to 200 messages or 16 MB), one statement per message, the batch pipelined",
    )


def _fetch_and_mbsync(
    bench: Any, node: GatewayServer, user: tuple[str, str], fetch_items: bytes
) -> None:
    expected = bench.sizes.mailbox
    servers = {
        "sqlite": bench.popgate.port,
        "postgresql": node.port,
        "dovecot": bench.dovecot.imap_port,
    }
    fetch_ms: dict[str, list[float]] = {name: [] for name in servers}
    sync_s: dict[str, list[float]] = {name: [] for name in servers}
    for repeat in range(bench.sizes.repeats):
        for name, port in servers.items():
            with IMAPConnection("127.0.0.1", port) as imap:
                imap.login(*user)
                imap.command(b"SELECT INBOX")
                for _inner in range(3):
                    reply = imap.command(fetch_items)
                    if reply.untagged < expected:
                        raise RuntimeError(f"{name}: FETCH 1:* gave {reply.untagged} responses")
                    fetch_ms[name].append(reply.seconds * 1000)
                imap.logout()
            work = bench.work_dir(f"pg-mbsync-{name}-{repeat}")
            seconds = peers.mbsync_full_sync(work, "127.0.0.1", port, *user, compress=False)
            got = peers.mbsync_count(work)
            shutil.rmtree(work)
            if got != expected:
                raise RuntimeError(f"mbsync from {name} got {got} of {expected} messages")
            sync_s[name].append(seconds)
        bench.log(
            "postgres fetch/mbsync repeat "
            f"{repeat + 1}: "
            + ", ".join(f"{n} {fetch_ms[n][-1]:.0f} ms / {sync_s[n][-1]:.1f} s" for n in servers)
        )
    bench.row(
        f"PG: FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE BODYSTRUCTURE), {expected} msgs",
        "ms",
        "SQLite mode",
        fetch_ms["postgresql"],
        fetch_ms["sqlite"],
        SLOWER,
        note=_dovecot_note(fetch_ms, "ms"),
        digits=0,
    )
    bench.row(
        f"PG: mbsync first full sync, {expected} msgs",
        "s",
        "SQLite mode",
        sync_s["postgresql"],
        sync_s["sqlite"],
        SLOWER,
        note=_dovecot_note(sync_s, "s"),
        digits=2,
    )


def _dovecot_note(samples: dict[str, list[float]], unit: str) -> str:
    dovecot = median(samples["dovecot"])
    pg = median(samples["postgresql"])
    if not dovecot or pg is None:
        return ""
    return f"Dovecot {dovecot:.2f} {unit} (PostgreSQL mode / Dovecot = {pg / dovecot:.2f})"


def _load(bench: Any, nodes: list[GatewayServer], accounts: list[tuple[str, str]]) -> None:
    """The 50-client mix: SQLite, PostgreSQL on one node, on three nodes, Dovecot."""
    sizes = bench.sizes
    ops: dict[str, list[float]] = {}
    p99: dict[str, list[float]] = {}
    lag: dict[str, list[float]] = {"postgresql": [], "three": []}
    wait: dict[str, list[float]] = {}
    """popgate's run-queue wait per operation (ms; SQLite mode and the nodes): what the
    PostgreSQL-mode p99 tracked (bench/README.md, "PostgreSQL mix tail, session 7")."""
    errors: dict[str, int] = {}
    runs: dict[str, list[GatewayServer] | None] = {
        "sqlite": None,
        "postgresql": nodes[:1],
        "three": nodes,
        "dovecot": None,
    }
    for repeat in range(sizes.repeats):
        for name, serving in runs.items():
            if serving is not None:
                for node in serving:
                    node.reset_probe()
                ports = [node.port for node in serving]
            elif name == "sqlite":
                ports = [bench.popgate.port]
            else:
                ports = [bench.dovecot.imap_port]
            pids: list[int] = []  # popgate's processes (Dovecot's are not read)
            if serving is not None:
                pids = [node.pid for node in serving]
            elif name == "sqlite":
                pids = [bench.popgate.pid]
            report = run_load(
                "127.0.0.1",
                ports[0],
                accounts,
                sizes.load_clients,
                sizes.load_seconds,
                None,
                ports=ports,
                server_wait=(lambda pids=pids: run_queue_seconds(pids)) if pids else None,
            )
            if report.server_wait_ms_per_op is not None:
                wait.setdefault(name, []).append(report.server_wait_ms_per_op)
            if report.error_samples:
                bench.log(f"postgres load {name}: errors {report.error_samples[:3]}")
            if serving is not None:
                lag[name].append(max(node.read_probe()["p99_ms"] for node in serving))
            ops.setdefault(name, []).append(report.throughput)
            p99.setdefault(name, []).append(report.latency_ms["p99"])
            errors[name] = errors.get(name, 0) + report.errors
        bench.log(
            f"postgres load repeat {repeat + 1}: "
            + ", ".join(f"{n} {ops[n][-1]:.0f} ops/s p99 {p99[n][-1]:.0f} ms" for n in runs)
            + f"; lag p99 one node {lag['postgresql'][-1]:.1f} ms,"
            f" three nodes {lag['three'][-1]:.1f} ms"
        )
    clients = sizes.load_clients
    dovecot_ops = median(ops["dovecot"]) or 0.0
    dovecot_p99 = median(p99["dovecot"]) or 0.0
    errors_note = ", ".join(f"{n} {e}" for n, e in errors.items())
    for name, label in (("postgresql", "one node"), ("three", f"{NODES} nodes")):
        bench.row(
            f"PG {label}: {clients} concurrent clients, mixed: throughput",
            "ops/s",
            "SQLite mode",
            ops[name],
            ops["sqlite"],
            FASTER,
            note=f"Dovecot {dovecot_ops:.0f} ops/s; errors {errors_note}"
            + ("; clients round-robin over the nodes" if name == "three" else ""),
        )
        bench.row(
            f"PG {label}: {clients} concurrent clients, mixed: p99 latency",
            "ms",
            "SQLite mode",
            p99[name],
            p99["sqlite"],
            SLOWER,
            note=f"Dovecot {dovecot_p99:.1f} ms" + _wait_note(wait, name),
        )
        bench.row(
            f"PG {label}: reactor lag p99 under {clients}-client load",
            "ms",
            "",
            lag[name],
            target=Target(50.0, at_least=False, on_ratio=False),
            note="timer lateness every 5 ms inside popgate"
            + ("; the worst of the three nodes per run" if name == "three" else ""),
        )


def _wait_note(wait: dict[str, list[float]], name: str) -> str:
    """popgate's run-queue wait per operation, this mode's and SQLite mode's (medians)."""
    mine, sqlite = median(wait.get(name, [])), median(wait.get("sqlite", []))
    if mine is None or sqlite is None:
        return ""
    return f"; popgate's run-queue wait {mine:.2f} ms per op (SQLite mode {sqlite:.2f})"
