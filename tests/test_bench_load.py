"""bench/load.py's report helpers: the latency histogram's buckets and the server CPU
reading (issue 19: where the mix's p99 comes from, and CPU per operation)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.load import HISTOGRAM_BOUNDS_MS, cpu_seconds, histogram, process_tree


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
