"""The SORT scenario: RFC 5256 SORT of the big mailbox, popgate vs Dovecot imapd (issue 17).

``UID SORT (key) UTF-8 ALL`` for ARRIVAL, DATE, SUBJECT and FROM over the 10,000-message
mailbox both servers hold in the same order (same UIDs), timed client-side on one
logged-in connection per server, repeats interleaved. Each key is sorted once untimed
first: Dovecot keeps sort keys in its index cache after the first request, popgate
computed them at ingest, so the figures are the steady state a returning webmail client
meets. A second set of rows times the same SORT just after a delivery and an expunge
(untimed: ``APPEND`` of a small message, then ``UID EXPUNGE`` of it), which change the
mailbox's membership, so neither server can serve the order it kept for the previous
SORT as it was (a flag change does not change a SORT ALL order; popgate keeps its order
across one). Both answers are compared; a difference is reported in the row's note.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bench.imapwire import IMAPConnection
from bench.report import Target

if TYPE_CHECKING:
    from bench.scenarios import Bench

SORT_KEYS = ("ARRIVAL", "DATE", "SUBJECT", "FROM")
"""The sort keys the issue's target names."""

INNER_REPEATS = 3
"""Each SORT is timed this many times per connection and repeat (they last milliseconds)."""


CHANGE_MESSAGE = (
    b"From: Sort Bench <sort-bench@example.org>\r\nTo: bench@example.org\r\n"
    b"Subject: membership change\r\nDate: Mon, 7 Dec 2026 04:00:00 +0000\r\n"
    b"Message-ID: <sort-bench@example.org>\r\n\r\nDelivered and expunged at once.\r\n"
)
"""The message each untimed membership change delivers and expunges again."""


def _membership_change(imap: IMAPConnection) -> None:
    """APPEND one message (LITERAL+, RFC 7888) and UID EXPUNGE it (RFC 4315): the
    mailbox holds the same messages again, but its membership moved twice."""
    reply = imap.command(b"APPEND INBOX {%d+}\r\n" % len(CHANGE_MESSAGE) + CHANGE_MESSAGE)
    found = re.search(rb"APPENDUID \d+ (\d+)", reply.status)
    if found is None:
        raise RuntimeError(f"APPEND gave no APPENDUID: {reply.status!r}")
    uid = int(found.group(1))
    imap.command(b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
    imap.command(b"UID EXPUNGE %d" % uid)


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
                for _inner in range(INNER_REPEATS):
                    for key in SORT_KEYS:
                        # A delivery and an expunge first (untimed): the membership
                        # changed, so neither server may answer from what it kept.
                        _membership_change(imap)
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
            f"UID SORT ({key}) just after a delivery+expunge, {bench.sizes.mailbox} msgs",
            "ms",
            "Dovecot",
            changed[key]["popgate"],
            changed[key]["dovecot"],
            None,
            digits=0,
        )
