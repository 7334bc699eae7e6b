"""The SQLite store's mailboxes and subscriptions (RFC 3501 §6.3.3-§6.3.7).

Decisions the contract leaves open, made here (and in the memory store alike):
:meth:`~SQLiteMailboxes.ensure_user` provisions INBOX and the default special-use
folders the first time a user is seen (no INBOX yet), and folders the user later
deletes are not brought back; a shared tree is provisioned with INBOX only. DELETE of a
mailbox with children removes the mailbox and its messages and leaves the children in
place (as Dovecot does; the parent is then \\NonExistent in LIST). RENAME moves
subscriptions along with the renamed mailboxes; DELETE keeps them (RFC 3501 §6.3.6: a
server must not remove a subscription on its own).
"""

from __future__ import annotations

import sqlite3

from gateway.core.flags import SPECIAL_USES
from gateway.store.errors import MailboxExists, MailboxNotAllowed, MailboxNotFound
from gateway.store.interfaces import DELIMITER, INBOX, Mailbox
from gateway.store.rules import check_mailbox_name, normalise_name
from gateway.store.sqlite.rows import MAILBOX_COLUMNS, MAILBOX_FROM, SQLiteRows


class SQLiteMailboxes(SQLiteRows):
    """:class:`~gateway.store.interfaces.Mailboxes` and
    :class:`~gateway.store.interfaces.Subscriptions` on SQLite."""

    def ensure_user(self, user: str) -> None:
        with self._write():
            self._ensure_user_tx(self.db, user)

    def list_mailboxes(self, user: str) -> list[Mailbox]:
        rows = self.db.execute(
            f"SELECT {MAILBOX_COLUMNS} FROM {MAILBOX_FROM} WHERE m.owner = ?"
            " ORDER BY m.name != 'INBOX', m.name",
            (user,),
        ).fetchall()
        return [Mailbox(*row[:7], subscribed=bool(row[7])) for row in rows]

    def get_mailbox(self, user: str, name: str) -> Mailbox:
        name = normalise_name(name)
        mailbox = self._find(self.db, user, name)
        if mailbox is None:
            raise MailboxNotFound(name)
        return mailbox

    def create_mailbox(self, user: str, name: str, special_use: str | None = None) -> Mailbox:
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxExists(name)
        check_mailbox_name(name)
        if special_use is not None and special_use not in SPECIAL_USES:
            raise MailboxNotAllowed(f"unknown special-use attribute {special_use!r}")
        with self._write():
            cur = self.db
            if self._find(cur, user, name) is not None:
                raise MailboxExists(name)
            self._create_parents_tx(cur, user, name)
            self._create_tx(cur, user, name, special_use)
            mailbox = self._find(cur, user, name)
        assert mailbox is not None
        return mailbox

    def delete_mailbox(self, user: str, name: str) -> None:
        """RFC 3501 §6.3.4. The mailbox and its messages go; children, if any, stay
        (the parent then shows as \\NonExistent); subscriptions stay (§6.3.6)."""
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxNotAllowed("INBOX cannot be deleted")
        with self._write() as changed:
            cur = self.db
            mailbox = self._find(cur, user, name)
            if mailbox is None:
                raise MailboxNotFound(name)
            message_ids = [
                r[0]
                for r in cur.execute(
                    "SELECT message_id FROM mailbox_message WHERE mailbox_id = ?", (mailbox.id,)
                )
            ]
            cur.execute("DELETE FROM mailbox WHERE id = ?", (mailbox.id,))
            self._collect(cur, message_ids)
            changed.add(mailbox.id)

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        old, new = normalise_name(old), normalise_name(new)
        if new == INBOX:
            raise MailboxExists(new)
        check_mailbox_name(new)
        with self._write() as changed:
            cur = self.db
            source = self._find(cur, user, old)
            if source is None:
                raise MailboxNotFound(old)
            if self._find(cur, user, new) is not None:
                raise MailboxExists(new)
            if old == INBOX:
                self._rename_inbox(cur, user, source, new, changed)
                return
            if new.startswith(old + DELIMITER):
                raise MailboxNotAllowed("cannot rename a mailbox into its own child")
            prefix = old + DELIMITER
            family = cur.execute(
                "SELECT id, name FROM mailbox WHERE owner = ?"
                " AND (name = ? OR substr(name, 1, ?) = ?) ORDER BY name",
                (user, old, len(prefix), prefix),
            ).fetchall()
            moves = [(mid, name, new + name[len(old) :]) for mid, name in family]
            for _mid, _name, target in moves:
                check_mailbox_name(target)
                if self._find(cur, user, target) is not None:
                    raise MailboxExists(target)
            for mid, name, target in moves:
                cur.execute("UPDATE mailbox SET name = ? WHERE id = ?", (target, mid))
                if cur.execute(
                    "DELETE FROM subscription WHERE owner = ? AND name = ? RETURNING 1",
                    (user, name),
                ).fetchall():
                    cur.execute(
                        "INSERT OR IGNORE INTO subscription (owner, name) VALUES (?, ?)",
                        (user, target),
                    )
                changed.add(mid)
            self._create_parents_tx(cur, user, new)

    def _rename_inbox(
        self, cur: sqlite3.Connection, user: str, inbox: Mailbox, new: str, changed: set[int]
    ) -> None:
        """RFC 3501 §6.3.5: move every INBOX message to a new mailbox, leave INBOX empty;
        INBOX's children are not renamed."""
        self._create_parents_tx(cur, user, new)
        target = self._create_tx(cur, user, new, None)
        rows = cur.execute(
            "SELECT uid, message_id, flags FROM mailbox_message WHERE mailbox_id = ? ORDER BY uid",
            (inbox.id,),
        ).fetchall()
        changed.add(target)
        if rows:
            self._add_rows(cur, target, [(mid, flags) for _uid, mid, flags in rows])
            self._remove_rows(cur, inbox.id, [r[0] for r in rows], self._bump(cur, inbox.id))
            changed.add(inbox.id)

    def set_subscribed(self, user: str, name: str, subscribed: bool) -> None:
        name = normalise_name(name)
        with self._write():
            if subscribed:
                self.db.execute(
                    "INSERT OR IGNORE INTO subscription (owner, name) VALUES (?, ?)", (user, name)
                )
            else:
                self.db.execute(
                    "DELETE FROM subscription WHERE owner = ? AND name = ?", (user, name)
                )

    def subscriptions(self, user: str) -> list[str]:
        rows = self.db.execute(
            "SELECT name FROM subscription WHERE owner = ? ORDER BY name", (user,)
        ).fetchall()
        return [r[0] for r in rows]
