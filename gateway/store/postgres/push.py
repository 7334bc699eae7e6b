"""The LISTEN bridge: changes committed by other nodes, told to this node's listeners.

Each node keeps one dedicated connection (autocommit, outside the pool) doing ``LISTEN``
on the store's channel (:mod:`gateway.store.postgres.changes`), on its own thread: a
database wait never runs on the reactor thread. A notice from another node becomes a
:meth:`~gateway.store.postgres.connection.PGConnection.dispatch_changes` call, which hands
the ids to the reactor thread; IDLE and selected sessions then read what changed since
their own modseq (RFC 7162 §3.1), so a notice is a hint, and a spurious one costs a query,
never a wrong answer. The node's own notices are skipped: it told its listeners after its
commit already.

Notices sent while the connection is down are lost (PostgreSQL queues them only for
listening sessions), so the bridge catches up on every reconnect: it keeps a snapshot of
every mailbox's (HIGHESTMODSEQ, UIDNEXT, name), taken just after ``LISTEN`` (so a change
is either in the snapshot or notified) and once before the first connect
(:meth:`ChangeBridge.prime`, the thread's first step, as the service starts); after
each connect it dispatches every mailbox whose entry moved, appeared (a CREATE elsewhere:
NOTIFY sessions re-read their names) or went (a DELETE). Every change a session can see
moves one of these: appends, flag changes (private \\Seen included: one counter per
mailbox) and expunges bump HIGHESTMODSEQ, renames change the name. The snapshot is
refreshed every :data:`SNAPSHOT_REFRESH` while connected, so a reconnect re-tells little
that was already told.

The bridge is also what lets this node answer a catch-up from its change logs
(:mod:`gateway.store.postgres.catchup`): it trusts them once LISTEN is on and the
catch-up has told what moved, and distrusts them the moment its connection ends, so no
other node's change can go unseen by a catch-up.

A silently dead connection is found by a ``SELECT 1`` every :data:`HEARTBEAT` (and TCP
keepalives); a lost one is retried with exponential backoff (:data:`BACKOFF_START` up to
:data:`BACKOFF_MAX`). Events: ``store.notify.connected`` (with how many mailboxes the
catch-up told), ``store.notify.lost`` (with the reason); the DSN only ever appears with
its password masked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import structlog
from psycopg import sql

from gateway.store.postgres.changes import BadNotice, decode
from gateway.store.postgres.connection import CONNECT_TIMEOUT, PGConnection, safe_dsn

log = structlog.get_logger("gateway.store.postgres")

POLL = 0.5
"""Seconds between checks of the stop flag while waiting for notices."""

HEARTBEAT = 30.0
"""Seconds of silence after which the bridge proves its connection with ``SELECT 1``."""

SNAPSHOT_REFRESH = 300.0
"""Seconds between refreshes of the catch-up snapshot while connected."""

BACKOFF_START = 0.5
"""Seconds before the first reconnect attempt; doubled after each failure."""

BACKOFF_MAX = 30.0
"""Longest wait between reconnect attempts."""

STOP_TIMEOUT = 10.0
"""Longest :meth:`ChangeBridge.stop` waits for the thread (a connect in progress ends
within ``CONNECT_TIMEOUT``; a wait for notices within :data:`POLL`)."""

KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""libpq TCP keepalives: a vanished database host is noticed even between heartbeats."""

Snapshot = dict[int, tuple[int, int, str]]
"""Mailbox id -> (highestmodseq, uidnext, name)."""


