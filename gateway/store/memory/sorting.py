"""The memory store's SORT and THREAD reads: SEARCH's matching rows, ordered in Python by
the same keys the SQLite store orders by (:mod:`gateway.store.sorting` states the rules)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cmp_to_key

from gateway.core.criteria import Criteria
from gateway.core.sorting import SortCriterion, ThreadFacts
from gateway.store.memory.messages import MemoryMessages
from gateway.store.memory.state import Message
from gateway.store.sorting import order_by


def sent_epoch(message: Message) -> int:
    """RFC 5256 §2.2: the Date: header in UTC, INTERNALDATE when there is none."""
    sent = message.analysis.sent_date
    if sent is not None:
        try:
            return int(sent.timestamp())
        except (OverflowError, ValueError, OSError):
            pass
    return int(message.internaldate.timestamp())


def _key(name: str, message: Message) -> object:
    keys = message.analysis.sort
    if name == "ARRIVAL":
        return int(message.internaldate.timestamp())
    if name == "DATE":
        return sent_epoch(message)
    if name == "SIZE":
        return len(message.raw)
    return {
        "SUBJECT": keys.subject,
        "FROM": keys.from_,
        "TO": keys.to,
        "CC": keys.cc,
        "DISPLAYFROM": keys.display_from,
        "DISPLAYTO": keys.display_to,
    }[name]


class MemorySorting(MemoryMessages):
    """:class:`~gateway.store.interfaces.Sorting` in memory."""

    def sort(
        self,
        mailbox_id: int,
        criteria: Criteria,
        program: Sequence[SortCriterion],
        *,
        viewer: str | None = None,
    ) -> list[int]:
        order_by(program)  # the same validation as the SQL backend
        box = self._box(mailbox_id)
        uids = self.search(mailbox_id, criteria, viewer=viewer)
        rows = {u: box.rows[u].message for u in uids}

        def compare(a: int, b: int) -> int:
            for criterion in program:
                ka, kb = _key(criterion.key, rows[a]), _key(criterion.key, rows[b])
                if ka != kb:
                    less = ka < kb  # type: ignore[operator]
                    return (1 if less else -1) if criterion.reverse else (-1 if less else 1)
            return -1 if a < b else (1 if a > b else 0)

        return sorted(uids, key=cmp_to_key(compare))

    def thread_facts(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[ThreadFacts]:
        box = self._box(mailbox_id)
        out = []
        for uid in sorted(self.search(mailbox_id, criteria, viewer=viewer)):
            m = box.rows[uid].message
            keys = m.analysis.sort
            out.append(
                ThreadFacts(
                    uid,
                    sent_epoch(m),
                    keys.subject,
                    keys.reply_or_forward,
                    keys.message_id,
                    keys.references,
                )
            )
        return out
