"""Issue 16 acceptance with real peers: ``sieve-connect`` manages the scripts of a real
``popgate serve`` over ManageSieve (STARTTLS), then POP3 mail from a real Dovecot arrives
already filed into folders, and an IMAP client in IDLE on a target folder sees it arrive.
Bad scripts are refused at upload with line and column; a runtime failure keeps the
message in INBOX. Exactly-once per final mailbox under SIGKILL during a filtered import.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from gateway.app import control
from gateway.cli.main import main
from gateway.sieve import Envelope, FileInto, Keep, compile_script, run
from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot
from gateway.testing.fakepop3 import normalize_message
from gateway.testing.gateway_proc import GatewayProcess
from gateway.testing.imapclient import RawClient
from gateway.testing.managesieved import PASSWORD, USER
from gateway.testing.tlsca import CA
from tests.test_crash import event_count, wait_for_event_count
from tests.test_managesieve_peers import run_client, sieve_connect  # noqa: F401

pytestmark = pytest.mark.slow

SCRIPT = """require ["fileinto", "mailbox", "imap4flags"];
if address :domain "from" "work.example" {
  fileinto :flags "\\\\Flagged" "Work";
  stop;
}
if header :contains "subject" "invoice" { fileinto :create "Bills"; stop; }
if header :is "subject" "oops" { fileinto "Missing"; }
"""


def message(sender: str, subject: str, n: int) -> bytes:
    return (
        f"Return-Path: <{sender}>\r\nFrom: {sender}\r\nTo: alice@isp.example\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{n}@e2e.example>\r\n"
        f"Date: Mon, 1 Jan 2024 10:00:0{n} +0000\r\n\r\nconfidential body {n}\r\n"
    ).encode()


def imap(port: int) -> RawClient:
    """A raw IMAP client (gateway/testing/imapclient.py) logged in as the test user."""
    client = RawClient(port)
    client.login(USER, PASSWORD)
    return client


_tags = iter(range(1, 1_000_000))


def ok(client: RawClient, text: str) -> bytes:
    tag = f"t{next(_tags)}"
    reply = client.command(tag, text)
    assert reply.splitlines()[-1].startswith(f"{tag} OK".encode()), reply
    return reply


def idle_until(client: RawClient, wanted: bytes, timeout: float) -> list[bytes]:
    """IDLE (RFC 2177) until an untagged line containing ``wanted``; then DONE."""
    client.send(b"idle IDLE\r\n")
    assert client.read_line().startswith(b"+")
    client.sock.settimeout(timeout)
    seen = []
    while wanted not in (line := client.read_line()):
        seen.append(line)
    seen.append(line)
    client.send(b"DONE\r\n")
    client.read_until_tagged("idle")
    return seen


def gateway(workdir: Path, dovecot: Dovecot, tls_ca: CA | None, **up: object) -> GatewayProcess:
    tables = {}
    if tls_ca is not None:
        cert, key = tls_ca.issue(workdir / "certs")
        tables["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    upstream = {
        "name": "isp",
        "owner": USER,
        "host": "127.0.0.1",
        "port": dovecot.pop3_port,
        "tls": "none",
        "username": "alice",
        "password": "secret",
        "poll_interval": "1h",
        "timeout": "20s",
        **up,
    }
    return GatewayProcess(
        workdir, users={USER: PASSWORD}, upstreams=[upstream], tables=tables, managesieve=True
    )


def test_sieve_connect_manages_scripts_and_pop3_mail_arrives_filed_for_idle_clients(
    sieve_connect: str,  # noqa: F811
    dovecot: Dovecot,
    tls_ca: CA,
    tmp_path: Path,
) -> None:
    script = tmp_path / "rules.sieve"
    script.write_text(SCRIPT)
    bad = tmp_path / "bad.sieve"
    bad.write_text('require "fileinto";\nif true {\n  fileinto "X"\n}\n')
    with gateway(tmp_path / "gw", dovecot, tls_ca) as gw:
        gw.wait_for_event("pop3.fetched")  # the first (empty) pass at startup
        assert gw.managesieve_port is not None

        def client(*args: str) -> str:
            return run_client(sieve_connect, gw.managesieve_port, tls_ca, *args, cwd=tmp_path)

        # ManageSieve with a real client: upload, activate, list, download, delete
        client("--upload", "--localsieve", str(script), "--remotesieve", "rules")
        client("--activate", "--remotesieve", "rules")
        assert '"rules" ACTIVE' in client("--list")
        client("--download", "--remotesieve", "rules", "--localsieve", str(tmp_path / "got"))
        assert (tmp_path / "got").read_text() == SCRIPT
        client("--upload", "--localsieve", str(script), "--remotesieve", "spare")
        client("--delete", "--remotesieve", "spare")
        assert "spare" not in client("--list")
        refused = subprocess.run(
            [
                sieve_connect,
                *("--server", "localhost", "--port", str(gw.managesieve_port)),
                *("--user", USER, "--passwordfd", "0", "--tlscafile", str(tls_ca.cert_path)),
                *("--upload", "--localsieve", str(bad), "--remotesieve", "bad"),
            ],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0
        assert "line 4, column 1" in refused.stdout + refused.stderr

        # an IMAP client idles on the folder the script files into
        watcher = imap(gw.port)
        ok(watcher, "CREATE Work")
        ok(watcher, "SELECT Work")
        for n, (sender, subject) in enumerate(
            [
                ("boss@work.example", "quarterly plan"),
                ("shop@example.com", "your invoice"),
                ("friend@example.org", "oops"),
                ("friend@example.org", "hello"),
            ]
        ):
            dovecot.deliver("alice", message(sender, subject, n))
        answer = control.request(str(gw.state_dir), {"command": "fetch"}, timeout=60)
        assert answer["ok"], answer
        seen = idle_until(watcher, b"EXISTS", timeout=30)
        assert any(line.strip() == b"* 1 EXISTS" for line in seen), seen
        assert b"\\Flagged" in ok(watcher, "FETCH 1 FLAGS")
        watcher.close()

        counts = {}
        for folder in ("INBOX", "Work", "Bills"):
            with imap(gw.port) as reader:
                status = ok(reader, f"STATUS {folder} (MESSAGES)")
            counts[folder] = int(status.split(b"MESSAGES ")[1].split(b")")[0])
        assert counts == {"INBOX": 2, "Work": 1, "Bills": 1}  # "oops" kept after the error
        (error,) = [e for e in gw.events() if e.get("event") == "sieve.runtime_error"]
        assert error["owner"] == USER and error["script"] == "rules"
        assert "confidential" not in gw.log_text()

        # the admin CLI while the gateway runs: a new script (on the WAL store), then a
        # refile of INBOX through the control socket, seen by an IDLE client as EXPUNGE
        refile = tmp_path / "refile.sieve"
        refile.write_text(
            'require ["fileinto", "mailbox"];\n'
            'if header :is "subject" "hello" { fileinto :create "Refiled"; }\n'
        )
        cfg = str(gw.config_path)
        assert main(["sieve", "put", "-c", cfg, USER, "refile", str(refile), "--activate"]) == 0
        with imap(gw.port) as inbox:
            ok(inbox, "SELECT INBOX")
            assert main(["sieve", "run", "-c", cfg, USER, "--mailbox", "INBOX"]) == 0
            assert b"EXPUNGE" in idle_until(inbox, b"EXPUNGE", timeout=30)[-1]
            assert b"MESSAGES 1" in ok(inbox, "STATUS Refiled (MESSAGES)")


# ---- exactly-once per final mailbox under SIGKILL -----------------------------------------

MESSAGES = 1000
KILLS = 8
KILL_IN_PASS = (0.1, 1.2)
"""Seconds after a pass starts at which SIGKILL comes: spread over the import's batch
commits (up to 200 messages or 16 MB each), so kills land before, between and inside them."""

CRASH_SCRIPT = """require ["fileinto", "mailbox", "copy", "imap4flags"];
if size :over 40K { fileinto :create "Big"; stop; }
if header :matches "subject" "*a*" { fileinto :copy :create :flags "$A" "A"; }
if header :matches "subject" "*e*" { fileinto :create "E"; stop; }
if header :matches "subject" "*q*" { discard; stop; }
"""


class Env:
    def mailbox_exists(self, name: str) -> bool:
        return True

    def seen(self, id: str, handle: str, period: int) -> bool:
        return False

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


def expected_placement(messages: list[bytes]) -> collections.Counter[tuple[str, bytes]]:
    script = compile_script(CRASH_SCRIPT)
    out: collections.Counter[tuple[str, bytes]] = collections.Counter()
    for raw in messages:
        result = run(script, raw, Envelope("", "alice@isp.example"), Env())
        assert result.error is None
        for action in result.actions:
            if isinstance(action, Keep):
                out[("INBOX", raw)] += 1
            elif isinstance(action, FileInto):
                out[(action.mailbox, raw)] += 1
    return out


def stored_placement(state_dir: Path) -> collections.Counter[tuple[str, bytes]]:
    store = SQLiteStore(state_dir / "popgate.sqlite3")
    try:
        out: collections.Counter[tuple[str, bytes]] = collections.Counter()
        for box in store.list_mailboxes(USER):
            for row in store.message_rows(box.id):
                out[(box.name, store.message_bytes(box.id, row.uid))] += 1
        return out
    finally:
        store.close()


def filed_count(state_dir: Path) -> int:
    """Mailbox rows committed so far, read from the live WAL file without writing to it."""
    path = state_dir / "popgate.sqlite3"
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM mailbox_message").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created or migrated yet
        return 0


def kill_after_next_commit(gw: GatewayProcess, rng: random.Random, timeout: float = 30) -> None:
    """SIGKILL shortly after this pass commits a batch, so the kill lands mid-import
    whatever the machine's speed (a fixed delay can miss the import on a loaded box)."""
    before = filed_count(gw.state_dir)
    deadline = time.monotonic() + timeout
    while filed_count(gw.state_dir) == before and time.monotonic() < deadline:
        assert gw.process is not None and gw.process.poll() is None, gw.log_text()[-3000:]
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.2))
    gw.kill()


