"""Assembling the running gateway from a validated config: store, IMAP listeners, upstream pollers.

This is the thin Twisted glue: everything it wires together takes its reactor and
collaborators as arguments, so tests build the same service on a private reactor.
``Options``/``makeService`` are what the twistd plugin (twisted/plugins/popgate.py) calls.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import structlog
from twisted.application import service, strports
from twisted.python import usage

from gateway import config as configmod
from gateway.auth import PasswordTable

log = structlog.get_logger(__name__)

STORE_FILE = "popgate.sqlite3"


def prepare_state_dir(path: str) -> Path:
    """Create the state dir 0700 (it holds everyone's mail) and refuse a group/world-open one."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(p, 0o700)
        log.warning("state_dir.permissions_fixed", path=str(p), old_mode=f"{mode:04o}")
    return p


def open_store(cfg: configmod.Config):
    from gateway.store.sqlite import SQLiteStore

    state = prepare_state_dir(cfg.state_dir)
    return SQLiteStore(state / STORE_FILE, max_message_size=cfg.limits.max_message_size)


class StoreService(service.Service):
    """Closes the store when the service stops, after listeners and pollers (started first,
    stopped last: it is the first child added)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def stopService(self):
        super().stopService()
        self.store.close()


def build_service(
    cfg: configmod.Config, reactor: Any, *, store: Any = None
) -> service.MultiService:
    """The whole gateway as one MultiService; ``store`` may be passed in (the demo does)."""
    from twisted.internet.threads import deferToThreadPool

    from gateway.imap.server import IMAPLimits, IMAPServerFactory
    from gateway.pop3.poller import UpstreamPoller

    top = service.MultiService()
    store = store if store is not None else open_store(cfg)
    StoreService(store).setServiceParent(top)
    for user in cfg.users:
        store.ensure_user(user)
    authenticator = PasswordTable({u.name: u.password_hash for u in cfg.users.values()})

    def run_blocking(fn, *args, **kwargs):
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)

    limits = IMAPLimits(
        max_line_length=cfg.limits.max_line_length,
        max_literal_size=cfg.limits.max_message_size,
        max_pipelined_commands=cfg.limits.max_pipelined_commands,
        prelogin_timeout=cfg.limits.prelogin_timeout,
        idle_timeout=cfg.limits.idle_timeout,
        idle_command_timeout=cfg.limits.idle_command_timeout,
    )
    pollers: dict[str, UpstreamPoller] = {}
    for upstream in cfg.upstreams:
        poller = UpstreamPoller(upstream, store, reactor=reactor)
        pollers[upstream.name] = poller

    def on_activity(user: str, mailbox: str) -> None:
        """Fetch on demand: a client looking at a mailbox an upstream delivers into
        asks that upstream now (the poller debounces and spaces the passes)."""
        for upstream in cfg.upstreams:
            if upstream.owner == user and upstream.folder == mailbox:
                pollers[upstream.name].trigger()

    factory = IMAPServerFactory(
        store,
        authenticator,
        reactor=reactor,
        run_blocking=run_blocking,
        limits=limits,
        activity=on_activity,
    )
    for poller in pollers.values():
        poller.setServiceParent(top)
    for description in cfg.imap:
        listener = strports.service(description, factory, reactor=reactor)
        listener.setServiceParent(top)
    top.store = store  # type: ignore[attr-defined]
    top.imap_factory = factory  # type: ignore[attr-defined]
    top.pollers = pollers  # type: ignore[attr-defined]
    log.info(
        "service.built",
        config=cfg.path,
        state_dir=cfg.state_dir,
        listeners=list(cfg.imap),
        users=len(cfg.users),
        upstreams=[u.name for u in cfg.upstreams],
    )
    return top


class Options(usage.Options):
    """Options of ``twistd popgate``."""

    optParameters = [
        ["config", "c", "/etc/popgate/popgate.toml", "Path to the popgate TOML config file."],
    ]


def makeService(options: Options) -> service.IService:
    """twistd entry point: validate the config (exit with every problem listed) and build."""
    from twisted.internet import reactor

    from gateway import logs

    try:
        cfg = configmod.load(options["config"])
    except configmod.ConfigError as e:
        raise SystemExit(f"popgate: configuration errors:\n{e}") from None
    # twistd replaces sys.stdout with its own logger; our JSON lines go to the real stdout
    logs.configure(cfg.log_level, cfg.log_format, stream=sys.__stdout__)
    return build_service(cfg, reactor)
