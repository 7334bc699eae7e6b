"""The SQLite store's POP3 ledger: exactly-once delivery and the UIDLs it remembers.

Durability comes first: a delivery is one ``BEGIN IMMEDIATE`` transaction committed with
``synchronous=FULL``, so when :meth:`~SQLiteLedger.deliver` returns, the message and its
ledger row are on disk together and the fetcher may DELE it upstream. The ``ledger``
table's primary key (upstream, uidl) keeps a UIDL in the ledger once per upstream.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from operator import itemgetter

from gateway.message.analysis import Analysis
from gateway.store.interfaces import INBOX, Delivery, DuplicateRecord, LedgerEntry, Routed
from gateway.store.rowdata import ledger_entries_from_rows, split_seen
from gateway.store.rules import check_mailbox_name, filing_plan, normalise_name
from gateway.store.sqlite.rows import SQLiteRows
from gateway.store.sqlite_queue import insert_queued


class SQLiteLedger(SQLiteRows):
    """:class:`~gateway.store.interfaces.Ledger` on SQLite."""

    def known_uidls(self, upstream: str) -> set[str]:
        rows = self.db.execute("SELECT uidl FROM ledger WHERE upstream = ?", (upstream,))
        return {r[0] for r in rows}

    def _ledger_has(self, cur: sqlite3.Connection, upstream: str, uidl: str) -> bool:
        row = cur.execute(
            "SELECT 1 FROM ledger WHERE upstream = ? AND uidl = ?", (upstream, uidl)
        ).fetchone()
        return row is not None

    def _ledger_known(
        self, cur: sqlite3.Connection, deliveries: Sequence[Delivery]
    ) -> set[tuple[str, str]]:
        """Which (upstream, UIDL) of a batch the ledger already holds: one indexed
        statement per upstream in the batch, not one per message."""
        by_upstream: dict[str, list[str]] = {}
        for d in deliveries:
            by_upstream.setdefault(d.upstream, []).append(d.uidl)
        known: set[tuple[str, str]] = set()
        for upstream, uidls in by_upstream.items():
            rows = cur.execute(
                "SELECT uidl FROM ledger WHERE upstream = ?"
                " AND uidl IN (SELECT value FROM json_each(?))",
                (upstream, json.dumps(uidls)),
            )
            known.update((upstream, r[0]) for r in rows)
        return known

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        """Exactly-once delivery: the message, its mailbox row and the ledger row commit
        together (durably, ``synchronous=FULL``), so the fetcher may DELE upstream once
        this returns. Creates the user and the target mailbox (with parents) if missing."""
        if self._ledger_has(self.db, delivery.upstream, delivery.uidl):
            return None
        mailbox = normalise_name(mailbox)
        if mailbox != INBOX:
            check_mailbox_name(mailbox)
        raw, analysis, internal = self._ingest(
            delivery.raw, delivery.internaldate, delivery.analysis
        )
        with self._unmapped(), self._write() as changed:
            cur = self.db
            if self._ledger_has(cur, delivery.upstream, delivery.uidl):
                return None
            self._ensure_user_tx(cur, owner)
            target = self._find(cur, owner, mailbox)
            if target is None:
                self._create_parents_tx(cur, owner, mailbox)
                mailbox_id = self._create_tx(cur, owner, mailbox, None)
            else:
                mailbox_id = target.id
            message_id = self._insert_message(cur, raw, analysis, internal)
            (uid,) = self._add_rows(cur, mailbox_id, [(message_id, "")])
            cur.execute(
                "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
                " VALUES (?, ?, ?, 'delivered', NULL, ?, ?)",
                (
                    delivery.upstream,
                    delivery.uidl,
                    message_id,
                    self._clock(),
                    delivery.size_on_server if delivery.size_on_server is not None else len(raw),
                ),
            )
            changed.add(mailbox_id)
        return uid

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        """Bulk exactly-once delivery: every message, its mailbox row and its ledger row
        in ONE ``BEGIN IMMEDIATE`` transaction (one fsync for the batch). MIME analysis
        runs before the transaction. New messages get consecutive UIDs sharing one
        modseq. With ``dedup``, a message whose bytes (SHA-256) the target mailbox already
        holds as delivered by another upstream is not stored again: only its ledger row
        is written, pointing at the existing message. Raises :class:`MessageTooLarge`
        (nothing written) if any message is over the size limit."""
        mailbox = normalise_name(mailbox)
        if mailbox != INBOX:
            check_mailbox_name(mailbox)
        items = list(deliveries)
        prepared: list[tuple[bytes, Analysis, tuple[int, int, int]] | None] = []
        known = self._ledger_known(self.db, items)
        for delivery in items:
            if (delivery.upstream, delivery.uidl) in known:
                prepared.append(None)
            else:
                prepared.append(
                    self._ingest(delivery.raw, delivery.internaldate, delivery.analysis)
                )
        results: list[int | None] = [None] * len(items)
        if all(p is None for p in prepared):
            return results
        now = self._clock()
        with self._unmapped(), self._write() as changed:
            cur = self.db
            self._ensure_user_tx(cur, owner)
            target = self._find(cur, owner, mailbox)
            if target is None:
                self._create_parents_tx(cur, owner, mailbox)
                mailbox_id = self._create_tx(cur, owner, mailbox, None)
            else:
                mailbox_id = target.id
            new_rows: list[tuple[int, int]] = []  # (index in items, message id)
            ledger_rows: list[tuple[str, str, int, float, int]] = []
            # Again inside the transaction: another process may have delivered meanwhile.
            seen = self._ledger_known(cur, items)
            for index, (delivery, ready) in enumerate(zip(items, prepared, strict=True)):
                key = (delivery.upstream, delivery.uidl)
                if ready is None or key in seen:
                    continue
                seen.add(key)
                raw, analysis, internal = ready
                existing = None
                digest = None
                if dedup:
                    digest = hashlib.sha256(raw).digest()  # once: the row stores it too
                    existing = cur.execute(
                        "SELECT m.id FROM message m WHERE m.sha256 = ? AND EXISTS"
                        " (SELECT 1 FROM mailbox_message mm WHERE mm.message_id = m.id"
                        " AND mm.mailbox_id = ?) AND EXISTS (SELECT 1 FROM ledger l"
                        " WHERE l.message_id = m.id AND l.upstream != ?) LIMIT 1",
                        (digest, mailbox_id, delivery.upstream),
                    ).fetchone()
                if existing is not None:
                    message_id = int(existing[0])
                else:
                    message_id = self._insert_message(cur, raw, analysis, internal, digest)
                    new_rows.append((index, message_id))
                size = delivery.size_on_server
                ledger_rows.append((*key, message_id, now, size if size is not None else len(raw)))
            if new_rows:
                uids = self._add_rows(cur, mailbox_id, [(mid, "") for _i, mid in new_rows])
                for (index, _mid), uid in zip(new_rows, uids, strict=True):
                    results[index] = uid
                changed.add(mailbox_id)
            cur.executemany(
                "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
                " VALUES (?, ?, ?, 'delivered', NULL, ?, ?)",
                ledger_rows,
            )
        return results

    def deliver_routed(
        self, owner: str, default: str, items: Sequence[Routed], *, dedup: bool = False
    ) -> list[dict[str, int] | None]:
        """Routed exactly-once delivery (issue 16): per message one ``message`` row, one
        ``mailbox_message`` row per final mailbox and the ledger row, plus the RFC 7352
        duplicate IDs, in ONE ``BEGIN IMMEDIATE`` transaction. A discard writes the
        ledger row with no message (``stored`` then reads False)."""
        default = normalise_name(default)
        if default != INBOX:
            check_mailbox_name(default)
        items = list(items)
        prepared: list[tuple[bytes, Analysis, tuple[int, int, int]] | None] = []
        for item in items:
            d = item.delivery
            if self._ledger_has(self.db, d.upstream, d.uidl):
                prepared.append(None)
            else:
                prepared.append(self._ingest(d.raw, d.internaldate, d.analysis))
        results: list[dict[str, int] | None] = [None] * len(items)
        if all(p is None for p in prepared):
            return results
        now = self._clock()
        with self._unmapped(), self._write() as changed:
            cur = self.db
            self._ensure_user_tx(cur, owner)
            boxes: dict[str, tuple[int, bool]] = {}  # name → (mailbox id, shared)

            def box(name: str, create: bool) -> tuple[str, int, bool] | None:
                if name not in boxes:
                    found = self._find(cur, owner, name)
                    if found is not None:
                        boxes[name] = (found.id, self._is_shared(cur, found.id))
                    elif create:
                        self._create_parents_tx(cur, owner, name)
                        created = self._create_tx(cur, owner, name, None)
                        boxes[name] = (created, self._is_shared(cur, created))
                    else:
                        return None
                return (name, *boxes[name])

            rows: dict[int, list[tuple[int, str, int, str]]] = {}  # box → (index, name, msg, flags)
            ledger_rows: list[tuple[str, str, int | None, float, int]] = []
            seen: set[tuple[str, str]] = set()
            sha = hashlib.sha256
            for index, (item, ready) in enumerate(zip(items, prepared, strict=True)):
                d = item.delivery
                key = (d.upstream, d.uidl)
                if ready is None or key in seen or self._ledger_has(cur, *key):
                    continue
                seen.add(key)
                raw, analysis, internal = ready
                results[index] = {}
                wanted = filing_plan(item.targets, box, default, itemgetter(1))
                message_id: int | None = None
                digest = sha(raw).digest() if dedup else b""
                for mailbox_id in list(wanted):
                    if not dedup:
                        break
                    existing = cur.execute(
                        "SELECT m.id FROM message m WHERE m.sha256 = ? AND EXISTS"
                        " (SELECT 1 FROM mailbox_message mm WHERE mm.message_id = m.id"
                        " AND mm.mailbox_id = ?) AND EXISTS (SELECT 1 FROM ledger l"
                        " WHERE l.message_id = m.id AND l.upstream != ?) LIMIT 1",
                        (digest, mailbox_id, d.upstream),
                    ).fetchone()
                    if existing is not None:
                        message_id = int(existing[0])
                        del wanted[mailbox_id]
                if wanted:
                    message_id = self._insert_message(
                        cur, raw, analysis, internal, digest if dedup else None
                    )
                for mailbox_id, ((name, _id, shared), flags) in wanted.items():
                    assert message_id is not None
                    text, _seen = split_seen(flags, shared)
                    rows.setdefault(mailbox_id, []).append((index, name, message_id, text))
                size = d.size_on_server if d.size_on_server is not None else len(raw)
                ledger_rows.append((*key, message_id, now, size))
                self._record_duplicates(cur, owner, item.duplicates, now)
                for outbound in item.outbound:  # Sieve's redirect/vacation: same transaction
                    insert_queued(cur, outbound, now=now, lifetime=item.lifetime)
            for mailbox_id, entries in rows.items():
                uids = self._add_rows(cur, mailbox_id, [(m, f) for _i, _n, m, f in entries])
                for (index, name, _m, _f), uid in zip(entries, uids, strict=True):
                    filed = results[index]
                    assert filed is not None
                    filed[name] = uid
                changed.add(mailbox_id)
            cur.executemany(
                "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
                " VALUES (?, ?, ?, 'delivered', NULL, ?, ?)",
                ledger_rows,
            )
            cur.execute(
                "DELETE FROM sieve_duplicate WHERE owner = ? AND expires <= ?", (owner, now)
            )
        return results

    def _record_duplicates(
        self,
        cur: sqlite3.Connection,
        owner: str,
        records: Sequence[DuplicateRecord],
        now: float,
    ) -> None:
        """RFC 7352 §3.1: an ID still remembered keeps its expiry unless ``refresh``."""
        for record in records:
            cur.execute(
                "INSERT INTO sieve_duplicate (owner, handle, id, expires) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (owner, handle, id) DO UPDATE SET expires = excluded.expires"
                " WHERE ? OR sieve_duplicate.expires <= ?",
                (owner, record.handle, record.id, now + record.period, record.refresh, now),
            )

    def duplicate_seen(self, owner: str, handle: str, id: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM sieve_duplicate WHERE owner = ? AND handle = ? AND id = ?"
            " AND expires > ?",
            (owner, handle, id, self._clock()),
        ).fetchone()
        return row is not None

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        """UIDLs already in the ledger keep their entry (a delivered one stays delivered)."""
        if isinstance(uidls, str):
            raise TypeError("uidls must be an iterable of str, not one str")
        now = self._clock()
        with self._write():
            cur = self.db.executemany(
                "INSERT OR IGNORE INTO ledger"
                " (upstream, uidl, message_id, state, reason, fetched_at, size)"
                " VALUES (?, ?, NULL, 'imported', ?, ?, NULL)",
                [(upstream, str(u), reason, now) for u in uidls],
            )
            return max(0, cur.rowcount)

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        """A delivered entry is never turned into a skipped one; a skipped one gets the
        latest reason."""
        with self._write():
            self.db.execute(
                "INSERT INTO ledger (upstream, uidl, message_id, state, reason, fetched_at, size)"
                " VALUES (?, ?, NULL, 'skipped', ?, ?, NULL)"
                " ON CONFLICT (upstream, uidl) DO UPDATE"
                " SET reason = excluded.reason, fetched_at = excluded.fetched_at"
                " WHERE ledger.state = 'skipped'",
                (upstream, uidl, reason, self._clock()),
            )

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        if isinstance(uidls, str):
            raise TypeError("uidls must be an iterable of str, not one str")
        with self._write():
            self.db.execute(
                "DELETE FROM ledger WHERE upstream = ? AND uidl IN (SELECT value FROM json_each(?))",
                (upstream, json.dumps([str(u) for u in uidls])),
            )

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        rows = self.db.execute(
            "SELECT uidl, state, reason, fetched_at, size, message_id IS NOT NULL FROM ledger"
            " WHERE upstream = ? ORDER BY uidl",
            (upstream,),
        ).fetchall()
        return ledger_entries_from_rows(upstream, rows)
