"""Where a gateway's store lives and how it is opened: the one place that picks a backend.

``[store] backend`` says which: "sqlite" (the default: one file in ``state_dir``) or
"postgresql" (the database ``[store] dsn`` names, shared by several nodes). The CLI's
offline commands (user admin, UIDL import, check-config) and the running service all
open the store through here, so none of them needs to know file names or DSNs. A
running PostgreSQL node also listens for the changes other nodes commit
(:class:`ChangePushService`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import structlog
from twisted.application import service
from twisted.internet import defer

from gateway.app import config as configmod
from gateway.store.interfaces import Store
from gateway.store.sqlite import SQLiteStore

log = structlog.get_logger(__name__)

STORE_FILE = "popgate.sqlite3"
"""The SQLite store's file name inside ``state_dir``."""

PG_DUMP_HINT = (
    'the store is in PostgreSQL ([store] backend = "postgresql"): back it up with '
    "PostgreSQL's own tools, e.g. pg_dump --format=custom --file=popgate.dump '{dsn}' "
    "(and restore with pg_restore); popgate backup copies SQLite stores only"
)
"""What ``popgate backup``/``restore`` say in PostgreSQL mode (``{dsn}``: the config's)."""


def store_path(state_dir: str | os.PathLike[str]) -> Path:
    """The SQLite store file of a state dir (which need not exist yet)."""
    return Path(state_dir) / STORE_FILE


def uses_postgresql(cfg: configmod.Config) -> bool:
    return cfg.store.backend == "postgresql"


