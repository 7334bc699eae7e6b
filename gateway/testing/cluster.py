"""Several real ``popgate serve`` nodes on one PostgreSQL store, for end-to-end tests.

Issue 13's acceptance runs three nodes in front of one database: each node gets its own
config, state dir, IMAP port and ``[cluster] node`` name; all share one schema of the test
server (:mod:`gateway.testing.postgres`), reached with a password file as an operator
would configure it. Upstreams are given per node, so a test can let exactly one node poll.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.postgres import Postgres, new_schema


def store_tables(pg: Postgres, schema: str, password_file: Path, node: str) -> dict[str, Any]:
    """The ``[store]`` and ``[cluster]`` tables of one node on ``schema``."""
    return {
        "store": {
            "backend": "postgresql",
            "dsn": f"{pg.dsn}?options=-csearch_path%3D{schema}",
            "password_file": str(password_file),
        },
        "cluster": {"node": node, "lease": "10s"},
    }


def cluster_nodes(
    root: Path,
    pg: Postgres,
    *,
    users: dict[str, str],
    upstreams: Sequence[Sequence[dict[str, Any]]],
    schema: str | None = None,
) -> list[GatewayProcess]:
    """One (not yet started) :class:`GatewayProcess` per entry of ``upstreams`` (that
    node's upstreams), named ``node-1``, ``node-2``..., all on one fresh schema."""
    schema = schema or new_schema(pg)
    password_file = pg.write_password_file(root / "pg-password")
    return [
        GatewayProcess(
            root / f"node-{index}",
            users=users,
            upstreams=list(node_upstreams),
            tables=store_tables(pg, schema, password_file, f"node-{index}"),
        )
        for index, node_upstreams in enumerate(upstreams, start=1)
    ]


def fetch_now(node: GatewayProcess, timeout: float = 120.0) -> None:
    """``popgate fetch`` against the node's control socket: a pass of its upstreams now."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "fetch", "--config", str(node.config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"popgate fetch failed ({done.returncode}): {done.stderr.strip()}")
