"""PostgreSQL mode keeps every database round trip off the reactor thread (issue 13), for
the servers besides IMAP and the fetcher: ManageSieve, ``sieve-run``, SMTP submission
with its Sent copy, the relay's queue and bounces, the web page, ``status`` and
``/metrics``.

Each test runs a whole node in-process (:func:`gateway.testing.pgnode.postgres_node`:
``build_service`` as ``popgate serve`` builds it, on PostgreSQL) whose store raises
:class:`~gateway.store.postgres.ReactorThreadCall` for a connection taken on the reactor
thread and records every such attempt; real clients drive the listeners, and the test
ends by asserting that the guard saw no call at all.
"""

from __future__ import annotations

import base64
import email
import imaplib
import json
import smtplib
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.python.threadpool import ThreadPool

from gateway.app.control import request as control_request
from gateway.app.sending import StoreFiling
from gateway.store.postgres.queue import PGOutboundQueue
from gateway.store.queue import NewOutbound
from gateway.store.runner import ThreadRunner
from gateway.submission.client import RelayOutcome
from gateway.submission.relay import RelayService
from gateway.submission.sent import SentDedup
from gateway.testing.managesieved import SieveClient
from gateway.testing.pgnode import PGNode, ReactorGuard, postgres_node
from gateway.testing.ports import free_port
from gateway.testing.postgres import open_test_store
from gateway.testing.reactor_thread import ReactorThread
from gateway.testing.tlsca import CA
from gateway.testing.web import Client

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

HOST = "127.0.0.1"
USERS = {"alice": "alice-password", "bob": "bob-password"}
ADDRESS = "alice@isp.example"

SCRIPT = 'require "fileinto";\r\nif header :contains "subject" "Report" { fileinto "Reports"; }\r\n'


@pytest.fixture
def node(tmp_path: Path, tls_ca: CA) -> Iterator[tuple[PGNode, dict[str, int]]]:
    """alice with an upstream whose POP3 and SMTP are closed loopback ports (a fetch
    fails fast; the relay keeps the message queued and retries every second), and every
    listener: IMAP, ManageSieve, submission, the web page, /metrics."""
    ports = {"submission": free_port(), "web": free_port(), "metrics": free_port()}
    cert, key = tls_ca.issue(tmp_path / "tls", ("localhost", HOST))
    secret = tmp_path / "smtp.pass"
    secret.write_text("smtp-password\n")
    secret.chmod(0o600)
    upstream = {
        "name": "alice-isp",
        "owner": "alice",
        "host": HOST,
        "port": free_port(),
        "tls": "none",
        "username": ADDRESS,
        "password": "pop3-password",
        "poll_interval": "1h",
        "notify": False,
        "smtp": {
            "host": HOST,
            "port": free_port(),
            "tls": "none",
            "username": "relay",
            "password_file": str(secret),
        },
    }
    with postgres_node(
        tmp_path / "gw",
        users=USERS,
        upstreams=[upstream],
        managesieve=True,
        extra_server={
            "submission": [f"tcp:{ports['submission']}:interface={HOST}"],
            "web": [f"tcp:{ports['web']}:interface={HOST}"],
        },
        tables={
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            "submission": {"retry_intervals": ["1s"]},
            "metrics": {"enabled": True, "listen": f"tcp:{ports['metrics']}:interface={HOST}"},
        },
    ) as running:
        yield running, ports


def _imap(node: PGNode) -> imaplib.IMAP4:
    client = imaplib.IMAP4(HOST, node.process.port)
    client.login("alice", USERS["alice"])
    return client


def _messages(client: imaplib.IMAP4, mailbox: str) -> list[tuple[bytes, bytes]]:
    """(FLAGS, BODY[]) of each message of ``mailbox``."""
    typ, _ = client.select(mailbox)
    assert typ == "OK", mailbox
    typ, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
    assert typ == "OK"
    return [(item[0], item[1]) for item in data if isinstance(item, tuple)]


