"""The SQLite store's known sources (:mod:`gateway.store.known_sources`): the
``known_source`` table, one row per (user, source), trimmed per user on every write."""

from __future__ import annotations

from gateway.store.sqlite.connection import SQLiteConnection


class SQLiteKnownSources(SQLiteConnection):
    """:class:`~gateway.store.known_sources.KnownSources` on SQLite."""

    def remember_source(
        self, user: str, source: str, seen: float, *, keep: int, forget_before: float
    ) -> None:
        with self._write() as _changed:
            conn = self.db
            conn.execute(
                "INSERT INTO known_source (user, source, seen) VALUES (?, ?, ?)"
                " ON CONFLICT (user, source) DO UPDATE SET seen = max(seen, excluded.seen)",
                (user, source, float(seen)),
            )
            conn.execute(
                "DELETE FROM known_source WHERE user = ? AND (seen < ? OR source NOT IN"
                " (SELECT source FROM known_source WHERE user = ?"
                "  ORDER BY seen DESC, source LIMIT ?))",
                (user, float(forget_before), user, max(1, int(keep))),
            )

    def known_sources(self, user: str) -> dict[str, float]:
        rows = self.db.execute("SELECT source, seen FROM known_source WHERE user = ?", (user,))
        return {source: seen for source, seen in rows}
