"""The PostgreSQL store's connections: the pool, migrating on open, transactions, listeners.

A bounded ``psycopg_pool.ConnectionPool`` (one connection per call in flight; the store's
thread pool bounds the calls, so ``max_size`` need not be larger than its thread count);
every write is one transaction (:meth:`PGConnection._write`) at READ COMMITTED whose first
statement locks what it changes (the mailbox row, ``SELECT ... FOR UPDATE`` or
``UPDATE ... RETURNING``; a user's mailbox tree, with an advisory lock), so writers to one
mailbox, on any node, take turns and read what the previous one committed; reads that
need several statements take one REPEATABLE READ snapshot (:meth:`PGConnection._read`).

Calls make network round trips, so the store does not run inline (``runs_inline =
False``): callers use a :class:`~gateway.store.runner.ThreadRunner`. Listeners hear about
a change after its commit, through :meth:`PGConnection.dispatch_changes`, which hands
them to the reactor thread when a dispatcher is set (``reactor.callFromThread``, set by
the service) and calls them at once otherwise (tests without a reactor). Other nodes
hear the same change through PostgreSQL: the write's transaction also sends
``pg_notify`` (:mod:`gateway.store.postgres.changes`), delivered only on commit, and each
node's LISTEN bridge (:mod:`gateway.store.postgres.push`) feeds the ids to the same
:meth:`PGConnection.dispatch_changes`.

:attr:`PGConnection.forbidden_thread` is the reactor-thread guard: set to the reactor
thread's ident, every connection taken on that thread raises :class:`ReactorThreadCall`
(tests: proof that no database round trip runs on the reactor) or, in a running service
(``guard_raises = False``), is logged as ``store.reactor_thread_call`` with its stack.
"""

from __future__ import annotations

import datetime
import os
import secrets
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self

import psycopg
import structlog
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from gateway.core.limits import DEFAULT_MAX_MESSAGE_SIZE
from gateway.message.analysis import Analysis, analyze
from gateway.store.errors import StoreError
from gateway.store.interfaces import ChangeListener
from gateway.store.postgres.catchup import ChangeLogs
from gateway.store.postgres.changes import CHANNEL, channel_for, encode
from gateway.store.postgres.schema import migrate, schema_version
from gateway.store.rowdata import RowValues

log = structlog.get_logger("gateway.store.postgres")

DEFAULT_POOL_SIZE = 8
"""Connections the pool may open by default (a running service passes its store thread
count, ``gateway.app.service.STORE_THREADS``, one connection per thread)."""

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for the database when opening the store, and for a free connection."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (or answered with a connection-level error)."""


class ReactorThreadCall(RuntimeError):
    """A store call was made on the thread the store was told to keep free (the reactor)."""


Dispatcher = Callable[..., None]
"""``reactor.callFromThread``-like: ``dispatcher(fn, *args)`` runs ``fn(*args)`` later."""


