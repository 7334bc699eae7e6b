"""Load test: N concurrent IMAP clients doing a realistic mix for a bounded time.

Each client logs in, selects INBOX, then loops until the deadline, picking an operation
by weight: re-SELECT, FETCH of headers of a page of messages, FETCH of one whole body,
flag changes, APPEND of a small message, a short IDLE, SEARCH and NOOP. Every command's
latency is recorded; a tagged NO/BAD, a BYE, a malformed response or a dropped
connection counts as an error (the bar is zero). The report gives throughput, latency
percentiles per operation and overall, errors, and the server's peak RSS (``VmHWM`` of
``/proc/PID/status``) when its process id is known.

It speaks plain IMAP4rev1 only (plus IDLE and LITERAL+, which it checks in CAPABILITY),
so the same run can point at Dovecot:

    python -m bench.load --host 127.0.0.1 --port 1143 --account alice:pw --clients 200
    python -m bench.load --spawn --clients 200 --duration 30      # a fresh popgate

``--spawn`` generates users and mail into a temporary state dir, starts ``popgate serve``
as a child process on a free loopback port, runs the load and stops it. From Python:
:func:`run_load` (``host, port, accounts, clients, duration, mix`` → :class:`LoadReport`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_CLIENTS = 200
DEFAULT_DURATION = 30.0
DEFAULT_MIX: dict[str, float] = {
    "select": 5,
    "fetch_headers": 30,
    "fetch_body": 20,
    "flag": 15,
    "append": 5,
    "idle": 5,
    "search": 10,
    "noop": 10,
}
"""Relative weights of the operations (a mail client mostly lists and reads)."""

IDLE_SECONDS = 1.0
"""How long one IDLE lasts before the client sends DONE."""

HEADER_PAGE = 25
"""Messages per header FETCH (a client's list view)."""

COMMAND_TIMEOUT = 60.0
"""A command unanswered for this long counts as an error (a hung server)."""

CONNECT_SPREAD = 2.0
"""Clients start over this many seconds, as after a server restart, not all at once."""

CLIENTS_PER_USER = 20
"""With --spawn: users are created so no user has more connections than this from
loopback (well under popgate's per-user+address limit)."""

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS\r\n$")


HISTOGRAM_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
"""Upper bounds (ms) of the latency histogram's buckets; one more bucket takes the rest."""

EXCLUDED_OPS = ("login", "idle")
"""Not in throughput, the overall percentiles or CPU per operation: a login's time is
mostly its password check, an IDLE lasts as long as the client chooses."""


class ProtocolError(Exception):
    """The server answered something other than OK, or not at all."""


@dataclass
class OpStats:
    count: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)


def histogram(latencies: Sequence[float]) -> dict[str, int]:
    """Counts of ``latencies`` (seconds) per bucket of :data:`HISTOGRAM_BOUNDS_MS`:
    ``"<=1"`` ... ``"<=1000"``, then ``">1000"`` (where a tail comes from: a few slow
    commands of one kind, or every kind waiting behind something)."""
    labels = [f"<={b}" for b in HISTOGRAM_BOUNDS_MS] + [f">{HISTOGRAM_BOUNDS_MS[-1]}"]
    counts = dict.fromkeys(labels, 0)
    for seconds in latencies:
        ms = seconds * 1000
        for bound, label in zip(HISTOGRAM_BOUNDS_MS, labels, strict=False):
            if ms <= bound:
                counts[label] += 1
                break
        else:
            counts[labels[-1]] += 1
    return counts


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time (user + system, with that of reaped children) of these processes, from
    ``/proc/PID/stat`` (Linux); a process gone meanwhile counts nothing. Reaped children
    count in their parent: a Dovecot ``imap`` process that ended is in its master's."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / _CLOCK_TICKS