def prepare_state_dir(path: str) -> Path:
    """Create the state dir 0700 (it holds everyone's mail) and refuse a group/world-open one."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(p, 0o700)
        log.warning("state_dir.permissions_fixed", path=str(p), old_mode=f"{mode:04o}")
    return p


def open_postgresql(cfg: configmod.Config, **kwargs: Any) -> Store:
    """The configured PostgreSQL store, opened and migrated (raises StoreError subclasses:
    StoreUnavailable when the database cannot be reached, SchemaTooNew)."""
    from gateway.store.postgres import PostgresStore

    settings = cfg.store
    assert settings.dsn is not None
    kwargs.setdefault("node", cfg.cluster.node)
    kwargs.setdefault("lazy_flags", settings.flag_fsync == "optimized")
    return PostgresStore(
        settings.dsn,
        password=settings.password,
        max_message_size=cfg.limits.max_message_size,
        **kwargs,
    )


def open_store(cfg: configmod.Config, **kwargs: Any) -> Store:
    """The configured store, opened (the state dir is created 0700 first: it still holds
    the control socket and TLS material in PostgreSQL mode). ``kwargs`` go to the
    PostgreSQL store (``pool_size``)."""
    state = prepare_state_dir(cfg.state_dir)
    if uses_postgresql(cfg):
        return open_postgresql(cfg, **kwargs)
    return SQLiteStore(state / STORE_FILE, max_message_size=cfg.limits.max_message_size)


def describe_store(cfg: configmod.Config) -> str:
    """One line for check-config: the store is reachable and at which schema version,
    or what is wrong (never raises)."""
    from gateway.store.errors import StoreError

    if not uses_postgresql(cfg):
        return f"store: SQLite file {store_path(cfg.state_dir)}"
    from gateway.store.postgres import SCHEMA_VERSION, probe

    try:
        version = probe(cfg.store.dsn or "", password=cfg.store.password)
    except StoreError as e:
        raise StoreCheckFailed(f"store: PostgreSQL {cfg.store.dsn}: {e}") from None
    if version == 0:
        state = "empty database (the first node to start creates the schema)"
    elif version < SCHEMA_VERSION:
        state = f"schema version {version} (this popgate migrates it to {SCHEMA_VERSION})"
    elif version > SCHEMA_VERSION:
        raise StoreCheckFailed(
            f"store: PostgreSQL {cfg.store.dsn}: schema version {version} is newer than "
            f"this popgate ({SCHEMA_VERSION}); upgrade popgate on this node"
        )
    else:
        state = f"schema version {version}"
    return f"store: PostgreSQL {cfg.store.dsn}: connected, {state}"


class StoreCheckFailed(Exception):
    """check-config could not use the configured store; the message says why."""


class KnownSourcesOffReactor:
    """The login penalty's known sources (:mod:`gateway.store.known_sources`) for a store
    that does not run inline: the penalty asks synchronously on the reactor thread, so
    reads come from a cache filled on a store thread at start (:meth:`load`, every
    configured user) and writes go to a store thread without waiting (a failed write is
    logged; its protection then lasts until the restart, as with an unwritable store)."""

    def __init__(self, store: Any, runner: Any) -> None:
        self.store = store
        self.runner = runner
        self.cache: dict[str, dict[str, float]] = {}

    def load(self, users: list[str]) -> None:
        def read() -> dict[str, dict[str, float]]:
            return {user: dict(self.store.known_sources(user)) for user in users}

        def keep(found: dict[str, dict[str, float]]) -> None:
            for user, sources in found.items():
                self.cache.setdefault(user, {}).update(sources)

        self.runner.run(read).addCallbacks(
            keep, lambda f: log.error("store.known_sources_unreadable", reason=str(f.value))
        )

    def known_sources(self, user: str) -> dict[str, float]:
        return dict(self.cache.get(user, {}))

    def remember_source(
        self, user: str, source: str, seen: float, *, keep: int, forget_before: float
    ) -> None:
        self.cache.setdefault(user, {})[source] = seen
        self.runner.run(
            self.store.remember_source, user, source, seen, keep=keep, forget_before=forget_before
        ).addErrback(
            lambda f: log.error("store.known_source_unwritten", user=user, reason=str(f.value))
        )


def ownership_factory(cfg: configmod.Config, store: Any, store_threads: Any, reactor: Any) -> Any:
    """A factory of each upstream's :class:`~gateway.pop3.ownership.UpstreamOwnership`:
    leases in the store for PostgreSQL (this node's ``[cluster] node`` and ``lease``;
    claims on the store's threads, the release at stop on the reactor's own pool, since
    the store's threads stop at the same time as the pollers), single-node otherwise."""
    from gateway.pop3.ownership import UpstreamOwnership
    from gateway.store.leases import leases_of
    from gateway.store.runner import ThreadRunner, runner_for

    leases = leases_of(store)
    if not leases.expiring:
        return lambda name: UpstreamOwnership.single_node(name, reactor)
    runner = runner_for(store, store_threads)
    release_runner = ThreadRunner(reactor, reactor.getThreadPool())

    def ownership(name: str) -> UpstreamOwnership:
        return UpstreamOwnership(
            name,
            leases,
            node=cfg.cluster.node,
            lease=cfg.cluster.lease,
            reactor=reactor,
            runner=runner,
            release_runner=release_runner,
        )

    return ownership


class ChangePushService(service.Service):
    """Runs the PostgreSQL store's LISTEN bridge (:mod:`gateway.store.postgres.push`) while
    the gateway runs: changes committed by other nodes reach this node's IDLE and
    selected sessions. Stopping never blocks the reactor: the bridge's thread is joined
    on a helper thread and the returned Deferred fires once it has ended (before the
    store closes: the store stops last)."""

    name = "store-push"

    def __init__(self, store: Any, reactor: Any) -> None:
        from gateway.store.postgres.push import ChangeBridge

        self.reactor = reactor
        self.bridge = ChangeBridge(store)

    def startService(self) -> None:
        super().startService()
        self.bridge.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        stopped: defer.Deferred[None] = defer.Deferred()

        def join() -> None:
            self.bridge.stop()
            self.reactor.callFromThread(lambda: stopped.called or stopped.callback(None))

        threading.Thread(target=join, name="store-push-stop", daemon=True).start()
        return stopped


def push_changes(top: service.MultiService, store: Any, reactor: Any) -> None:
    """Listen for other nodes' changes when the store is shared (PostgreSQL); an
    inline store (SQLite, one node) has no one else to hear."""
    if not getattr(store, "runs_inline", True) and hasattr(store, "on_close"):
        ChangePushService(store, reactor).setServiceParent(top)
