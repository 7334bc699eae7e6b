"""The memory store's POP3 ledger: the same exactly-once rules as the SQLite ledger, on a
dictionary keyed by (upstream, UIDL)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Sequence
from operator import attrgetter

from gateway.store.interfaces import INBOX, Delivery, LedgerEntry, Routed
from gateway.store.memory.state import Box, MemoryBase, Message
from gateway.store.rules import check_mailbox_name, filing_plan, normalise_name


class MemoryLedger(MemoryBase):
    """:class:`~gateway.store.interfaces.Ledger` in memory."""

    def known_uidls(self, upstream: str) -> set[str]:
        return {uidl for up, uidl in self._live().ledger if up == upstream}

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        key = (delivery.upstream, delivery.uidl)
        if key in self._live().ledger:
            return None
        mailbox = normalise_name(mailbox)
        if mailbox != INBOX:
            check_mailbox_name(mailbox)
        message = self._ingest(delivery.raw, delivery.internaldate)
        self.ensure_user(owner)
        box = self._find(owner, mailbox)
        if box is None:
            self._create_parents(owner, mailbox)
            box = self._create(owner, mailbox, None)
        (uid,) = self._add(box, [(message, {})])
        size = delivery.size_on_server
        entry = LedgerEntry(
            upstream=delivery.upstream,
            uidl=delivery.uidl,
            state="delivered",
            reason=None,
            fetched_at=datetime.datetime.fromtimestamp(self._clock(), datetime.UTC),
            size=size if size is not None else len(delivery.raw),
        )
        self.state.ledger[key] = entry
        self.state.ledger_messages[key] = message
        self._notify([box.id])
        return uid

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        mailbox = normalise_name(mailbox)
        if mailbox != INBOX:
            check_mailbox_name(mailbox)
        state = self._live()
        items = list(deliveries)
        ready: list[Message | None] = [
            None if (d.upstream, d.uidl) in state.ledger else self._ingest(d.raw, d.internaldate)
            for d in items
        ]
        results: list[int | None] = [None] * len(items)
        if all(m is None for m in ready):
            return results
        self.ensure_user(owner)
        box = self._find(owner, mailbox)
        if box is None:
            self._create_parents(owner, mailbox)
            box = self._create(owner, mailbox, None)
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        new: list[tuple[int, Message]] = []
        for index, (delivery, message) in enumerate(zip(items, ready, strict=True)):
            key = (delivery.upstream, delivery.uidl)
            if message is None or key in state.ledger:
                continue
            if dedup:
                owners = {
                    id(m) for k, m in state.ledger_messages.items() if k[0] != delivery.upstream
                }
                for row in box.rows.values():
                    if id(row.message) in owners and row.message.raw == message.raw:
                        message = row.message
                        break
                else:
                    new.append((index, message))
            else:
                new.append((index, message))
            size = delivery.size_on_server
            state.ledger[key] = LedgerEntry(
                upstream=delivery.upstream,
                uidl=delivery.uidl,
                state="delivered",
                reason=None,
                fetched_at=now,
                size=size if size is not None else len(delivery.raw),
            )
            state.ledger_messages[key] = message
        if new:
            uids = self._add(box, [(m, {}) for _i, m in new])
            for (index, _m), uid in zip(new, uids, strict=True):
                results[index] = uid
            self._notify([box.id])
        return results

    def deliver_routed(
        self, owner: str, default: str, items: Sequence[Routed], *, dedup: bool = False
    ) -> list[dict[str, int] | None]:
        default = normalise_name(default)
        if default != INBOX:
            check_mailbox_name(default)
        state = self._live()
        items = list(items)
        ready: list[Message | None] = [
            None
            if (i.delivery.upstream, i.delivery.uidl) in state.ledger
            else self._ingest(i.delivery.raw, i.delivery.internaldate)
            for i in items
        ]
        results: list[dict[str, int] | None] = [None] * len(items)
        if all(m is None for m in ready):
            return results
        self.ensure_user(owner)
        now = self._clock()
        stamp = datetime.datetime.fromtimestamp(now, datetime.UTC)

        def box(name: str, create: bool) -> Box | None:
            found = self._find(owner, name)
            if found is None and create:
                self._create_parents(owner, name)
                found = self._create(owner, name, None)
            return found

        added: dict[int, tuple[Box, list[tuple[int, str, Message, dict[str, str]]]]] = {}
        for index, (item, message) in enumerate(zip(items, ready, strict=True)):
            d = item.delivery
            key = (d.upstream, d.uidl)
            if message is None or key in state.ledger:
                continue
            results[index] = {}
            wanted = filing_plan(item.targets, box, default, attrgetter("id"))
            stored: Message | None = None
            if dedup:
                others = {id(m) for k, m in state.ledger_messages.items() if k[0] != d.upstream}
                for box_id, (target_box, _flags) in list(wanted.items()):
                    for row in target_box.rows.values():
                        if id(row.message) in others and row.message.raw == message.raw:
                            stored = row.message
                            del wanted[box_id]
                            break
            if wanted:
                stored = message
            for target_box, flags in wanted.values():
                pending = added.setdefault(target_box.id, (target_box, []))[1]
                pending.append((index, target_box.name, message, flags))
            size = d.size_on_server
            state.ledger[key] = LedgerEntry(
                upstream=d.upstream,
                uidl=d.uidl,
                state="delivered",
                reason=None,
                fetched_at=stamp,
                size=size if size is not None else len(d.raw),
            )
            if stored is not None:
                state.ledger_messages[key] = stored
            for outbound in item.outbound:  # Sieve's redirect/vacation, with the delivery
                state.outbound.enqueue(outbound, now=now, lifetime=item.lifetime)
            for record in item.duplicates:
                dup = (owner, record.handle, record.id)
                if record.refresh or state.duplicates.get(dup, 0.0) <= now:
                    state.duplicates[dup] = now + record.period
        for target_box, entries in added.values():
            uids = self._add(target_box, [(m, f) for _i, _n, m, f in entries])
            for (index, name, _m, _f), uid in zip(entries, uids, strict=True):
                filed = results[index]
                assert filed is not None
                filed[name] = uid
        for dup, expires in list(state.duplicates.items()):
            if dup[0] == owner and expires <= now:
                del state.duplicates[dup]
        self._notify(added)
        return results

    def duplicate_seen(self, owner: str, handle: str, id: str) -> bool:
        return self._live().duplicates.get((owner, handle, id), 0.0) > self._clock()

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        if isinstance(uidls, str):
            raise TypeError("uidls must be an iterable of str, not one str")
        state = self._live()
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        added = 0
        for uidl in uidls:
            key = (upstream, str(uidl))
            if key in state.ledger:
                continue
            state.ledger[key] = LedgerEntry(
                upstream=upstream,
                uidl=str(uidl),
                state="imported",
                reason=reason,
                fetched_at=now,
                size=None,
            )
            added += 1
        return added

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        old = self._live().ledger.get((upstream, uidl))
        if old is not None and old.state == "delivered":
            return
        self.state.ledger[(upstream, uidl)] = LedgerEntry(
            upstream=upstream,
            uidl=uidl,
            state="skipped",
            reason=reason,
            fetched_at=datetime.datetime.fromtimestamp(self._clock(), datetime.UTC),
            size=None,
        )

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        if isinstance(uidls, str):
            raise TypeError("uidls must be an iterable of str, not one str")
        for uidl in uidls:
            self._live().ledger.pop((upstream, uidl), None)
            self.state.ledger_messages.pop((upstream, uidl), None)

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        state = self._live()
        entries = [e for (up, _u), e in state.ledger.items() if up == upstream]
        live = {id(row.message) for box in state.boxes.values() for row in box.rows.values()}
        out = []
        for entry in sorted(entries, key=lambda e: e.uidl):
            message = state.ledger_messages.get((upstream, entry.uidl))
            stored = None
            if entry.state == "delivered":
                stored = message is not None and id(message) in live
            out.append(dataclasses.replace(entry, stored=stored))
        return out
