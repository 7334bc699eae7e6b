"""The mbsync scenario: a first full sync from popgate, from Dovecot and from a replay that
costs nothing (the floor), so each run shows how far any server could move the row.

mbsync (isync 1.4) sends ``UID FETCH 1:N (UID FLAGS)``, then all N ``UID FETCH n
(BODY.PEEK[])`` at once, and stores each answer in its Maildir with an fsync of the
message file and an fdatasync of its ``.uidvalidity`` (the next UID) before the next one.
The replay (``bench/replay.py``) is recorded through a proxy from one untimed sync
against popgate and answers the same commands from disk with ``sendfile``: mbsync's time
against it is mbsync's own. Per sync: the wall clock, the server's CPU seconds and
mbsync's own (user + system, from ``os.times()`` of the reaped child), figures the
machine's load moves far less than the wall clock.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import TYPE_CHECKING

from bench import peers
from bench.load import cpu_seconds, process_tree
from bench.replay import Recorder, ReplayServer
from bench.report import Target, median
from gateway.testing.dovecot_process import group_members

if TYPE_CHECKING:
    from bench.scenarios import Bench

MB = 1_000_000

FLOOR = "replay"
"""The floor's name in logs, work directories and results."""


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's reaped children so far: mbsync's
    own, read around its run (``run_timed`` reaps it)."""
    times = os.times()
    return times.children_user + times.children_system


def full_sync(bench: Bench, *, mailbox_user: tuple[str, str]) -> None:
    """First full sync of the big mailbox by mbsync into an empty Maildir, from popgate,
    Dovecot and the zero-cost replay, repeats interleaved."""
    expected = bench.sizes.mailbox
    user, password = mailbox_user

    def sync(name: str, port: int, repeat: int) -> float:
        work = bench.work_dir(f"mbsync-{name}-{repeat}")
        # Without COMPRESS, as Dovecot here (no imap_zlib): the same work on both sides.
        seconds = peers.mbsync_full_sync(work, "127.0.0.1", port, user, password, compress=False)
        got = peers.mbsync_count(work)
        if got != expected:
            raise RuntimeError(f"mbsync from {name} got {got} of {expected} messages")
        shutil.rmtree(work)
        return seconds

    transcript_dir = bench.root / "replay-transcript"
    with Recorder(("127.0.0.1", bench.popgate.port), transcript_dir) as recorder:
        sync("record", recorder.port, 0)
    transcript = recorder.transcript()
    bench.log(f"mbsync: recorded {len(transcript.exchanges)} commands from popgate for the replay")

    names = ("popgate", "dovecot", FLOOR)
    results: dict[str, list[float]] = {name: [] for name in names}
    # The servers' CPU seconds per sync: a figure the machine's load does not move much
    # (mbsync sends one UID FETCH per message, so this is per-command cost; issue 19).
    cpu: dict[str, list[float]] = {name: [] for name in names}
    client_cpu: dict[str, list[float]] = {name: [] for name in names}
    with ReplayServer(transcript_dir, bench.root / "replay.log") as replay:
        ports = {
            "popgate": bench.popgate.port,
            "dovecot": bench.dovecot.imap_port,
            FLOOR: replay.port,
        }
        cpu_readers: dict[str, Callable[[], float]] = {
            "popgate": lambda: cpu_seconds(process_tree(bench.popgate.pid)),
            "dovecot": lambda: cpu_seconds(
                group_members(bench.dovecot.master_pid or 0, zombies=True)
            ),
            FLOOR: lambda: cpu_seconds([replay.pid]),
        }
        for repeat in range(bench.sizes.repeats):
            for name in names:
                before, client_before = cpu_readers[name](), _children_cpu()
                results[name].append(sync(name, ports[name], repeat))
                cpu[name].append(cpu_readers[name]() - before)
                client_cpu[name].append(_children_cpu() - client_before)
            bench.log(
                f"mbsync repeat {repeat + 1}: "
                + ", ".join(
                    f"{name} {results[name][-1]:.1f}s (server CPU {cpu[name][-1]:.2f}s,"
                    f" mbsync CPU {client_cpu[name][-1]:.2f}s)"
                    for name in names
                )
            )
    shutil.rmtree(transcript_dir, ignore_errors=True)

    def rounded(values: list[float]) -> list[float]:
        return [round(v, 2) for v in values]

    floor, dovecot = median(results[FLOOR]), median(results["dovecot"])
    bench.row(
        f"mbsync first full sync, {expected} msgs",
        "s",
        "Dovecot",
        results["popgate"],
        results["dovecot"],
        Target(1.5, at_least=False),
        note=f"{bench.mailbox_bytes / MB:.0f} MB mailbox; mbsync -q into an empty Maildir;"
        f" server CPU s popgate {rounded(cpu['popgate'])}, Dovecot {rounded(cpu['dovecot'])};"
        f" mbsync's own CPU s against popgate {rounded(client_cpu['popgate'])}, against"
        f" Dovecot {rounded(client_cpu['dovecot'])}",
        digits=2,
    )
    bench.row(
        "mbsync against a zero-cost replay (floor)",
        "s",
        "replay (floor)",
        results["popgate"],
        results[FLOOR],
        None,
        note=f"ratio = popgate / floor. The floor answers mbsync's commands from a transcript"
        f" of popgate's own answers (bench/replay.py, sendfile): replay CPU s"
        f" {rounded(cpu[FLOOR])}, mbsync's own CPU s {rounded(client_cpu[FLOOR])}."
        f" floor / Dovecot = {(floor or 0) / (dovecot or 1):.2f}: the best ratio any server could show"
        f" against Dovecot in this run",
        digits=2,
    )
