"""Sieve at ingest (issue 16): the POP3 ledger as the fetcher sees it, with each owner's
active script deciding where every delivered message goes.

:class:`SieveDelivery` wraps the store's :class:`~gateway.store.interfaces.Ledger` the way
:class:`~gateway.access.quota.DeliveryQuotaGuard` does, so the fetcher (``pop3``) stays
unaware of Sieve: it calls ``deliver_many(owner, folder, deliveries)`` as before. When the
owner has an active script, each message not yet in the ledger is run through it and the
outcome (mailboxes, flags, ``:create``, discard, implicit keep, RFC 7352 duplicate IDs)
goes to :meth:`~gateway.store.interfaces.Ledger.deliver_routed`: one durable transaction
with the ledger rows, so exactly-once holds per final mailbox. The implicit keep (and
``keep``, and ``fileinto "INBOX"``, which RFC 5228 §4.3 makes the same action) files into
the upstream's own folder (``folder`` of the upstream, INBOX by default).

Never losing mail (RFC 5228 §2.10.6): a runtime error (a missing mailbox without
``:create``, too many actions) or a stored script that no longer compiles files the
message as the implicit keep and logs ``sieve.runtime_error`` (owner, upstream, UIDL,
script name and the error; never the message). A household's upstream (owner
``shared:NAME``) runs the household's own script.

The envelope of POP3 mail (there was no SMTP transaction here, RFC 5228 §5.4):
``envelope "to"`` is the upstream's address (its POP3 user name when it contains ``@``),
else the message's first ``Delivered-To``; ``envelope "from"`` is its ``Return-Path``
(empty for ``<>`` or when missing).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from gateway.store.interfaces import (
    Delivery,
    DuplicateRecord,
    LedgerEntry,
    MailboxNotFound,
    MailStore,
    Routed,
    Target,
)
from gateway.store.scripts import ScriptStore

if TYPE_CHECKING:
    from gateway.access.outbound import Outcome, SieveOutbound
    from gateway.sieve import Envelope, Result, Script, SieveSyntaxError

# The Sieve language (gateway.sieve: parser, validator, interpreter) and the sending of
# its actions (gateway.access.outbound) are imported where a script is compiled or run,
# not at import: the fetcher's ledger goes through SieveDelivery always, but an owner
# without an active script never needs them (issue 19, start-up).

log = structlog.get_logger(__name__)

SCRIPT_CACHE_SIZE = 256
"""Compiled scripts kept, keyed by the SHA-256 of their text (a script is parsed once per
change, not once per message)."""


def check_script(text: str, *, sending: bool = False) -> None:
    """The ManageSieve and CLI checker: raises SieveSyntaxError (``line``, ``column``,
    ``message``) for a script that must be refused at upload. ``sending``: the owner has
    an upstream with ``[upstreams.smtp]``, so ``redirect`` and ``vacation`` are allowed
    (otherwise refused, naming why); ``reject``/``ereject`` are always refused."""
    from gateway.sieve import compile_script

    compile_script(text, sending=sending)


class ScriptCache:
    """Compiled scripts by content hash, least recently used dropped first. A text that
    does not compile is remembered as its error, so a bad stored script costs one parse."""

    def __init__(self, size: int = SCRIPT_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[bytes, Script | SieveSyntaxError] = OrderedDict()

    def get(self, text: str) -> Script:
        """The compiled script; raises its SieveSyntaxError if it does not compile."""
        from gateway.sieve import SieveSyntaxError, compile_script

        key = hashlib.sha256(text.encode("utf-8")).digest()
        found = self._items.get(key)
        if found is None:
            try:
                # A stored script passed the upload check; whether its redirect or
                # vacation can send is decided per message (gateway/access/outbound.py).
                found = compile_script(text, sending=True)
            except SieveSyntaxError as e:
                found = e
            self._items[key] = found
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        if isinstance(found, SieveSyntaxError):
            raise found
        return found


_FIELD = re.compile(rb"^(return-path|delivered-to)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
_ANGLE = re.compile(r"<([^<>]*)>")


def _first_fields(raw: bytes) -> dict[bytes, str]:
    """The first Return-Path and Delivered-To of the header (unfolded), found with one
    regex scan: a full header parse costs more than the whole script run."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = b"\n" + (raw if end < 0 else raw[:end])
    found: dict[bytes, str] = {}
    for match in _FIELD.finditer(head):
        name = match.group(1).lower()
        if name not in found:
            value = re.sub(rb"\r?\n[ \t]", b" ", match.group(2))
            found[name] = value.decode("utf-8", "replace").strip()
    return found


