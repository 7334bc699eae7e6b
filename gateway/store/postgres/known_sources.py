"""The PostgreSQL store's known sources (:mod:`gateway.store.known_sources`): the
``known_source`` table (schema version 2), one row per (user, source), trimmed per user
on every write, as the SQLite store does."""

from __future__ import annotations

from gateway.store.postgres.connection import PGConnection


class PGKnownSources(PGConnection):
    """:class:`~gateway.store.known_sources.KnownSources` on PostgreSQL."""

    def remember_source(
        self, user: str, source: str, seen: float, *, keep: int, forget_before: float
    ) -> None:
        with self._write() as (cur, _changed):
            cur.execute(
                'INSERT INTO known_source ("user", source, seen) VALUES (%s, %s, %s)'
                ' ON CONFLICT ("user", source)'
                " DO UPDATE SET seen = greatest(known_source.seen, excluded.seen)",
                (user, source, float(seen)),
            )
            cur.execute(
                'DELETE FROM known_source WHERE "user" = %s AND (seen < %s OR source NOT IN'
                ' (SELECT source FROM known_source WHERE "user" = %s'
                ' ORDER BY seen DESC, source COLLATE "C" LIMIT %s))',
                (user, float(forget_before), user, max(1, int(keep))),
            )

    def known_sources(self, user: str) -> dict[str, float]:
        with self._cursor() as cur:
            cur.execute('SELECT source, seen FROM known_source WHERE "user" = %s', (user,))
            return {source: seen for source, seen in cur.fetchall()}