def _wait_for(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_managesieve_and_sieve_run_stay_off_the_reactor(node: Any) -> None:
    """PUTSCRIPT, SETACTIVE, LISTSCRIPTS, GETSCRIPT, then "sieve-run" refiling INBOX with
    that script: every script and mail store call ran on a store thread."""
    running, _ports = node
    with SieveClient(running.process.managesieve_port) as sieve:
        sieve.response()  # the greeting
        assert sieve.login("alice", USERS["alice"]).startswith(b"OK")
        data = SCRIPT.encode()
        put = sieve.command(b'PUTSCRIPT "sort" {%d+}\r\n' % len(data) + data + b"\r\n")
        assert put[-1].startswith(b"OK"), put
        assert sieve.status('SETACTIVE "sort"').startswith(b"OK")
        assert sieve.command("LISTSCRIPTS")[:-1] == [b'"sort" ACTIVE\r\n']
        got = sieve.command('GETSCRIPT "sort"')
        assert got[-1].startswith(b"OK") and b"".join(got[:-1]).endswith(data + b"\r\n")
        assert sieve.status('DELETESCRIPT "sort"').startswith(b"NO (ACTIVE)")
        assert sieve.status("LOGOUT").startswith(b"OK")
    imap = _imap(running)
    try:
        assert imap.create("Reports")[0] == "OK"
        for subject in ("Monthly Report", "Hello"):
            raw = f"From: x@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
            assert imap.append("INBOX", "", None, raw)[0] == "OK"
        progress: list[dict[str, Any]] = []
        result = control_request(
            running.state_dir,
            {"command": "sieve-run", "owner": "alice", "mailbox": "INBOX"},
            on_progress=progress.append,
            timeout=60,
        )
        assert result["messages"] == 2
        reports = _messages(imap, "Reports")
        assert [email.message_from_bytes(raw)["Subject"] for _f, raw in reports] == [
            "Monthly Report"
        ]
        assert len(_messages(imap, "INBOX")) == 1
    finally:
        imap.logout()
    running.guard.assert_clean()


def _context(node: PGNode) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_submission_files_the_sent_copy_and_queues_off_the_reactor(node: Any) -> None:
    """A message submitted over SMTP (STARTTLS, AUTH): the queue row and the \\Sent copy
    are committed before the 250, the relay's retries (a closed SMTP port) read and
    update the queue, and status and /metrics report it: all on store threads."""
    running, ports = node
    raw = (
        f"From: {ADDRESS}\r\nTo: bob@example.org\r\nBcc: hidden@example.net\r\n"
        "Subject: Minutes\r\nMessage-ID: <pg-1@isp.example>\r\n"
        "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\nSee you.\r\n"
    ).encode()
    with smtplib.SMTP(HOST, ports["submission"], timeout=30) as smtp:
        smtp.starttls(context=_context(running))
        smtp.login("alice", USERS["alice"])
        refused = smtp.sendmail(ADDRESS, ["bob@example.org", "hidden@example.net"], raw)
        assert refused == {}
    imap = _imap(running)
    try:
        sent = _messages(imap, "Sent")
        assert len(sent) == 1
        flags, body = sent[0]
        assert b"\\Seen" in flags and b"Bcc: hidden@example.net" in body
    finally:
        imap.logout()

    def queued() -> list[dict[str, Any]]:
        status = control_request(running.state_dir, {"command": "status"}, timeout=60)
        rows = status["submission"]["queue"]
        return rows if rows and rows[0]["last_error"] else []

    rows = _wait_for(queued, "a relay attempt recorded in the queue")
    assert rows[0]["queued"] == 1 and rows[0]["route"] == "alice-isp"
    url = f"http://{HOST}:{ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        text = response.read().decode()
    assert 'popgate_outbound_queued_messages{upstream="alice-isp"} 1.0' in text
    running.guard.assert_clean()


def test_the_web_page_signs_in_lists_and_fetches_off_the_reactor(node: Any) -> None:
    """Sign-in, the status page (its history pictures come from PostgreSQL), the JSON
    status with Basic credentials, "fetch now" (its history sample) and sign-out."""
    running, ports = node
    client = Client(f"http://{HOST}:{ports['web']}")
    assert client.sign_in("alice", USERS["alice"]) == 303
    status, _headers, body = client.request("GET", "/")
    assert status == 200 and "Signed in as" in body and "alice-isp" in body
    status, _headers, body = client.request("GET", "/api/status")
    assert status == 200
    assert [u["name"] for u in json.loads(body)["upstreams"]] == ["alice-isp"]
    basic = base64.b64encode(f"alice:{USERS['alice']}".encode()).decode()
    status, _headers, body = Client(client_url(ports)).request(
        "GET", "/api/status", authorization=f"Basic {basic}"
    )
    assert status == 200 and json.loads(body)["users"][0]["owner"] == "alice"
    token = client.csrf("/")
    status, headers, _body = client.request(
        "POST", "/fetch", {"csrf": token, "upstream": "alice-isp"}
    )
    assert status == 303 and headers["location"] == "/"
    status, _headers, body = client.request("GET", "/")
    assert status == 200 and "Fetching from alice-isp failed" in body
    running.guard.assert_clean()


def client_url(ports: dict[str, int]) -> str:
    return f"http://{HOST}:{ports['web']}"


def test_relay_bounces_and_queue_calls_run_on_store_threads() -> None:
    """The relay over the PostgreSQL queue with a ThreadRunner, on the reactor thread
    with the guard raising: a permanent refusal is marked failed, its bounce filed in
    the sender's INBOX and marked bounced, and nothing touched the database from the
    reactor thread."""
    store = open_test_store(pool_size=2)
    pool = ThreadPool(minthreads=0, maxthreads=2, name="test-relay")
    pool.start()
    guard = ReactorGuard(store)
    loop = ReactorThread.shared(reactor)
    try:
        store.ensure_user("alice")
        queue = PGOutboundQueue(store)
        item = queue.enqueue(
            NewOutbound(
                user="alice",
                route="alice-isp",
                mail_from=ADDRESS,
                recipients=("nobody@example.org",),
                content=b"From: alice@isp.example\r\nSubject: x\r\n\r\nbody\r\n",
                message_id=None,
            ),
            now=time.time(),
            lifetime=3600.0,
        )
        runner = ThreadRunner(reactor, pool)
        filing = StoreFiling(store, SentDedup(), reactor)

        async def refuse(upstream: Any, **kwargs: Any) -> RelayOutcome:
            assert threading.current_thread().name == "reactor"
            return RelayOutcome(failed=(("nobody@example.org", "5.1.1", "550 5.1.1 unknown"),))

        def relay_once() -> Any:
            guard.install(threading.get_ident())
            relay = RelayService(
                queue,
                lambda name: object(),  # any upstream: the delivery is faked
                reactor=reactor,
                file_bounce=lambda user, report: runner.run(filing.file_bounce, user, report),
                hostname="gw.example",
                deliver=refuse,
                runner=runner,
            )
            return relay.kick()

        loop.call(relay_once, timeout=60)
        guard.store.forbidden_thread = None
        inbox = store.get_mailbox("alice", "INBOX")
        bounces = [store.message_bytes(inbox.id, uid) for uid in store.message_uids(inbox.id)]
        assert len(bounces) == 1 and b"Undelivered Mail Returned to Sender" in bounces[0]
        assert queue.unbounced() == [] and queue.due(time.time() + 10**6, limit=10) == []
        assert item.id
        guard.assert_clean()
    finally:
        store.forbidden_thread = None
        pool.stop()
        store.close()
