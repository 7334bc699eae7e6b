"""Proves the test peers: the Dovecot harness, its TLS CA, and the sample mail generator.

Other tests trust these pieces, so they are checked against independent clients: the
standard library's poplib, imaplib, ssl and email packages.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import email.utils
import hashlib
import imaplib
import os
import poplib
import random
import re
import socket
import ssl
import statistics
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.testing import dovecot as dovecot_support
from gateway.testing import samplemail
from gateway.testing.dovecot import Dovecot, DovecotNotInstalled
from gateway.testing.ports import free_port
from gateway.testing.tlsca import CA

ALICE = ("alice", "secret")


def pop3_login(server: Dovecot) -> poplib.POP3:
    client = poplib.POP3(server.host, server.pop3_port, timeout=10)
    client.user(ALICE[0])
    client.pass_(ALICE[1])
    return client


def retr_bytes(client: poplib.POP3, number: int) -> bytes:
    """RETR as raw message bytes: poplib already undid the byte-stuffing (RFC 1939 §3)."""
    _, lines, _ = client.retr(number)
    return b"".join(line + b"\r\n" for line in lines)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


# -- Dovecot over POP3 ----------------------------------------------------------------


def test_plain_pop3_lists_five_messages_with_unique_uidls_and_exact_bytes(dovecot: Dovecot) -> None:
    messages = samplemail.generate(5, seed=11)
    dovecot.deliver_many("alice", messages)
    assert dovecot.maildir_count("alice") == 5

    client = pop3_login(dovecot)
    try:
        count, total = client.stat()
        assert count == 5
        assert total == sum(len(raw) for raw in messages)
        _, listing, _ = client.list()
        assert [int(line.split()[1]) for line in listing] == [len(raw) for raw in messages]
        _, uidls, _ = client.uidl()
        ids = [line.split()[1] for line in uidls]
        assert len(set(ids)) == 5
        for number, raw in enumerate(messages, start=1):
            assert retr_bytes(client, number) == raw
    finally:
        client.quit()


def test_retr_round_trips_lines_that_start_with_a_dot(dovecot: Dovecot) -> None:
    raw = (
        b"From: Tom Baker <tom.baker@example.org>\r\nTo: alice@example.org\r\n"
        b"Subject: dots\r\nDate: Mon, 04 Mar 2024 10:00:00 +0000\r\n\r\n"
        b".hidden line\r\n..two dots\r\n.\r\nend\r\n"
    )
    dovecot.deliver("alice", raw)
    client = pop3_login(dovecot)
    try:
        assert retr_bytes(client, 1) == raw
    finally:
        client.quit()


def test_uid_order_follows_delivery_order_not_dates(dovecot: Dovecot) -> None:
    """Later deliveries with older dates still come later, as from a real MDA."""
    messages = samplemail.generate(3, seed=5)
    dates = [dt.datetime(2024, 3, day, tzinfo=dt.UTC) for day in (20, 10, 1)]
    dovecot.deliver_many("alice", messages, whens=dates)
    client = pop3_login(dovecot)
    try:
        assert [retr_bytes(client, n) for n in (1, 2, 3)] == messages
    finally:
        client.quit()


def test_wrong_password_is_refused_and_users_can_be_added_while_running(
    dovecot: Dovecot,
) -> None:
    client = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        client.user("alice")
        with pytest.raises(poplib.error_proto):
            client.pass_("wrong")
    finally:
        client.close()

    dovecot.add_user("bob", "hunter2")
    dovecot.deliver("bob", samplemail.generate(1, seed=2)[0])
    client = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        client.user("bob")
        client.pass_("hunter2")
        assert client.stat()[0] == 1
    finally:
        client.quit()


def test_restart_keeps_mail_and_uidls(dovecot: Dovecot) -> None:
    dovecot.deliver_many("alice", samplemail.generate(2, seed=4))
    client = pop3_login(dovecot)
    before = client.uidl()[1]
    client.quit()

    dovecot.restart()

    client = pop3_login(dovecot)
    try:
        assert client.uidl()[1] == before
    finally:
        client.quit()


# -- TLS ------------------------------------------------------------------------------


def test_stls_upgrades_and_verifies_the_ip_address_name(dovecot: Dovecot) -> None:
    """RFC 2595 §4: STLS, then the server identity is checked (here the IP SAN)."""
    dovecot.deliver_many("alice", samplemail.generate(5, seed=1))
    client = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        assert "STLS" in client.capa()
        client.stls(dovecot.ca.client_context())
        assert isinstance(client.sock, ssl.SSLSocket)
        assert ("IP Address", "127.0.0.1") in client.sock.getpeercert()["subjectAltName"]
        client.user(ALICE[0])
        client.pass_(ALICE[1])
        assert client.stat()[0] == 5
    finally:
        client.quit()


def test_pop3s_implicit_tls_works(dovecot: Dovecot) -> None:
    dovecot.deliver("alice", samplemail.generate(1)[0])
    client = poplib.POP3_SSL(
        dovecot.host, dovecot.pop3s_port, context=dovecot.ca.client_context(), timeout=10
    )
    try:
        client.user(ALICE[0])
        client.pass_(ALICE[1])
        assert client.stat()[0] == 1
    finally:
        client.quit()


def test_certificate_matches_the_dns_name_localhost(dovecot: Dovecot) -> None:
    context = dovecot.ca.client_context()
    with socket.create_connection((dovecot.host, dovecot.pop3s_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(64).startswith(b"+OK")


def test_wrong_name_certificate_fails_verification(
    dovecot_factory: Callable[..., Dovecot],
) -> None:
    server = dovecot_factory(users=dict([ALICE]), cert_names=["wrong.example"])
    context = server.ca.client_context()
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        poplib.POP3_SSL(server.host, server.pop3s_port, context=context, timeout=10)

    client = poplib.POP3(server.host, server.pop3_port, timeout=10)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.stls(server.ca.client_context())
    finally:
        with contextlib.suppress(OSError):  # the failed handshake already closed the socket
            client.close()

    # The chain itself is fine: only the name is wrong.
    lenient = server.ca.client_context()
    lenient.check_hostname = False
    client = poplib.POP3_SSL(server.host, server.pop3s_port, context=lenient, timeout=10)
    client.quit()


# -- Dovecot over IMAP ----------------------------------------------------------------


def test_imap_login_and_select_inbox_sees_delivered_messages(dovecot: Dovecot) -> None:
    dovecot.deliver_many("alice", samplemail.generate(5, seed=3))
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        client.login(*ALICE)
        status, data = client.select("INBOX")
        assert status == "OK"
        assert data == [b"5"]
    finally:
        client.logout()


def test_internaldate_is_the_delivery_time(dovecot: Dovecot) -> None:
    """RFC 3501 §2.3.3: INTERNALDATE comes from the file mtime the harness sets."""
    when = dt.datetime(2023, 12, 24, 18, 30, 5, tzinfo=dt.UTC)
    dovecot.deliver("alice", samplemail.generate(1)[0], when=when)
    raw = samplemail.generate(1, start=dt.datetime(2022, 5, 6, 7, 8, 9, tzinfo=dt.UTC))[0]
    dovecot.deliver("alice", raw)  # no `when`: the Date: header is used
    client = imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10)
    try:
        client.login(*ALICE)
        client.select("INBOX", readonly=True)
        _, data = client.fetch("1:2", "(INTERNALDATE)")
        internal = [
            dt.datetime.strptime(
                re.search(rb'INTERNALDATE "([^"]+)"', line).group(1).decode(),  # type: ignore[union-attr]
                "%d-%b-%Y %H:%M:%S %z",
            )
            for line in data
        ]
        assert internal == [when, dt.datetime(2022, 5, 6, 7, 8, 9, tzinfo=dt.UTC)]
    finally:
        client.logout()


# -- harness lifecycle ----------------------------------------------------------------


def test_stop_ends_every_process_and_removes_the_directory(
    dovecot_factory: Callable[..., Dovecot],
) -> None:
    server = dovecot_factory()
    directory, port = server.dir, server.pop3_port
    assert len(server.processes()) > 1  # the master and its services

    server.stop()

    assert not directory.exists()
    assert server.processes() == {}
    with pytest.raises(OSError):
        socket.create_connection((server.host, port), timeout=2).close()
    server.stop()  # idempotent


@pytest.mark.dovecot
def test_context_manager_cleans_up_when_the_body_fails(tls_ca: CA) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with Dovecot(ca=tls_ca) as server:
            directory = server.dir
            assert server.processes()
            raise RuntimeError("boom")
    assert not directory.exists()
    assert server.processes() == {}


def test_tests_using_the_fixture_are_marked_dovecot(
    dovecot: Dovecot, request: pytest.FixtureRequest
) -> None:
    """`-m 'not dovecot'` (make unit) must deselect every test that starts Dovecot."""
    assert request.node.get_closest_marker("dovecot") is not None


def test_missing_binaries_name_the_debian_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dovecot_support.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(DovecotNotInstalled, match="dovecot-core dovecot-pop3d dovecot-imapd"):
        dovecot_support.find_dovecot()


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_deliver_writes_files_without_size_fields_owned_by_the_dovecot_user(
    dovecot: Dovecot,
) -> None:
    name = dovecot.deliver("alice", samplemail.generate(1)[0])
    assert ",S=" not in name and ",W=" not in name
    path = dovecot.maildir("alice") / "new" / name
    assert path.stat().st_uid == Path(dovecot.dir).stat().st_uid
    assert not any((dovecot.maildir("alice") / "tmp").iterdir())
    if os.geteuid() == 0:
        assert path.stat().st_uid != 0


# -- sample mail ----------------------------------------------------------------------


def test_samplemail_is_deterministic_for_a_seed() -> None:
    assert samplemail.generate(30, seed=7) == samplemail.generate(30, seed=7)
    assert samplemail.generate(30, seed=7) != samplemail.generate(30, seed=8)


def _digest(messages: list[bytes]) -> str:
    digest = hashlib.sha256()
    for raw in messages:
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)
    return digest.hexdigest()


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"count": 200, "seed": 0},
            "9001bb52e5036a86b0940251b559fa3327e14a69143c1f763125ea9a6a8915df",
        ),
        (
            {"count": 120, "seed": 1, "size_profile": "realistic"},
            "0eab0832b5d09b8900e95041589aa28cb5c32b44c722e30f9b4e6db8d8ffa404",
        ),
        (
            {"count": 50, "seed": 7, "start": dt.datetime(2022, 5, 6, 7, 8, 9)},
            "c5f71fc1e664ad6c12d1a339b40a239fa1545c774be057ada82cdc0dc024a5a4",
        ),
    ],
)
def test_samplemail_bytes_are_pinned_for_a_seed(kwargs: dict, expected: str) -> None:
    """The exact bytes for a seed never drift: bench tables and stored fixtures compare
    runs made months apart, so a refactor of the generator must keep every byte."""
    assert _digest(samplemail.generate(**kwargs)) == expected


def test_samplemail_messages_are_crlf_rfc5322_and_parse_without_defects() -> None:
    for raw in samplemail.generate(200, seed=21):
        assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
        assert raw.endswith(b"\r\n")
        assert max(len(line) for line in raw.split(b"\r\n")) <= 78
        message = parse(raw)
        for part in message.walk():
            assert not part.defects, (part.get_content_type(), part.defects)
            if not part.is_multipart() and part.get_content_maintype() != "message":
                part.get_content()  # decodes the transfer encoding and charset
        for header in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):
            assert header in message, header
        assert len(message.get_all("Received")) == 2


def test_samplemail_dates_start_at_start_and_increase() -> None:
    start = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
    dates = [
        email.utils.parsedate_to_datetime(parse(raw)["Date"])
        for raw in samplemail.generate(20, seed=3, start=start)
    ]
    assert dates[0] == start
    assert all(a < b for a, b in zip(dates, dates[1:], strict=False))


def test_make_message_date_names_the_given_instant() -> None:
    when = dt.datetime(2024, 2, 29, 23, 59, 58, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    raw = samplemail.make_message(0, random.Random(1), when)
    assert email.utils.parsedate_to_datetime(parse(raw)["Date"]) == when


def test_samplemail_covers_the_mime_and_encoding_mix() -> None:
    messages = samplemail.generate(200, seed=0)
    shapes: set[str] = set()
    encodings: set[str] = set()
    subjects = []
    filenames = []
    message_ids = set()
    for raw in messages:
        message = parse(raw)
        subjects.append(str(message["Subject"]))
        message_ids.add(message["Message-ID"])
        shapes.add(message.get_content_type())
        for part in message.walk():
            shapes.add(part.get_content_type())
            encodings.add(part.get("Content-Transfer-Encoding", "7bit").lower())
            if part.get_filename():
                filenames.append(part.get_filename())
    assert {"text/plain", "text/html", "multipart/alternative", "multipart/mixed"} <= shapes
    assert {"message/rfc822", "application/pdf", "image/png"} <= shapes
    assert {"7bit", "8bit", "quoted-printable", "base64"} <= encodings
    joined = " ".join(subjects)
    assert re.search("[äöüß]", joined) and re.search("[éèêîç]", joined)
    assert re.search("[\u3040-\u30ff\u4e00-\u9fff]", joined)  # Japanese
    assert re.search("[\U0001f300-\U0001faff]", joined)  # emoji
    assert any(not name.isascii() for name in filenames)
    raw_all = b"".join(messages)
    assert b"=?utf-8?" in raw_all  # RFC 2047 encoded-words
    assert b"filename*=utf-8''" in raw_all or b"filename*0*=utf-8''" in raw_all  # RFC 2231
    assert len(message_ids) == len(messages)


def test_forwarded_message_is_a_complete_inner_message() -> None:
    for raw in samplemail.generate(100, seed=9):
        message = parse(raw)
        for part in message.walk():
            if part.get_content_type() == "message/rfc822":
                inner = part.get_payload(0)
                assert inner["From"] and inner["Date"] and inner["Message-ID"]
                assert str(message["Subject"]) == "Fwd: " + str(inner["Subject"])
                return
    pytest.fail("no forwarded message in 100 samples")


def test_realistic_profile_has_a_median_near_4kb_and_a_tenth_with_attachments() -> None:
    messages = samplemail.generate(400, seed=1, size_profile="realistic")
    assert 3_000 <= statistics.median(len(raw) for raw in messages) <= 5_500
    attachments = [
        part
        for raw in messages
        if b"Content-Disposition: attachment" in raw  # parse only these: the rest is text
        for part in parse(raw).walk()
        if part.get_content_disposition() == "attachment"
    ]
    assert 0.05 <= len(attachments) / len(messages) <= 0.16
    largest = max(len(part.get_payload(decode=True)) for part in attachments)
    assert 100_000 < largest <= samplemail.MAX_ATTACHMENT_BYTES


def test_demo_profile_stays_small() -> None:
    assert max(len(raw) for raw in samplemail.generate(300, seed=2)) < 64_000


def test_unknown_size_profile_is_rejected() -> None:
    with pytest.raises(ValueError, match="size_profile"):
        samplemail.generate(1, size_profile="huge")
