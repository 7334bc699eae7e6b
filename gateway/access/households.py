"""Households: shared mailbox trees and the one place that maps a user's mailbox names to the store.

A shared mailbox ``[shared.family]`` is a mailbox tree in the store owned by the
pseudo-owner ``shared:family`` (:data:`~gateway.store.interfaces.SHARED_OWNER_PREFIX`).
Its members see it in the RFC 2342 shared namespace ``Shared/``: the tree's INBOX is
``Shared/family`` and its folder ``Bills`` is ``Shared/family/Bills``; everything else a
user names is in their own personal namespace (prefix "").

:class:`UserStore` is the store as one logged-in user sees it. The IMAP session talks to
it, never to the raw store, so every command that takes a mailbox name goes through
:meth:`UserStore.resolve` and nothing else decides who may reach what. The rules:

* Names are taken literally after modified UTF-7 decoding: ``..`` and ``.`` are not path
  operators (and are refused as levels of a new name), a leading ``/`` makes an empty
  level (refused), ``%``/``*`` are never mailbox names. So ``Shared/../bob/INBOX`` can
  only ever be a literal name in the caller's own tree.
* When any shared mailbox is configured, the top-level name ``Shared`` is reserved for
  the shared namespace for every user; a first level equal to it ignoring case but not
  exactly ``Shared`` (``shared/family``) names nothing, so case games cannot create a
  look-alike. Group names are exact.
* A shared tree the user is not a member of answers exactly like a name that does not
  exist (``NO [NONEXISTENT]``), so membership cannot be probed. ``Shared/family/INBOX``
  (any case) is refused: the tree's INBOX has one name only.
* Which flags are whose: \\Seen is private (whether *I* have read a message is about
  the reader; one member reading the bill must not mark it read for the others), while
  \\Deleted, \\Flagged, \\Answered, \\Draft, keywords, expunges and moves are shared
  (they describe the message or the household's handling of it; a deleted message is
  gone for everyone). Keywords stay shared because they are labels clients and filters
  put on the message ($Junk, $Forwarded, "Bills"), which the household wants to agree on.
* Mailbox-id methods get the user as ``viewer``, so in shared mailboxes \\Seen is the
  user's own (see :mod:`gateway.store.interfaces`). Mailbox ids reach a session only
  through this class (:meth:`UserStore.get_mailbox`, LIST, CREATE), which remembers
  whose tree each id is in.
* Access is checked on every call against the *current* membership, for ids as well as
  names (issue 20): an id handed out before a reload removed the user from the
  household answers exactly like a mailbox that does not exist
  (:meth:`UserStore.may_use`). The IMAP session checks the same rule before each command
  and ends a session whose selected mailbox is no longer reachable (see
  :mod:`gateway.imap.session`); this check is the backstop under it.
"""

from __future__ import annotations

import dataclasses
import datetime
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence

from gateway.access import quota
from gateway.access.quota import Quotas
from gateway.core.criteria import Criteria
from gateway.core.sorting import SortCriterion, ThreadFacts
from gateway.store.interfaces import (
    DELIMITER,
    INBOX,
    SHARED_OWNER_PREFIX,
    Changes,
    Mailbox,
    MailboxCounts,
    MailboxExists,
    MailboxNotAllowed,
    MailboxNotFound,
    MessageFlags,
    MessageHead,
    MessageInfo,
    MessageRow,
    MessageSummary,
    NewMessage,
    SelectionSummary,
    Store,
    StoreResult,
)

SHARED_PREFIX = "Shared"
"""The first level of every shared mailbox name (RFC 2342 shared namespace prefix)."""

_DOT_LEVELS = frozenset({".", ".."})


def shared_owner(group: str) -> str:
    """The store owner of a shared tree: ``family`` → ``shared:family``."""
    return SHARED_OWNER_PREFIX + group


class Households:
    """The configured shared mailboxes: group name → member user names.

    One instance lives as long as the server; :meth:`update` replaces its contents on a
    config reload (SIGHUP), and sessions see the new membership on their next command.
    """

    def __init__(self, groups: Mapping[str, Iterable[str]] | None = None) -> None:
        self._groups: dict[str, frozenset[str]] = {}
        self.update(groups or {})

    def update(self, groups: Mapping[str, Iterable[str]]) -> None:
        self._groups = {name: frozenset(members) for name, members in groups.items()}

    @property
    def groups(self) -> dict[str, frozenset[str]]:
        return dict(self._groups)

    def any(self) -> bool:
        return bool(self._groups)

    def groups_of(self, user: str) -> list[str]:
        """The shared mailboxes ``user`` may use, sorted."""
        return sorted(g for g, members in self._groups.items() if user in members)

    def is_member(self, user: str, group: str) -> bool:
        return user in self._groups.get(group, frozenset())


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Where a user's mailbox name lives in the store."""

    owner: str
    name: str  # the store's name within the owner's tree
    shared: str | None  # the group, for a shared tree


