"""The default store: one SQLite file in WAL mode implementing :class:`~gateway.store.interfaces.Store`.

Durability comes first: every write is one ``BEGIN IMMEDIATE`` transaction committed
with ``synchronous=FULL``, so when :meth:`SQLiteStore.deliver` returns, the message and
its POP3 ledger row are on disk together and the fetcher may DELE it upstream.
Listeners hear about a change only after its commit, never from inside a transaction.
SQLite answers in microseconds, so the store runs inline (``runs_inline = True``: called
on the reactor thread, see :mod:`gateway.store.runner`).

The modules follow the contract's concerns; each says which decisions the contract
leaves open it makes:

- :mod:`~gateway.store.sqlite.connection`: opening, migrating, transactions, listeners;
- :mod:`~gateway.store.sqlite.rows`: row-level steps inside a transaction (counters,
  message insertion, a shared mailbox member's private \\Seen);
- :mod:`~gateway.store.sqlite.mailboxes`: mailboxes and subscriptions;
- :mod:`~gateway.store.sqlite.messages`: messages, flags, expunge, copy/move, search;
- :mod:`~gateway.store.sqlite.sorting`: SORT and THREAD (RFC 5256) as ordered queries;
- :mod:`~gateway.store.sqlite.ledger`: the POP3 ledger and exactly-once delivery (also
  routed by Sieve, with RFC 7352 duplicate tracking);
- :mod:`~gateway.store.sqlite.known_sources`: where users logged in from (the login
  penalty's lockout protection, :mod:`gateway.store.known_sources`);
- :mod:`~gateway.store.sqlite.scripts`: each owner's Sieve scripts
  (:class:`~gateway.store.scripts.ScriptStore`).

Listeners are called, once per mailbox per write, for content changes (append,
delivery, STORE that changed something, expunge, copy/move) and for DELETE and RENAME;
not for CREATE, subscriptions or clear_recent. The rules shared with every backend
(names, flags, limits) are in :mod:`gateway.store.rules`; the schema and its migrations
in :mod:`gateway.store.schema`.
"""

from __future__ import annotations

from gateway.store.sqlite.known_sources import SQLiteKnownSources
from gateway.store.sqlite.ledger import SQLiteLedger
from gateway.store.sqlite.mailboxes import SQLiteMailboxes
from gateway.store.sqlite.messages import SQLiteMessages
from gateway.store.sqlite.scripts import SQLiteScripts
from gateway.store.sqlite.sorting import SQLiteSorting

__all__ = ["SQLiteStore"]


class SQLiteStore(
    SQLiteMailboxes,
    SQLiteSorting,
    SQLiteMessages,
    SQLiteLedger,
    SQLiteKnownSources,
    SQLiteScripts,
):
    """The :class:`~gateway.store.interfaces.Store` (and the
    :class:`~gateway.store.scripts.ScriptStore`) on one SQLite file: the concern classes
    over one :class:`~gateway.store.sqlite.connection.SQLiteConnection`."""
