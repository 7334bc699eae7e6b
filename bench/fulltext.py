"""The full-text SEARCH figures (issue 17): SEARCH BODY and SEARCH TEXT on a big mailbox.

popgate answers them from its FTS5 trigram index (:mod:`gateway.store.sqlite_textindex`),
with RFC 3501's substring semantics. Its peers, on the same messages in the same order:

* Dovecot 2.3 without a full-text index: it reads every message (substring semantics,
  so the hits must be identical);
* Dovecot 2.3 with its Xapian index (Debian ``dovecot-fts-xapian``, configured as
  /work/shared/PEERS-NOTES.md says): the anchor a user who cares about search would pick.
  Xapian matches words, not substrings, so the needle is a whole word that never occurs
  inside a longer word or in a header of this corpus: there both semantics agree, and
  the hits are checked to be the same.

The mailbox is the memory scenario's, capped at :data:`MAX_MESSAGES`: small
(demo-profile) messages cycled from ``sizes.memory_corpus`` distinct ones, loaded into popgate's store
with :func:`bench.popgate.load_store` and delivered once into a Maildir that the second
Dovecot gets hard links of. Untimed warm-up: one SELECT and one SEARCH per server (Dovecot
builds its index files then, and Xapian its full-text index, whose time is noted).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from bench.imapwire import IMAPConnection
from bench.peers import DOVECOT_EXTRA_CONFIG
from bench.popgate import GatewayServer, load_store
from bench.report import Target
from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot

if TYPE_CHECKING:
    from bench.scenarios import Bench

FULLTEXT_USER = ("fulltext", "fulltext-bench-pw")
"""The account holding the big mailbox on all three servers."""

SEARCH_WORD = "volunteers"
"""In about one body in twelve of the corpus, always as a whole word and never in a
header, so substring (RFC 3501) and word (Xapian) semantics give the same hits."""

XAPIAN_CONFIG = """\
# Full-text index: Xapian (Debian dovecot-fts-xapian), as /work/shared/PEERS-NOTES.md says.
mail_plugins = $mail_plugins fts fts_xapian
plugin {
  fts = xapian
  fts_xapian = partial=3 full=20 verbose=0
  fts_autoindex = yes
  fts_enforced = yes
}
"""

MAX_MESSAGES = 20_000
"""Cap on the mailbox size (``sizes.memory_messages`` is 100,000): Dovecot's Xapian plugin
indexes about 17 messages per second here (10,000 took 575 s), so 100,000 would spend
over an hour and a half in the warm-up alone. Ratios are per search, on the same mailbox."""

XAPIAN_PLUGIN = Path("/usr/lib/dovecot/modules/lib21_fts_xapian_plugin.so")

WARM_UP_TIMEOUT = 1800.0
"""Seconds allowed for the first SEARCH of the Xapian Dovecot, which builds the index."""

INNER_REPEATS = 3
"""SEARCHes of each kind per connection and repeat (as the fetch scenario's figures)."""

CRITERIA = ("BODY", "TEXT")


def _hits(lines: list[bytes]) -> set[int]:
    return {int(n) for line in lines if line.startswith(b"* SEARCH") for n in line.split()[2:]}


def _search(port: int, key: str, *, timeout: float | None = None) -> tuple[float, set[int]]:
    """One ``SEARCH key "word"`` on a fresh logged-in connection: (milliseconds, hits)."""
    kwargs = {} if timeout is None else {"timeout": timeout}
    with IMAPConnection("127.0.0.1", port, **kwargs) as imap:
        imap.login(*FULLTEXT_USER)
        imap.command(b"SELECT INBOX")
        reply = imap.command(f'SEARCH {key} "{SEARCH_WORD}"'.encode(), keep=True)
        imap.logout()
    return reply.seconds * 1000, _hits(reply.lines)


def _timed(port: int, times: dict[str, list[float]], hits: dict[str, set[int]]) -> None:
    """INNER_REPEATS of each criterion on one connection (SELECT untimed): milliseconds
    appended to ``times[key]``, the hits put in ``hits[key]``."""
    with IMAPConnection("127.0.0.1", port) as imap:
        imap.login(*FULLTEXT_USER)
        imap.command(b"SELECT INBOX")
        for _inner in range(INNER_REPEATS):
            for key in CRITERIA:
                reply = imap.command(f'SEARCH {key} "{SEARCH_WORD}"'.encode(), keep=True)
                times.setdefault(key, []).append(reply.seconds * 1000)
                hits[key] = _hits(reply.lines)
        imap.logout()


def _link_maildir(source: Path, target: Path) -> None:
    """Hard-link every delivered message of ``source`` into ``target`` (same names, so the
    same order and dates): a second Dovecot gets the mailbox without writing it again."""
    for name in os.listdir(source / "new"):
        os.link(source / "new" / name, target / "new" / name)


def fulltext(bench: Bench) -> None:
    """SEARCH BODY/TEXT "word" on up to :data:`MAX_MESSAGES` messages, popgate vs Dovecot
    without and with its Xapian full-text index."""
    sizes = bench.sizes
    count = sizes.fulltext_messages or min(sizes.memory_messages, MAX_MESSAGES)
    with_xapian = sizes.fulltext_xapian and count <= MAX_MESSAGES
    if with_xapian and not XAPIAN_PLUGIN.exists():
        raise RuntimeError(f"{XAPIAN_PLUGIN} missing: make bench installs dovecot-fts-xapian")
    if not with_xapian:
        bench.log(f"fulltext: {count} messages, Dovecot + Xapian left out (cap {MAX_MESSAGES})")
    corpus = samplemail.generate(sizes.memory_corpus, bench.seed + 11)

    def mailbox() -> Iterator[bytes]:
        return (corpus[i % len(corpus)] for i in range(count))

    state = bench.root / "fulltext-state"
    state.mkdir(mode=0o700)
    started = time.perf_counter()
    load_store(state / "popgate.sqlite3", FULLTEXT_USER[0], mailbox(), memo=True)
    loaded = time.perf_counter() - started
    index_mb = _index_megabytes(state / "popgate.sqlite3")
    bench.log(f"fulltext: popgate store of {count} messages in {loaded:.0f}s")
    with ExitStack() as stack:
        plain = Dovecot(extra_config=DOVECOT_EXTRA_CONFIG, parent_dir=bench.root)
        stack.callback(plain.stop)
        peers = [plain]
        if with_xapian:
            xapian = Dovecot(
                extra_config=DOVECOT_EXTRA_CONFIG + XAPIAN_CONFIG, parent_dir=bench.root
            )
            stack.callback(xapian.stop)
            peers.append(xapian)
        for server in peers:
            server.add_user(*FULLTEXT_USER)
        started = time.perf_counter()
        plain.deliver_many(FULLTEXT_USER[0], mailbox())
        if with_xapian:
            _link_maildir(plain.maildir(FULLTEXT_USER[0]), xapian.maildir(FULLTEXT_USER[0]))
        bench.log(f"fulltext: Maildir delivered in {time.perf_counter() - started:.0f}s")
        for server in peers:
            server.start()
        popgate = GatewayServer(
            bench.root / "fulltext-popgate", dict([FULLTEXT_USER]), state_dir=state
        )
        stack.enter_context(popgate)
        ports = {"popgate": popgate.port, "dovecot": plain.imap_port}
        if with_xapian:
            ports["xapian"] = xapian.imap_port
        warm: dict[str, float] = {}
        for name, port in ports.items():
            for key in CRITERIA:
                warm[f"{name} {key}"], _ = _search(port, key, timeout=WARM_UP_TIMEOUT)
        bench.log("fulltext warm-up (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in warm.items()))
        times: dict[str, dict[str, list[float]]] = {name: {} for name in ports}
        hits: dict[str, dict[str, set[int]]] = {name: {} for name in ports}
        for repeat in range(sizes.repeats):
            for name, port in ports.items():
                _timed(port, times[name], hits[name])
            bench.log(
                f"fulltext repeat {repeat + 1}: "
                + "; ".join(
                    f"{key} " + ", ".join(f"{n} {times[n][key][-1]:.0f} ms" for n in ports)
                    for key in CRITERIA
                )
            )
    for key in CRITERIA:
        counts = {name: len(hits[name][key]) for name in ports}
        for peer in [name for name in ports if name != "popgate"]:
            if hits["popgate"][key] != hits[peer][key]:
                bench.log(f"WARNING: SEARCH {key} hits differ, popgate vs {peer}: {counts}")
        hit_note = f"hits: popgate {counts['popgate']}, Dovecot {counts['dovecot']}"
        bench.row(
            f'SEARCH {key} "{SEARCH_WORD}", {count} msgs vs Dovecot without index',
            "ms",
            "Dovecot",
            times["popgate"][key],
            times["dovecot"][key],
            Target(0.2, at_least=False),
            note=f"{hit_note}; popgate FTS5 trigram index ({index_mb:.0f} MB for the store)",
            digits=1,
        )
        if not with_xapian:
            continue
        bench.row(
            f'SEARCH {key} "{SEARCH_WORD}", {count} msgs vs Dovecot + Xapian',
            "ms",
            "Dovecot+Xapian",
            times["popgate"][key],
            times["xapian"][key],
            Target(1.0, at_least=False),
            note=f"hits: popgate {counts['popgate']}, Dovecot+Xapian {counts['xapian']};"
            f" Xapian's first SEARCH {key} (index build when BODY) {warm[f'xapian {key}']:.0f} ms",
            digits=1,
        )


def _index_megabytes(path: Path) -> float:
    """Size of the FTS5 index's shadow tables in the store file (dbstat), in MB."""
    conn = sqlite3.connect(str(path))
    try:
        (size,) = conn.execute(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name LIKE 'message_text_index%'"
        ).fetchone()
    except sqlite3.OperationalError:  # SQLite built without dbstat
        size = 0
    finally:
        conn.close()
    return size / 1e6