def run_queue_seconds(pids: Iterable[int]) -> float:
    """Seconds the threads of these processes spent runnable but waiting for a CPU (the
    second field of Linux's ``/proc/PID/task/TID/schedstat``); a process or thread gone
    meanwhile counts nothing. Under the 50-client mix in PostgreSQL mode this, not CPU
    time, is what the p99 tracked (bench/README.md, "PostgreSQL mix tail, session 7"):
    every command crosses the reactor, a store thread and a database backend, each a
    wake-up that may wait for one of the two cores."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
            except OSError:
                continue
            total += int(fields[1])
    return total / 1e9


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live children (popgate's password key holder)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class LoadReport:
    host: str
    port: int
    clients: int
    duration: float
    operations: int
    """Commands completed, login and IDLE excluded (IDLEs are in ``per_operation``)."""
    errors: int
    throughput: float
    """Completed operations per second (over the measured time)."""
    latency_ms: dict[str, float]
    """p50/p95/p99/max over every command except login and IDLE (whose duration is the
    client's choice), in milliseconds."""
    per_operation: dict[str, dict[str, float]]
    peak_rss_kib: int | None
    """VmHWM of the server process, if its pid was given."""
    error_samples: list[str]
    histogram_ms: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per operation: how many commands took up to 1, 2, 5 ... 1000 ms, and longer."""
    server_cpu_s: float | None = None
    """CPU seconds the server used in the steady window (every client logged in, up to
    the deadline), when a way to read it was given."""
    window_ops: int = 0
    """Operations (login and IDLE excluded) completed in that window."""
    server_wait_s: float | None = None
    """Seconds the server's threads waited for a CPU in the steady window
    (:func:`run_queue_seconds`), when a way to read it was given."""
    command_seconds: float = 0.0
    """The time every client spent waiting for its commands' replies, summed (login and
    IDLE excluded): the only part of a client's time a faster server can give back."""
    client_cpu_s: float | None = None
    """CPU seconds the load client itself (this process, every client's coroutine) used
    in the same window: what a server sends (lines, literals, segments) costs the client,
    and the client shares the machine's cores with the server under test."""

    @property
    def instant_server_throughput(self) -> float:
        """The throughput a server answering every command at once would have reached
        with the same clients: each client's share of :attr:`command_seconds` given back
        to it at this run's rate. With the default mix every client spends ~95% of its
        time in IDLE, so this cap is only a few percent above what any server gets."""
        measured = self.operations / self.throughput if self.throughput else 0.0
        left = measured - self.command_seconds / self.clients
        return self.operations / left if left > 0 else 0.0

    def _per_op(self, seconds: float | None) -> float | None:
        """Milliseconds per operation of the steady window (None: not read)."""
        if seconds is None or not self.window_ops:
            return None
        return seconds * 1000 / self.window_ops

    @property
    def client_cpu_ms_per_op(self) -> float | None:
        """The load client's CPU per operation in the steady window."""
        return self._per_op(self.client_cpu_s)

    @property
    def server_cpu_ms_per_op(self) -> float | None:
        """Server CPU per operation in the steady window: a figure a busy machine changes
        far less than wall-clock ones (the server's work, not its wait for a CPU)."""
        return self._per_op(self.server_cpu_s)

    @property
    def server_wait_ms_per_op(self) -> float | None:
        """The server's run-queue wait per operation in the steady window: how long its
        threads were ready to run with no CPU free, which lengthens the tail."""
        return self._per_op(self.server_wait_s)

    def summary(self) -> str:
        lines = [
            f"{self.clients} clients, {self.duration:.1f} s against {self.host}:{self.port}",
            f"operations {self.operations}  throughput {self.throughput:.1f} ops/s  "
            f"errors {self.errors}",
            "latency ms  " + "  ".join(f"{k} {v:.1f}" for k, v in self.latency_ms.items()),
        ]
        for name, row in sorted(self.per_operation.items()):
            lines.append(
                f"  {name:14} n={int(row['count']):6d} err={int(row['errors'])} "
                f"mean={row['mean']:.2f} p50={row['p50']:.1f} p95={row['p95']:.1f} p99={row['p99']:.1f}"
            )
        if self.histogram_ms:
            labels = next(iter(self.histogram_ms.values())).keys()
            lines.append("latency histogram (commands per bucket, ms)")
            lines.append(f"  {'':14} " + " ".join(f"{label:>6}" for label in labels))
            for name, counts in sorted(self.histogram_ms.items()):
                lines.append(f"  {name:14} " + " ".join(f"{n:6d}" for n in counts.values()))
        per_op = self.server_cpu_ms_per_op
        if per_op is not None:
            lines.append(
                f"server CPU {self.server_cpu_s:.2f} s for {self.window_ops} operations "
                f"(every client logged in to the deadline): {per_op:.3f} ms per operation"
            )
        lines.append(
            f"time in commands {self.command_seconds:.2f} s of the clients' "
            f"{self.clients * self.operations / max(self.throughput, 1e-9):.0f} s: a server "
            f"answering at once would reach {self.instant_server_throughput:.1f} ops/s"
        )
        client = self.client_cpu_ms_per_op
        if client is not None:
            lines.append(f"load client CPU {client:.3f} ms per operation (same window)")
        wait = self.server_wait_ms_per_op
        if wait is not None:
            lines.append(f"server run-queue wait {wait:.3f} ms per operation")
        if self.peak_rss_kib is not None:
            lines.append(f"server peak RSS {self.peak_rss_kib / 1024:.1f} MiB")
        lines.extend(f"  error: {e}" for e in self.error_samples)
        return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def peak_rss_kib(pid: int) -> int | None:
    """The process's high-water resident set size (Linux ``VmHWM``), in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---- one client ----------------------------------------------------------------------


class Client:
    """A minimal IMAP client on asyncio streams: one command at a time, responses read
    whole (literals included)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.counter = 0
        self.exists = 0

    async def read_response_line(self, bye_ok: bool = False) -> bytes:
        line = await self.reader.readuntil(b"\r\n")
        while (m := _LITERAL.search(line)) is not None:
            line += await self.reader.readexactly(int(m.group(1)))
            line += await self.reader.readuntil(b"\r\n")
        if line.startswith(b"* BYE") and not bye_ok:
            raise ProtocolError(line.decode("latin-1").strip())
        if (m := _EXISTS.match(line)) is not None:
            self.exists = int(m.group(1))
        return line

    async def command(self, text: bytes, literal: bytes | None = None) -> list[bytes]:
        self.counter += 1
        tag = b"c%d" % self.counter
        if literal is not None:  # LITERAL+ (RFC 7888): no round trip for the "+"
            self.writer.write(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")
        else:
            self.writer.write(tag + b" " + text + b"\r\n")
        await self.writer.drain()
        lines = []
        while True:
            line = await self.read_response_line(bye_ok=text == b"LOGOUT")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ProtocolError(f"{text[:40]!r} -> {line[:120]!r}")
                return lines
            lines.append(line)

    async def idle(self, seconds: float) -> None:
        self.counter += 1
        tag = b"c%d" % self.counter
        self.writer.write(tag + b" IDLE\r\n")
        await self.writer.drain()
        first = await self.read_response_line()
        if not first.startswith(b"+"):
            raise ProtocolError(f"IDLE -> {first[:120]!r}")
        until = time.monotonic() + seconds
        try:
            while (left := until - time.monotonic()) > 0:
                await asyncio.wait_for(self.read_response_line(), left)
        except TimeoutError:
            pass
        self.writer.write(b"DONE\r\n")
        await self.writer.drain()
        while True:
            line = await self.read_response_line()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise ProtocolError(f"IDLE DONE -> {line[:120]!r}")
                return


def _small_message(rng: random.Random, n: int) -> bytes:
    return (
        f"From: load{n}@example.com\r\nTo: user@example.com\r\nSubject: load test {n}\r\n"
        f"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <load-{n}-{rng.random()}@x>\r\n"
        f"\r\n{'lorem ipsum ' * rng.randint(5, 200)}\r\n"
    ).encode()


async def _operation(client: Client, op: str, rng: random.Random, pick: random.Random) -> None:
    """One command of the mix. ``rng`` draws only from fixed ranges (flag, sign, search,
    the APPEND's text) and ``pick`` draws the message numbers, whose range is the
    mailbox's size as this client last heard it: that size depends on the server's
    timing, so drawing it from ``rng`` would make each server see a different sequence
    of operations after the first APPEND."""
    exists = max(client.exists, 1)
    if op == "select":
        await client.command(b"SELECT INBOX")
    elif op == "fetch_headers":
        first = pick.randint(1, exists)
        last = min(exists, first + HEADER_PAGE - 1)
        await client.command(
            b"FETCH %d:%d (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"
            % (first, last)
        )
    elif op == "fetch_body":
        await client.command(b"FETCH %d BODY.PEEK[]" % pick.randint(1, exists))
    elif op == "flag":
        sign = rng.choice((b"+", b"-"))
        flag = rng.choice((b"\\Seen", b"\\Flagged", b"$Label1"))
        await client.command(b"STORE %d %sFLAGS (%s)" % (pick.randint(1, exists), sign, flag))
    elif op == "append":
        await client.command(b"APPEND INBOX", _small_message(rng, rng.randint(0, 1 << 30)))
    elif op == "idle":
        await client.idle(IDLE_SECONDS)
    elif op == "search":
        await client.command(rng.choice((b"SEARCH UNSEEN", b"SEARCH FLAGGED", b"SEARCH FROM x")))
    else:
        await client.command(b"NOOP")


@dataclass
class _Run:
    """What the clients of one run share: the figures, and the steady window (from the
    moment every client is logged in to the deadline) in which server CPU is read."""

    clients: int
    server_cpu: Callable[[], float] | None
    server_wait: Callable[[], float] | None = None
    stats: dict[str, OpStats] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    ready: int = 0
    completed: int = 0
    window: tuple[int, float, float, float] | None = None
    """(operations completed, server CPU seconds, client CPU seconds, server run-queue
    seconds) when the window opened."""
    cpu_s: float | None = None
    client_cpu_s: float | None = None
    wait_s: float | None = None
    window_ops: int = 0

    def record(self, op: str, seconds: float, error: str | None) -> None:
        row = self.stats.setdefault(op, OpStats())
        row.count += 1
        if error is None:
            row.latencies.append(seconds)
            if op not in EXCLUDED_OPS:
                self.completed += 1
        else:
            row.errors += 1
            if len(self.samples) < 10:
                self.samples.append(error)

    def client_ready(self) -> None:
        """A client is logged in (or gave up): the window opens with the last one."""
        self.ready += 1
        if self.ready == self.clients and (self.server_cpu or self.server_wait):
            self.window = (self.completed, *self._readings())

    def _readings(self) -> tuple[float, float, float]:
        return (
            self.server_cpu() if self.server_cpu is not None else 0.0,
            time.process_time(),
            self.server_wait() if self.server_wait is not None else 0.0,
        )

    def close_window(self) -> None:
        if self.window is not None:
            ops, cpu, client, wait = self.window
            cpu_now, client_now, wait_now = self._readings()
            if self.server_cpu is not None:
                self.cpu_s = cpu_now - cpu
            self.client_cpu_s = client_now - client
            if self.server_wait is not None:
                self.wait_s = wait_now - wait
            self.window_ops = self.completed - ops
            self.window = None


async def _run_client(
    index: int,
    host: str,
    port: int,
    account: tuple[str, str],
    deadline: float,
    ops: list[str],
    weights: list[float],
    run: _Run,
) -> None:
    rng = random.Random(index)
    pick = random.Random(-1 - index)
    await asyncio.sleep(rng.random() * CONNECT_SPREAD)
    stage = "connect"
    started = time.monotonic()
    ready = False
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=1 << 24), COMMAND_TIMEOUT
        )
    except (OSError, TimeoutError) as e:
        run.record("connect", time.monotonic() - started, f"connect: {e!r}")
        run.client_ready()
        return
    client = Client(reader, writer)
    try:
        greeting = await asyncio.wait_for(client.read_response_line(), COMMAND_TIMEOUT)
        if not greeting.startswith(b"* OK"):
            raise ProtocolError(f"greeting {greeting[:80]!r}")
        user, password = account
        stage = "login"
        started = time.monotonic()
        await asyncio.wait_for(
            client.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode())),
            COMMAND_TIMEOUT,
        )
        await asyncio.wait_for(client.command(b"SELECT INBOX"), COMMAND_TIMEOUT)
        run.record("login", time.monotonic() - started, None)
        ready = True
        run.client_ready()
        while time.monotonic() < deadline:
            stage = rng.choices(ops, weights)[0]
            started = time.monotonic()
            await asyncio.wait_for(_operation(client, stage, rng, pick), COMMAND_TIMEOUT)
            run.record(stage, time.monotonic() - started, None)
        stage = "logout"
        await asyncio.wait_for(client.command(b"LOGOUT"), COMMAND_TIMEOUT)
    except (ProtocolError, OSError, TimeoutError, asyncio.IncompleteReadError) as e:
        run.record(stage, time.monotonic() - started, f"{stage}: {e!r}"[:300])
    finally:
        if not ready:
            run.client_ready()
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def _run_all(
    host: str,
    ports: Sequence[int],
    accounts: Sequence[tuple[str, str]],
    clients: int,
    duration: float,
    mix: dict[str, float],
    server_cpu: Callable[[], float] | None,
    server_wait: Callable[[], float] | None = None,
) -> tuple[_Run, float]:
    ops = [k for k, v in mix.items() if v > 0]
    weights = [mix[k] for k in ops]
    run = _Run(clients, server_cpu, server_wait)
    start = time.monotonic()
    deadline = start + CONNECT_SPREAD + duration

    async def window_end() -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        run.close_window()  # before the clients' LOGOUTs

    await asyncio.gather(
        window_end(),
        *(
            _run_client(
                i,
                host,
                ports[i % len(ports)],
                accounts[i % len(accounts)],
                deadline,
                ops,
                weights,
                run,
            )
            for i in range(clients)
        ),
    )
    return run, time.monotonic() - start


