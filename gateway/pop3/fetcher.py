"""One fetch pass from one POP3 upstream into the store: list, plan, RETR, deliver, DELE, QUIT.

Exactly-once, by ordering: each message is committed to the store together with its
UIDL before anything is deleted upstream. Messages are committed in batches
(:meth:`Store.deliver_many`, one durable transaction per batch: a big first import
pays one fsync per :data:`BATCH_MAX_MESSAGES` messages, not one per message); a batch is
flushed when it is full, when it is :data:`BATCH_MAX_SECONDS` old, and before the pass
ends for any reason. DELE is only sent after the last batch committed and only for UIDLs
the ledger then holds as delivered and a policy chooses (:func:`plan.plan_deletions`),
and deletions only take effect at a successful QUIT (RFC 1939 §6, UPDATE state). A
pass killed anywhere (even by SIGKILL) leaves every committed message committed and
every uncommitted one on the server, undeleted; the next pass resumes.

Message bytes are kept exactly as the server sends them after dot-unstuffing
(RFC 1939 §3): lines joined with CRLF, kept in memory up to
:data:`gateway.pop3.spool.SPOOL_MEMORY_THRESHOLD` and spilled to a temporary file beyond,
cut off at ``max_message_size``. RETR, pipelined with a server that allows it, is the pass's
mixin :class:`gateway.pop3.retrieval.PipelinedRetrieval`.

Several nodes (issue 13): the poller hands a node's pass a
:class:`~gateway.store.leases.FencedLedger`, so each commit checks, in its own
transaction, that this node still holds the upstream's lease. A refused commit
(:class:`~gateway.store.errors.LeaseLost`) ends the pass like any failure: the connection
is dropped without QUIT, so no DELE of a node that lost the lease takes effect; and
before a QUIT that would make DELEs take effect, the lease is confirmed once more.

Store calls go through the ``runner`` given (:mod:`gateway.store.runner`): on the reactor
thread for SQLite, on a bounded pool for a backend with network round trips; the pass
awaits each one, so its order of effects is the same either way.

Progress: an optional ``progress`` callable receives a dict after the listing and after
each message (``popgate fetch`` draws its bar from these), and the log gets a
``pop3.progress`` event every :data:`PROGRESS_LOG_EVERY` messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import structlog
from twisted.internet import defer
from twisted.mail.pop3 import ServerErrorResponse

from gateway.pop3.client import UpstreamClient
from gateway.pop3.connect import connect, login
from gateway.pop3.errors import (
    FetchCancelled,
    FetchError,
    LeaseLostError,
    StoreFailed,
    translate_failure,
)
from gateway.pop3.framing import MAX_LINE_LENGTH
from gateway.pop3.listing import read_listing
from gateway.pop3.plan import (
    DeletionPolicy,
    LedgerFact,
    ListedMessage,
    Listing,
    SyncPlan,
    plan_deletions,
    plan_sync,
)
from gateway.pop3.retrieval import SKIP_LINE_TOO_LONG, SKIP_TOO_LARGE, PipelinedRetrieval
from gateway.pop3.upstream import Upstream
from gateway.store.interfaces import Delivery, LeaseLost, Ledger, MessageTooLarge
from gateway.store.leases import Fenced
from gateway.store.runner import InlineRunner, StoreRunner

log = structlog.get_logger(__name__)

BATCH_MAX_MESSAGES = 200
"""Most messages committed in one store transaction."""

BATCH_MAX_BYTES = 16 * 1024 * 1024
"""Most message octets held in memory waiting for one commit."""

BATCH_MAX_SECONDS = 1.0
"""A batch older than this is committed after the next message, so mail trickling in
slowly still shows up in IMAP promptly."""

PROGRESS_LOG_EVERY = 500
"""A ``pop3.progress`` log event every this many messages received."""

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FetchResult:
    """What one pass did. ``listed`` is the number of messages the upstream listed;
    ``backlog`` the new messages it listed that this pass did not manage to store."""

    upstream: str
    listed: int = 0
    fetched: int = 0
    bytes: int = 0
    skipped: int = 0
    deleted: int = 0
    errors: int = 0
    forgotten: int = 0
    duplicates: int = 0
    deduplicated: int = 0
    backlog: int = 0
    complete_listing: bool = False
    seconds: float = 0.0
    login_delay: float = 0.0  # CAPA LOGIN-DELAY seconds, 0 when not announced

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the control socket and status."""
        return asdict(self)