def test_sigkill_during_a_filtered_import_files_each_message_once_per_final_mailbox(
    dovecot: Dovecot, tmp_path: Path
) -> None:
    originals = samplemail.generate(MESSAGES, seed=1616, size_profile="realistic")
    dovecot.deliver_many("alice", originals)
    gw = gateway(tmp_path / "gw", dovecot, None, poll_interval="10s")
    gw.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(gw.state_dir, 0o700)
    store = SQLiteStore(gw.state_dir / "popgate.sqlite3")
    store.put_script(USER, "crash", CRASH_SCRIPT)
    store.set_active(USER, "crash")
    store.close()
    rng = random.Random(16)
    totals = []
    try:
        for n in range(KILLS):
            passes = event_count(gw, "pop3.fetch_start")
            gw.start()
            wait_for_event_count(gw, "pop3.fetch_start", passes + 1, timeout=30)
            if n % 2:
                kill_after_next_commit(gw, rng)
            else:
                time.sleep(rng.uniform(*KILL_IN_PASS))
                gw.kill()
            totals.append(sum(stored_placement(gw.state_dir).values()))
        finished = event_count(gw, "pop3.fetched")
        gw.start()
        wait_for_event_count(gw, "pop3.fetched", finished + 1, timeout=90)
        gw.stop()
    finally:
        gw.kill()
    expected = expected_placement([normalize_message(m) for m in originals])
    stored = stored_placement(gw.state_dir)
    assert {name for name, _raw in expected} >= {"INBOX", "A", "E"}  # the script did route
    assert stored == expected
    assert totals == sorted(totals)  # nothing committed was lost by a later kill
    assert any(0 < t < sum(expected.values()) for t in totals), totals  # killed mid-import
    print(f"filed copies after each kill: {totals}")
