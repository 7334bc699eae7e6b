"""An in-memory :class:`~gateway.store.interfaces.Store` for fast tests of protocol code.

It follows the same contract as :class:`gateway.store.sqlite.SQLiteStore`, proven by the
shared suite in tests/test_store_contract.py, and shares its rules (mailbox names,
flags, message checks, search validation) through :mod:`gateway.store.rules` and
:mod:`gateway.store.search`, so the two cannot drift apart. Nothing is durable:
:class:`MemoryState` is the whole "file", and passing the same state to a new
:class:`MemoryStore` plays the part of reopening it. The modules follow the contract's
concerns as the SQLite package does: ``state`` (records and shared steps),
``mailboxes``, ``messages``, ``sorting``, ``ledger``, ``known_sources``.
"""

from __future__ import annotations

from gateway.store.memory.known_sources import MemoryKnownSources
from gateway.store.memory.ledger import MemoryLedger
from gateway.store.memory.mailboxes import MemoryMailboxes
from gateway.store.memory.sorting import MemorySorting
from gateway.store.memory.state import MemoryState

__all__ = ["MemoryState", "MemoryStore"]


class MemoryStore(MemoryMailboxes, MemorySorting, MemoryLedger, MemoryKnownSources):
    """The store contract on plain Python objects; same constructor knobs as SQLiteStore."""
