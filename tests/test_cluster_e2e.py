"""Three ``popgate serve`` nodes on one PostgreSQL, one Dovecot upstream (issue 13 acceptance).

The upstream holds 1,000 messages in delete mode; whichever node holds the upstream's
lease is SIGKILLed five times at random moments (and restarted). At the end every message
is in the mailbox exactly once, byte-identical, the upstream is empty, and Dovecot's own
log (login and logout of each POP3 session, in microseconds) shows no two POP3 sessions
of the account overlapping in time. The lease is 5 s to keep it short; every wait is an
"eventually" with a generous bound (the suite runs on 2 shared cores).
"""

from __future__ import annotations

import collections
import random
import time
from pathlib import Path

import psycopg
import pytest

from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.dovecot_sessions import PRECISE_LOG_TIMESTAMPS, overlaps, pop3_sessions
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.postgres import Postgres, new_schema, shared_server
from tests.test_e2e_skeleton import imap_messages, upstream_entry, upstream_retr

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.postgres]

MESSAGES = 1000
KILLS = 5
LEASE = "5s"
NODES = ("node-1", "node-2", "node-3")
UPSTREAM = "alice-isp"
WAIT = 300.0


def eventually(predicate, timeout: float = WAIT, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class LeaseTable:
    """Reads the upstream's lease row the way an operator would (psql)."""

    def __init__(self, pg: Postgres, schema: str) -> None:
        self.conn = psycopg.connect(
            pg.dsn, password=pg.password, options=f"-c search_path={schema}", autocommit=True
        )

    def holder(self) -> str | None:
        try:
            row = self.conn.execute(
                "SELECT node FROM upstream_lease WHERE upstream = %s"
                " AND expires_at > clock_timestamp()",
                (UPSTREAM,),
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
        return None if row is None else str(row[0])

    def token(self) -> int:
        row = self.conn.execute(
            "SELECT token FROM upstream_lease WHERE upstream = %s", (UPSTREAM,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def delivered(self) -> int:
        """UIDLs of the upstream in the ledger (committed by any node)."""
        try:
            row = self.conn.execute(
                "SELECT count(*) FROM ledger WHERE upstream = %s", (UPSTREAM,)
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0])

    def close(self) -> None:
        self.conn.close()


def test_three_nodes_sigkill_the_holder_five_times_every_message_once(tmp_path: Path) -> None:
    rng = random.Random(13)
    pg = shared_server()
    schema = new_schema(pg)
    pw = tmp_path / "pg-password"
    pg.write_password_file(pw)
    with Dovecot(extra_config=PRECISE_LOG_TIMESTAMPS) as server:
        server.add_user("alice", "secret")
        server.deliver_many("alice", samplemail.generate(MESSAGES, seed=21))
        expected = upstream_retr(server)  # the bytes as the upstream's RETR gives them
        assert len(expected) == MESSAGES
        nodes = {
            name: GatewayProcess(
                tmp_path / name,
                users={"alice": "alice-password"},
                upstreams=[upstream_entry(server, "none", keep_on_server=False)],
                tables={
                    "store": {
                        "backend": "postgresql",
                        "dsn": f"{pg.dsn}?options=-csearch_path%3D{schema}",
                        "password_file": str(pw),
                    },
                    "cluster": {"node": name, "lease": LEASE},
                },
            )
            for name in NODES
        }
        leases = LeaseTable(pg, schema)
        killed: list[str] = []
        taken_over_by: list[str] = []
        try:
            # One node first: it takes the upstream as it comes up and its first pass
            # runs while the test watches, however long the others take to start (a
            # pass of these 1,000 small messages takes a few seconds, starting a node
            # one or two).
            first, *others = NODES
            nodes[first].start()
            for kill in range(KILLS):
                assert eventually(leases.holder), "no node took the upstream"
                if kill == 0:  # the first one surely in the middle of the first pass
                    assert eventually(lambda: 0 < leases.delivered() < MESSAGES, interval=0.05)
                else:
                    time.sleep(rng.uniform(0.5, 4.0))  # a random moment of its tenure
                victim = eventually(leases.holder)
                assert victim
                nodes[victim].kill()
                killed.append(victim)
                if kill == 0:
                    for name in others:
                        nodes[name].start()
                if kill == 1:
                    # Failover proper: the victim stays down until another node has taken
                    # the upstream over (a victim back within the lease re-takes its own
                    # claim under the same node name, so random restarts alone may never
                    # show a takeover).
                    taker = eventually(
                        lambda v=victim: (h := leases.holder()) not in (None, v) and h
                    )
                    assert taker, "no other node took the upstream over"
                    taken_over_by.append(taker)
                else:
                    time.sleep(rng.uniform(0.0, 3.0))
                nodes[victim].start()
            port = nodes[NODES[0]].port
            got = eventually(
                lambda: (m := imap_messages(port)) and len(m) >= MESSAGES and m,
                interval=2.0,
            )
            assert got, "not every message arrived"
            assert eventually(lambda: server.maildir_count("alice") == 0, interval=1.0)
            # exactly once and byte-identical
            assert len(got) == MESSAGES
            assert collections.Counter(got.values()) == collections.Counter(expected)
            assert leases.token() >= 2  # the upstream changed hands
        finally:
            leases.close()
            for node in nodes.values():
                node.stop()
        sessions = [s for s in pop3_sessions(server.log_path.read_text(), "alice")]
    assert len(killed) == KILLS
    assert len(sessions) > KILLS
    assert overlaps(sessions) == []
    logs = "".join(node.log_text() for node in nodes.values())
    assert "store.reactor_thread_call" not in logs and pg.password not in logs
    events = collections.Counter(e.get("event") for n in nodes.values() for e in n.events())
    holders = {
        e.get("node")
        for n in nodes.values()
        for e in n.events()
        if e.get("event") == "lease.acquired"
    }
    # passes cut short by a SIGKILL log a start and nothing else
    ended = events["pop3.fetched"] + events["pop3.fetch_failed"] + events["pop3.fetch_cancelled"]
    interrupted = events["pop3.fetch_start"] - ended
    assert len(holders) >= 2 and set(taken_over_by) <= holders and interrupted >= 1