class ChangeBridge:
    """One node's LISTEN connection and its thread (module docstring).

    ``start`` and ``stop`` may be called from any thread; ``stop`` joins the thread (the
    service calls it off the reactor thread). The store stops its bridge when it closes.
    """

    def __init__(
        self,
        store: PGConnection,
        *,
        backoff_start: float = BACKOFF_START,
        backoff_max: float = BACKOFF_MAX,
        heartbeat: float = HEARTBEAT,
        snapshot_refresh: float = SNAPSHOT_REFRESH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.backoff_start = backoff_start
        self.backoff_max = backoff_max
        self.heartbeat = heartbeat
        self.snapshot_refresh = snapshot_refresh
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._known: Snapshot | None = None
        self.connected = threading.Event()
        """Set while LISTEN is active (tests wait on it)."""
        self.connections = 0
        """How many times the LISTEN connection has been (re-)established."""
        self.backend_pid: int | None = None
        """The server process of the LISTEN connection (``pg_stat_activity.pid``)."""
        store.on_close(self.stop)

    # ---- life -----------------------------------------------------------------------

    def prime(self) -> None:
        """Take the catch-up snapshot now (the thread does, first thing, unless a caller
        did before starting it): the first LISTEN then also tells what other nodes changed
        between this moment and itself. Never on the reactor thread (the store's guard)."""
        with self.store._connection() as conn:
            self._known = _snapshot(conn)

    def start(self) -> None:
        """Start the thread (once); it connects, and keeps reconnecting until stopped."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"popgate-listen-{self.store.node}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the thread to end, close its connection and wait for it."""
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("store.notify.stop_timeout", seconds=timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the thread -----------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff_start
        if self._known is None:
            try:
                self.prime()
            except Exception as error:  # the first connect then has nothing to compare
                log.warning("store.notify.prime_failed", reason=_reason(error))
        while not self._stopping.is_set():
            try:
                conn = self._connect()
            except psycopg.Error as error:
                self._lost(error, delay)
            else:
                try:
                    delay = self.backoff_start
                    self._listen(conn)
                except psycopg.Error as error:
                    if not self._stopping.is_set():
                        self._lost(error, delay)
                except Exception:
                    # A bug must not end the thread: this node would go deaf for good.
                    log.exception("store.notify.failed", retry_in=delay)
                finally:
                    # Other nodes' notices may go unheard from here on: every catch-up
                    # queries until the next connection has caught up.
                    self.store.change_logs.distrust()
                    self.connected.clear()
                    self.backend_pid = None
                    conn.close()
            if self._stopping.wait(delay):
                break
            delay = min(self.backoff_max, delay * 2)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self.store.dsn,
            autocommit=True,
            connect_timeout=int(CONNECT_TIMEOUT),
            application_name=f"popgate-listen {self.store.node}"[:63],
            **KEEPALIVES,
            **self.store.connect_kwargs,
        )

    def _listen(self, conn: psycopg.Connection) -> None:
        """LISTEN, catch up, then pass notices on until stopped or the connection fails."""
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.store.channel)))
        told = self._catch_up(conn)
        self.store.change_logs.trust()  # every change is either caught up or notified
        self.backend_pid = conn.info.backend_pid
        self.connections += 1
        self.connected.set()
        log.info(
            "store.notify.connected",
            channel=self.store.channel,
            dsn=safe_dsn(self.store.dsn),
            caught_up=told,
            reconnect=self.connections > 1,
        )
        quiet_since = refreshed = self._clock()
        while not self._stopping.is_set():
            # Drained first: the generator holds the connection's lock, so no query may
            # run inside it. stop_after=1 returns as soon as a packet of notices arrives.
            payloads = [n.payload for n in conn.notifies(timeout=POLL, stop_after=1)]
            if payloads:
                self._heard(conn, payloads)
            now = self._clock()
            if payloads:
                quiet_since = now
            elif now - quiet_since >= self.heartbeat:
                conn.execute("SELECT 1")
                quiet_since = now
            if now - refreshed >= self.snapshot_refresh:
                self._known = _snapshot(conn)
                refreshed = now

    def _heard(self, conn: psycopg.Connection, payloads: list[str]) -> None:
        """Dispatch the ids other stores announced; a payload popgate cannot read (not
        ours, or a newer format) makes the bridge catch up instead, to be safe."""
        ids: set[int] = set()
        unreadable = 0
        for payload in payloads:
            try:
                notice = decode(payload)
            except BadNotice:
                unreadable += 1
                continue
            if notice.origin != self.store.origin:
                ids.update(notice.mailbox_ids)
        if ids:
            self.store.dispatch_changes(ids)
        if unreadable:
            log.warning("store.notify.bad_payload", count=unreadable)
            self._catch_up(conn)

    def _catch_up(self, conn: psycopg.Connection) -> int:
        """Take a new snapshot; dispatch the mailboxes that moved since the last one.
        Returns how many were told (0 on a first connect without :meth:`prime`)."""
        known, fresh = self._known, _snapshot(conn)
        self._known = fresh
        if known is None:
            return 0
        moved = {i for i, entry in fresh.items() if known.get(i) != entry}
        moved.update(i for i in known if i not in fresh)
        if moved:
            self.store.dispatch_changes(moved)
        return len(moved)

    def _lost(self, error: psycopg.Error, retry_in: float) -> None:
        log.warning(
            "store.notify.lost",
            reason=_reason(error),
            sqlstate=getattr(error, "sqlstate", None),
            dsn=safe_dsn(self.store.dsn),
            retry_in=retry_in,
        )


def _snapshot(conn: psycopg.Connection) -> Snapshot:
    with conn.cursor() as cur:
        cur.execute("SELECT id, highestmodseq, uidnext, name FROM mailbox")
        return {int(i): (int(m), int(u), n) for i, m, u, n in cur.fetchall()}


def _reason(error: BaseException) -> str:
    """One line saying why: libpq's message (it never holds the password)."""
    return " ".join(str(error).split())[:300] or type(error).__name__
