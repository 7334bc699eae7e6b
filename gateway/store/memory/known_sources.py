"""The memory store's known sources (:mod:`gateway.store.known_sources`): a dictionary
per user in :class:`~gateway.store.memory.state.MemoryState`, trimmed on every write as
the SQLite table is."""

from __future__ import annotations

from gateway.store.memory.state import MemoryBase


class MemoryKnownSources(MemoryBase):
    """:class:`~gateway.store.known_sources.KnownSources` in memory."""

    def remember_source(
        self, user: str, source: str, seen: float, *, keep: int, forget_before: float
    ) -> None:
        table = self._live().known_sources.setdefault(user, {})
        table[source] = max(float(seen), table.get(source, float(seen)))
        kept = sorted(table.items(), key=lambda item: (-item[1], item[0]))[: max(1, keep)]
        table.clear()
        table.update((s, when) for s, when in kept if when >= forget_before)
        if not table:
            del self.state.known_sources[user]

    def known_sources(self, user: str) -> dict[str, float]:
        return dict(self._live().known_sources.get(user, {}))
