"""The memory store's mailboxes and subscriptions: the same decisions as the SQLite store
(:mod:`gateway.store.sqlite.mailboxes`), on dictionaries."""

from __future__ import annotations

from gateway.core.flags import SPECIAL_USES
from gateway.store.errors import MailboxExists, MailboxNotAllowed, MailboxNotFound
from gateway.store.interfaces import DELIMITER, INBOX, Mailbox, is_shared_owner
from gateway.store.memory.state import MemoryBase
from gateway.store.rules import (
    DEFAULT_FOLDERS,
    check_mailbox_name,
    normalise_name,
)


class MemoryMailboxes(MemoryBase):
    """:class:`~gateway.store.interfaces.Mailboxes` and
    :class:`~gateway.store.interfaces.Subscriptions` in memory."""

    def ensure_user(self, user: str) -> None:
        if self._find(user, INBOX) is not None:
            return
        self._create(user, INBOX, None)
        if is_shared_owner(user):
            return  # a shared tree starts with its INBOX only
        self.state.subscriptions.add((user, INBOX))
        for name, use in DEFAULT_FOLDERS:
            if self._find(user, name) is None:
                self._create(user, name, use)
            self.state.subscriptions.add((user, name))

    def list_mailboxes(self, user: str) -> list[Mailbox]:
        boxes = [b for b in self._live().boxes.values() if b.owner == user]
        boxes.sort(key=lambda b: (b.name != INBOX, b.name))
        return [self._mailbox(b) for b in boxes]

    def get_mailbox(self, user: str, name: str) -> Mailbox:
        box = self._find(user, normalise_name(name))
        if box is None:
            raise MailboxNotFound(name)
        return self._mailbox(box)

    def create_mailbox(self, user: str, name: str, special_use: str | None = None) -> Mailbox:
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxExists(name)
        check_mailbox_name(name)
        if special_use is not None and special_use not in SPECIAL_USES:
            raise MailboxNotAllowed(f"unknown special-use attribute {special_use!r}")
        if self._find(user, name) is not None:
            raise MailboxExists(name)
        self._create_parents(user, name)
        return self._mailbox(self._create(user, name, special_use))

    def delete_mailbox(self, user: str, name: str) -> None:
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxNotAllowed("INBOX cannot be deleted")
        box = self._find(user, name)
        if box is None:
            raise MailboxNotFound(name)
        del self.state.boxes[box.id]
        self._notify([box.id])

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        old, new = normalise_name(old), normalise_name(new)
        if new == INBOX:
            raise MailboxExists(new)
        check_mailbox_name(new)
        source = self._find(user, old)
        if source is None:
            raise MailboxNotFound(old)
        if self._find(user, new) is not None:
            raise MailboxExists(new)
        if old == INBOX:
            self._create_parents(user, new)
            target = self._create(user, new, None)
            rows = list(source.rows.items())
            changed = [target.id]
            if rows:
                self._add(target, [(row.message, row.flags) for _uid, row in rows])
                self._remove(source, [uid for uid, _row in rows])
                changed.append(source.id)
            self._notify(changed)
            return
        if new.startswith(old + DELIMITER):
            raise MailboxNotAllowed("cannot rename a mailbox into its own child")
        family = sorted(
            (
                b
                for b in self.state.boxes.values()
                if b.owner == user and (b.name == old or b.name.startswith(old + DELIMITER))
            ),
            key=lambda b: b.name,
        )
        moves = [(b, new + b.name[len(old) :]) for b in family]
        for _box, target_name in moves:
            check_mailbox_name(target_name)
            if self._find(user, target_name) is not None:
                raise MailboxExists(target_name)
        for box, target_name in moves:
            if (user, box.name) in self.state.subscriptions:
                self.state.subscriptions.discard((user, box.name))
                self.state.subscriptions.add((user, target_name))
            box.name = target_name
        self._create_parents(user, new)
        self._notify(b.id for b, _ in moves)

    def set_subscribed(self, user: str, name: str, subscribed: bool) -> None:
        key = (user, normalise_name(name))
        if subscribed:
            self._live().subscriptions.add(key)
        else:
            self._live().subscriptions.discard(key)

    def subscriptions(self, user: str) -> list[str]:
        return sorted(name for owner, name in self._live().subscriptions if owner == user)
