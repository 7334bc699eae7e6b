"""One fetch pass from one POP3 upstream into the store: list, plan, RETR, deliver, DELE, QUIT.

Exactly-once, by ordering: each message is committed to the store together with its
UIDL (:meth:`Store.deliver`) before anything is deleted upstream, DELE is only sent for
UIDLs the ledger already holds as delivered (the pass re-plans after delivering, see
:mod:`gateway.pop3.plan`), and deletions only take effect at a successful QUIT
(RFC 1939 §6, UPDATE state). A pass that dies anywhere leaves every delivered message
delivered and every undelivered message on the server; the next pass resumes.

Message bytes are kept exactly as the server sends them after dot-unstuffing
(RFC 1939 §3): lines joined with CRLF, streamed into a spooled temporary file with a
named in-memory threshold, and cut off at ``max_message_size``.
"""

from __future__ import annotations

import datetime
import tempfile
from dataclasses import dataclass, replace
from typing import Any

import structlog
from twisted.internet import defer
from twisted.mail.pop3 import ServerErrorResponse

from gateway.config import Upstream
from gateway.pop3.client import (
    MAX_LINE_LENGTH,
    FetchCancelled,
    FetchError,
    UIDLUnsupported,
    UpstreamClient,
    UpstreamLineTooLong,
    connect,
    login,
    translate_failure,
)
from gateway.pop3.plan import ListedMessage, Listing, SyncPlan, build_listing, plan_sync
from gateway.store.interfaces import Delivery, MessageTooLarge, Store

log = structlog.get_logger(__name__)

SPOOL_MEMORY_THRESHOLD = 1024 * 1024
"""A message being received stays in memory up to this size, then spills to a temp file."""

OVERSIZE_DRAIN_LIMIT = 8 * 1024 * 1024
"""After a message passes max_message_size (the server's LIST size was wrong), this many
further octets are read and discarded to keep the session usable; past that the
connection is dropped."""

SKIP_TOO_LARGE = "too large"
SKIP_LINE_TOO_LONG = "line too long"


class StoreFailed(FetchError):
    """The store refused a delivery for a reason other than size: the pass stops before
    any DELE, so nothing undelivered can be deleted."""

    kind = "store"


class MessageTooLargeWhileStreaming(FetchError):
    """A message grew far past max_message_size while streaming; the connection was dropped."""

    kind = "too_large"


@dataclass(frozen=True)
class FetchResult:
    """What one pass did. ``listed`` is the number of messages the upstream listed."""

    upstream: str
    listed: int = 0
    fetched: int = 0
    bytes: int = 0
    skipped: int = 0
    deleted: int = 0
    errors: int = 0
    forgotten: int = 0
    duplicates: int = 0
    complete_listing: bool = False
    seconds: float = 0.0


class MessageSink:
    """Receives one message's dot-unstuffed lines (CRLF removed) from RETR.

    Rebuilds the message bytes (each line + CRLF, RFC 1939 §3) into a
    :class:`tempfile.SpooledTemporaryFile`, counting octets as LIST does. Past ``limit``
    it stops keeping data and marks the message ``oversized``; past ``limit`` plus
    :data:`OVERSIZE_DRAIN_LIMIT` it calls ``on_overflow`` (which drops the connection).
    Never raises: an exception inside the line consumer would kill the protocol.
    """

    def __init__(self, limit: int, on_overflow: Any = None) -> None:
        self.limit = limit
        self.size = 0
        self.oversized = False
        self.overflowed = False
        self._on_overflow = on_overflow
        self._file: Any = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_THRESHOLD)

    def line(self, line: bytes) -> None:
        self.size += len(line) + 2
        if self.oversized:
            if not self.overflowed and self.size > self.limit + OVERSIZE_DRAIN_LIMIT:
                self.overflowed = True
                if self._on_overflow is not None:
                    self._on_overflow()
            return
        if self.size > self.limit:
            self.oversized = True
            self._file.close()
            return
        self._file.write(line)
        self._file.write(b"\r\n")

    def getvalue(self) -> bytes:
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        self._file.close()


def _now(reactor: Any) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(reactor.seconds(), datetime.UTC)


