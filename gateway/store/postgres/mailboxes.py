"""The PostgreSQL store's mailboxes and subscriptions (RFC 3501 §6.3.3-§6.3.7).

The decisions the contract leaves open are the SQLite store's
(:mod:`gateway.store.sqlite.mailboxes`): INBOX and the default special-use folders on
first sight of a user, DELETE leaves children and subscriptions, RENAME moves
subscriptions along. Every change to a user's tree holds that owner's advisory lock, so
two nodes creating, renaming or provisioning at once take turns.
"""

from __future__ import annotations

from psycopg import Cursor

from gateway.core.flags import SPECIAL_USES
from gateway.store.errors import MailboxExists, MailboxNotAllowed, MailboxNotFound
from gateway.store.interfaces import DELIMITER, INBOX, Mailbox
from gateway.store.postgres.rows import MAILBOX_COLUMNS, MAILBOX_FROM, PGRows, mailbox_of
from gateway.store.rules import check_mailbox_name, normalise_name


class PGMailboxes(PGRows):
    """:class:`~gateway.store.interfaces.Mailboxes` and
    :class:`~gateway.store.interfaces.Subscriptions` on PostgreSQL."""

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

    def create_mailbox(self, user: str, name: str, special_use: str | None = None) -> Mailbox:
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxExists(name)
        check_mailbox_name(name)
        if special_use is not None and special_use not in SPECIAL_USES:
            raise MailboxNotAllowed(f"unknown special-use attribute {special_use!r}")
        with self._write() as (cur, _changed):
            self._lock_owner(cur, user)
            if self._find(cur, user, name) is not None:
                raise MailboxExists(name)
            self._create_parents_tx(cur, user, name)
            self._create_tx(cur, user, name, special_use)
            mailbox = self._find(cur, user, name)
        assert mailbox is not None
        return mailbox

    def delete_mailbox(self, user: str, name: str) -> None:
        """RFC 3501 §6.3.4. The mailbox and its messages go; children and subscriptions
        stay (§6.3.6)."""
        name = normalise_name(name)
        if name == INBOX:
            raise MailboxNotAllowed("INBOX cannot be deleted")
        with self._write() as (cur, changed):
            self._lock_owner(cur, user)
            mailbox = self._find(cur, user, name)
            if mailbox is None:
                raise MailboxNotFound(name)
            self._lock(cur, mailbox.id)
            cur.execute(
                "SELECT message_id FROM mailbox_message WHERE mailbox_id = %s", (mailbox.id,)
            )
            message_ids = [r[0] for r in cur.fetchall()]
            cur.execute("DELETE FROM mailbox WHERE id = %s", (mailbox.id,))
            self._collect(cur, message_ids)
            changed.add(mailbox.id)

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        old, new = normalise_name(old), normalise_name(new)
        if new == INBOX:
            raise MailboxExists(new)
        check_mailbox_name(new)
        with self._write() as (cur, changed):
            self._lock_owner(cur, user)
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
            cur.execute(
                "SELECT id, name FROM mailbox WHERE owner = %s"
                " AND (name = %s OR left(name, %s) = %s) ORDER BY name",
                (user, old, len(prefix), prefix),
            )
            moves = [(mid, name, new + name[len(old) :]) for mid, name in cur.fetchall()]
            for _mid, _name, target in moves:
                check_mailbox_name(target)
                if self._find(cur, user, target) is not None:
                    raise MailboxExists(target)
            for mid, name, target in moves:
                cur.execute("UPDATE mailbox SET name = %s WHERE id = %s", (target, mid))
                cur.execute(
                    "DELETE FROM subscription WHERE owner = %s AND name = %s RETURNING 1",
                    (user, name),
                )
                if cur.fetchall():
                    cur.execute(
                        "INSERT INTO subscription (owner, name) VALUES (%s, %s)"
                        " ON CONFLICT DO NOTHING",
                        (user, target),
                    )
                changed.add(mid)
            self._create_parents_tx(cur, user, new)

    def _rename_inbox(
        self, cur: Cursor, user: str, inbox: Mailbox, new: str, changed: set[int]
    ) -> None:
        """RFC 3501 §6.3.5: move every INBOX message to a new mailbox, leave INBOX empty;
        INBOX's children are not renamed."""
        self._create_parents_tx(cur, user, new)
        target = self._create_tx(cur, user, new, None)
        self._lock(cur, inbox.id, target)
        cur.execute(
            "SELECT uid, message_id, flags FROM mailbox_message WHERE mailbox_id = %s"
            " ORDER BY uid",
            (inbox.id,),
        )
        rows = cur.fetchall()
        changed.add(target)
        if rows:
            self._add_rows(cur, target, [(mid, flags) for _uid, mid, flags in rows])
            self._remove_rows(cur, inbox.id, [r[0] for r in rows], self._bump(cur, inbox.id))
            changed.add(inbox.id)

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