def _address(value: str) -> str:
    """``<a@b>`` → ``a@b``; ``<>`` → ""; a bare address as given (RFC 5321 §4.4)."""
    inside = _ANGLE.search(value)
    if inside is not None:
        return inside.group(1).strip()
    return value.split()[0] if value.split() else ""


def envelope_for(raw: bytes, address: str | None) -> Envelope:
    """The Sieve envelope of a POP3 message (module docstring)."""
    from gateway.sieve import Envelope

    fields = _first_fields(raw)
    rcpt = address or _address(fields.get(b"delivered-to", ""))
    return Envelope(mail_from=_address(fields.get(b"return-path", "")), rcpt_to=rcpt)


def upstream_address(username: str) -> str | None:
    """An upstream's own address for ``envelope "to"``: its POP3 user name if it is one."""
    return username if "@" in username else None


class StoreEnvironment:
    """What a running script may ask (:class:`gateway.sieve.SieveEnvironment`), answered
    from the store plus what earlier messages of the same batch will commit with it."""

    def __init__(
        self,
        mail: MailStore,
        ledger: Any,
        owner: str,
        clock: Callable[[], float],
    ) -> None:
        self.mail = mail
        self.ledger = ledger
        self.owner = owner
        self.clock = clock
        self.created: set[str] = set()
        self.marked: dict[tuple[str, str], float] = {}

    def mailbox_exists(self, name: str) -> bool:
        if name in self.created:
            return True
        try:
            self.mail.get_mailbox(self.owner, name)
        except MailboxNotFound:
            return False
        return True

    def seen(self, id: str, handle: str, period: int) -> bool:
        if self.marked.get((handle, id), 0.0) > self.clock():
            return True
        return bool(self.ledger.duplicate_seen(self.owner, handle, id))

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock()).astimezone()

    def committing(self, routed: Routed) -> None:
        """Remember what this message will commit, for the batch's later messages."""
        now = self.clock()
        for target in routed.targets:
            if target.create:
                self.created.add(target.mailbox)
        for record in routed.duplicates:
            key = (record.handle, record.id)
            if record.refresh or self.marked.get(key, 0.0) <= now:
                self.marked[key] = now + record.period


def route(result: Result, delivery: Delivery, default: str, sent: Outcome | None = None) -> Routed:
    """A Sieve outcome as store targets: Keep → the default folder, FileInto → its
    mailbox, Discard → nothing (only the ledger row); ``sent`` adds the redirects and
    vacation replies to queue with it, and their response records."""
    from gateway.sieve import Discard, FileInto, Keep, Redirect, Vacation

    targets: list[Target] = []
    for action in result.actions:
        if isinstance(action, Keep):
            targets.append(Target(default, action.flags, create=True))
        elif isinstance(action, FileInto):
            targets.append(Target(action.mailbox, action.flags, action.create))
        else:
            assert isinstance(action, Discard | Redirect | Vacation)
    marks = tuple(DuplicateRecord(d.handle, d.id, d.period, d.last) for d in result.duplicates)
    if sent is None:
        return Routed(delivery, tuple(targets), marks)
    if sent.keep_instead and not any(t.mailbox == default for t in targets):
        targets.append(Target(default, (), create=True))  # never lose a redirect
    return Routed(
        delivery,
        tuple(targets),
        marks + tuple(sent.duplicates),
        tuple(sent.outbound),
        sent.lifetime,
    )


