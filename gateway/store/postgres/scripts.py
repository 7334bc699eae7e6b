"""The PostgreSQL store's Sieve scripts: :class:`~gateway.store.scripts.ScriptStore` on the
``sieve_script`` table (schema version 2), as the SQLite store keeps them beside the mail.

The rules are the contract's (:mod:`gateway.store.scripts`: names per RFC 5804 §1.6,
limits checked by :func:`~gateway.store.scripts.check_space`); each write is one
transaction holding the owner's advisory lock, so two nodes changing one owner's scripts
take turns and the limits hold across nodes. A partial unique index keeps at most one
active script per owner. Calls are round trips: make them off the reactor thread.
"""

from __future__ import annotations

from psycopg import Cursor

from gateway.store.postgres.connection import PGConnection
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

SCRIPT_LOCK_CLASS = 0x7369_6576  # "siev": advisory-lock namespace of script owners


class PGScripts(PGConnection):
    """:class:`~gateway.store.scripts.ScriptStore` on PostgreSQL, part of the store."""

    limits: ScriptLimits = ScriptLimits()
    """The per-owner bounds; an instance may be given others (tests, config)."""

    @staticmethod
    def _lock_scripts(cur: Cursor, owner: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (SCRIPT_LOCK_CLASS, owner))

    @staticmethod
    def _script_active(cur: Cursor, owner: str, name: str) -> bool:
        """Whether the script exists and is active; raises ScriptNotFound."""
        cur.execute("SELECT active FROM sieve_script WHERE owner = %s AND name = %s", (owner, name))
        row = cur.fetchone()
        if row is None:
            raise ScriptNotFound(name)
        return bool(row[0])

    def list_scripts(self, owner: str) -> list[ScriptInfo]:
        with self._cursor() as cur:
            cur.execute(
                'SELECT name, active FROM sieve_script WHERE owner = %s ORDER BY name COLLATE "C"',
                (owner,),
            )
            return [ScriptInfo(name, bool(active)) for name, active in cur.fetchall()]

    def get_script(self, owner: str, name: str) -> str:
        validate_script_name(name)
        with self._cursor() as cur:
            cur.execute(
                "SELECT text FROM sieve_script WHERE owner = %s AND name = %s", (owner, name)
            )
            row = cur.fetchone()
        if row is None:
            raise ScriptNotFound(name)
        return str(row[0])

    def _space(self, cur: Cursor, owner: str, name: str, size: int) -> None:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE name = %s) FROM sieve_script"
            " WHERE owner = %s",
            (name, owner),
        )
        row = cur.fetchone()
        assert row is not None
        check_space(self.limits, int(row[0]), bool(row[1]), size)

    def have_space(self, owner: str, name: str, size: int) -> None:
        validate_script_name(name)
        with self._cursor() as cur:
            self._space(cur, owner, name, size)

    def put_script(self, owner: str, name: str, text: str) -> None:
        validate_script_name(name)
        with self._write() as (cur, _changed):
            self._lock_scripts(cur, owner)
            self._space(cur, owner, name, script_size(text))
            cur.execute(
                "INSERT INTO sieve_script (owner, name, text) VALUES (%s, %s, %s)"
                " ON CONFLICT (owner, name) DO UPDATE SET text = excluded.text",
                (owner, name, text),
            )

    def delete_script(self, owner: str, name: str) -> None:
        validate_script_name(name)
        with self._write() as (cur, _changed):
            self._lock_scripts(cur, owner)
            if self._script_active(cur, owner, name):
                raise ScriptIsActive(name)
            cur.execute("DELETE FROM sieve_script WHERE owner = %s AND name = %s", (owner, name))

    def rename_script(self, owner: str, old: str, new: str) -> None:
        validate_script_name(new)
        validate_script_name(old)
        with self._write() as (cur, _changed):
            self._lock_scripts(cur, owner)
            self._script_active(cur, owner, old)
            cur.execute("SELECT 1 FROM sieve_script WHERE owner = %s AND name = %s", (owner, new))
            if cur.fetchone() is not None:
                raise ScriptExists(new)
            cur.execute(
                "UPDATE sieve_script SET name = %s WHERE owner = %s AND name = %s",
                (new, owner, old),
            )

    def set_active(self, owner: str, name: str) -> None:
        validate_script_name(name)
        with self._write() as (cur, _changed):
            self._lock_scripts(cur, owner)
            self._script_active(cur, owner, name)
            cur.execute(
                "UPDATE sieve_script SET active = FALSE WHERE owner = %s AND active", (owner,)
            )
            cur.execute(
                "UPDATE sieve_script SET active = TRUE WHERE owner = %s AND name = %s",
                (owner, name),
            )

    def deactivate(self, owner: str) -> None:
        with self._write() as (cur, _changed):
            cur.execute(
                "UPDATE sieve_script SET active = FALSE WHERE owner = %s AND active", (owner,)
            )

    def active_script(self, owner: str) -> ActiveScript | None:
        with self._cursor() as cur:
            cur.execute("SELECT name, text FROM sieve_script WHERE owner = %s AND active", (owner,))
            row = cur.fetchone()
        return None if row is None else ActiveScript(str(row[0]), str(row[1]))
