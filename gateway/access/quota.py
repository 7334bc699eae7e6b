"""Mail quotas (RFC 9208): limits per user and per shared mailbox tree, usage, and the guards
that enforce them for IMAP writes and for POP3 deliveries.

One quota root per store owner: a user's personal tree is the root ``""`` (every personal
mailbox is in it) and a household's tree is the root ``Shared/NAME``. The only resource
is STORAGE (RFC 9208 §5.1), counted as the sum of the sizes of the messages in all the
owner's mailboxes; a message copied into two folders counts twice, as a client reading
the quota would expect. Usage is computed from the store when needed (households have
few mailboxes), so it can never drift from the mail really there.

Over quota, IMAP APPEND/COPY/MOVE get ``NO [OVERQUOTA]`` (RFC 9208 §4.3) and the POP3
fetcher's delivery fails with :class:`~gateway.store.interfaces.OverQuota`: the pass stops
with that error in the upstream's health, nothing is written to the ledger, so the
message stays on the POP3 server (held, never dropped) and is fetched once there is room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gateway.store.interfaces import Delivery, LedgerEntry, MailStore, OverQuota, Routed, Store

KIB = 1024
"""RFC 9208 §5.1: STORAGE is counted in units of 1024 octets."""


class Quotas:
    """Storage limits in bytes by store owner (``alice``, ``shared:family``); replaced as a
    whole on config reload."""

    def __init__(self, limits: Mapping[str, int] | None = None) -> None:
        self._limits: dict[str, int] = {}
        self.update(limits or {})

    def update(self, limits: Mapping[str, int]) -> None:
        self._limits = dict(limits)

    def limit(self, owner: str) -> int | None:
        return self._limits.get(owner)


def usage(store: MailStore, owner: str) -> int:
    """Bytes of mail the owner keeps, over all their mailboxes."""
    return sum(store.counts(m.id).size for m in store.list_mailboxes(owner))


def check(store: MailStore, quotas: Quotas, owner: str, adding: int) -> None:
    """Raise OverQuota if ``adding`` more bytes would take ``owner`` over their limit."""
    limit = quotas.limit(owner)
    if limit is None or adding <= 0:
        return
    used = usage(store, owner)
    if used + adding > limit:
        raise OverQuota(f"{owner}: {used} + {adding} bytes would exceed the quota of {limit}")


def storage_kib(size: int) -> int:
    """Bytes → RFC 9208 STORAGE units, rounded up (a partly used KiB is used)."""
    return (size + KIB - 1) // KIB


class DeliveryQuotaGuard:
    """The POP3 ledger as the fetcher sees it (:class:`~gateway.store.interfaces.Ledger`):
    deliveries that would go over the owner's quota raise OverQuota before anything is
    written; every other ledger method passes through unchanged."""

    def __init__(self, store: Store, quotas: Quotas) -> None:
        self.base = store
        self.quotas = quotas

    @property
    def runs_inline(self) -> bool:
        """Where calls may run is the wrapped backend's (gateway/store/runner.py)."""
        return self.base.runs_inline

    # ---- changed: deliveries are checked against the quota first ----------------------

    def deliver(self, owner: str, mailbox: str, delivery: Delivery) -> int | None:
        if delivery.uidl not in self.base.known_uidls(delivery.upstream):
            check(self.base, self.quotas, owner, len(delivery.raw))
        return self.base.deliver(owner, mailbox, delivery)

    def deliver_many(
        self, owner: str, mailbox: str, deliveries: Sequence[Delivery], *, dedup: bool = False
    ) -> list[int | None]:
        if self.quotas.limit(owner) is not None and deliveries:
            known = self.base.known_uidls(deliveries[0].upstream)
            adding = sum(len(d.raw) for d in deliveries if d.uidl not in known)
            check(self.base, self.quotas, owner, adding)
        return self.base.deliver_many(owner, mailbox, deliveries, dedup=dedup)

    def deliver_routed(
        self, owner: str, default: str, items: Sequence[Routed], *, dedup: bool = False
    ) -> list[dict[str, int] | None]:
        """A message filed into several mailboxes counts once per mailbox (as a copy
        would); a discarded one counts nothing."""
        if self.quotas.limit(owner) is not None and items:
            known = self.base.known_uidls(items[0].delivery.upstream)
            adding = sum(
                len(i.delivery.raw) * len(i.targets) for i in items if i.delivery.uidl not in known
            )
            check(self.base, self.quotas, owner, adding)
        return self.base.deliver_routed(owner, default, items, dedup=dedup)

    # ---- unchanged ------------------------------------------------------------------

    def duplicate_seen(self, owner: str, handle: str, id: str) -> bool:
        return self.base.duplicate_seen(owner, handle, id)

    def known_uidls(self, upstream: str) -> set[str]:
        return self.base.known_uidls(upstream)

    def record_skipped(self, upstream: str, uidl: str, reason: str) -> None:
        self.base.record_skipped(upstream, uidl, reason)

    def record_imported(self, upstream: str, uidls: Iterable[str], reason: str) -> int:
        return self.base.record_imported(upstream, uidls, reason)

    def forget_uidls(self, upstream: str, uidls: Iterable[str]) -> None:
        self.base.forget_uidls(upstream, uidls)

    def ledger_entries(self, upstream: str) -> list[LedgerEntry]:
        return self.base.ledger_entries(upstream)
