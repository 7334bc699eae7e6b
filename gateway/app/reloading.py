"""Reloading a running gateway (SIGHUP, ``systemctl reload popgate``, the control
socket): re-read the config and hand it to each registered hook, and the hooks for the
user table and the shared trees, which also provision new owners in the store.

What a reload cannot apply (listeners, TLS, security limits...) is listed in
:data:`RESTART_ONLY` and logged as needing a restart. Split out of
:mod:`gateway.app.service`, which registers the hooks as it builds the service.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import structlog
from twisted.application import service

from gateway.access.households import shared_owner
from gateway.app import config as configmod
from gateway.security.auth import PasswordTable

log = structlog.get_logger("gateway.app.service")
"""The service's logger: the reload events keep their ``service.*`` names and source."""

ReloadHook = Callable[[configmod.Config], None]


def provision(runner: Any, store: Any, owners: list[str]) -> None:
    """Create the users' (or shared trees') INBOX and default folders. Inline stores do
    it now, as the service is built; otherwise it is queued on the store's threads (it
    runs once they start; a login before that provisions its own user anyway)."""

    def ensure_all() -> None:
        for owner in owners:
            store.ensure_user(owner)

    if runner.inline:
        ensure_all()
        return
    runner.run(ensure_all).addErrback(
        lambda f: log.error("store.provision_failed", owners=owners, reason=str(f.value))
    )


# ---- reload --------------------------------------------------------------------

RESTART_ONLY = (
    "state_dir",
    "imap",
    "listeners",
    "managesieve",
    "tls",
    "security",
    "upstreams",
    "metrics",
    "log_level",
    "log_format",
    "submission",
    "sending",
    "web",
    "allow_insecure_listener",
)
"""Config fields a reload does not apply; a change to one is logged as needing a restart."""


def add_reload_hook(top: service.MultiService, name: str, hook: ReloadHook) -> None:
    """Have ``hook(new_config)`` run on every reload (users, TLS certificates, ...).
    A hook reports failure by raising or by returning False (and logs why itself)."""
    top.reload_hooks.append((name, hook))  # type: ignore[attr-defined]


def reload(top: service.MultiService) -> bool:
    """Re-read the config file and hand it to every reload hook, without touching any
    connection. A config with errors changes nothing (the problems are logged); a hook
    that fails is logged and the others still run. True if everything applied."""
    running: configmod.Config = top.config  # type: ignore[attr-defined]
    try:
        new = configmod.load(running.path)
    except configmod.ConfigError as e:
        log.error("service.reload_failed", config=running.path, problems=e.problems)
        return False
    applied, failed = [], []
    for name, hook in list(top.reload_hooks):  # type: ignore[attr-defined]
        try:
            ok = hook(new) is not False
        except Exception:
            log.exception("service.reload_hook_failed", hook=name)
            ok = False
        (applied if ok else failed).append(name)
    unapplied = [f for f in RESTART_ONLY if getattr(new, f, None) != getattr(running, f, None)]
    if unapplied:
        log.warning("service.reload_needs_restart", changed=unapplied, config=running.path)
    log.info("service.reloaded", config=running.path, applied=applied, failed=failed)
    return not failed


def users_reloader(authenticator: PasswordTable, store: Any, runner: Any) -> ReloadHook:
    """Swap the IMAP password table in one assignment: new logins see the new table; a
    removed user cannot log in again, and their open sessions end at their next command
    (the table is also the sessions' UserDirectory; the "sessions" hook wakes IDLE)."""

    def reload_users(new: configmod.Config) -> None:
        before = set(authenticator.users())
        provision(runner, store, list(new.users))
        authenticator.replace({u.name: u.password_hash for u in new.users.values()})
        after = set(new.users)
        log.info(
            "service.users_reloaded",
            users=len(after),
            added=sorted(after - before),
            removed=sorted(before - after),
        )

    return reload_users


def shared_reloader(households: Any, store: Any, runner: Any) -> ReloadHook:
    """New [shared.*] tables and membership changes apply to every session's next
    command; a removed member loses access at once (gateway/access/households.py)."""

    def reload_shared(new: configmod.Config) -> None:
        provision(runner, store, [shared_owner(name) for name in new.shared])
        households.update({name: s.members for name, s in new.shared.items()})
        log.info("service.shared_reloaded", shared=sorted(new.shared))

    return reload_shared


class SighupReload(service.Service):
    """Runs :func:`reload` on SIGHUP (``systemctl reload popgate``). The handler only
    schedules the reload on the reactor (a signal may arrive in the middle of anything).
    Installed only in the main thread (in-process tests run services elsewhere); the
    previous handler is put back when the service stops."""

    name = "sighup-reload"

    def __init__(self, top: service.MultiService, reactor: Any) -> None:
        self.top = top
        self.reactor = reactor
        self._previous: Any = None
        self._installed = False

    def startService(self) -> None:
        super().startService()
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGHUP, self._on_signal)
            self._installed = True

    def stopService(self) -> None:
        super().stopService()
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)
            self._installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(reload, self.top)