class SieveDelivery:
    """The fetcher's ledger with Sieve in front (module docstring). ``ledger`` is the
    wrapped ledger (the quota guard over the store), ``mail`` the store to ask about
    mailboxes, ``scripts`` where the active scripts are, ``addresses`` the upstream
    name → its own address (or None) for the envelope."""

    def __init__(
        self,
        ledger: Any,
        mail: MailStore,
        scripts: ScriptStore,
        *,
        addresses: Mapping[str, str | None] | None = None,
        clock: Callable[[], float] = time.time,
        cache: ScriptCache | None = None,
        outbound: SieveOutbound | None = None,
        on_queued: Callable[[], Any] | None = None,
    ) -> None:
        self.outbound = outbound
        """How redirect/vacation send (None: they send nothing and a redirect keeps);
        the app sets it (and ``on_queued``, the relay's kick) once the relay is built."""
        self.on_queued = on_queued
        self.base = ledger
        self.mail = mail
        self.scripts = scripts
        self.addresses = dict(addresses or {})
        self.clock = clock
        self.cache = cache if cache is not None else ScriptCache()

    @property
    def runs_inline(self) -> bool:
        """Where calls may run is the wrapped backend's (gateway/store/runner.py)."""
        return bool(self.base.runs_inline)

    # ---- changed: deliveries go through the owner's active script ---------------------

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        return self.deliver_many(owner, mailbox, [delivery])[0]

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        """Returns, per delivery, a UID it was filed under (None: already known, content
        deduplicated, or discarded by the script)."""
        active = self.scripts.active_script(owner)
        if active is None or not deliveries:
            return list(self.base.deliver_many(owner, mailbox, deliveries, dedup=dedup))
        from gateway.sieve import Keep, Result, SieveSyntaxError, run

        try:
            script: Script | None = self.cache.get(active.text)
        except SieveSyntaxError as e:
            script = None
            error = f"stored script does not compile: {e}"
        env = StoreEnvironment(self.mail, self.base, owner, self.clock)
        # The fetcher never queues a UIDL the ledger knows (and the store writes nothing
        # for one it does), so only repeats within the batch are skipped here.
        batch: set[tuple[str, str]] = set()
        items: list[Routed] = []
        for delivery in deliveries:
            if (delivery.upstream, delivery.uidl) in batch:
                items.append(Routed(delivery, ()))
                continue
            batch.add((delivery.upstream, delivery.uidl))
            envelope = envelope_for(delivery.raw, self.addresses.get(delivery.upstream))
            if script is None:
                result = Result([Keep()], True, error)
            else:
                result = run(script, delivery.raw, envelope, env)
            if result.error is not None:
                log.warning(
                    "sieve.runtime_error",
                    owner=owner,
                    upstream=delivery.upstream,
                    uidl=delivery.uidl,
                    script=active.name,
                    error=result.error,
                )
            sent = self._sends(owner, result, delivery, envelope, env)
            routed = route(result, delivery, mailbox, sent)
            env.committing(routed)
            items.append(routed)
        filed = self.base.deliver_routed(owner, mailbox, items, dedup=dedup)
        if self.on_queued is not None and any(
            r.outbound and f is not None for r, f in zip(items, filed, strict=True)
        ):
            self.on_queued()
        return [_first_uid(f) for f in filed]

    def _sends(
        self,
        owner: str,
        result: Result,
        delivery: Delivery,
        envelope: Envelope,
        env: StoreEnvironment,
    ) -> Outcome | None:
        """Queue items for the run's redirect/vacation actions (gateway/access/outbound.py)."""
        from gateway.access.outbound import Outcome
        from gateway.sieve import Redirect, is_sending

        if not any(is_sending(a) for a in result.actions):
            return None
        if self.outbound is None:
            log.warning("sieve.sending_unavailable", owner=owner, uidl=delivery.uidl)
            redirected = any(isinstance(a, Redirect) and not a.copy for a in result.actions)
            return Outcome(keep_instead=redirected)
        return self.outbound.outcome(owner, result, delivery, envelope, env, self.clock())

    def deliver_routed(
        self, owner: str, default: str, items: Sequence[Routed], *, dedup: bool = False
    ) -> list[dict[str, int] | None]:
        return list(self.base.deliver_routed(owner, default, items, dedup=dedup))

    # ---- unchanged ------------------------------------------------------------------

    def duplicate_seen(self, owner: str, handle: str, id: str) -> bool:
        return bool(self.base.duplicate_seen(owner, handle, id))

    def known_uidls(self, upstream: str) -> set[str]:
        return set(self.base.known_uidls(upstream))

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        self.base.record_skipped(upstream, uidl, reason)

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        return int(self.base.record_imported(upstream, uidls, reason))

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        self.base.forget_uidls(upstream, uidls)

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        return list(self.base.ledger_entries(upstream))


def _first_uid(filed: dict[str, int] | None) -> int | None:
    if not filed:
        return None
    return next(iter(filed.values()))
