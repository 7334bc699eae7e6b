"""A real PostgreSQL server, run unprivileged under a temp dir, as a test and bench peer.

popgate's second store backend is PostgreSQL; its tests talk to a real server (Debian
``postgresql``) rather than a fake, the way the POP3 tests talk to a real Dovecot. The
instance is private: ``initdb`` into a temp dir owned by the unprivileged test user
(``initdb`` refuses to run as root), a Unix socket in that dir, TCP on 127.0.0.1 at a free
port, and password (SCRAM) authentication for the role popgate uses, which is the path an
operator configures (``[store] password_file``).

``durable=False`` (the default for tests) turns off fsync and synchronous commit: only
popgate processes are killed in the tests, never the database, so nothing is lost that a
test could observe. Benchmarks that claim durability pass ``durable=True``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.testing.dovecot import ensure_test_user
from gateway.testing.ports import LOOPBACK, free_port

DEFAULT_BIN_DIRS = tuple(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True))
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class PostgresNotInstalled(RuntimeError):
    """No PostgreSQL server binaries (Debian ``postgresql``) on this machine."""


def find_bin_dir() -> Path:
    """The newest installed PostgreSQL ``bin`` dir holding ``initdb`` and ``postgres``."""
    for candidate in DEFAULT_BIN_DIRS:
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    raise PostgresNotInstalled(
        "PostgreSQL server binaries not found under /usr/lib/postgresql; "
        "install the Debian package 'postgresql' (make test does)"
    )


class Postgres:
    """One private PostgreSQL instance; a context manager that stops and removes it."""

    def __init__(
        self,
        *,
        database: str = "popgate",
        role: str = "popgate",
        durable: bool = False,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.bin_dir = find_bin_dir()
        self.database = database
        self.role = role
        self.password = secrets.token_urlsafe(18)
        self.durable = durable
        self._owns_dir = base_dir is None
        self.dir = Path(base_dir or tempfile.mkdtemp(prefix="popgate-pg-"))
        self.data_dir = self.dir / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "postgres.log"
        self._user = ensure_test_user()

    # ---- life ---------------------------------------------------------------------

    def _as_user(self) -> dict[str, object]:
        if os.geteuid() != 0:
            return {}
        uid, gid = self._user.pw_uid, self._user.pw_gid
        return {"user": uid, "group": gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def start(self) -> Postgres:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self._chown(self.dir)
        pwfile = self.dir / "superuser-password"
        pwfile.write_text(secrets.token_urlsafe(18) + "\n")
        self._chown(pwfile)
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            **self._as_user(),
        )
        settings = [
            "-c",
            f"listen_addresses={LOOPBACK}",
            "-p",
            str(self.port),
            "-k",
            str(self.dir),
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            settings += ["-c", "full_page_writes=off"]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), *settings],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **self._as_user(),
        )
        log.close()
        self._wait_ready()
        self.psql(f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}';")
        self.psql(f"CREATE DATABASE {self.database} OWNER {self.role};")
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log_text()}")
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", str(self.dir), "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not become ready:\n{self.log_text()}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the directory if it was ours."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- use ----------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """A libpq URI without the password, as popgate's config wants it."""
        return f"postgresql://{self.role}@{LOOPBACK}:{self.port}/{self.database}"

    @property
    def dsn_with_password(self) -> str:
        return f"postgresql://{self.role}:{self.password}@{LOOPBACK}:{self.port}/{self.database}"

    def write_password_file(self, path: str | os.PathLike[str]) -> Path:
        """The role's password in a 0600 file, for ``[store] password_file``."""
        p = Path(path)
        p.write_text(self.password + "\n")
        os.chmod(p, 0o600)
        return p

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run SQL as the superuser over the private Unix socket; returns psql's output."""
        result = subprocess.run(
            [
                str(self.bin_dir.parent / "bin" / "psql"),
                "-h",
                str(self.dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            **self._as_user(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def reset(self) -> None:
        """Drop and recreate the database: a clean store for the next test."""
        self.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{self.database}' AND pid <> pg_backend_pid();"
        )
        self.psql(f"DROP DATABASE IF EXISTS {self.database};")
        self.psql(f"CREATE DATABASE {self.database} OWNER {self.role};")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ---- one server per test process ---------------------------------------------------

_SHARED: Postgres | None = None
_SHARED_LOCK = threading.Lock()
_SCHEMAS = itertools.count(1)


def shared_server() -> Postgres:
    """The test process's one PostgreSQL server, started on first use and stopped at
    exit: starting one costs about a second, so tests share it and each takes a fresh
    schema (:func:`new_schema`) rather than a fresh server."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            server = Postgres()
            server.start()
            atexit.register(server.stop)
            _SHARED = server
        return _SHARED


def new_schema(server: Postgres) -> str:
    """A new, empty schema owned by the popgate role: a clean store for one test
    (pass it as ``schema=`` to the store, which puts it first on the search path)."""
    import psycopg

    name = f"t{os.getpid()}_{next(_SCHEMAS)}"
    with psycopg.connect(server.dsn, password=server.password, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    return name


_FREE_SCHEMAS: list[str] = []


def acquire_schema(server: Postgres) -> str:
    """A clean schema for one test: one given back by :func:`release_schema` (already
    migrated, its tables emptied: much faster than migrating anew) or a new one."""
    with _SHARED_LOCK:
        if _FREE_SCHEMAS:
            return _FREE_SCHEMAS.pop()
    return new_schema(server)


def release_schema(server: Postgres, name: str) -> None:
    """Empty every table of ``name`` but ``schema_version`` (identities restarted) and
    keep the schema for the next :func:`acquire_schema`."""
    import psycopg

    with psycopg.connect(server.dsn, password=server.password, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s"
                " AND tablename <> 'schema_version'",
                (name,),
            )
        ]
        if tables:
            listed = ", ".join(f'{name}."{table}"' for table in tables)
            conn.execute(f"TRUNCATE {listed} RESTART IDENTITY CASCADE")
    with _SHARED_LOCK:
        _FREE_SCHEMAS.append(name)


def open_test_store(**kwargs: object) -> Any:
    """A :class:`~gateway.store.postgres.PostgresStore` on a clean schema of the shared
    server (small pool), for one test: closing it gives the schema back."""
    from gateway.store.postgres import PostgresStore

    class TestStore(PostgresStore):
        def close(self) -> None:
            was_open = self._pool is not None
            super().close()
            if was_open and self.schema is not None:
                release_schema(shared_server(), self.schema)

    server = shared_server()
    kwargs.setdefault("pool_size", 2)
    return TestStore(
        server.dsn,
        password=server.password,
        schema=acquire_schema(server),
        **kwargs,  # type: ignore[arg-type]
    )


def close_test_store(store: Any) -> None:
    store.close()


@contextlib.contextmanager
def user_store(*users: str) -> Iterator[Any]:
    """A test store (:func:`open_test_store`) with these users made: the fixture of the
    tests that count or compare what the PostgreSQL store sends for one user's writes."""
    store = open_test_store()
    try:
        for user in users:
            store.ensure_user(user)
        yield store
    finally:
        close_test_store(store)


class StatementLog:
    """Every ``Cursor.execute`` of the test (BEGIN and COMMIT of a transaction included),
    as its statement's bytes: each one is a round trip on a store thread,
    so the tests of the one-statement paths count them. Installed with ``monkeypatch``, so
    it ends with the test."""

    def __init__(self, monkeypatch: Any) -> None:
        import psycopg

        self.sent: list[bytes] = []
        original = psycopg.Cursor.execute

        def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            self.sent.append(query if isinstance(query, bytes) else str(query).encode())
            return original(cursor, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)

    @property
    def count(self) -> int:
        return len(self.sent)

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, int]:
        """``fn(*args, **kwargs)`` and how many statements it sent."""
        before = self.count
        result = fn(*args, **kwargs)
        return result, self.count - before


MESSAGE_ROW_QUERIES: dict[str, str] = {
    "message": "SELECT sha256, size, internaldate, internaldate_tz, internal_day,"
    " sent_date, sent_day, message_id_header, envelope, bodystructure, body, parts"
    " FROM message WHERE id = %s",
    "content": "SELECT raw FROM content WHERE message_id = %s",
    "header_field": "SELECT name, pos, value_folded FROM header_field"
    " WHERE message_id = %s ORDER BY name, pos",
    "sort_key": "SELECT arrival, sent, size, subject, refwd, from_key, to_key, cc_key,"
    " display_from, display_to, msgid, refs FROM sort_key WHERE message_id = %s",
    "message_text": "SELECT header_folded, text_folded FROM message_text WHERE message_id = %s",
}
"""Every row the PostgreSQL store keeps for one message, its id left out: what the
differential tests of a faster write path compare with the statement-by-statement one."""


def message_rows(cur: Any, message_id: int) -> dict[str, list[tuple]]:
    """The rows of :data:`MESSAGE_ROW_QUERIES` for one message, read on ``cur``."""
    found: dict[str, list[tuple]] = {}
    for table, sql in MESSAGE_ROW_QUERIES.items():
        cur.execute(sql, (message_id,))
        found[table] = cur.fetchall()
    return found


@contextlib.contextmanager
def two_nodes(server: Postgres) -> Iterator[tuple[Any, Any]]:
    """The stores of two nodes (``node-a``, ``node-b``) on one fresh schema of ``server``,
    as two popgate nodes share one database: what cross-node tests (push, change logs)
    need. Both are closed at the end, B first."""
    from gateway.store.postgres import PostgresStore

    schema = new_schema(server)
    a = PostgresStore(
        server.dsn, password=server.password, schema=schema, pool_size=2, node="node-a"
    )
    b = PostgresStore(
        server.dsn, password=server.password, schema=schema, pool_size=2, node="node-b"
    )
    try:
        yield a, b
    finally:
        b.close()
        a.close()
