"""Pipelined retrieval for one fetch pass: RETR each message to fetch (RFC 1939 §5), up to
:data:`PIPELINE_DEPTH` on the wire at once with a server that announces PIPELINING
(RFC 2449 §6.6), each answer taken in order into a :class:`~gateway.pop3.spool.MessageSink`
and queued for the pass's next batch commit.

A mixin of the fetcher's pass (:class:`gateway.pop3.fetcher._Pass`): it shares the pass's
state and calls back into its ledger side (``queue``, ``flush``, ``skip``, ``add``).
"""

from __future__ import annotations

import datetime
from collections import deque
from typing import Any

from twisted.mail.pop3 import ServerErrorResponse

from gateway.message.analysis import analyze
from gateway.pop3.arrival import arrival_time
from gateway.pop3.client import UpstreamClient
from gateway.pop3.errors import (
    FetchCancelled,
    MessageTooLargeWhileStreaming,
    UpstreamLineTooLong,
    translate_failure,
)
from gateway.pop3.plan import ListedMessage
from gateway.pop3.spool import OVERSIZE_DRAIN_LIMIT, MessageSink
from gateway.pop3.upstream import Upstream
from gateway.store.interfaces import Delivery

PIPELINE_DEPTH = 8
"""RETRs on the wire at once with a server that announces PIPELINING (RFC 2449 §6.6):
enough that the server is never idle waiting for the next command, while the messages
in flight wait in the kernel's socket buffers, not in this process."""

SKIP_TOO_LARGE = "too large"
SKIP_LINE_TOO_LONG = "line too long"
"""Why a message was not retrieved, as the ledger records it (``record_skipped``)."""


def _now(reactor: Any) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(reactor.seconds(), datetime.UTC)


class PipelinedRetrieval:
    """The pass's receiving side (a mixin of :class:`gateway.pop3.fetcher._Pass`)."""

    client: UpstreamClient | None
    upstream: Upstream
    host: str
    log: Any
    reactor: Any
    analyze_on_arrival: bool

    def retrieve(self, message: ListedMessage) -> tuple[ListedMessage, MessageSink, Any]:
        """Send (or queue) one RETR (RFC 1939 §5) into a fresh sink."""
        assert self.client is not None
        sink = MessageSink(self.upstream.max_message_size, on_overflow=self.client.abort)
        return message, sink, self.client.retrieve(message.number - 1, consumer=sink.line)

    async def fetch_all(self, messages: tuple[ListedMessage, ...]) -> None:
        """RETR each message in order; with a server that pipelines (RFC 2449 §6.6), up
        to :data:`PIPELINE_DEPTH` RETRs are on the wire at once, so the server sends the
        next message while this one is analysed and committed. Answers are still taken
        one at a time, in order, exactly as without pipelining."""
        assert self.client is not None
        depth = PIPELINE_DEPTH if self.client.pipelining else 1
        pending = iter(messages)
        ahead: deque[tuple[ListedMessage, MessageSink, Any]] = deque()

        def refill(limit: int) -> None:
            while len(ahead) < limit:
                message = next(pending, None)
                if message is None:
                    return
                ahead.append(self.retrieve(message))

        try:
            refill(1)
            while ahead:
                current = ahead.popleft()
                refill(depth - 1)  # these stay on the wire while this one is taken
                await self.fetch_message(*current)
                refill(1)
        finally:
            # The pass failed with RETRs still queued: the connection is being dropped,
            # and their answers (failures) are of no interest.
            for _message, sink, d in ahead:
                d.addErrback(lambda _failure: None)
                sink.close()

    async def fetch_message(self, message: ListedMessage, sink: MessageSink, retr: Any) -> None:
        """Take one RETR's answer (RFC 1939 §5) and queue the message for the next batch
        commit; -ERR skips it for this pass."""
        assert self.client is not None
        up = self.upstream
        try:
            try:
                await retr
            except ServerErrorResponse as e:
                self.add(errors=1)
                self.log.warning(
                    "pop3.retr_failed",
                    upstream=up.name,
                    uidl=message.uidl,
                    number=message.number,
                    message=repr(e.args[0] if e.args else b""),
                )
                return
            except Exception as e:
                error = translate_failure(e, self.host, f"RETR {message.number}")
                if isinstance(error, FetchCancelled):
                    raise error from None
                if sink.oversized:
                    await self.flush()
                    await self.skip(message, SKIP_TOO_LARGE, sink.size)
                    raise MessageTooLargeWhileStreaming(
                        f"{self.host}: message {message.uidl} exceeded the size limit by more "
                        f"than {OVERSIZE_DRAIN_LIMIT} octets; connection dropped"
                    ) from None
                if isinstance(error, UpstreamLineTooLong):
                    # Permanent: retrying would drop every future pass at the same place.
                    await self.flush()
                    await self.skip(message, SKIP_LINE_TOO_LONG, message.size)
                raise error from None
            if sink.oversized:
                await self.skip(message, SKIP_TOO_LARGE, sink.size)
                return
            raw = sink.getvalue()
        finally:
            sink.close()
        await self.queue(
            Delivery(
                upstream=up.name,
                uidl=message.uidl,
                raw=raw,
                internaldate=arrival_time(raw, _now(self.reactor)),
                size_on_server=message.size,
                # Analysed now, while the server sends the next pipelined answers, rather
                # than in the batch commit, when it would wait (inline stores only: a
                # threaded store analyses on its own thread, off the reactor).
                analysis=analyze(raw) if self.analyze_on_arrival else None,
            )
        )
