"""The SORT scenario: RFC 5256 SORT of the big mailbox, popgate vs Dovecot imapd (issue 17).

``UID SORT (key) UTF-8 ALL`` for ARRIVAL, DATE, SUBJECT and FROM over the 10,000-message
mailbox both servers hold in the same order (same UIDs), timed client-side on one
logged-in connection per server, repeats interleaved. Each key is sorted once untimed
first: Dovecot keeps sort keys in its index cache after the first request, popgate
computed them at ingest, so the figures are the steady state a returning webmail client
meets. A second set of rows times the same SORT just after a flag change (``UID STORE 1
+FLAGS.SILENT (\\Flagged)``, untimed), when neither server can reuse its last answer. Both
answers are compared; a difference is reported in the row's note.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.imapwire import IMAPConnection
from bench.report import Target

if TYPE_CHECKING:
    from bench.scenarios import Bench

SORT_KEYS = ("ARRIVAL", "DATE", "SUBJECT", "FROM")
"""The sort keys the issue's target names."""

INNER_REPEATS = 3
"""Each SORT is timed this many times per connection and repeat (they last milliseconds)."""


def _sort(imap: IMAPConnection, key: str) -> tuple[float, list[int]]:
    reply = imap.command(f"UID SORT ({key}) UTF-8 ALL".encode(), keep=True)
    uids = [int(n) for line in reply.lines if line.startswith(b"* SORT") for n in line.split()[2:]]
    return reply.seconds * 1000, uids


def _servers(bench: Bench) -> list[tuple[str, int]]:
    return [("popgate", bench.popgate.port), ("dovecot", bench.dovecot.imap_port)]


def sort_scenario(bench: Bench, mailbox_user: tuple[str, str]) -> None:
    """One row per key: median milliseconds of ``UID SORT (key) UTF-8 ALL``."""
    times = {key: {"popgate": [], "dovecot": []} for key in SORT_KEYS}
    changed = {key: {"popgate": [], "dovecot": []} for key in SORT_KEYS}
    answers: dict[str, dict[str, list[int]]] = {key: {} for key in SORT_KEYS}
    for name, port in _servers(bench):
        with IMAPConnection("127.0.0.1", port) as imap:
            imap.login(*mailbox_user)
            imap.command(b"SELECT INBOX")
            for key in SORT_KEYS:
                answers[key][name] = _sort(imap, key)[1]
            imap.logout()
    for _repeat in range(bench.sizes.repeats):
        for name, port in _servers(bench):
            with IMAPConnection("127.0.0.1", port) as imap:
                imap.login(*mailbox_user)
                imap.command(b"SELECT INBOX")
                for inner in range(INNER_REPEATS):
                    for key in SORT_KEYS:
                        # A flag change first (untimed): the mailbox changed, so neither
                        # server may answer from what it kept for the previous SORT.
                        sign = b"+" if inner % 2 == 0 else b"-"
                        imap.command(b"UID STORE 1 " + sign + b"FLAGS.SILENT (\\Flagged)")
                        millis, uids = _sort(imap, key)
                        changed[key][name].append(millis)
                        millis, uids = _sort(imap, key)
                        if len(uids) != bench.sizes.mailbox:
                            raise RuntimeError(f"{name}: SORT ({key}) gave {len(uids)} UIDs")
                        times[key][name].append(millis)
                imap.logout()
    for key in SORT_KEYS:
        ours, theirs = answers[key]["popgate"], answers[key]["dovecot"]
        differ = sum(a != b for a, b in zip(ours, theirs, strict=True))
        note = "same order as Dovecot" if not differ else f"{differ} positions differ"
        bench.row(
            f"UID SORT ({key}) UTF-8 ALL, {bench.sizes.mailbox} msgs",
            "ms",
            "Dovecot",
            times[key]["popgate"],
            times[key]["dovecot"],
            Target(1.0, at_least=False),
            note=note,
            digits=0,
        )
    for key in SORT_KEYS:
        bench.row(
            f"UID SORT ({key}) just after a flag change, {bench.sizes.mailbox} msgs",
            "ms",
            "Dovecot",
            changed[key]["popgate"],
            changed[key]["dovecot"],
            None,
            digits=0,
        )
