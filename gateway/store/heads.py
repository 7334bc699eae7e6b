"""``BODY[HEADER.FIELDS (...)]`` of whole messages for a list view: cut once per message, kept.

A client's list view asks the same few fields of the same messages again and again
(``FETCH n:m (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])``,
RFC 3501 §6.4.5, on every scroll and every resync). Cutting them out of the stored bytes
means reading each message and searching its header, about 9 us a message in Python,
which was two thirds of that FETCH's CPU (issue 19). Dovecot keeps such fields in its
cache file (``dovecot.index.cache``) once a client has asked for them; a store here
keeps the cut bytes in memory (:class:`HeadCache`) and
:meth:`HeaderFieldReads.message_header_fields` reads only the per-mailbox rows for a
message already cut.

Nothing kept can go stale: the contract never reuses a mailbox id and never gives a UID
of a mailbox to other bytes (RFC 3501 §2.3.1.1; :class:`~gateway.store.interfaces.Messages`),
so an entry is keyed by the field names, the mailbox id and the UID, and needs no
invalidation. Entries of expunged messages are never asked for again (the rows read
first no longer name them) and go with the next clearing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence

from gateway.message.sections import section, top_header_cutter
from gateway.store.records import MessageHead, MessageInfo
from gateway.store.rules import leading_uids

HEAD_CACHE_BYTES = 8 * 1024 * 1024
"""Octets a store keeps of cut fields (each entry counted with :data:`HEAD_ENTRY_OVERHEAD`):
about 40,000 list-view entries of FROM, SUBJECT and DATE. An entry that would pass it
clears the cache, which then fills again with what clients ask for."""

HEAD_ENTRY_OVERHEAD = 100
"""Octets counted per entry besides its bytes: the dict slot, the UID and the bytes header."""

HEAD_ENTRY_MAX = 4096
"""Cut fields longer than this are not kept (a header section asked for whole, a huge
``References``): they would crowd out the short entries a list view reuses."""

HEAD_SOURCE_BYTES = 4 * 1024 * 1024
"""Octets of whole messages one read of :meth:`HeaderFieldReads._head_sources` brings at
most (at least one message), as FETCH bounds its body reads."""

_EMPTY: Mapping[int, bytes] = {}


class HeadCache:
    """Cut ``HEADER.FIELDS`` bytes by (field names, mailbox id) and UID, bounded in octets.

    Read without a lock (a dict ``get`` is atomic); :meth:`keep` takes one, for a store
    whose calls run on several threads (PostgreSQL)."""

    def __init__(self, limit: int = HEAD_CACHE_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._boxes: dict[tuple[tuple[str, ...], int], dict[int, bytes]] = {}
        self._lock = threading.Lock()

    def known(self, names: tuple[str, ...], mailbox_id: int) -> Mapping[int, bytes]:
        """What is kept for ``names`` in the mailbox, by UID (read it, never change it)."""
        return self._boxes.get((names, mailbox_id), _EMPTY)

    def keep(self, names: tuple[str, ...], mailbox_id: int, cut: Mapping[int, bytes]) -> None:
        """Keep ``cut`` (UID → bytes) for ``names`` in the mailbox, within the limit."""
        fits = {uid: data for uid, data in cut.items() if len(data) <= HEAD_ENTRY_MAX}
        if not fits:
            return
        added = sum(len(data) for data in fits.values()) + HEAD_ENTRY_OVERHEAD * len(fits)
        with self._lock:
            if self.size + added > self.limit:
                self._boxes.clear()
                self.size = 0
            self._boxes.setdefault((names, mailbox_id), {}).update(fits)
            # A UID two sessions cut at once is counted twice: the count errs on the
            # safe side only, until the next clearing.
            self.size += added


def fields_cutter(names: tuple[str, ...]) -> Callable[[bytes, str], bytes]:
    """``(raw, parts) -> BODY[HEADER.FIELDS (names)]`` of a whole message: the list view's
    fast cutter when the names allow it, else the general :func:`section`."""
    cutter = top_header_cutter("HEADER.FIELDS", names)
    if cutter is not None:
        return cutter
    return lambda raw, parts: section(raw, parts, (), "HEADER.FIELDS", names)


class HeaderFieldReads:
    """:meth:`~gateway.store.interfaces.Messages.message_header_fields` written once: the
    kept fields (:meth:`_head_fields`), the messages not cut yet read through
    :meth:`_head_sources`. The defaults are written over the contract's own reads; a
    backend overrides them with narrower ones (SQLite reads its rows and the fields'
    sources in one statement each)."""

    _head_cache_instance: HeadCache | None = None

    def _head_cache(self) -> HeadCache:
        cache = self._head_cache_instance
        if cache is None:  # a race makes two, of which one stays: harmless
            cache = self._head_cache_instance = HeadCache()
        return cache

    def _head_sources(
        self, mailbox_id: int, uids: Sequence[int]
    ) -> Iterator[tuple[int, bytes, str]]:
        """(uid, bytes holding at least the whole header section, part map) of those
        ``uids`` that exist, in reads of at most :data:`HEAD_SOURCE_BYTES` octets."""
        infos: list[MessageInfo] = self.message_info(mailbox_id, uids)  # type: ignore[attr-defined]
        start = 0
        while start < len(infos):
            run = leading_uids(infos[start:], HEAD_SOURCE_BYTES)
            bodies = self.message_bytes_batch(mailbox_id, run)  # type: ignore[attr-defined]
            for info in infos[start : start + len(run)]:
                raw = bodies.get(info.uid)
                if raw is not None:
                    yield info.uid, raw, info.parts
            start += len(run)

    def _head_fields(
        self, mailbox_id: int, names: tuple[str, ...], uids: Sequence[int]
    ) -> Mapping[int, bytes]:
        """``BODY[HEADER.FIELDS (names)]`` by UID for ``uids`` (existing ones, just
        read): kept ones as kept, the others cut and kept. A UID expunged since it was
        read is missing from the answer."""
        cache = self._head_cache()
        table = cache.known(names, mailbox_id)
        missing = [uid for uid in uids if uid not in table]
        if not missing:
            return table
        cut = fields_cutter(names)
        fresh = {
            uid: cut(raw, parts) for uid, raw, parts in self._head_sources(mailbox_id, missing)
        }
        cache.keep(names, mailbox_id, fresh)
        fresh.update((uid, table[uid]) for uid in uids if uid in table)
        return fresh

    def message_header_fields(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        names: tuple[str, ...],
        *,
        viewer: str | None = None,
    ) -> list[MessageHead]:
        rows = self.message_summaries(mailbox_id, uids, viewer=viewer)  # type: ignore[attr-defined]
        get = self._head_fields(mailbox_id, names, [row.uid for row in rows]).get
        # A message expunged between the two reads has no fields: it is left out, as a
        # UID that no longer exists (the caller's EXPUNGEISSUED).
        return [
            MessageHead(row.uid, row.flags, row.modseq, row.size, data)
            for row in rows
            if (data := get(row.uid)) is not None
        ]
