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

from gateway.store.errors import MailboxNotFound
from gateway.store.interfaces import Mailbox
from gateway.store.rules import normalise_name
from gateway.store.sqlite.rows import MAILBOX_COLUMNS, MAILBOX_FROM, SQLiteRows
from gateway.store.steps import MailboxSteps


class SQLiteMailboxes(SQLiteRows, MailboxSteps):
    """:class:`~gateway.store.interfaces.Mailboxes` and
    :class:`~gateway.store.interfaces.Subscriptions` on SQLite (create, delete and rename
    in :class:`~gateway.store.steps.MailboxSteps`)."""

    def ensure_user(self, user: str) -> None:
        # Once a user's INBOX exists it stays (INBOX cannot be deleted, RFC 3501 §6.3.4,
        # and provisioning does nothing more then), so each user costs one write
        # transaction per process, not one per LOGIN (issue 19's reconnect storm).
        if user in self._provisioned:
            return
        with self._write():
            self._ensure_user_tx(self.db, user)
        self._provisioned.add(user)

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
