"""The ``[store]`` and ``[cluster]`` config contract (issue 13), and the commands that use it:
check-config reaching the store, backup pointing at pg_dump in PostgreSQL mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import config
from gateway.app.storage import open_store
from gateway.store.postgres import SCHEMA_VERSION
from gateway.testing.postgres import Postgres, new_schema, shared_server
from tests.test_config import minimal, write

ROOT = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, extra: str) -> config.Config:
    return config.load(write(tmp_path, minimal(tmp_path) + extra))


def problems(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        load(tmp_path, extra)
    return caught.value.problems


def pg_password_file(tmp_path: Path, mode: int = 0o600, text: str = "s3cret\n") -> Path:
    p = tmp_path / "pg-password"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_defaults_are_sqlite_and_this_host_with_a_30s_lease(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.store == config.StoreSettings()
    assert cfg.store.backend == "sqlite"
    assert cfg.cluster == config.Cluster(node=socket.gethostname(), lease=30.0)


@pytest.mark.parametrize("mode", ["optimized", "always"])
def test_flag_fsync_is_optimized_unless_told_always(tmp_path: Path, mode: str) -> None:
    """A flag change's OK waits for its fsync (SQLite) or WAL flush (PostgreSQL) only
    with "always" (gateway/imap/durability.py, gateway/store/postgres/connection.py);
    the default is Dovecot's "optimized", on either backend."""
    assert config.StoreSettings().flag_fsync == "optimized"
    cfg = load(tmp_path, f'[store]\nflag_fsync = "{mode}"\n')
    assert cfg.store == config.StoreSettings(flag_fsync=mode)
    pw = pg_password_file(tmp_path, 0o600)
    cfg = load(
        tmp_path,
        f'[store]\nbackend = "postgresql"\ndsn = "postgresql://popgate@127.0.0.1/popgate"\n'
        f'password_file = "{pw}"\nflag_fsync = "{mode}"\n',
    )
    assert cfg.store.backend == "postgresql" and cfg.store.flag_fsync == mode


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_postgresql_with_dsn_and_password_file(tmp_path: Path, mode: int) -> None:
    pw = pg_password_file(tmp_path, mode)
    cfg = load(
        tmp_path,
        f"""
[store]
backend = "postgresql"
dsn = "postgresql://popgate@127.0.0.1:5432/popgate"
password_file = "{pw}"

[cluster]
node = "node-a"
lease = "1m"
""",
    )
    assert cfg.store.backend == "postgresql"
    assert cfg.store.dsn == "postgresql://popgate@127.0.0.1:5432/popgate"
    assert cfg.store.password == "s3cret"
    assert "s3cret" not in repr(cfg.store)
    assert cfg.cluster == config.Cluster("node-a", 60.0)


def test_a_password_inside_the_dsn_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        '[store]\nbackend = "postgresql"\ndsn = "postgresql://popgate:hunter2@db/popgate"\n',
    )
    path = tmp_path / "popgate.toml"
    assert found == [
        f"{path}: store.dsn: must not contain a password; put it in [store] password_file"
    ]
    assert "hunter2" not in found[0]


def test_a_password_file_others_can_read_is_refused(tmp_path: Path) -> None:
    pw = pg_password_file(tmp_path, 0o644)
    found = problems(
        tmp_path,
        f'[store]\nbackend = "postgresql"\ndsn = "postgresql://popgate@db/popgate"\n'
        f'password_file = "{pw}"\n',
    )
    assert len(found) == 1
    assert "store.password_file" in found[0] and "0600 or 0640" in found[0]


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ('[store]\nbackend = "mysql"\n', "store.backend", "must be one of sqlite, postgresql"),
        ('[store]\nbackend = "postgresql"\n', "store.dsn", "is required"),
        (
            '[store]\ndsn = "postgresql://x@y/z"\n',
            "store.dsn",
            'only used with backend = "postgresql"',
        ),
        (
            '[store]\nbackend = "postgresql"\ndsn = "postgresql://x@y/z?nosuch=1"\n',
            "store.dsn",
            "not a valid libpq connection URI",
        ),
        ("[store]\nfile = 1\n", "store.file", "unknown key"),
        ('[store]\nflag_fsync = "never"\n', "store.flag_fsync", "must be one of optimized, always"),
        (
            '[store]\nbackend = "postgresql"\ndsn = "postgresql://x@y/z"\nflag_fsync = "no"\n',
            "store.flag_fsync",
            "must be one of optimized, always",
        ),
        ('[cluster]\nlease = "2s"\n', "cluster.lease", "at least 5s"),
        ('[cluster]\nlease = "soon"\n', "cluster.lease", "expected a duration"),
        ('[cluster]\nnode = "node a"\n', "cluster.node", "node names are"),
        ("[cluster]\nnodes = 3\n", "cluster.nodes", "unknown key"),
    ],
)
def test_bad_store_and_cluster_values(tmp_path: Path, extra: str, key: str, words: str) -> None:
    found = problems(tmp_path, extra)
    assert len(found) == 1, found
    assert f": {key}: " in found[0] and words in found[0], found


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env
    )


def _pg_config(tmp_path: Path, pg: Postgres, database_dsn: str, password: str) -> Path:
    pw = pg_password_file(tmp_path, 0o600, password + "\n")
    return write(
        tmp_path,
        minimal(tmp_path)
        + f'\n[store]\nbackend = "postgresql"\ndsn = "{database_dsn}"\npassword_file = "{pw}"\n',
    )


def _schema_dsn(pg: Postgres, schema: str) -> str:
    return f"{pg.dsn}?options=-csearch_path%3D{schema}"


@pytest.mark.postgres
def test_check_config_reports_the_schema_version_or_what_is_wrong(tmp_path: Path) -> None:
    pg = shared_server()
    schema = new_schema(pg)
    path = _pg_config(tmp_path, pg, _schema_dsn(pg, schema), pg.password)
    out = _cli("check-config", str(path))
    assert out.returncode == 0, out.stderr
    assert "connected, empty database" in out.stdout
    open_store(config.load(path)).close()  # the first node migrates
    out = _cli("check-config", str(path))
    assert out.returncode == 0 and f"connected, schema version {SCHEMA_VERSION}" in out.stdout
    wrong = _pg_config(tmp_path, pg, _schema_dsn(pg, schema), "not-the-password")
    out = _cli("check-config", str(wrong))
    assert out.returncode == 1
    assert "password authentication failed" in out.stderr
    assert "not-the-password" not in out.stderr


def test_backup_in_postgresql_mode_says_to_use_pg_dump(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        minimal(tmp_path)
        + '\n[store]\nbackend = "postgresql"\ndsn = "postgresql://popgate@127.0.0.1/popgate"\n',
    )
    for command in (
        ["backup", "-c", str(path), str(tmp_path / "b")],
        ["restore", "-c", str(path), "x"],
    ):
        out = _cli(*command)
        assert out.returncode == 1
        assert "pg_dump" in out.stderr and "postgresql://popgate@127.0.0.1/popgate" in out.stderr
