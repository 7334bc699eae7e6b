"""The first-import scenario (issue 19): one popgate fetch pass over a 100,000-message maildrop.

A new user's first pass imports everything the upstream holds at once, so whatever grows
with the maildrop (the UIDL and LIST answers, the ledger's known UIDLs, per-message
statements that scan, the store's indexes) shows here and not in the 2,000-message ingest
figure. Two figures, both from the ingest worker (``python -m bench.worker ingest``: one
``fetch_once`` pass into a fresh SQLite store in a fresh process, durable batched commits):

* peak RSS (``VmHWM``) of the fetching process during the big import (target <= 200 MiB);
* its rate in messages per second against the rate of a 2,000-message import of the same
  kind of messages from the same Dovecot in the same run (target >= 0.8).

The messages are demo-profile ones (a few KB each, cycled from a 2,000-message corpus, as
the memory scenario does), put straight into Dovecot's Maildir: the corpus written once by
the harness, the repeats hard links (:func:`_fill_maildir`), so the setup of 100,000
takes seconds; both maildrops get one untimed POP3 session
(UIDL and LIST) first, so Dovecot's own first scan of the Maildir is not in the figure.
"""

from __future__ import annotations

import os
import poplib
import shutil
import time

from bench.popgate import fetch_import
from bench.report import Target
from bench.scenarios import Bench
from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot

BIG_USER = ("importer", "importer-bench-pw")
"""The Dovecot POP3 account holding the big maildrop."""

SMALL_USER = ("importer2k", "importer2k-bench-pw")
"""The Dovecot POP3 account holding the first 2,000 of the same messages."""

SMALL_COUNT = 2_000
"""Messages in the reference import the big one's rate is compared with."""

IMPORT_TIMEOUT = 3_600.0
"""Upper bound in seconds on one worker run (100,000 messages on a loaded 2-core box)."""


def _warm(host: str, port: int, user: str, password: str) -> int:
    """One untimed session: Dovecot indexes the new Maildir at its first login and works
    out every message's size for its first LIST; return the message count."""
    pop = poplib.POP3(host, port, timeout=IMPORT_TIMEOUT)
    try:
        pop.user(user)
        pop.pass_(password)
        count = len(pop.uidl()[1])
        pop.list()
        return count
    finally:
        pop.quit()


def _fill_maildir(dovecot: Dovecot, user: str, corpus: list[bytes], count: int) -> None:
    """``count`` messages cycled from ``corpus`` into the user's Maildir: each distinct
    message delivered once by the harness, the repeats hard links to those files under
    names of their own (a Maildir message is a file Dovecot never rewrites), so 100,000
    take seconds instead of minutes. (Their order on the server matters to neither
    figure.)"""
    originals = dovecot.deliver_many(user, corpus[: min(count, len(corpus))])
    new = dovecot.maildir(user) / "new"
    stamp = int(time.time())
    for i in range(len(originals), count):
        # Maildir names: "seconds.unique.host", unique by the L<i> part.
        os.link(new / originals[i % len(originals)], new / f"{stamp + i}.L{i}.popgate-bench")


def first_import(bench: Bench) -> None:
    """Import ``sizes.import_messages`` messages in one pass: peak RSS and rate against a
    2,000-message import of the same messages (median of ``sizes.repeats`` small runs)."""
    sizes, dovecot = bench.sizes, bench.dovecot
    count = sizes.import_messages
    small_count = min(SMALL_COUNT, count)
    corpus = samplemail.generate(sizes.memory_corpus, bench.seed + 13)

    started = time.perf_counter()
    for name, password in (BIG_USER, SMALL_USER):
        dovecot.add_user(name, password)
    _fill_maildir(dovecot, BIG_USER[0], corpus, count)
    _fill_maildir(dovecot, SMALL_USER[0], corpus, small_count)
    host, port = dovecot.host, dovecot.pop3_port
    for (name, password), expected in ((BIG_USER, count), (SMALL_USER, small_count)):
        listed = _warm(host, port, name, password)
        if listed != expected:
            raise RuntimeError(f"Dovecot lists {listed} messages for {name}, not {expected}")
    bench.log(
        f"import: {count} + {small_count} messages in Maildir in "
        f"{time.perf_counter() - started:.0f}s"
    )

    def run(user: tuple[str, str], n: int, label: str) -> tuple[float, int]:
        work = bench.work_dir(label)
        try:
            seconds, report = fetch_import(
                work,
                host=host,
                port=port,
                user=user[0],
                password=user[1],
                timeout=IMPORT_TIMEOUT,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if report.get("fetched") != n:
            raise RuntimeError(f"popgate fetched {report} of {n}")
        bench.log(
            f"import {label}: {n} messages in {seconds:.1f}s ({n / seconds:.0f} msgs/s), "
            f"peak RSS {report['vmhwm'] / 2**20:.1f} MiB"
        )
        return seconds, int(report["vmhwm"])

    small: list[float] = []
    small_rss: list[int] = []
    for repeat in range(sizes.repeats):
        seconds, rss = run(SMALL_USER, small_count, f"import-small-{repeat}")
        small.append(small_count / seconds)
        small_rss.append(rss)
    seconds, peak = run(BIG_USER, count, "import-big")
    rate = count / seconds
    note = (
        f"demo-profile messages cycled from {len(corpus)}, one fetch_once pass into a fresh"
        f" SQLite store, wall clock of the whole process ({seconds:.0f} s); the peer figure is"
        f" a {small_count}-message import of the same messages in the same run (median of"
        f" {len(small)})"
    )
    bench.row(
        f"first import of {count} msgs: rate vs {small_count}-msg import",
        "msgs/s",
        f"{small_count} msgs",
        [rate],
        small,
        Target(0.8, at_least=True),
        note=note,
    )
    bench.row(
        f"first import of {count} msgs: peak RSS",
        "MiB",
        "",
        [peak / 2**20],
        target=Target(200.0, at_least=False, on_ratio=False),
        note="VmHWM of the fetching process; the 2,000-message import peaked at "
        + ", ".join(f"{r / 2**20:.0f}" for r in small_rss)
        + " MiB",
    )