class PGConnection(RowValues):
    """The pool and the transaction helpers: the base of
    :class:`~gateway.store.postgres.PostgresStore`. Safe to call from several threads."""

    runs_inline = False
    """Every call is a network round trip: never on the reactor thread
    (see "Store calls and the reactor" in :mod:`gateway.store.interfaces`)."""

    forbidden_thread: int | None = None
    """A thread ident (the reactor's) on which no connection may be taken."""

    guard_raises: bool = True
    """On the forbidden thread: raise :class:`ReactorThreadCall` (tests), or only log
    ``store.reactor_thread_call`` with the stack and go on (a running service)."""

    def __init__(
        self,
        dsn: str,
        *,
        password: str | None = None,
        schema: str | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        clock: Callable[[], float] = time.time,
        analyze: Callable[[bytes], Analysis] = analyze,
        dispatcher: Dispatcher | None = None,
        node: str | None = None,
        lazy_flags: bool = False,
    ) -> None:
        self.dsn = dsn
        self.lazy_flags = lazy_flags
        """``[store] flag_fsync = "optimized"``: a flag-only commit (STORE, the \\Recent
        claim) is made with ``synchronous_commit = off`` (PostgreSQL's asynchronous commit:
        answered before its WAL flush, which the WAL writer does within three
        ``wal_writer_delay``), as SQLite mode answers it before its fsync. A database
        crash in that window can undo the flag change, never a message, and leaves the
        database consistent."""
        self.schema = schema
        self.max_message_size = max_message_size
        self._clock = clock
        self._analyze = analyze
        self._dispatcher = dispatcher
        self._listeners: list[ChangeListener] = []
        self._flag_cache: dict[tuple[str, int], frozenset[str]] = {}
        self._shared_ids: dict[int, bool] = {}
        self._zones: dict[int, datetime.timezone] = {}
        self._on_close: list[Callable[[], None]] = []
        self._cursors: weakref.WeakKeyDictionary[psycopg.Connection, psycopg.Cursor] = (
            weakref.WeakKeyDictionary()
        )
        """Each pooled connection's cursor for :meth:`_cursor` (see there)."""
        self.change_logs = ChangeLogs()
        """What catch-ups read lately, answering the next ones while this node knows the
        mailbox unchanged (:mod:`gateway.store.postgres.catchup`; trusted only while the
        LISTEN bridge runs)."""
        self.node = node or socket.gethostname() or "localhost"
        self.origin = f"{self.node}/{os.getpid()}/{secrets.token_hex(4)}"
        """Names this store in its change notices, so its own LISTEN bridge skips them."""
        self.channel = CHANNEL
        """The NOTIFY channel (per schema; set when the store opens)."""
        kwargs: dict[str, Any] = {}
        if password is not None:
            kwargs["password"] = password
        if schema is not None:
            kwargs["options"] = f"-c search_path={schema}"
        self.connect_kwargs: dict[str, Any] = dict(kwargs)
        """What a connection of this store needs besides the DSN (password, search path):
        the LISTEN bridge opens its own connection with them."""
        self._pool: ConnectionPool | None = ConnectionPool(
            dsn,
            kwargs={"autocommit": True, **kwargs},
            min_size=1,
            max_size=max(1, pool_size),
            timeout=CONNECT_TIMEOUT,
            open=False,
            name="popgate-store",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT)
            self._configure()
        except PoolTimeout as error:
            self._pool.close()
            self._pool = None
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {safe_dsn(dsn)}") from error
        except BaseException:
            self._pool.close()
            self._pool = None
            raise

    @classmethod
    def open(cls, dsn: str, **kwargs: Any) -> Self:
        """Open (migrating if needed) the store in the database ``dsn`` names."""
        return cls(dsn, **kwargs)

    def _configure(self) -> None:
        with self._connection() as conn:
            ran = migrate(conn)
            with conn.cursor() as cur:
                # Seed the UIDVALIDITY sequence from the clock once, when the store is created.
                cur.execute(
                    "INSERT INTO meta (key, value) VALUES ('uidvalidity', %s)"
                    " ON CONFLICT DO NOTHING",
                    (max(1, int(self._clock())),),
                )
                version = schema_version(cur)
                cur.execute("SELECT current_schema()")
                row = cur.fetchone()
                self.channel = channel_for(row[0] if row else None)
        log.info(
            "store.opened",
            backend="postgresql",
            dsn=safe_dsn(self.dsn),
            schema_version=version,
            migrations_run=ran,
        )

    def schema_version(self) -> int:
        with self._connection() as conn, conn.cursor() as cur:
            return schema_version(cur)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_close(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when the store closes, before its pool does (the LISTEN bridge
        stops there, so a forgotten bridge never outlives its store)."""
        self._on_close.append(hook)

    def close(self) -> None:
        hooks, self._on_close = self._on_close, []
        for hook in hooks:
            hook()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # ---- connections and transactions ---------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for one call; refuses the forbidden (reactor) thread."""
        if self.forbidden_thread is not None and threading.get_ident() == self.forbidden_thread:
            if self.guard_raises:
                raise ReactorThreadCall("PostgreSQL store called on the reactor thread")
            log.error("store.reactor_thread_call", stack="".join(traceback.format_stack()))
        pool = self._pool
        if pool is None:
            raise StoreError("store is closed")
        try:
            with pool.connection() as conn:
                yield conn
        except PoolTimeout as error:
            raise StoreUnavailable("no PostgreSQL connection available") from error
        except psycopg.OperationalError as error:
            raise StoreUnavailable(f"PostgreSQL: {error.sqlstate or error}") from error

    @contextmanager
    def _write(self) -> Iterator[tuple[psycopg.Cursor, set[int]]]:
        """One READ COMMITTED transaction; yields (cursor, changed mailbox ids), whose
        listeners are called once the commit has succeeded. Other nodes are told by a
        notice sent in the same transaction (PostgreSQL delivers it on commit only)."""
        changed: set[int] = set()
        with self._connection() as conn:
            conn.isolation_level = IsolationLevel.READ_COMMITTED
            conn.read_only = False
            with conn.transaction(), conn.cursor() as cur:
                yield cur, changed
                for payload in encode(self.origin, changed) if changed else ():
                    cur.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
        self.dispatch_changes(changed)

    @contextmanager
    def _pipelined_write(self) -> Iterator[tuple[psycopg.Cursor, set[int]]]:
        """:meth:`_write` in psycopg's pipeline mode, for the message and mailbox write
        algorithms (:class:`~gateway.store.steps.MessageSteps`, ``RowSteps._tx``): a
        statement whose result is not fetched is queued, so ``BEGIN`` goes out with the
        first statement and the last writes, the change notice and ``COMMIT`` go out
        together; a STORE takes four round trips instead of seven, an APPEND four
        instead of eleven. Those steps fetch every result they depend on and read no
        ``rowcount`` (which a queued statement has not got yet); an error in a queued
        statement surfaces at the next fetch or at the commit, and the transaction is
        rolled back either way, so nothing is committed that :meth:`_write` would not."""
        changed: set[int] = set()
        with self._connection() as conn:
            committed = False
            try:
                with conn.pipeline(), conn.cursor() as cur:
                    cur.execute(b"BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
                    yield cur, changed
                    for payload in encode(self.origin, changed) if changed else ():
                        cur.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))
                    cur.execute(b"COMMIT")
                committed = True
            finally:
                if not committed and conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.rollback()
        self.dispatch_changes(changed)

    @contextmanager
    def _read(self) -> Iterator[psycopg.Cursor]:
        """A REPEATABLE READ, read-only transaction: several SELECTs see one snapshot."""
        with self._connection() as conn:
            conn.isolation_level = IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction(), conn.cursor() as cur:
                yield cur

    @contextmanager
    def _cursor(self) -> Iterator[psycopg.Cursor]:
        """One statement in autocommit: one round trip, for single-SELECT reads.

        The cursor is the connection's own, kept from one call to the next (a connection
        serves one thread at a time, so its cursor does too): a new cursor per statement
        cost ~20 us of CPU in the store threads, a sixth of a one-row SELECT's (it copies
        the connection's adapters, and its loaders are looked up afresh), under the GIL
        that every session shares (bench/README.md, "PostgreSQL mix tail, session 6").
        A statement's parameters and result stay with the cursor until the connection's
        next statement: at most one of each per pooled connection."""
        with self._connection() as conn:
            cur = self._cursors.get(conn)
            if cur is None or cur.closed:
                cur = self._cursors[conn] = conn.cursor()
            yield cur

    # ---- listeners ------------------------------------------------------------------

    def set_dispatcher(self, dispatcher: Dispatcher | None) -> None:
        """Where listeners run: ``reactor.callFromThread`` in a service, None to call
        them on the thread that committed (tests without a reactor)."""
        self._dispatcher = dispatcher

    def dispatch_changes(self, mailbox_ids: set[int] | list[int]) -> None:
        """Tell listeners about committed changes to these mailboxes, on the reactor
        thread when a dispatcher is set. The LISTEN bridge calls this from its own
        thread for changes committed by other nodes. The change logs hear first (on
        this thread, before any listener can wake a session to catch up)."""
        if not mailbox_ids:
            return
        ids = sorted(mailbox_ids)
        self.change_logs.changed(ids)
        self._tell_listeners(ids)

    def _tell_listeners(self, ids: list[int]) -> None:
        """The listeners' half of :meth:`dispatch_changes` (the change logs told already)."""
        if self._dispatcher is not None:
            self._dispatcher(self._call_listeners, ids)
        else:
            self._call_listeners(ids)

    def _call_listeners(self, mailbox_ids: list[int]) -> None:
        for mailbox_id in mailbox_ids:
            for listener in list(self._listeners):
                try:
                    listener(mailbox_id)
                except Exception:
                    log.exception("store.listener_failed", mailbox_id=mailbox_id)

    def _log_key(self, mailbox_id: int, viewer: str | None) -> tuple[int, str]:
        """Which change log answers ``viewer``'s catch-ups of the mailbox: the viewer's own
        in a shared mailbox (private \\Seen), one for everybody in any other once known."""
        if self._shared_ids.get(mailbox_id, True):
            return (mailbox_id, viewer or "")
        return (mailbox_id, "")

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)


def safe_dsn(dsn: str) -> str:
    """A DSN fit for logs and messages: any password in it masked."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    if "password" in info:
        info["password"] = "***"
    return psycopg.conninfo.make_conninfo(**info)


def probe(dsn: str, *, password: str | None = None, schema: str | None = None) -> int:
    """Connect once (no pool, no migration) and return the schema version, 0 for an
    empty database: what ``popgate check-config`` reports. Raises
    :class:`StoreUnavailable` saying what went wrong (refused, authentication...)."""
    kwargs: dict[str, Any] = {"connect_timeout": int(CONNECT_TIMEOUT)}
    if password is not None:
        kwargs["password"] = password
    if schema is not None:
        kwargs["options"] = f"-c search_path={schema}"
    try:
        with psycopg.connect(dsn, **kwargs) as conn, conn.cursor() as cur:
            return schema_version(cur)
    except psycopg.Error as error:
        text = " ".join(str(error).split()) or type(error).__name__
        raise StoreUnavailable(text) from None