def run_load(
    host: str,
    port: int,
    accounts: Sequence[tuple[str, str]],
    clients: int = DEFAULT_CLIENTS,
    duration: float = DEFAULT_DURATION,
    mix: dict[str, float] | None = None,
    *,
    server_pid: int | None = None,
    ports: Sequence[int] = (),
    server_cpu: Callable[[], float] | None = None,
    server_wait: Callable[[], float] | None = None,
) -> LoadReport:
    """Run the load and report; ``server_pid`` adds the server's peak RSS. With ``ports``
    (several popgate nodes) client ``i`` connects to ``ports[i % len(ports)]``.
    ``server_cpu()`` (cumulative CPU seconds of the server's processes, e.g.
    ``lambda: cpu_seconds(process_tree(pid))``) adds the server's CPU per operation,
    ``server_wait()`` (e.g. ``lambda: run_queue_seconds(process_tree(pid))``) its
    run-queue wait per operation."""
    if not accounts:
        raise ValueError("need at least one account")
    run, elapsed = asyncio.run(
        _run_all(
            host,
            list(ports) or [port],
            list(accounts),
            clients,
            duration,
            mix or DEFAULT_MIX,
            server_cpu,
            server_wait,
        )
    )
    stats = run.stats
    every = [x for row in stats.values() for x in row.latencies]
    work = [x for op, row in stats.items() if op not in EXCLUDED_OPS for x in row.latencies]
    measured = max(elapsed - CONNECT_SPREAD, 1e-9)

    def pct(values: Sequence[float]) -> dict[str, float]:
        return {
            "mean": (sum(values) / len(values) if values else 0.0) * 1000,
            "p50": percentile(values, 50) * 1000,
            "p95": percentile(values, 95) * 1000,
            "p99": percentile(values, 99) * 1000,
            "max": (max(values) if values else 0.0) * 1000,
        }

    return LoadReport(
        host=host,
        port=port,
        clients=clients,
        duration=duration,
        operations=len(work),
        errors=sum(row.errors for row in stats.values()),
        throughput=len(work) / measured,
        latency_ms=pct(work or every),
        per_operation={
            op: {"count": row.count, "errors": row.errors, **pct(row.latencies)}
            for op, row in stats.items()
        },
        peak_rss_kib=peak_rss_kib(server_pid) if server_pid else None,
        error_samples=run.samples,
        histogram_ms={op: histogram(row.latencies) for op, row in stats.items()},
        server_cpu_s=run.cpu_s,
        command_seconds=sum(work),
        client_cpu_s=run.client_cpu_s,
        window_ops=run.window_ops,
        server_wait_s=run.wait_s,
    )


