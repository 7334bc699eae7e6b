"""bench/load.py's report helpers: the latency histogram's buckets and the server CPU
reading (issue 19: where the mix's p99 comes from, and CPU per operation), and the mix's
sequence, which must not depend on the server under test (the throughput row compares
two servers on the same operations)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import time

from bench.load import (
    DEFAULT_MIX,
    HISTOGRAM_BOUNDS_MS,
    LoadReport,
    _operation,
    _Run,
    cpu_seconds,
    histogram,
    process_tree,
    run_queue_seconds,
)


def test_histogram_buckets_are_upper_bounds_with_a_last_open_one() -> None:
    counts = histogram([0.0005, 0.001, 0.0011, 0.0999, 0.1, 0.1001, 1.0, 1.0001, 30.0])
    assert list(counts) == [f"<={b}" for b in HISTOGRAM_BOUNDS_MS] + [">1000"]
    assert counts["<=1"] == 2  # 0.5 ms and exactly 1 ms
    assert counts["<=2"] == 1
    assert counts["<=100"] == 2  # 99.9 and exactly 100 ms
    assert counts["<=200"] == 1
    assert counts["<=1000"] == 1
    assert counts[">1000"] == 2
    assert sum(counts.values()) == 9
    assert sum(histogram([]).values()) == 0


def test_cpu_seconds_counts_a_process_tree_and_ignores_the_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
        before = cpu_seconds([os.getpid()])
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:
            pass
        assert cpu_seconds([os.getpid()]) - before >= 0.2
        assert cpu_seconds([2**22 + 12345]) == 0.0  # no such process
    finally:
        child.kill()
        child.wait()


class _Recorder:
    """Stands in for bench.load.Client: records the commands, reports a mailbox size."""

    def __init__(self, sizes: random.Random | None) -> None:
        self.sizes = sizes
        self.exists = 200
        self.sent: list[bytes] = []

    async def command(self, text: bytes, literal: bytes | None = None) -> list[bytes]:
        self.sent.append(text + (literal or b""))
        if self.sizes is not None:  # another server's timing: other clients' APPENDs seen
            self.exists = self.sizes.randint(1, 5000)
        return []

    async def idle(self, seconds: float) -> None:
        self.sent.append(b"IDLE")


def _sequence(sizes: random.Random | None) -> tuple[list[str], list[bytes]]:
    ops = list(DEFAULT_MIX)
    weights = [DEFAULT_MIX[k] for k in ops]
    rng, pick = random.Random(3), random.Random(-4)
    client = _Recorder(sizes)
    chosen = []

    async def run() -> None:
        for _ in range(400):
            op = rng.choices(ops, weights)[0]
            chosen.append(op)
            await _operation(client, op, rng, pick)  # type: ignore[arg-type]

    asyncio.run(run())
    return chosen, client.sent


def test_the_mix_sends_the_same_operations_whatever_the_mailbox_size() -> None:
    """Message numbers are drawn from their own generator: a server whose timing shows
    a client other sizes (other clients' APPENDs) still gets the same commands, flags,
    searches and APPEND texts in the same order."""
    steady_ops, steady_sent = _sequence(None)
    moving_ops, moving_sent = _sequence(random.Random(5))
    assert steady_ops == moving_ops
    assert {"append", "flag", "fetch_body", "idle"} <= set(steady_ops)
    numbers = re.compile(rb"\d+(:\d+)?")
    assert [numbers.sub(b"N", c) for c in steady_sent] == [
        numbers.sub(b"N", c) for c in moving_sent
    ]
    assert steady_sent != moving_sent  # the message numbers did follow the sizes


def test_the_instant_server_cap_gives_back_each_clients_command_time() -> None:
    report = LoadReport(
        host="127.0.0.1",
        port=1,
        clients=50,
        duration=15.0,
        operations=15_000,
        errors=0,
        throughput=1_000.0,  # 15 s measured
        latency_ms={"mean": 1.0, "p50": 1.0, "p95": 1.0, "p99": 1.0, "max": 1.0},
        per_operation={},
        peak_rss_kib=None,
        error_samples=[],
        command_seconds=15.0,  # 0.3 s per client
    )
    assert round(report.instant_server_throughput, 3) == round(15_000 / 14.7, 3)
    assert report.client_cpu_ms_per_op is None  # no window read


def test_run_queue_seconds_sees_processes_waiting_for_a_cpu() -> None:
    # Twice as many busy processes as CPUs: each spends part of its time runnable but
    # not running, which the schedstat wait field counts.
    spin = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass"
    children = [
        subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2 * (os.cpu_count() or 1))
    ]
    pids = [child.pid for child in children]
    try:
        before = run_queue_seconds(pids)
        time.sleep(0.3)
        assert run_queue_seconds(pids) > before
        assert run_queue_seconds([2**22 + 12345]) == 0.0  # no such process
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_the_steady_window_reads_server_wait_without_a_cpu_reader() -> None:
    readings = iter([1.5, 2.25])
    run = _Run(2, None, lambda: next(readings))
    run.client_ready()
    run.record("noop", 0.001, None)
    run.client_ready()  # the window opens: 1 operation done, 1.5 s waited so far
    for _ in range(3):
        run.record("fetch_body", 0.001, None)
    run.record("idle", 1.0, None)  # not an operation
    run.close_window()
    assert run.window_ops == 3
    assert run.wait_s == 0.75 and run.cpu_s is None
