"""The PostgreSQL store: :class:`~gateway.store.interfaces.Store` for several popgate nodes.

Nodes are stateless in front of one PostgreSQL database (issue 13): everything a client
can see lives in it, and the contract's guarantees hold across nodes, not only across
calls of one process. Every call is a network round trip, so the store does not run
inline (``runs_inline = False``): callers go through a
:class:`~gateway.store.runner.ThreadRunner`, and listeners are handed to the reactor
thread (``set_dispatcher``). The modules follow the contract's concerns, as the SQLite
package does:

- :mod:`~gateway.store.postgres.schema`: tables and versioned migrations, safe when
  several nodes start at once;
- :mod:`~gateway.store.postgres.connection`: the bounded pool, transactions, listeners,
  the reactor-thread guard;
- :mod:`~gateway.store.postgres.rows`: row-level steps and the locks that make UIDs,
  UIDNEXT and HIGHESTMODSEQ atomic across nodes; the search dialect;
- :mod:`~gateway.store.postgres.mailboxes`, :mod:`~gateway.store.postgres.messages`,
  :mod:`~gateway.store.postgres.sorting` (SORT/THREAD), :mod:`~gateway.store.postgres.ledger` (with Sieve routing),
  :mod:`~gateway.store.postgres.known_sources`, :mod:`~gateway.store.postgres.scripts`:
  the contract's concerns;
- :mod:`~gateway.store.postgres.flagwrite`: STORE in two round trips, a no-op STORE
  without a durable commit;
- :mod:`~gateway.store.postgres.catchup`: the node's change log of each mailbox, which
  answers a catch-up without a query while the node knows the mailbox unchanged;
- :mod:`~gateway.store.postgres.leases`: which node polls each upstream (leases with
  fencing tokens, :mod:`gateway.store.leases`), and the fence check every ledger write
  makes in its own transaction;
- :mod:`~gateway.store.postgres.timeseries`, :mod:`~gateway.store.postgres.queue`: the
  time-series and outbound-queue contracts on the same database and pool.

Listeners hear about the same changes as with SQLite (content, flags, expunge, delete,
rename), after the commit, and about those committed by other nodes too: each write
sends a notice in its transaction (:mod:`~gateway.store.postgres.changes`) and each
node's LISTEN bridge (:mod:`~gateway.store.postgres.push`, run by the service) feeds them
to :meth:`~gateway.store.postgres.connection.PGConnection.dispatch_changes`, catching up
by modseq after a lost connection.
"""

from __future__ import annotations

from gateway.store.postgres.connection import ReactorThreadCall, StoreUnavailable, probe
from gateway.store.postgres.known_sources import PGKnownSources
from gateway.store.postgres.ledger import PGLedger
from gateway.store.postgres.mailboxes import PGMailboxes
from gateway.store.postgres.messages import PGMessages
from gateway.store.postgres.schema import SCHEMA_VERSION, SchemaTooNew
from gateway.store.postgres.scripts import PGScripts
from gateway.store.postgres.sorting import PGSorting

__all__ = [
    "SCHEMA_VERSION",
    "PostgresStore",
    "ReactorThreadCall",
    "SchemaTooNew",
    "StoreUnavailable",
    "probe",
]


class PostgresStore(PGMailboxes, PGMessages, PGSorting, PGLedger, PGKnownSources, PGScripts):
    """The :class:`~gateway.store.interfaces.Store` (and the
    :class:`~gateway.store.scripts.ScriptStore`, the known sources) on a PostgreSQL
    database: the concern classes over one
    :class:`~gateway.store.postgres.connection.PGConnection` pool."""
