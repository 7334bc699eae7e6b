"""The SQLite store's Sieve scripts: :class:`~gateway.store.scripts.ScriptStore` on the
``sieve_script`` table, so a backup of the store file carries every script with the mail.

Each write is one ``BEGIN IMMEDIATE`` transaction, so two processes (the running gateway
and an offline ``popgate sieve`` command, both on the WAL file) never see half a change;
the partial unique index ``sieve_script_active`` keeps one active script per owner even
if they raced. The rules (names, limits) are :mod:`gateway.store.scripts`'s.
"""

from __future__ import annotations

import sqlite3

from gateway.store.scripts import (
    ActiveScript,
    ScriptExists,
    ScriptInfo,
    ScriptIsActive,
    ScriptLimits,
    ScriptNotFound,
    check_space,
    script_size,
    validate_script_name,
)
from gateway.store.sqlite.connection import SQLiteConnection


class SQLiteScripts(SQLiteConnection):
    """:class:`~gateway.store.scripts.ScriptStore` on SQLite."""

    limits: ScriptLimits = ScriptLimits()
    """The per-owner bounds; an instance may be given others (tests, config)."""

    def _active_of(self, cur: sqlite3.Connection, owner: str, name: str) -> bool:
        validate_script_name(name)
        row = cur.execute(
            "SELECT active FROM sieve_script WHERE owner = ? AND name = ?", (owner, name)
        ).fetchone()
        if row is None:
            raise ScriptNotFound(name)
        return bool(row[0])

    def list_scripts(self, owner: str) -> list[ScriptInfo]:
        rows = self.db.execute(
            "SELECT name, active FROM sieve_script WHERE owner = ?", (owner,)
        ).fetchall()
        # Sorted in Python: code-point order, as the memory reference sorts.
        return [ScriptInfo(name, bool(active)) for name, active in sorted(rows)]

    def get_script(self, owner: str, name: str) -> str:
        validate_script_name(name)
        row = self.db.execute(
            "SELECT text FROM sieve_script WHERE owner = ? AND name = ?", (owner, name)
        ).fetchone()
        if row is None:
            raise ScriptNotFound(name)
        return str(row[0])

    def _space(self, cur: sqlite3.Connection, owner: str, name: str, size: int) -> None:
        validate_script_name(name)
        count, replacing = cur.execute(
            "SELECT count(*), coalesce(sum(name = ?), 0) FROM sieve_script WHERE owner = ?",
            (name, owner),
        ).fetchone()
        check_space(self.limits, int(count), bool(replacing), size)

    def have_space(self, owner: str, name: str, size: int) -> None:
        self._space(self.db, owner, name, size)

    def put_script(self, owner: str, name: str, text: str) -> None:
        with self._write():
            cur = self.db
            self._space(cur, owner, name, script_size(text))
            cur.execute(
                "INSERT INTO sieve_script (owner, name, text) VALUES (?, ?, ?)"
                " ON CONFLICT (owner, name) DO UPDATE SET text = excluded.text",
                (owner, name, text),
            )

    def delete_script(self, owner: str, name: str) -> None:
        with self._write():
            cur = self.db
            if self._active_of(cur, owner, name):
                raise ScriptIsActive(name)
            cur.execute("DELETE FROM sieve_script WHERE owner = ? AND name = ?", (owner, name))

    def rename_script(self, owner: str, old: str, new: str) -> None:
        validate_script_name(new)
        with self._write():
            cur = self.db
            self._active_of(cur, owner, old)
            taken = cur.execute(
                "SELECT 1 FROM sieve_script WHERE owner = ? AND name = ?", (owner, new)
            ).fetchone()
            if taken is not None:
                raise ScriptExists(new)
            cur.execute(
                "UPDATE sieve_script SET name = ? WHERE owner = ? AND name = ?", (new, owner, old)
            )

    def set_active(self, owner: str, name: str) -> None:
        with self._write():
            cur = self.db
            self._active_of(cur, owner, name)
            cur.execute(
                "UPDATE sieve_script SET active = 0 WHERE owner = ? AND active = 1", (owner,)
            )
            cur.execute(
                "UPDATE sieve_script SET active = 1 WHERE owner = ? AND name = ?", (owner, name)
            )

    def deactivate(self, owner: str) -> None:
        with self._write():
            self.db.execute(
                "UPDATE sieve_script SET active = 0 WHERE owner = ? AND active = 1", (owner,)
            )

    def active_script(self, owner: str) -> ActiveScript | None:
        row = self.db.execute(
            "SELECT name, text FROM sieve_script WHERE owner = ? AND active = 1", (owner,)
        ).fetchone()
        return None if row is None else ActiveScript(str(row[0]), str(row[1]))
