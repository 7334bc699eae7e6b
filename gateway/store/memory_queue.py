"""The in-memory :class:`~gateway.store.queue.OutboundQueue`: for tests and the demo.

"Durable" here means "until the process ends"; the rules are otherwise the SQLite
backend's, checked by the same contract suite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gateway.store.queue import (
    EXPIRED,
    FAILED,
    QUEUED,
    SENT,
    NewOutbound,
    QueueItem,
    QueueItemNotFound,
    QueueStateError,
    RouteStatus,
    validate_new,
)


class MemoryOutboundQueue:
    def __init__(self) -> None:
        self._items: dict[int, QueueItem] = {}
        self._content: dict[int, bytes] = {}
        self._route_errors: dict[str, str | None] = {}
        self._next_id = 1

    def enqueue(self, item: NewOutbound, *, now: float, lifetime: float) -> QueueItem:
        validate_new(item)
        row = QueueItem(
            id=self._next_id,
            user=item.user,
            route=item.route,
            mail_from=item.mail_from,
            recipients=tuple(item.recipients),
            size=len(item.content),
            message_id=item.message_id,
            state=QUEUED,
            queued_at=now,
            expires_at=now + lifetime,
            next_attempt=now,
            attempts=0,
            last_error=None,
            last_reply=None,
            finished_at=None,
            bounced=False,
        )
        self._next_id += 1
        self._items[row.id] = row
        self._content[row.id] = bytes(item.content)
        return row

    def get(self, item_id: int) -> QueueItem:
        try:
            return self._items[item_id]
        except KeyError:
            raise QueueItemNotFound(f"no queue item {item_id}") from None

    def content(self, item_id: int) -> bytes:
        self.get(item_id)
        return self._content[item_id]

    def _queued(self, item_id: int) -> QueueItem:
        row = self.get(item_id)
        if row.state != QUEUED:
            raise QueueStateError(f"queue item {item_id} is {row.state}, not queued")
        return row

    def _put(self, row: QueueItem, **changes: object) -> QueueItem:
        row = dataclasses.replace(row, **changes)  # type: ignore[arg-type]
        self._items[row.id] = row
        return row

    def due(self, now: float, limit: int = 100) -> list[QueueItem]:
        rows = [
            r
            for r in self._items.values()
            if r.state == QUEUED and r.next_attempt <= now and r.expires_at > now
        ]
        rows.sort(key=lambda r: (r.next_attempt, r.id))
        return rows[:limit]

    def mark_deferred(
        self,
        item_id: int,
        *,
        error: str,
        next_attempt: float,
        now: float,
        remaining: Sequence[str] | None = None,
    ) -> QueueItem:
        row = self._queued(item_id)
        self._route_errors[row.route] = error
        return self._put(
            row,
            attempts=row.attempts + 1,
            last_error=error,
            next_attempt=next_attempt,
            recipients=tuple(remaining) if remaining else row.recipients,
        )

    def mark_sent(
        self,
        item_id: int,
        *,
        reply: str,
        now: float,
        remaining: Sequence[str] = (),
        next_attempt: float | None = None,
        error: str | None = None,
    ) -> QueueItem:
        row = self._queued(item_id)
        if remaining:
            self._route_errors[row.route] = error
            return self._put(
                row,
                recipients=tuple(remaining),
                attempts=row.attempts + 1,
                last_error=error,
                last_reply=reply,
                next_attempt=next_attempt if next_attempt is not None else now,
            )
        self._route_errors[row.route] = None
        return self._put(
            row, state=SENT, attempts=row.attempts + 1, last_reply=reply, finished_at=now
        )

    def mark_failed(self, item_id: int, *, error: str, now: float) -> QueueItem:
        row = self._queued(item_id)
        self._route_errors[row.route] = error
        return self._put(
            row, state=FAILED, attempts=row.attempts + 1, last_error=error, finished_at=now
        )

    def expire(self, now: float) -> list[QueueItem]:
        return [
            self._put(r, state=EXPIRED, finished_at=now)
            for r in sorted(self._items.values(), key=lambda r: r.id)
            if r.state == QUEUED and r.expires_at <= now
        ]

    def unbounced(self) -> list[QueueItem]:
        return [
            r
            for r in sorted(self._items.values(), key=lambda r: r.id)
            if r.state in (FAILED, EXPIRED) and not r.bounced
        ]

    def mark_bounced(self, item_id: int) -> None:
        row = self.get(item_id)
        if row.state not in (FAILED, EXPIRED):
            raise QueueStateError(f"queue item {item_id} is {row.state}; nothing to bounce")
        self._put(row, bounced=True)

    def pending(self, route: str | None = None) -> list[QueueItem]:
        return [
            r
            for r in sorted(self._items.values(), key=lambda r: r.id)
            if r.state == QUEUED and (route is None or r.route == route)
        ]

    def status(self) -> list[RouteStatus]:
        routes = {r.route for r in self._items.values() if r.state == QUEUED}
        routes |= {name for name, error in self._route_errors.items() if error}
        result = []
        for name in sorted(routes):
            queued = self.pending(name)
            result.append(
                RouteStatus(
                    route=name,
                    queued=len(queued),
                    oldest=min((r.queued_at for r in queued), default=None),
                    last_error=self._route_errors.get(name),
                )
            )
        return result

    def purge(self, before: float) -> int:
        gone = [
            r.id
            for r in self._items.values()
            if r.finished_at is not None
            and r.finished_at < before
            and (r.state == SENT or r.bounced)
        ]
        for item_id in gone:
            del self._items[item_id]
            del self._content[item_id]
        return len(gone)