class UserStore:
    """The store as one user sees it: the personal tree plus the shared trees of the
    user's households under ``Shared/``. Implements
    :class:`~gateway.store.interfaces.MailStore` (what the IMAP session uses) method by
    method over the wrapped store:

    - name methods map names through :meth:`resolve` and check access; their ``user``
      argument must be this user (anything else answers MailboxNotFound);
    - ``viewer`` methods always view as this user (``viewer`` may be omitted, or this
      user; anything else answers MailboxNotFound), and writes that add mail are checked
      against the owner's quota;
    - :meth:`message_uids`, :meth:`message_bytes`, :meth:`message_bytes_batch`,
      :meth:`expunge` and :meth:`clear_recent` pass through unchanged;
    - every mailbox-id method first checks :meth:`may_use` (MailboxNotFound if not).

    The ledger, listeners and the store's lifetime are not per user and not here: the
    fetcher and the server hold the store itself.
    """

    def __init__(
        self, store: Store, user: str, households: Households, quotas: Quotas | None = None
    ) -> None:
        self.base = store
        self.user = user
        self.households = households
        self.quotas = quotas if quotas is not None else Quotas()
        self._owners: dict[int, str] = {}  # mailbox id → owner, as handed out

    @property
    def runs_inline(self) -> bool:
        """The wrapped store's (:class:`~gateway.store.interfaces.Backend`): whether its
        calls run on the reactor thread, which sizes a FETCH's reads."""
        return bool(getattr(self.base, "runs_inline", True))

    # ---- names ---------------------------------------------------------------------

    def _own(self, user: str) -> None:
        if user != self.user:
            raise MailboxNotFound("not this session's user")

    def _viewer(self, viewer: str | None) -> str:
        """The viewer is always this user (None: this user)."""
        if viewer is not None:
            self._own(viewer)
        return self.user

    def resolve(self, name: str, *, creating: bool = False) -> Resolved:
        """Map a user-visible name to (owner, store name). Raises MailboxNotFound for
        anything the user may not reach (or, when ``creating``, MailboxNotAllowed for
        names that can never be created)."""
        levels = name.split(DELIMITER)
        if creating and any(level in _DOT_LEVELS or not level for level in levels):
            raise MailboxNotAllowed("empty, '.' and '..' levels are not allowed in mailbox names")
        refuse = MailboxNotAllowed if creating else MailboxNotFound
        if not self.households.any() or levels[0].casefold() != SHARED_PREFIX.casefold():
            return Resolved(self.user, name, None)
        if levels[0] != SHARED_PREFIX or len(levels) < 2:
            raise refuse(f"{SHARED_PREFIX}/ holds only shared mailboxes")
        group = levels[1]
        if not self.households.is_member(self.user, group):
            raise MailboxNotFound(name)  # same answer as a name that does not exist
        rest = levels[2:]
        if not rest:
            return Resolved(shared_owner(group), INBOX, group)
        if rest[0].upper() == INBOX:
            raise refuse("the shared INBOX is named without /INBOX")
        return Resolved(shared_owner(group), DELIMITER.join(rest), group)

    def presented(self, owner: str, name: str) -> str:
        """The user-visible name of a store mailbox."""
        if not owner.startswith(SHARED_OWNER_PREFIX):
            return name
        root = SHARED_PREFIX + DELIMITER + owner[len(SHARED_OWNER_PREFIX) :]
        return root if name == INBOX else root + DELIMITER + name

    def _shown(self, mailbox: Mailbox) -> Mailbox:
        self._owners[mailbox.id] = mailbox.owner
        if mailbox.owner == self.user:
            return mailbox
        return dataclasses.replace(mailbox, name=self.presented(mailbox.owner, mailbox.name))

    def may_use(self, mailbox_id: int) -> bool:
        """Whether this user may still reach a mailbox id this view handed out: always
        for the user's own tree, for a shared tree only while a member (the membership
        of now, not of when the id was handed out). Unknown ids: no."""
        owner = self._owners.get(mailbox_id)
        if owner is None:
            return False
        if owner == self.user:
            return True
        if not owner.startswith(SHARED_OWNER_PREFIX):
            return False
        return self.households.is_member(self.user, owner[len(SHARED_OWNER_PREFIX) :])

    def _id(self, mailbox_id: int) -> int:
        """``mailbox_id`` if this user may use it now, else MailboxNotFound."""
        if not self.may_use(mailbox_id):
            raise MailboxNotFound(f"no mailbox with id {mailbox_id}")
        return mailbox_id

    def shared_namespace(self) -> str | None:
        """The prefix of the shared namespace this user sees (RFC 2342), or None."""
        if self.households.groups_of(self.user):
            return SHARED_PREFIX + DELIMITER
        return None

    # ---- users, mailboxes, subscriptions: changed, names resolved for this user ---------

    def ensure_user(self, user: str) -> None:
        self._own(user)
        self.base.ensure_user(user)
        for group in self.households.groups_of(user):
            self.base.ensure_user(shared_owner(group))

    def list_mailboxes(self, user: str) -> list[Mailbox]:
        self._own(user)
        out = [self._shown(m) for m in self.base.list_mailboxes(user)]
        if self.households.any():
            # A personal folder left over from before households existed is hidden
            # rather than shown under a name that now means something else.
            out = [m for m in out if m.name.split(DELIMITER)[0].casefold() != "shared"]
        for group in self.households.groups_of(user):
            out.extend(self._shown(m) for m in self.base.list_mailboxes(shared_owner(group)))
        return out

    def get_mailbox(self, user: str, name: str) -> Mailbox:
        self._own(user)
        where = self.resolve(name)
        return self._shown(self.base.get_mailbox(where.owner, where.name))

    def create_mailbox(self, user: str, name: str, special_use: str | None = None) -> Mailbox:
        self._own(user)
        where = self.resolve(name, creating=True)
        if where.shared is not None and where.name == INBOX:
            raise MailboxExists(name)
        return self._shown(self.base.create_mailbox(where.owner, where.name, special_use))

    def delete_mailbox(self, user: str, name: str) -> None:
        self._own(user)
        where = self.resolve(name)
        if where.shared is not None and where.name == INBOX:
            self.base.get_mailbox(where.owner, where.name)
            raise MailboxNotAllowed("a shared mailbox itself cannot be deleted")
        self.base.delete_mailbox(where.owner, where.name)

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        self._own(user)
        source = self.resolve(old)
        self.base.get_mailbox(source.owner, source.name)  # NONEXISTENT before anything else
        target = self.resolve(new, creating=True)
        if source.owner != target.owner:
            raise MailboxNotAllowed("mailboxes cannot be renamed between namespaces")
        if source.shared is not None and INBOX in (source.name, target.name):
            raise MailboxNotAllowed("a shared mailbox itself cannot be renamed")
        self.base.rename_mailbox(source.owner, source.name, target.name)

    def set_subscribed(self, user: str, name: str, subscribed: bool) -> None:
        """Subscriptions are the user's own list of names; subscribing to a shared name
        needs access to it (unsubscribing anything is always allowed)."""
        self._own(user)
        if subscribed:
            where = self.resolve(name, creating=True)
            if where.shared is not None:
                self.base.get_mailbox(where.owner, where.name)
        self.base.set_subscribed(user, name, subscribed)

    def subscriptions(self, user: str) -> list[str]:
        self._own(user)
        out = []
        for name in self.base.subscriptions(user):
            try:
                self.resolve(name)
            except MailboxNotFound:
                continue  # e.g. a household the user has left
            out.append(name)
        return out

    # ---- quota (RFC 9208; see gateway/access/quota.py) -------------------------------------

    def _check_quota(self, mailbox_id: int, adding: int) -> None:
        owner = self._owners.get(mailbox_id)
        if owner is not None:
            quota.check(self.base, self.quotas, owner, adding)

    def quota_roots(self, name: str) -> list[str]:
        """RFC 9208 §4.3 GETQUOTAROOT: the quota roots of an existing mailbox (none when
        its owner has no limit)."""
        where = self.resolve(name)
        self.base.get_mailbox(where.owner, where.name)
        if self.quotas.limit(where.owner) is None:
            return []
        return [self.presented(where.owner, INBOX) if where.shared is not None else ""]

    def quota(self, root: str) -> tuple[int, int]:
        """RFC 9208 §4.2 GETQUOTA: (bytes used, byte limit) of a root this user may see;
        raises MailboxNotFound for any other root."""
        owner = self.user if root == "" else self.resolve(root).owner
        if root not in ("", self.presented(owner, INBOX)):
            raise MailboxNotFound(root)
        limit = self.quotas.limit(owner)
        if limit is None:
            raise MailboxNotFound(root)
        return quota.usage(self.base, owner), limit

    # ---- messages: changed, the user is the viewer; additions checked against quota -----

    def counts(self, mailbox_id: int, *, viewer: str | None = None) -> MailboxCounts:
        return self.base.counts(self._id(mailbox_id), viewer=self._viewer(viewer))

    def message_rows(self, mailbox_id: int, *, viewer: str | None = None) -> list[MessageRow]:
        return self.base.message_rows(self._id(mailbox_id), viewer=self._viewer(viewer))

    def selection_summary(self, mailbox_id: int, *, viewer: str | None = None) -> SelectionSummary:
        return self.base.selection_summary(self._id(mailbox_id), viewer=self._viewer(viewer))

    def changes_since(self, mailbox_id: int, modseq: int, *, viewer: str | None = None) -> Changes:
        return self.base.changes_since(self._id(mailbox_id), modseq, viewer=self._viewer(viewer))

    def message_info(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageInfo]:
        return self.base.message_info(self._id(mailbox_id), uids, viewer=self._viewer(viewer))

    def message_summaries(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageSummary]:
        return self.base.message_summaries(self._id(mailbox_id), uids, viewer=self._viewer(viewer))

    def message_summary_chunks(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> Iterator[list[MessageSummary]]:
        return self.base.message_summary_chunks(
            self._id(mailbox_id), uids, viewer=self._viewer(viewer)
        )

    def message_info_with_bytes(
        self, mailbox_id: int, uids: Sequence[int], budget: int, *, viewer: str | None = None
    ) -> tuple[list[MessageInfo], dict[int, bytes]]:
        return self.base.message_info_with_bytes(
            self._id(mailbox_id), uids, budget, viewer=self._viewer(viewer)
        )

    def message_flags(
        self, mailbox_id: int, uids: Sequence[int], *, viewer: str | None = None
    ) -> list[MessageFlags]:
        return self.base.message_flags(self._id(mailbox_id), uids, viewer=self._viewer(viewer))

    def message_header_fields(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        names: tuple[str, ...],
        *,
        viewer: str | None = None,
    ) -> list[MessageHead]:
        return self.base.message_header_fields(
            self._id(mailbox_id), uids, names, viewer=self._viewer(viewer)
        )

    def append(
        self,
        mailbox_id: int,
        raw: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime.datetime | None = None,
        *,
        viewer: str | None = None,
    ) -> int:
        user = self._viewer(viewer)
        self._check_quota(mailbox_id, len(raw))
        return self.base.append(self._id(mailbox_id), raw, flags, internaldate, viewer=user)

    def append_many(
        self,
        mailbox_id: int,
        messages: Sequence[NewMessage],
        *,
        viewer: str | None = None,
        claim_recent: bool = False,
    ) -> list[int]:
        user = self._viewer(viewer)
        self._check_quota(mailbox_id, sum(len(m.raw) for m in messages))
        return self.base.append_many(
            self._id(mailbox_id), messages, viewer=user, claim_recent=claim_recent
        )

    def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: str,
        flags: Iterable[str],
        unchangedsince: int | None = None,
        *,
        viewer: str | None = None,
    ) -> StoreResult:
        return self.base.store_flags(
            self._id(mailbox_id), uids, mode, flags, unchangedsince, viewer=self._viewer(viewer)
        )

    def copy(
        self,
        src_mailbox_id: int,
        uids: Sequence[int],
        dst_mailbox_id: int,
        move: bool = False,
        *,
        viewer: str | None = None,
    ) -> list[tuple[int, int]]:
        user = self._viewer(viewer)
        self._id(src_mailbox_id)
        self._id(dst_mailbox_id)
        owner = self._owners.get(dst_mailbox_id)
        limited = owner is not None and self.quotas.limit(owner) is not None
        if limited and not (move and self._owners.get(src_mailbox_id) == owner):
            infos = self.base.message_info(src_mailbox_id, uids)
            self._check_quota(dst_mailbox_id, sum(i.size for i in infos))
        return self.base.copy(src_mailbox_id, uids, dst_mailbox_id, move, viewer=user)

    def search(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[int]:
        return self.base.search(self._id(mailbox_id), criteria, viewer=self._viewer(viewer))

    def sort(
        self,
        mailbox_id: int,
        criteria: Criteria,
        program: Sequence[SortCriterion],
        *,
        viewer: str | None = None,
    ) -> list[int]:
        return self.base.sort(self._id(mailbox_id), criteria, program, viewer=self._viewer(viewer))

    def thread_facts(
        self, mailbox_id: int, criteria: Criteria, *, viewer: str | None = None
    ) -> list[ThreadFacts]:
        return self.base.thread_facts(self._id(mailbox_id), criteria, viewer=self._viewer(viewer))

    # ---- messages: unchanged (no viewer, no quota) -----------------------------------------

    def message_uids(self, mailbox_id: int) -> array:
        return self.base.message_uids(self._id(mailbox_id))

    def message_bytes(self, mailbox_id: int, uid: int) -> bytes:
        return self.base.message_bytes(self._id(mailbox_id), uid)

    def message_bytes_batch(self, mailbox_id: int, uids: Sequence[int]) -> dict[int, bytes]:
        return self.base.message_bytes_batch(self._id(mailbox_id), uids)

    def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        return self.base.expunge(self._id(mailbox_id), uids)

    def clear_recent(self, mailbox_id: int, uids: Sequence[int]) -> list[int]:
        return self.base.clear_recent(self._id(mailbox_id), uids)