# ---- a popgate to load ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SpawnedGateway:
    """``popgate serve`` in a child process over generated users and mail."""

    def __init__(self, workdir: Path, users: int, messages: int, seed: int = 1) -> None:
        from gateway.security.passwords import hash_password
        from gateway.store.sqlite import SQLiteStore
        from gateway.testing import samplemail

        self.workdir = workdir
        self.port = _free_port()
        self.accounts = [(f"user{i}", f"load-password-{i}") for i in range(users)]
        state = workdir / "state"
        state.mkdir(mode=0o700)
        store = SQLiteStore(state / "popgate.sqlite3")
        mail = samplemail.generate(messages, seed, size_profile="realistic")
        for name, _ in self.accounts:
            store.ensure_user(name)
            inbox = store.get_mailbox(name, "INBOX")
            for raw in mail:
                store.append(inbox.id, raw)
        store.close()
        lines = [
            "[server]",
            f'state_dir = "{state}"',
            f'imap = ["tcp:{self.port}:interface=127.0.0.1"]',
            'log_level = "warning"',
            'log_format = "json"',
        ]
        for name, password in self.accounts:
            lines += [f"[users.{name}]", f'password = "{hash_password(password)}"']
        self.config = workdir / "popgate.toml"
        self.config.write_text("\n".join(lines) + "\n")
        os.chmod(self.config, 0o600)
        self.log = workdir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"popgate exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("popgate did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int)
    parser.add_argument("--account", action="append", default=[], help="USER:PASSWORD")
    parser.add_argument(
        "--server-pid", type=int, help="read this process's peak RSS and CPU (and its children's)"
    )
    parser.add_argument("--spawn", action="store_true", help="start a popgate with test data")
    parser.add_argument("--messages", type=int, default=500, help="per user, with --spawn")
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION)
    parser.add_argument("--mix", help='JSON weights, e.g. \'{"fetch_body": 50, "idle": 50}\'')
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    mix = json.loads(args.mix) if args.mix else None
    if args.spawn:
        with tempfile.TemporaryDirectory(prefix="popgate-load-") as tmp:
            users = max(1, -(-args.clients // CLIENTS_PER_USER))
            gateway = SpawnedGateway(Path(tmp), users, args.messages)
            gateway.start()
            try:
                assert gateway.process is not None
                pid = gateway.process.pid
                report = run_load(
                    "127.0.0.1",
                    gateway.port,
                    gateway.accounts,
                    args.clients,
                    args.duration,
                    mix,
                    server_pid=pid,
                    server_cpu=lambda: cpu_seconds(process_tree(pid)),
                    server_wait=lambda: run_queue_seconds(process_tree(pid)),
                )
            finally:
                gateway.stop()
    else:
        if args.port is None or not args.account:
            parser.error("give --port and --account USER:PASSWORD (or --spawn)")
        accounts = [tuple(a.split(":", 1)) for a in args.account]
        report = run_load(
            args.host,
            args.port,
            accounts,  # type: ignore[arg-type]
            args.clients,
            args.duration,
            mix,
            server_pid=args.server_pid,
            server_cpu=(
                (lambda: cpu_seconds(process_tree(args.server_pid))) if args.server_pid else None
            ),
            server_wait=(
                (lambda: run_queue_seconds(process_tree(args.server_pid)))
                if args.server_pid
                else None
            ),
        )
    print(json.dumps(asdict(report), indent=2) if args.json else report.summary())
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
