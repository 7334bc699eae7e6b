"""Sieve in the running gateway: the ManageSieve listeners and the control socket's
"sieve-run" command (refiling existing mail on request).

ManageSieve (RFC 5804) shares with IMAP what a user would expect to be shared: the same
logins (the IMAP password table, reloaded with it), the same login penalty object (so
failures on either protocol count together), the same ``[tls]`` certificate for STARTTLS,
and the same rule for passwords in clear (only on local listeners; elsewhere after
STARTTLS). Scripts live in the store (:class:`~gateway.store.scripts.ScriptStore`), and
uploads are checked by the real Sieve compiler (:func:`gateway.access.filtering.check_script`),
with ``redirect``/``vacation`` allowed only for an owner whose upstreams can send
(:func:`owner_can_send`).
A user manages only their own scripts (owner = user name); a household's script (owner
``shared:NAME``) is edited by an admin with ``popgate sieve`` (README, "Filtering with Sieve").

"sieve-run" (``{"command": "sieve-run", "owner": USER, "mailbox": NAME}``) refiles inside
the gateway, because it moves mail in mailboxes IMAP clients may be watching: the moves are
ordinary store moves, so IDLE clients see them; the work is spread over reactor turns
(:func:`twisted.internet.task.cooperate`), with a progress line every
:data:`PROGRESS_EVERY` messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from twisted.application import service
from twisted.internet import defer, task

from gateway.access.filtering import ScriptCache, check_script
from gateway.access.refile import NoActiveScript, RefileReport, refile
from gateway.app import config as configmod
from gateway.app.control import ControlError
from gateway.app.listening import listening_service
from gateway.sieve import EXTENSIONS, MAX_REDIRECTS, SieveSyntaxError
from gateway.store.interfaces import MailboxNotFound

PROGRESS_EVERY = 100
"""Messages between two progress lines of "sieve-run"."""


def add_managesieve(
    top: service.MultiService,
    cfg: configmod.Config,
    store: Any,
    authenticator: Any,
    server_tls: Any,
    penalty: Any,
    reactor: Any,
    password_pool: Any,
) -> Any:
    """One listening service per ``[server] managesieve`` endpoint, all sharing one
    factory; returns the factory (None when no listener is configured)."""
    if not cfg.managesieve:
        return None
    from twisted.internet.threads import deferToThreadPool

    from gateway.managesieve.server import (
        ListenerFactory,
        ListenerPolicy,
        ManageSieveFactory,
        ManageSieveLimits,
    )

    limits = ManageSieveLimits(
        prelogin_timeout=cfg.limits.prelogin_timeout,
        idle_timeout=cfg.limits.idle_timeout,
        max_connections_per_ip=cfg.security.max_connections_per_ip,
        max_connections_per_user_ip=cfg.security.max_connections_per_user_ip,
    )
    can_send = owner_can_send(cfg)
    factory = ManageSieveFactory(
        store,
        authenticator,
        check_script,
        owner_checker=lambda owner, text: check_script(text, sending=can_send(owner)),
        max_redirects=MAX_REDIRECTS if any(s.smtp for s in cfg.sending) else None,
        reactor=reactor,
        run_blocking=lambda call: deferToThreadPool(reactor, password_pool, call),
        sieve_extensions=EXTENSIONS,
        limits=limits,
        tls_context_factory=server_tls,
        allow_plaintext_auth=False,
        penalty=penalty,
    )
    for listener in cfg.managesieve:
        wrapped = ListenerFactory(factory, ListenerPolicy(plaintext_auth=listener.plaintext_auth))
        listening_service(reactor, listener.endpoint, wrapped, listener.backlog).setServiceParent(
            top
        )
    return factory


def owner_can_send(cfg: configmod.Config) -> Callable[[str], bool]:
    """Whether an owner's script may use ``redirect``/``vacation``: the owner has an
    upstream with ``[upstreams.smtp]`` and addresses (gateway/app/sending.py routes it)."""
    from gateway.app.sending import sieve_outbound

    return sieve_outbound(cfg).can_send


def sieve_run_handler(
    store: Any, ledger: Any, reactor: Any
) -> Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], defer.Deferred[dict[str, Any]]]:
    """The handler to register as "sieve-run" on the control service."""
    cache = ScriptCache()

    def handle(
        request: dict[str, Any], progress: Callable[[dict[str, Any]], None]
    ) -> defer.Deferred[dict[str, Any]]:
        owner, mailbox = request.get("owner"), request.get("mailbox", "INBOX")
        if not isinstance(owner, str) or not owner or not isinstance(mailbox, str):
            raise ControlError('"owner" and "mailbox" must be names')
        steps = refile(store, ledger, store, owner, mailbox, cache=cache, clock=reactor.seconds)
        last: list[RefileReport] = [RefileReport()]

        def work() -> Iterator[None]:
            try:
                for report in steps:
                    last[0] = report
                    if report.messages % PROGRESS_EVERY == 0:
                        progress({"refiled": report.messages})
                    yield None
            except NoActiveScript as e:
                raise ControlError(str(e)) from None
            except MailboxNotFound:
                raise ControlError(f"{owner} has no mailbox {mailbox!r}") from None
            except SieveSyntaxError as e:
                raise ControlError(f"the active script does not compile: {e}") from None

        done = task.cooperate(work()).whenDone()
        return done.addCallback(lambda _: last[0].as_dict())

    return handle
