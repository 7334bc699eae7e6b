"""What happens when the submission session accepts a message: commit it to the queue,
file the Sent copy, wake the relay. The ``accept`` callable the server factory takes.

The order is the durability argument: the queue row is committed first (the client's
250 follows only after this returns, RFC 5321 §6.1); the Sent copy is filed after, and
its failure is logged, not refused: the message *is* accepted and will be relayed, and
refusing now would make the client send it twice. A Sent copy already filed by the
client's own APPEND (same Message-ID and recipients, :class:`SentDedup`) is not filed again.

Where it runs: the queue row and the Sent copy are one call through ``runner`` (inline
for SQLite, so ``accept`` returns the queue id at once; on the store's threads for
PostgreSQL, so it returns a Deferred of it and no round trip runs on the reactor); the
relay is woken on the reactor thread once they are done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from twisted.internet.interfaces import IReactorTime

from gateway.store.queue import NewOutbound, OutboundQueue
from gateway.store.runner import StoreRunner
from gateway.submission.policy import DEFAULT_QUEUE_LIFETIME
from gateway.submission.sent import SentCopy, SentDedup, sent_copy
from gateway.submission.session import Submission

log = structlog.get_logger(__name__)

FileSent = Callable[[str, SentCopy], Any]
"""``(user, copy)`` → files ``copy.raw`` with ``copy.flags`` in the user's ``\\Sent``
mailbox and returns a reference to it (e.g. ``(mailbox_id, uid)``) for :class:`SentDedup`."""


class Acceptor:
    """``accept(submission) -> queue id`` for :class:`~gateway.submission.server.SubmissionFactory`."""

    def __init__(
        self,
        queue: OutboundQueue,
        *,
        clock: IReactorTime,
        lifetime: float = DEFAULT_QUEUE_LIFETIME,
        file_sent: FileSent | None = None,
        dedup: SentDedup | None = None,
        on_enqueued: Callable[[], Any] | None = None,
        runner: StoreRunner | None = None,
    ) -> None:
        self.queue = queue
        self.runner = runner if runner is not None and not runner.inline else None
        """Where the commit runs when not on the reactor thread (PostgreSQL), else None."""
        self.clock = clock
        self.lifetime = lifetime
        self.file_sent = file_sent
        self.dedup = dedup
        self.on_enqueued = on_enqueued

    def __call__(self, submission: Submission) -> Any:
        """The queue id (inline), or a Deferred of it (the commit on a store thread)."""
        now = self.clock.seconds()
        if self.runner is None:
            return self._enqueued(self._commit(submission, now))
        return self.runner.run(self._commit, submission, now).addCallback(self._enqueued)

    def _enqueued(self, queue_id: int) -> int:
        if self.on_enqueued is not None:
            self.on_enqueued()
        return queue_id

    def _commit(self, submission: Submission, now: float) -> int:
        """The queue row, then the Sent copy (where the store's calls run)."""
        item = self.queue.enqueue(
            NewOutbound(
                user=submission.user,
                route=submission.route,
                mail_from=submission.mail_from,
                recipients=submission.recipients,
                content=submission.relay,
                message_id=submission.message_id,
            ),
            now=now,
            lifetime=self.lifetime,
        )
        if self.file_sent is not None:
            self._file_sent(submission, now)
        return item.id

    def _file_sent(self, submission: Submission, now: float) -> None:
        dedup = self.dedup
        if dedup is not None and dedup.recent(submission.user, submission.raw, now) is not None:
            log.info("submission.sent_copy_exists", user=submission.user)
            return
        assert self.file_sent is not None
        try:
            ref = self.file_sent(submission.user, sent_copy(submission.raw))
        except Exception:
            log.exception("submission.sent_copy_failed", user=submission.user)
            return
        if dedup is not None:
            dedup.remember(submission.user, submission.raw, ref, now)