class _Pass:
    """State of one fetch pass; the steps are methods so each stays readable."""

    def __init__(self, upstream: Upstream, store: Store, reactor: Any) -> None:
        self.upstream = upstream
        self.store = store
        self.reactor = reactor
        self.host = upstream.host
        self.started = reactor.seconds()
        self.result = FetchResult(upstream.name)
        self.client: UpstreamClient | None = None

    def add(self, **counts: int) -> None:
        self.result = replace(
            self.result, **{k: getattr(self.result, k) + v for k, v in counts.items()}
        )

    async def command(self, step: str, d: defer.Deferred[Any]) -> Any:
        try:
            return await d
        except Exception as e:
            raise translate_failure(e, self.host, step) from None

    async def run(self) -> FetchResult:
        up = self.upstream
        log.info("pop3.fetch_start", upstream=up.name, host=up.host, port=up.port, tls=up.tls)
        try:
            self.client = await connect(up, self.reactor)
            await login(self.client, up)
            listing = await self.read_listing()
            known = self.store.known_uidls(up.name)
            plan = plan_sync(
                listing.messages,
                known,
                keep_on_server=True,  # deletions are planned after delivering, below
                max_message_size=up.max_message_size,
                complete=listing.complete,
                problems=listing.problems,
            )
            self.report_listing(listing, plan)
            self.record_too_large(plan.too_large)
            for message in plan.fetch:
                await self.fetch_message(message)
            deletable = self.plan_deletions(listing) if not up.keep_on_server else ()
            dele_ok = await self.delete(deletable)
            await self.quit(dele_ok)
            if plan.forget:
                self.store.forget_uidls(up.name, sorted(plan.forget))
                self.add(forgotten=len(plan.forget))
        except Exception as e:
            self.finish(abort=True)
            error = e if isinstance(e, FetchError) else translate_failure(e, self.host, "fetch")
            if isinstance(error, FetchCancelled):
                log.info("pop3.fetch_cancelled", upstream=up.name, fetched=self.result.fetched)
                if self.client is not None:
                    await self.client.closed
                raise defer.CancelledError() from None
            error.result = self.result
            log.warning(
                "pop3.fetch_failed",
                upstream=up.name,
                error=error.kind,
                message=str(error),
                fetched=self.result.fetched,
                # an error nobody anticipated is a bug: keep its traceback for the log
                exc_info=e if type(error) is FetchError else None,
            )
            if self.client is not None:
                await self.client.closed
            raise error from None
        self.finish(abort=False)
        await self.close()
        log.info(
            "pop3.fetched",
            upstream=up.name,
            count=self.result.fetched,
            bytes=self.result.bytes,
            seconds=round(self.result.seconds, 3),
            listed=self.result.listed,
            skipped=self.result.skipped,
            deleted=self.result.deleted,
            errors=self.result.errors,
        )
        return self.result

    def finish(self, *, abort: bool) -> None:
        """Stamp the duration; on failure drop the connection without QUIT, so that no
        DELE of this session can take effect (RFC 1939 §6: only QUIT enters UPDATE)."""
        self.result = replace(self.result, seconds=self.reactor.seconds() - self.started)
        if abort and self.client is not None:
            self.client.abort()

    async def read_listing(self) -> Listing:
        """STAT, UIDL and LIST (RFC 1939 §5, §7), joined by the sans-I/O parser."""
        assert self.client is not None
        count, _octets = await self.command("STAT", self.client.stat())
        try:
            uidl_lines = await self.client.long_lines(b"UIDL")
        except ServerErrorResponse as e:
            raise UIDLUnsupported(
                f"{self.host} does not support UIDL (RFC 1939 §7): {e.args[0]!r}; "
                "popgate needs it to fetch each message exactly once"
            ) from None
        except Exception as e:
            raise translate_failure(e, self.host, "UIDL") from None
        try:
            list_lines: list[bytes] | None = await self.client.long_lines(b"LIST")
        except ServerErrorResponse:
            list_lines = None
        except Exception as e:
            raise translate_failure(e, self.host, "LIST") from None
        listing = build_listing(uidl_lines, list_lines, stat_count=count)
        self.result = replace(
            self.result, listed=len(listing.messages), complete_listing=listing.complete
        )
        return listing

    def report_listing(self, listing: Listing, plan: SyncPlan) -> None:
        up = self.upstream
        if not listing.complete:
            log.warning(
                "pop3.listing_incomplete", upstream=up.name, problems=list(listing.problems)
            )
        if plan.duplicates:
            self.add(duplicates=len(plan.duplicates))
            log.warning(
                "pop3.duplicate_uidls",
                upstream=up.name,
                uidls=sorted(plan.duplicates)[:20],
                count=len(plan.duplicates),
            )

    def record_too_large(self, messages: tuple[ListedMessage, ...]) -> None:
        for message in messages:
            self.skip(message, SKIP_TOO_LARGE, message.size)

    def skip(self, message: ListedMessage, reason: str, size: int | None) -> None:
        up = self.upstream
        detail = f"{reason} ({size} octets, limit {up.max_message_size})"
        if reason == SKIP_LINE_TOO_LONG:
            detail = f"{reason} (a line over {MAX_LINE_LENGTH} octets)"
        self.store.record_skipped(up.name, message.uidl, detail)
        self.add(skipped=1)
        log.warning(
            "pop3.message_skipped",
            upstream=up.name,
            uidl=message.uidl,
            reason=reason,
            size=size,
            limit=up.max_message_size,
        )

    async def fetch_message(self, message: ListedMessage) -> None:
        """RETR one message (RFC 1939 §5) and deliver it; -ERR skips it for this pass."""
        assert self.client is not None
        up = self.upstream
        client = self.client
        sink = MessageSink(up.max_message_size, on_overflow=client.abort)
        try:
            try:
                await client.retrieve(message.number - 1, consumer=sink.line)
            except ServerErrorResponse as e:
                self.add(errors=1)
                log.warning(
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
                    self.skip(message, SKIP_TOO_LARGE, sink.size)
                    raise MessageTooLargeWhileStreaming(
                        f"{self.host}: message {message.uidl} exceeded the size limit by more "
                        f"than {OVERSIZE_DRAIN_LIMIT} octets; connection dropped"
                    ) from None
                if isinstance(error, UpstreamLineTooLong):
                    # Permanent: retrying would drop every future pass at the same place.
                    self.skip(message, SKIP_LINE_TOO_LONG, message.size)
                raise error from None
            if sink.oversized:
                self.skip(message, SKIP_TOO_LARGE, sink.size)
                return
            raw = sink.getvalue()
        finally:
            sink.close()
        delivery = Delivery(
            upstream=up.name,
            uidl=message.uidl,
            raw=raw,
            internaldate=_now(self.reactor),
            size_on_server=message.size,
        )
        try:
            uid = self.store.deliver(up.owner, up.folder, delivery)
        except MessageTooLarge:
            self.skip(message, SKIP_TOO_LARGE, len(raw))
            return
        except Exception as e:
            raise StoreFailed(
                f"storing message {message.uidl} from {up.name} failed: {type(e).__name__}: {e}"
            ) from None
        if uid is None:
            log.info("pop3.already_delivered", upstream=up.name, uidl=message.uidl)
            return
        self.add(fetched=1, bytes=len(raw))

    def plan_deletions(self, listing: Listing) -> tuple[ListedMessage, ...]:
        """Re-plan from the ledger as it is now, after this pass's deliveries committed:
        only UIDLs durably recorded as delivered may be deleted (never skipped ones)."""
        up = self.upstream
        entries = self.store.ledger_entries(up.name)
        known = {e.uidl for e in entries}
        skipped = {e.uidl for e in entries if e.state != "delivered"}
        plan = plan_sync(
            listing.messages,
            known,
            keep_on_server=False,
            max_message_size=up.max_message_size,
            not_deletable=skipped,
            complete=listing.complete,
        )
        return plan.delete

    async def delete(self, messages: tuple[ListedMessage, ...]) -> list[ListedMessage]:
        """DELE each (RFC 1939 §5); a -ERR leaves that message on the server."""
        assert self.client is not None
        accepted: list[ListedMessage] = []
        for message in messages:
            try:
                await self.client.delete(message.number - 1)
            except ServerErrorResponse as e:
                self.add(errors=1)
                log.warning(
                    "pop3.dele_failed",
                    upstream=self.upstream.name,
                    uidl=message.uidl,
                    message=repr(e.args[0] if e.args else b""),
                )
                continue
            except Exception as e:
                raise translate_failure(e, self.host, f"DELE {message.number}") from None
            accepted.append(message)
        return accepted

    async def quit(self, deleted: list[ListedMessage]) -> None:
        """QUIT commits the DELEs (RFC 1939 §6). If it fails, they stay: safe."""
        assert self.client is not None
        try:
            await self.client.quit()
        except Exception as e:
            error = translate_failure(e, self.host, "QUIT")
            if isinstance(error, FetchCancelled):
                raise error from None
            if deleted:
                self.add(errors=1)
            log.warning(
                "pop3.quit_failed",
                upstream=self.upstream.name,
                error=error.kind,
                message=str(error),
                deletions_lost=len(deleted),
            )
            return
        self.add(deleted=len(deleted))

    async def close(self) -> None:
        """Wait for the connection to be gone (the server closes after QUIT; we close too)."""
        client = self.client
        if client is None:
            return
        if client.connected_now:
            client.transport.loseConnection()
        await client.closed


def fetch_once(upstream: Upstream, store: Store, *, reactor: Any) -> defer.Deferred[FetchResult]:
    """Run one fetch pass; fires with a :class:`FetchResult`, or fails with a
    :class:`~gateway.pop3.client.FetchError` whose ``result`` says what was achieved.

    Cancelling the Deferred drops the connection without QUIT: nothing is deleted and
    everything already delivered stays delivered.
    """
    return defer.Deferred.fromCoroutine(_Pass(upstream, store, reactor).run())