def deletion_policy(upstream: Upstream) -> DeletionPolicy:
    return DeletionPolicy(
        keep_on_server=upstream.keep_on_server,
        delete_after=upstream.delete_after,
        delete_when_over=upstream.delete_when_over,
        deleted_in_imap=upstream.deleted_in_imap,
    )


class _Pass(PipelinedRetrieval):
    """State of one fetch pass; the steps are methods so each stays readable."""

    def __init__(
        self,
        upstream: Upstream,
        store: Ledger,
        reactor: Any,
        progress: Progress | None,
        runner: StoreRunner,
    ) -> None:
        self.upstream = upstream
        self.store = store
        self.runner = runner
        self.reactor = reactor
        self.progress = progress
        # every event of a pass names the local owner too (who is missing mail?)
        self.log = log.bind(owner=upstream.owner)
        self.host = upstream.host
        self.started = reactor.seconds()
        self.result = FetchResult(upstream.name)
        self.client: UpstreamClient | None = None
        self.to_fetch = 0
        self.received = 0
        self.received_bytes = 0
        self.pending: list[Delivery] = []
        self.pending_bytes = 0
        self.pending_since = 0.0
        self.analyze_on_arrival = isinstance(runner, InlineRunner)

    def add(self, **counts: int) -> None:
        self.result = replace(
            self.result, **{k: getattr(self.result, k) + v for k, v in counts.items()}
        )

    async def command(self, step: str, d: defer.Deferred[Any]) -> Any:
        try:
            return await d
        except Exception as e:
            raise translate_failure(e, self.host, step) from None

    def report(self, phase: str) -> None:
        if self.progress is None:
            return
        r = self.result
        info = {
            "upstream": self.upstream.name,
            "phase": phase,
            "listed": r.listed,
            "to_fetch": self.to_fetch,
            "received": self.received,
            "bytes": self.received_bytes,
            "stored": r.fetched,
            "skipped": r.skipped,
            "backlog": max(0, self.to_fetch - self.received),
            "elapsed": round(self.reactor.seconds() - self.started, 3),
        }
        try:
            self.progress(info)
        except Exception:
            self.log.exception("pop3.progress_callback_failed", upstream=self.upstream.name)

    async def run(self) -> FetchResult:
        up = self.upstream
        self.log.info("pop3.fetch_start", upstream=up.name, host=up.host, port=up.port, tls=up.tls)
        try:
            self.client = await connect(up, self.reactor)
            try:
                await login(self.client, up)
            finally:  # the poller spaces passes by CAPA LOGIN-DELAY (RFC 2449 §6.8)
                self.result = replace(self.result, login_delay=self.client.login_delay)
            listing = await self.read_listing()
            known = await self.runner.run(self.store.known_uidls, up.name)
            plan = plan_sync(
                listing.messages,
                known,
                keep_on_server=True,  # deletions are planned after delivering, below
                max_message_size=up.max_message_size,
                complete=listing.complete,
                problems=listing.problems,
            )
            self.to_fetch = len(plan.fetch)
            self.report_listing(listing, plan)
            await self.record_too_large(plan.too_large)
            self.report("fetching")
            await self.fetch_all(plan.fetch)
            await self.flush()
            self.report("deleting")
            deletions = await self.plan_deletions(listing)
            dele_ok = await self.delete([m for m, _policy in deletions])
            if dele_ok and isinstance(self.store, Fenced):
                # QUIT makes the DELEs take effect (RFC 1939 §6): only while this node
                # still holds the upstream's lease; else the except below drops the line.
                await self.runner.run(self.store.confirm_lease)
            await self.quit(dele_ok, deletions)
            if plan.forget:
                await self.runner.run(self.store.forget_uidls, up.name, sorted(plan.forget))
                self.add(forgotten=len(plan.forget))
        except Exception as e:
            # What was received completely is committed before giving up: it is valid mail.
            flush_error = await self.flush_after_failure(e)
            self.finish(abort=True)
            if flush_error is not None:
                e = flush_error
            error = e if isinstance(e, FetchError) else translate_failure(e, self.host, "fetch")
            if isinstance(error, FetchCancelled):
                self.log.info("pop3.fetch_cancelled", upstream=up.name, fetched=self.result.fetched)
                if self.client is not None:
                    await self.client.closed
                raise defer.CancelledError() from None
            error.result = self.result
            self.log.warning(
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
        self.report("done")
        self.log.info(
            "pop3.fetched",
            upstream=up.name,
            count=self.result.fetched,
            bytes=self.result.bytes,
            seconds=round(self.result.seconds, 3),
            listed=self.result.listed,
            skipped=self.result.skipped,
            deleted=self.result.deleted,
            deduplicated=self.result.deduplicated,
            errors=self.result.errors,
        )
        return self.result

    def finish(self, *, abort: bool) -> None:
        """Stamp the duration and backlog; on failure drop the connection without QUIT, so
        that no DELE of this session can take effect (RFC 1939 §6: only QUIT enters UPDATE)."""
        self.result = replace(
            self.result,
            seconds=self.reactor.seconds() - self.started,
            backlog=max(0, self.to_fetch - self.result.fetched - self.result.deduplicated),
        )
        if abort and self.client is not None:
            self.client.abort()

    # ---- listing ---------------------------------------------------------------------

    async def read_listing(self) -> Listing:
        """The upstream's listing (:func:`gateway.pop3.listing.read_listing`)."""
        assert self.client is not None
        listing = await read_listing(self.client, self.host, self.log, self.upstream.name)
        self.result = replace(
            self.result, listed=len(listing.messages), complete_listing=listing.complete
        )
        return listing

    def report_listing(self, listing: Listing, plan: SyncPlan) -> None:
        up = self.upstream
        if not listing.complete:
            self.log.warning(
                "pop3.listing_incomplete", upstream=up.name, problems=list(listing.problems)
            )
        if plan.duplicates:
            self.add(duplicates=len(plan.duplicates))
            self.log.warning(
                "pop3.duplicate_uidls",
                upstream=up.name,
                uidls=sorted(plan.duplicates)[:20],
                count=len(plan.duplicates),
            )
        self.log.info(
            "pop3.listed",
            upstream=up.name,
            listed=plan.listed,
            new=len(plan.fetch),
            too_large=len(plan.too_large),
        )

    # ---- skipping --------------------------------------------------------------------

    async def record_too_large(self, messages: tuple[ListedMessage, ...]) -> None:
        for message in messages:
            await self.skip(message, SKIP_TOO_LARGE, message.size)

    async def skip(self, message: ListedMessage, reason: str, size: int | None) -> None:
        up = self.upstream
        detail = f"{reason} ({size} octets, limit {up.max_message_size})"
        if reason == SKIP_LINE_TOO_LONG:
            detail = f"{reason} (a line over {MAX_LINE_LENGTH} octets)"
        await self.runner.run(self.store.record_skipped, up.name, message.uidl, detail)
        self.add(skipped=1)
        self.log.warning(
            "pop3.message_skipped",
            upstream=up.name,
            uidl=message.uidl,
            reason=reason,
            size=size,
            limit=up.max_message_size,
        )

    async def queue(self, delivery: Delivery) -> None:
        if not self.pending:
            self.pending_since = self.reactor.seconds()
        self.pending.append(delivery)
        self.pending_bytes += len(delivery.raw)
        self.received += 1
        self.received_bytes += len(delivery.raw)
        if (
            len(self.pending) >= BATCH_MAX_MESSAGES
            or self.pending_bytes >= BATCH_MAX_BYTES
            or self.reactor.seconds() - self.pending_since >= BATCH_MAX_SECONDS
        ):
            await self.flush()
        self.report("fetching")
        if self.received % PROGRESS_LOG_EVERY == 0:
            self.log.info(
                "pop3.progress",
                upstream=self.upstream.name,
                received=self.received,
                of=self.to_fetch,
                bytes=self.received_bytes,
                stored=self.result.fetched,
                seconds=round(self.reactor.seconds() - self.started, 3),
            )

    # ---- committing ------------------------------------------------------------------

    async def flush(self) -> None:
        """Commit the pending batch in one transaction. A message over the store's own
        size limit fails the whole batch, which is then retried one message at a time."""
        batch, self.pending, self.pending_bytes = self.pending, [], 0
        if not batch:
            return
        up = self.upstream
        too_large = 0
        deliver_many = self.store.deliver_many
        try:
            uids = await self.runner.run(deliver_many, up.owner, up.folder, batch, dedup=up.dedup)
        except MessageTooLarge:
            uids = []
            for delivery in batch:
                try:
                    uids += await self.runner.run(
                        deliver_many, up.owner, up.folder, [delivery], dedup=up.dedup
                    )
                except LeaseLost as e:
                    raise self.lease_lost(e) from None
                except MessageTooLarge:
                    uids.append(None)
                    too_large += 1
                    await self.skip(
                        ListedMessage(0, delivery.uidl, delivery.size_on_server),
                        SKIP_TOO_LARGE,
                        len(delivery.raw),
                    )
                except defer.CancelledError:
                    raise
                except Exception as e:
                    raise self.store_failed(delivery, e) from None
        except LeaseLost as e:
            raise self.lease_lost(e) from None
        except defer.CancelledError:
            raise  # the pass is being stopped (service stop, lease lost): not a store fault
        except Exception as e:
            raise self.store_failed(batch[0], e) from None
        stored = [d for d, uid in zip(batch, uids, strict=True) if uid is not None]
        # None without a size problem: the store already held these bytes from another
        # upstream (content dedup); the fetcher never queues a UIDL the ledger knows.
        deduplicated = len(batch) - len(stored) - too_large
        self.add(
            fetched=len(stored),
            bytes=sum(len(d.raw) for d in stored),
            deduplicated=max(0, deduplicated),
        )
        if deduplicated > 0:
            self.log.info("pop3.deduplicated", upstream=up.name, count=deduplicated)

    def store_failed(self, delivery: Delivery, e: Exception) -> StoreFailed:
        return StoreFailed(
            f"storing message {delivery.uidl} from {self.upstream.name} failed: "
            f"{type(e).__name__}: {e}"
        )

    def lease_lost(self, e: LeaseLost) -> LeaseLostError:
        return LeaseLostError(f"{self.upstream.name}: batch not committed: {e}")

    async def flush_after_failure(self, error: Exception) -> FetchError | None:
        if isinstance(error, StoreFailed | LeaseLostError | LeaseLost) or not self.pending:
            self.pending = []
            return None
        try:
            await self.flush()
        except (StoreFailed, LeaseLostError) as e:
            return e
        return None

    # ---- deleting --------------------------------------------------------------------

    async def plan_deletions(self, listing: Listing) -> tuple[tuple[ListedMessage, str], ...]:
        """Re-plan from the ledger as it is now, after this pass's deliveries committed:
        only UIDLs durably recorded as delivered may be deleted (never skipped ones)."""
        up = self.upstream
        policy = deletion_policy(up)
        if not policy.deletes_anything or not listing.complete:
            return ()
        entries = await self.runner.run(self.store.ledger_entries, up.name)
        ledger = {e.uidl: LedgerFact(e.state, e.fetched_at.timestamp(), e.stored) for e in entries}
        return plan_deletions(
            listing.messages,
            ledger,
            policy,
            now=self.reactor.seconds(),
            complete=listing.complete,
        )

    async def delete(self, messages: list[ListedMessage]) -> list[ListedMessage]:
        """DELE each (RFC 1939 §5); a -ERR leaves that message on the server."""
        assert self.client is not None
        accepted: list[ListedMessage] = []
        for message in messages:
            try:
                await self.client.delete(message.number - 1)
            except ServerErrorResponse as e:
                self.add(errors=1)
                self.log.warning(
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

    async def quit(
        self, deleted: list[ListedMessage], planned: tuple[tuple[ListedMessage, str], ...]
    ) -> None:
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
            self.log.warning(
                "pop3.quit_failed",
                upstream=self.upstream.name,
                error=error.kind,
                message=str(error),
                deletions_lost=len(deleted),
            )
            return
        self.add(deleted=len(deleted))
        done = {m.number for m in deleted}
        by_policy: dict[str, int] = {}
        for message, policy in planned:
            if message.number in done:
                by_policy[policy] = by_policy.get(policy, 0) + 1
        for policy, count in sorted(by_policy.items()):
            self.log.info("pop3.deleted", upstream=self.upstream.name, count=count, policy=policy)

    async def close(self) -> None:
        """Wait for the connection to be gone (the server closes after QUIT; we close too)."""
        client = self.client
        if client is None:
            return
        if client.connected_now:
            client.transport.loseConnection()
        await client.closed


def fetch_once(
    upstream: Upstream,
    store: Ledger,
    *,
    reactor: Any,
    progress: Progress | None = None,
    runner: StoreRunner | None = None,
) -> defer.Deferred[FetchResult]:
    """Run one fetch pass; fires with a :class:`FetchResult`, or fails with a
    :class:`~gateway.pop3.errors.FetchError` whose ``result`` says what was achieved.

    Every store call goes through ``runner`` (default :class:`InlineRunner`: on the
    reactor thread, for backends that run inline). Cancelling the Deferred drops the
    connection without QUIT: nothing is deleted and everything already received is
    committed (or, with a thread runner, is being committed: a store call in progress
    runs to its end).
    """
    if runner is None:
        runner = InlineRunner()
    return defer.Deferred.fromCoroutine(_Pass(upstream, store, reactor, progress, runner).run())
