"""The per-user protocol trace (issue 17, "Debugging a client"): masking sans-I/O (no
password byte ever reaches a trace, whatever the session), then files over real sockets."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap import tracefile
from gateway.imap.framing import CommandParser
from gateway.imap.trace import ClientMasker, ServerMasker, is_body_literal
from gateway.testing.imapclient import PASSWORD, USER, running_server

# ---- sans-I/O ------------------------------------------------------------------------


def client_trace(stream: bytes, chunks: list[int] | None = None, raw_after: bytes = b"") -> bytes:
    """Feed ``stream`` to a real parser (in the given chunk sizes) and return the trace."""
    out: list[bytes] = []
    masker = ClientMasker(out.append)
    parser = CommandParser()
    parser.tap = masker.tap
    pieces, pos = [], 0
    for size in chunks or [len(stream)]:
        pieces.append(stream[pos : pos + size])
        pos += size
    pieces.append(stream[pos:])
    for piece in pieces:
        parser.receive_data(piece)
        while True:
            event = parser.next_event()
            if type(event).__name__ == "NeedData":
                break
            name = getattr(event, "name", "")
            if name == "AUTHENTICATE" and raw_after:
                parser.read_raw_line()
    masker.close()
    return b"".join(out)


password_st = st.text(
    alphabet="abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!#$%&'*+-/=?^_`|~",
    min_size=8,
    max_size=40,
).map(lambda s: "Zq" + s)


def login_forms(user: str, password: str) -> list[bytes]:
    pw = password.encode()
    quoted = b'"' + pw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return [
        b"a1 LOGIN %s %s\r\n" % (user.encode(), quoted),
        b"a1 LOGIN %s {%d+}\r\n%s\r\n" % (user.encode(), len(pw), pw),
        b'a1 login "%s" {%d}\r\n%s\r\n' % (user.encode(), len(pw), pw),
        b"a1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(user), user.encode(), len(pw), pw),
        b"a1 AUTHENTICATE PLAIN %s\r\n" % base64.b64encode(b"\0" + user.encode() + b"\0" + pw),
    ]


other_commands = st.sampled_from(
    [
        b"b NOOP\r\n",
        b'b SELECT "INBOX"\r\n',
        b"b APPEND INBOX {11+}\r\nhello world\r\n",
        b"b UID FETCH 1:* (FLAGS BODY.PEEK[HEADER])\r\n",
        b"b SEARCH TEXT {5+}\r\nhello\r\n",
        b'b LIST "" *\r\n',
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    password=password_st,
    form=st.integers(0, 4),
    before=st.lists(other_commands, max_size=3),
    after=st.lists(other_commands, max_size=3),
    cuts=st.lists(st.integers(1, 40), max_size=30),
)
def test_no_password_byte_ever_reaches_a_trace(password, form, before, after, cuts) -> None:
    """Whatever the LOGIN form (atom/quoted/literal, AUTHENTICATE with SASL-IR), around
    whatever other commands, split at whatever points, the password (and its base64
    form) is never in the trace; the user name and the other commands are."""
    stream = b"".join(before) + login_forms(USER, password)[form] + b"".join(after)
    trace = client_trace(stream, cuts)
    pw = password.encode()
    assert pw not in trace
    assert base64.b64encode(b"\0" + USER.encode() + b"\0" + pw) not in trace
    if form in (0, 1, 2):  # (a literal user name and SASL data are masked whole)
        assert USER.encode() in trace
    for command in before + after:
        assert command.split(b"\r\n")[0] in trace


def test_authenticate_continuation_lines_are_masked() -> None:
    pw = b"Zq-secret-987"
    response = base64.b64encode(b"\0alice\0" + pw)
    trace = client_trace(b"a AUTHENTICATE PLAIN\r\n" + response + b"\r\nb NOOP\r\n", raw_after=b"1")
    assert response not in trace and pw not in trace
    assert b"a AUTHENTICATE PLAIN\r\n[masked]\r\nb NOOP\r\n" == trace


def test_append_literals_are_masked_other_literals_kept() -> None:
    trace = client_trace(b"a APPEND INBOX {12+}\r\nsecret body!\r\nb SEARCH TEXT {4+}\r\nword\r\n")
    assert b"secret body!" not in trace
    assert b"a APPEND INBOX {12+}\r\n[12 octets masked]\r\n" in trace
    assert b"b SEARCH TEXT {4+}\r\nword\r\n" in trace


def server_trace(data: bytes) -> bytes:
    out: list[bytes] = []
    masker = ServerMasker(out.append)
    for i in range(len(data)):  # one octet at a time: framing must not depend on chunks
        masker.feed(data[i : i + 1])
    return b"".join(out)


def test_server_bodies_masked_headers_and_envelope_kept() -> None:
    header = b"Subject: kept\r\n\r\n"
    body = b"the secret text of the mail\r\n"
    response = (
        b'* 1 FETCH (UID 5 ENVELOPE ("date" {6}\r\nsubj\r\n NIL) BODY[HEADER] {%d}\r\n%s'
        b" BODY[] {%d}\r\n%s BODY[1.MIME] {4}\r\nmime BODY[TEXT]<0> {4}\r\ntext RFC822 {3}\r\nabc)\r\n"
        b"a OK FETCH completed\r\n" % (len(header), header, len(body), body)
    )
    trace = server_trace(response)
    assert header in trace and b"subj\r\n" in trace and b"mime" in trace
    assert body not in trace and b"text" not in trace.replace(b"TEXT", b"") and b"abc" not in trace
    assert b"BODY[] {%d}\r\n[%d octets masked]" % (len(body), len(body)) in trace
    assert trace.endswith(b"a OK FETCH completed\r\n")


def test_body_literal_classification() -> None:
    masked = [b"BODY[] {1}", b"BODY[TEXT] {1}", b"BODY[2.1] {1}", b"BINARY[1] ~{1}", b"RFC822 {1}"]
    kept = [b"BODY[HEADER] {1}", b"BODY[1.MIME] {1}", b"BODY[HEADER.FIELDS (FROM TO)] {1}"]
    kept += [b"RFC822.HEADER {1}", b'ENVELOPE ("x" {1}', b'* LIST () "/" {1}']
    assert all(is_body_literal(b"* 1 FETCH (" + line) for line in masked)
    assert not any(is_body_literal(b"* 1 FETCH (" + line) for line in kept)


# ---- files, over real sockets ------------------------------------------------------------


def trace_files(root: Path, user: str = USER) -> list[Path]:
    directory = root / user
    return sorted(directory.glob("*.log")) if directory.exists() else []


def test_trace_file_per_connection_masked_and_private(tmp_path: Path) -> None:
    root = tmp_path / "trace"
    raw = b"From: a@example.org\r\nSubject: visible header\r\n\r\nprivate body text\r\n"
    with running_server(tmp_path, users={"bob": "bob-password"}) as server:
        server.call(server.factory.set_trace_users, frozenset({USER}), root)
        server.append(raw=raw)
        with server.login() as client:
            client.command("s", "SELECT INBOX")
            fetched = client.command("f", "FETCH 1 (ENVELOPE BODY.PEEK[HEADER] BODY.PEEK[])")
            assert b"private body text" in fetched
            client.command("o", "LOGOUT")
        with server.login("bob") as other:
            other.command("o", "LOGOUT")
        server.wait_until(lambda: not server.factory.protocols, "connections closed")
    (path,) = trace_files(root)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_bytes()
    assert PASSWORD.encode() not in text
    assert b"C: L1 LOGIN alice [masked]" in text
    assert b"Subject: visible header" in text
    assert b"private body text" not in text
    assert b"octets masked]" in text
    assert b"S: o OK LOGOUT completed" in text
    assert not trace_files(root, "bob")


def test_reload_switches_tracing_for_an_open_connection(tmp_path: Path) -> None:
    root = tmp_path / "trace"
    with running_server(tmp_path) as server:
        with server.login() as client:
            client.command("a", "NOOP")
            assert not trace_files(root)
            server.call(server.factory.set_trace_users, frozenset({USER}), root)
            client.command("b", "NOOP")
            server.call(server.factory.set_trace_users, frozenset(), root)
            client.command("c", "NOOP")
            client.command("d", "NOOP")
    (path,) = trace_files(root)
    text = path.read_bytes()
    assert b"C: b NOOP" in text and b"S: b OK" in text
    assert b"d NOOP" not in text and b"a NOOP" not in text


def test_files_rotate_and_the_user_total_is_capped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tracefile, "MAX_TRACE_FILE", 2000)
    monkeypatch.setattr(tracefile, "MAX_TRACE_PER_USER", 7000)
    root = tmp_path / "trace"
    with running_server(tmp_path) as server:
        server.call(server.factory.set_trace_users, frozenset({USER}), root)
        for _ in range(3):
            with server.login() as client:
                for i in range(40):
                    client.command(f"n{i}", "NOOP")
                client.command("o", "LOGOUT")
        server.wait_until(lambda: not server.factory.protocols, "connections closed")
    files = trace_files(root)
    sizes = [p.stat().st_size for p in files]
    assert len(files) >= 3 and max(sizes) <= 2000
    assert sum(sizes) <= 7000 + 2000
