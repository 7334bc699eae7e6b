"""The PostgreSQL store's mailboxes and subscriptions (RFC 3501 §6.3.3-§6.3.7).

The decisions the contract leaves open are the SQLite store's
(:mod:`gateway.store.sqlite.mailboxes`): INBOX and the default special-use folders on
first sight of a user, DELETE leaves children and subscriptions, RENAME moves
subscriptions along. Every change to a user's tree holds that owner's advisory lock, so
two nodes creating, renaming or provisioning at once take turns.
"""

from __future__ import annotations

from gateway.store.errors import MailboxNotFound
from gateway.store.interfaces import INBOX, Mailbox
from gateway.store.postgres.rows import MAILBOX_COLUMNS, MAILBOX_FROM, PGRows, mailbox_of
from gateway.store.rules import normalise_name
from gateway.store.steps import MailboxSteps


class PGMailboxes(PGRows, MailboxSteps):
    """:class:`~gateway.store.interfaces.Mailboxes` and
    :class:`~gateway.store.interfaces.Subscriptions` on PostgreSQL (create, delete and
    rename in :class:`~gateway.store.steps.MailboxSteps`)."""

    def ensure_user(self, user: str) -> None:
        with self._cursor() as cur:
            if self._find(cur, user, INBOX) is not None:
                return  # the usual case: one round trip, no lock
        with self._write() as (cur, _changed):
            self._lock_owner(cur, user)
            self._ensure_user_tx(cur, user)

    def list_mailboxes(self, user: str) -> list[Mailbox]:
        with self._cursor() as cur:
            cur.execute(
                f"SELECT {MAILBOX_COLUMNS} FROM {MAILBOX_FROM} WHERE m.owner = %s"
                " ORDER BY m.name <> 'INBOX', m.name COLLATE \"C\"",
                (user,),
            )
            return [mailbox_of(row) for row in cur.fetchall()]

    def get_mailbox(self, user: str, name: str) -> Mailbox:
        name = normalise_name(name)
        with self._cursor() as cur:
            mailbox = self._find(cur, user, name)
        if mailbox is None:
            raise MailboxNotFound(name)
        return mailbox

    def set_subscribed(self, user: str, name: str, subscribed: bool) -> None:
        name = normalise_name(name)
        with self._cursor() as cur:
            if subscribed:
                cur.execute(
                    "INSERT INTO subscription (owner, name) VALUES (%s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (user, name),
                )
            else:
                cur.execute("DELETE FROM subscription WHERE owner = %s AND name = %s", (user, name))

    def subscriptions(self, user: str) -> list[str]:
        with self._cursor() as cur:
            cur.execute(
                'SELECT name FROM subscription WHERE owner = %s ORDER BY name COLLATE "C"',
                (user,),
            )
            return [r[0] for r in cur.fetchall()]
