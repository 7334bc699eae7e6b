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
:data:`PROGRESS_EVERY` messages. With a store that does not run inline (PostgreSQL) the
refiling runs on the store's threads instead, a :data:`PROGRESS_EVERY` batch per call
(:func:`refile_off_reactor`), and ManageSieve commands step there too (the factory's
``store_runner``): no script or mail store round trip runs on the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, task

from gateway.access.filtering import ScriptCache, check_script
from gateway.app import config as configmod
from gateway.app.control import ControlError
from gateway.app.listening import listening_service
from gateway.store.interfaces import MailboxNotFound

if TYPE_CHECKING:
    from gateway.access.refile import RefileReport

# The Sieve language (gateway.sieve) and the refiler are imported where they are used:
# a gateway without ManageSieve listeners and without a "sieve-run" request never loads
# them (issue 19, start-up).

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
    from gateway.sieve import EXTENSIONS, MAX_REDIRECTS

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
        store_runner=getattr(top, "store_runner", None),
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


def _control_error(error: Exception, owner: str, mailbox: str) -> Exception:
    """What the control client is told about a refile that could not run."""
    from gateway.access.refile import NoActiveScript
    from gateway.sieve import SieveSyntaxError

    if isinstance(error, NoActiveScript):
        return ControlError(str(error))
    if isinstance(error, MailboxNotFound):
        return ControlError(f"{owner} has no mailbox {mailbox!r}")
    if isinstance(error, SieveSyntaxError):
        return ControlError(f"the active script does not compile: {error}")
    return error


def _next_batch(steps: Iterator[RefileReport]) -> tuple[RefileReport | None, bool]:
    """On a store thread: advance the refile to its next progress point or its end;
    (the last report, whether it ended)."""
    report = None
    for report in steps:
        if report.messages % PROGRESS_EVERY == 0:
            return report, False
    return report, True


def refile_off_reactor(
    steps: Iterator[RefileReport],
    runner: Any,
    progress: Callable[[dict[str, Any]], None],
    owner: str,
    mailbox: str,
) -> defer.Deferred[dict[str, Any]]:
    """The refile's steps on the store's threads, a progress point per call, the progress
    lines sent from the reactor thread; fires with the last report as a dict."""
    from gateway.access.refile import RefileReport

    async def run() -> dict[str, Any]:
        last = RefileReport()
        while True:
            try:
                report, ended = await runner.run(_next_batch, steps)
            except Exception as e:
                raise _control_error(e, owner, mailbox) from None
            if report is not None:
                last = report
            if ended:
                return last.as_dict()
            progress({"refiled": last.messages})

    return defer.ensureDeferred(run())


def sieve_run_handler(
    store: Any, ledger: Any, reactor: Any, runner: Any = None
) -> Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], defer.Deferred[dict[str, Any]]]:
    """The handler to register as "sieve-run" on the control service; ``runner``, when
    not inline, is where the refile runs (see the module docstring)."""
    cache = ScriptCache()

    def handle(
        request: dict[str, Any], progress: Callable[[dict[str, Any]], None]
    ) -> defer.Deferred[dict[str, Any]]:
        from gateway.access.refile import NoActiveScript, RefileReport, refile
        from gateway.sieve import SieveSyntaxError

        owner, mailbox = request.get("owner"), request.get("mailbox", "INBOX")
        if not isinstance(owner, str) or not owner or not isinstance(mailbox, str):
            raise ControlError('"owner" and "mailbox" must be names')
        steps = refile(store, ledger, store, owner, mailbox, cache=cache, clock=reactor.seconds)
        if runner is not None and not runner.inline:
            return refile_off_reactor(steps, runner, progress, owner, mailbox)
        last: list[RefileReport] = [RefileReport()]

        def work() -> Iterator[None]:
            try:
                for report in steps:
                    last[0] = report
                    if report.messages % PROGRESS_EVERY == 0:
                        progress({"refiled": report.messages})
                    yield None
            except (NoActiveScript, MailboxNotFound, SieveSyntaxError) as e:
                raise _control_error(e, owner, mailbox) from None

        done = task.cooperate(work()).whenDone()
        return done.addCallback(lambda _: last[0].as_dict())

    return handle
