"""Group commit for an inline store: IMAP writes commit on the reactor, their fsync waits on
a thread, and nothing a writing command says after its commit leaves before the disk has it.

With SQLite (the store runs inline, on the reactor thread) every STORE, APPEND, EXPUNGE
or \\Recent claim used to commit with ``synchronous=FULL``: one fsync of the WAL inside
the commit, 1-2 ms on a quiet disk and tens of ms on a busy one, during which the reactor
served nobody. Under the 50-client mix a fifth of the commands write, so every client
waited behind other clients' disk flushes (issue 19).

Now the server steps commands inside the store's
:meth:`~gateway.store.interfaces.DeferredSync.deferred_sync` block: a write commits
(visible at once, written to the WAL, not yet flushed) and returns in microseconds. The
protocol notices that a step committed (:attr:`~gateway.store.interfaces.DeferredSync.commit_seq`
moved) and holds that step's output, and the command's next steps, until
:class:`CommitSyncer` reports an fsync that started after the commit has returned
(:meth:`~gateway.store.interfaces.DeferredSync.sync_commits` on the syncer's own thread).
The reactor serves everyone else meanwhile, and every commit made while one fsync runs
is covered by the next single fsync: one flush for all the writes of a busy moment (group
commit, as databases do it). A client still gets its tagged OK only once its change is
on disk (RFC 3501 §7.1: OK means done), and the push to IDLE/NOTIFY sessions that a
change triggers waits for an fsync too. What other sessions read meanwhile is the
committed state, so one that reads in that millisecond (a FETCH, or a catch-up woken by
an earlier change) can see a change before it is durable (PostgreSQL's synchronous
commit hides it until the flush; SQLite's own ``synchronous=NORMAL`` does not): a power
loss then loses a change that its writer was never told had succeeded.

If the fsync fails (EIO), whether the writes are on disk is unknown: the waiting
connections are told ``* BYE`` and closed without their tagged responses, and the error
is logged (``imap.sync_failed``), as a database stops on a failed flush.

Flag changes (``flag_fsync = "optimized"``, the default): a commit that changes only
flags (STORE, the implicit \\Seen of a FETCH, SELECT's \\Recent claim) is answered without
waiting for its fsync, and pushed to IDLE sessions at once; the syncer flushes it within
:data:`LAZY_SYNC_DELAY` (or sooner, with the next commit that does wait). This is
Dovecot's default too: its ``mail_fsync = optimized`` fsyncs saved mail but not the
index where flags live (``mail_index_set_fsync_mode(..., 0)``: no transaction type is
fsynced). So a power loss within those 50 ms can undo a flag change the client
was told about, never lose a message: APPEND, COPY/MOVE and EXPUNGE, and mailbox
changes, still wait for an fsync that covers them, and every fsync of the WAL covers
every commit before it. ``flag_fsync = "always"`` makes flag changes wait as well.

Checkpoints (copying the WAL back into the database file, two more fsyncs) run on a
thread of their own, every :data:`CHECKPOINT_INTERVAL`, while the syncer runs: never on
the reactor, and never on the syncer's thread, where an APPEND's fsync used to wait
behind a checkpoint's (issue 19, bench/README.md "APPEND's tail, session 4").
"""

from __future__ import annotations

from typing import Any

import structlog
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from gateway.store.interfaces import DeferredSync

log = structlog.get_logger(__name__)


FLAG_FSYNC_MODES = ("optimized", "always")
"""``[store] flag_fsync``: whether a flag-only change's tagged OK waits for its fsync
("always") or not ("optimized", the default; module docstring)."""

LAZY_SYNC_DELAY = 0.05
"""Seconds a flag-only commit may wait before the syncer flushes it (when no other
commit's fsync covers it first): a bounded window, where Dovecot leaves its index to the
kernel's writeback (~30 s), yet one fsync for a burst of STOREs rather than one each,
so the fsyncs that APPENDs wait for seldom queue behind a flush nobody waits for."""


CHECKPOINT_INTERVAL = 1.0
"""Seconds between the checkpoints :class:`CommitSyncer` runs on its checkpoint thread:
at the mix's write rate the WAL then stays around SQLite's own 1,000-page threshold."""


class WaitDurable:
    """What a command waits on while its commit's fsync runs (the protocol's own wait,
    never yielded by a handler)."""


class CommitSyncer:
    """One fsync at a time on a private thread, each covering every commit made before it
    started; :meth:`wait` fires once a commit is covered.

    ``store`` is the inline backend (:class:`~gateway.store.interfaces.DeferredSync`);
    the factory starts the syncer with the listeners and stops it after them.
    ``lazy_flags`` (``flag_fsync = "optimized"``): flag-only commits are not waited for,
    only flushed within :data:`LAZY_SYNC_DELAY` (module docstring). While started, the
    store's commits do not checkpoint; a second private thread does, every
    :data:`CHECKPOINT_INTERVAL`, beside the fsyncs rather than between them.
    """

    def __init__(self, reactor: Any, store: DeferredSync, *, lazy_flags: bool = True) -> None:
        self.reactor = reactor
        self.store = store
        self.lazy_flags = lazy_flags
        self.synced = 0
        """Every commit up to this :attr:`~DeferredSync.commit_seq` is on disk."""
        self.lazy_synced = 0
        """Every flag-only commit up to this :attr:`~DeferredSync.lazy_seq` is on disk."""
        self._lazy_call: Any = None
        self.syncs = 0
        """fsyncs run so far (commits / syncs is the group-commit factor)."""
        self._running = False
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="imap-commit-sync")
        self._started = False
        self._stopped = False
        self.checkpoints = 0
        """Checkpoints run so far (on :attr:`_checkpoints`' thread)."""
        self._checkpoints = ThreadPool(minthreads=0, maxthreads=1, name="imap-checkpoint")
        self._checkpoints_started = False
        self._checkpoint_call: Any = None

    @property
    def seq(self) -> int:
        """The store's count of deferred commits so far."""
        return self.store.commit_seq

    def deferring(self) -> Any:
        """The block inside which the store's commits wait for :meth:`wait` (flag-only
        ones for :meth:`flush_lazy`, with ``lazy_flags``)."""
        return self.store.deferred_sync(lazy_flags=self.lazy_flags)

    def flush_lazy(self) -> None:
        """Flag-only commits were made: have an fsync cover them within
        :data:`LAZY_SYNC_DELAY`, nobody waiting for it (one per burst)."""
        if self._lazy_call is None and self.store.lazy_seq > self.lazy_synced:
            self._lazy_call = self.reactor.callLater(LAZY_SYNC_DELAY, self._lazy_due)

    def _lazy_due(self) -> None:
        self._lazy_call = None
        if not self._running and self.store.lazy_seq > self.lazy_synced:
            self._sync()
        # else: the fsync running may have started before them; when it returns,
        # _synced asks for another

    def owed(self) -> bool:
        """Whether some commit is not known to be on disk yet."""
        return self.store.commit_seq > self.synced

    def wait(self, seq: int) -> Deferred[None]:
        """A Deferred that fires (on the reactor thread) once commit number ``seq`` and
        all before it are on disk, or fails with the fsync's error."""
        if seq <= self.synced:
            done: Deferred[None] = Deferred()
            done.callback(None)
            return done
        waiter: Deferred[None] = Deferred()
        self._waiters.append((seq, waiter))
        if not self._running:
            self._sync()
        return waiter

    def start(self) -> None:
        """Run fsyncs on the thread again (the factory started; the thread itself starts
        with the first fsync), and checkpoints on the other: the store's commits stop
        checkpointing themselves."""
        self._stopped = False
        self.store.auto_checkpoint(False)
        self._schedule_checkpoint()

    def stop(self) -> None:
        """Stop the threads (after the fsync and the checkpoint in progress, if any);
        later fsyncs run inline, and the store's commits checkpoint again. Flag-only
        commits not yet flushed are flushed now."""
        self._stopped = True
        for name in ("_lazy_call", "_checkpoint_call"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
        if not self._running and self.store.lazy_seq > self.lazy_synced:
            self._sync()
        if self._started:
            self._started = False
            self._pool.stop()
        if self._checkpoints_started:
            self._checkpoints_started = False
            self._checkpoints.stop()
        try:
            self.store.auto_checkpoint(True)
        except Exception:  # the store closed first: nothing left to checkpoint for
            log.debug("imap.auto_checkpoint_not_restored")

    def _schedule_checkpoint(self) -> None:
        if self._checkpoint_call is None and not self._stopped:
            self._checkpoint_call = self.reactor.callLater(
                CHECKPOINT_INTERVAL, self._checkpoint_due
            )

    def _checkpoint_due(self) -> None:
        """Checkpoint on the checkpoint thread (a PASSIVE one with nothing to copy costs
        a statement and no fsync); the next is scheduled when this one is done."""
        self._checkpoint_call = None
        if self._stopped:
            return
        if not self._checkpoints_started:
            self._checkpoints_started = True
            self._checkpoints.start()
        deferred = deferToThreadPool(self.reactor, self._checkpoints, self.store.checkpoint)
        deferred.addBoth(self._checkpointed)

    def _checkpointed(self, result: Any) -> None:
        self.checkpoints += 1
        if isinstance(result, Failure):  # checkpoint() logs its own errors; this is a bug
            log.error("imap.checkpoint_failed", error=str(result.value))
        self._schedule_checkpoint()

    def _sync(self) -> None:
        self._running = True
        # Every commit so far, of both classes, is in the WAL file already.
        covers, lazy = self.store.commit_seq, self.store.lazy_seq
        if self._stopped:  # shutting down: no thread any more
            try:
                self.store.sync_commits()
            except Exception:
                self._failed(Failure())
            else:
                self._synced(None, covers, lazy)
            return
        if not self._started:
            self._started = True
            self._pool.start()
        deferred = deferToThreadPool(self.reactor, self._pool, self.store.sync_commits)
        deferred.addCallbacks(self._synced, self._failed, callbackArgs=(covers, lazy))

    def _synced(self, _result: None, covers: int, lazy: int) -> None:
        self._running = False
        self.syncs += 1
        self.synced = max(self.synced, covers)
        self.lazy_synced = max(self.lazy_synced, lazy)
        ready = [d for seq, d in self._waiters if seq <= covers]
        self._waiters = [(seq, d) for seq, d in self._waiters if seq > covers]
        if self._waiters:
            self._sync()  # the commits made while this fsync ran: one more for all of them
        elif not self._stopped and self.store.lazy_seq > self.lazy_synced:
            self.flush_lazy()  # flag-only commits made while it ran
        for waiter in ready:
            waiter.callback(None)

    def _failed(self, failure: Failure) -> None:
        self._running = False
        log.error("imap.sync_failed", error=str(failure.value))
        waiters, self._waiters = self._waiters, []
        for _seq, waiter in waiters:
            waiter.errback(failure)


class DurableSteps:
    """The protocol's side of group commit (a mixin of
    :class:`gateway.imap.server.IMAPServerProtocol`, before
    :class:`~gateway.serving.driver.CommandDriver` in its bases): steps run inside the
    store's deferred-sync block, and a step's output after a commit waits for the fsync.
    It shares the protocol's state (``_syncer`` None: no group commit) and calls back
    into its run loop (``_run``, ``_write``, ``_close``, ``_drop_current``)."""

    _syncer: CommitSyncer | None
    _step_seq: int
    _held: Any
    _waiting: Any
    _closing: bool

    def _advance(self) -> None:
        """Step the command; with group commit, inside the store's deferred-sync block
        (:mod:`gateway.imap.durability`): a commit returns without its fsync, and
        :meth:`_emit` holds what follows it until the fsync is done."""
        syncer = self._syncer
        if syncer is None:
            super()._advance()
            return
        self._step_seq = syncer.seq
        lazy = syncer.store.lazy_seq
        with syncer.deferring():
            super()._advance()
        if syncer.store.lazy_seq != lazy:  # a flag-only commit: flushed soon, not waited for
            syncer.flush_lazy()

    def _emit(self, out: Any) -> None:
        syncer = self._syncer
        if syncer is not None and syncer.seq != self._step_seq:
            # This step committed: it and the command's next steps wait for the disk.
            seq = self._step_seq = syncer.seq
            if syncer.owed():
                waiting = self._waiting = WaitDurable()
                self._held = out
                syncer.wait(seq).addCallbacks(
                    self._durable,
                    self._durable_failed,
                    callbackArgs=(waiting,),
                    errbackArgs=(waiting,),
                )
                return
        super()._emit(out)

    def _durable(self, _result: None, waiting: WaitDurable) -> None:
        """The fsync covering this command's commit is done: its held output goes out."""
        if self._waiting is not waiting or self._closing:
            if not isinstance(self._waiting, WaitDurable):
                self._held = None
            return  # the command was dropped (the client hung up) meanwhile
        self._waiting = None
        out, self._held = self._held, None
        super()._emit(out)
        self._run()

    def _durable_failed(self, _failure: Failure, waiting: WaitDurable) -> None:
        """The fsync failed: whether the command's change is on disk is unknown, so it
        gets no tagged response; the connection ends (the syncer logged the error)."""
        if self._waiting is not waiting or self._closing:
            return
        self._held = None
        self._drop_current()
        self._write(b"* BYE [UNAVAILABLE] Internal error, please reconnect\r\n")
        self._close()
