"""curl's IMAP support against popgate (issue 3 acceptance): curl lists mailboxes, fetches
a message by UID URL (RFC 5092), and runs custom SEARCH and FETCH commands with ``-X``.

curl is a strict, minimal client: it checks the greeting, logs in with AUTHENTICATE PLAIN
(SASL-IR), SELECTs and reads one literal; if popgate's framing of any of these were off,
curl would fail with a non-zero exit code or print the wrong bytes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from gateway.testing.imapclient import PASSWORD, USER, ServerHandle, running_server
from gateway.testing.messages import message

CURL_TIMEOUT = 30
"""Seconds before a curl run is killed: a safety net against a hang, not a speed check."""

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def server(tmp_path: Path):
    with running_server(tmp_path) as handle:
        handle.call(handle.store.create_mailbox, USER, "Work/Projects")
        yield handle


def curl(server: ServerHandle, path: str, *extra: str) -> bytes:
    """Run curl on ``imap://user:pass@127.0.0.1:PORT/path``; assert it succeeded."""
    url = f"imap://{USER}:{quote(PASSWORD)}@127.0.0.1:{server.port}/{path}"
    proc = subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", str(CURL_TIMEOUT), *extra, url],
        capture_output=True,
        timeout=CURL_TIMEOUT + 10,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    assert proc.stderr == b""
    return proc.stdout


def test_curl_lists_every_mailbox(server: ServerHandle) -> None:
    """RFC 3501 §6.3.8: curl's root URL runs ``LIST "" *`` and prints the untagged lines."""
    out = curl(server, "")
    assert out.splitlines() == [
        b'* LIST (\\HasNoChildren) "/" "INBOX"',
        b'* LIST (\\HasNoChildren \\Archive) "/" "Archive"',
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"',
        b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"',
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"',
        b'* LIST (\\HasChildren) "/" "Work"',
        b'* LIST (\\HasNoChildren) "/" "Work/Projects"',
    ]


def test_curl_fetches_a_message_by_uid_byte_for_byte(server: ServerHandle) -> None:
    """RFC 5092 ``;UID=n`` URL → ``UID FETCH n BODY[]``: curl prints exactly the stored
    bytes (RFC 3501 §6.4.5), and the non-PEEK fetch marks the message \\Seen."""
    first = message("first", body="Body of the first message.\r\n")
    second = message("second", body="Body of the second one.\r\nWith two lines.\r\n")
    server.append(raw=first)
    uid = server.append(raw=second)
    assert curl(server, f"INBOX;UID={uid}") == second
    mailbox_id = server.mailbox_id()
    rows = server.call(server.store.message_rows, mailbox_id)
    assert {r.uid: "\\Seen" in r.flags for r in rows} == {1: False, 2: True}


def test_curl_fetches_a_section_of_a_message(server: ServerHandle) -> None:
    """RFC 5092 ``;SECTION=HEADER`` → ``BODY[HEADER]``: the header block with its blank line."""
    raw = message("sectioned")
    uid = server.append(raw=raw)
    header = raw[: raw.index(b"\r\n\r\n") + 4]
    assert curl(server, f"INBOX;UID={uid};SECTION=HEADER") == header


def test_curl_custom_uid_search(server: ServerHandle) -> None:
    """RFC 3501 §6.4.4/§6.4.8: ``-X 'UID SEARCH SUBJECT xyz'`` prints ``* SEARCH`` with the
    UIDs whose subject contains "xyz" (case-insensitive substring), and an empty
    ``* SEARCH`` when nothing matches."""
    server.append(raw=message("nothing here"))
    two = server.append(raw=message("about XYZ"))
    server.append(raw=message("other"))
    four = server.append(raw=message("xyz again"))
    assert curl(server, "INBOX", "-X", "UID SEARCH SUBJECT xyz") == b"* SEARCH %d %d\r\n" % (
        two,
        four,
    )
    assert curl(server, "INBOX", "-X", "UID SEARCH SUBJECT nomatch") == b"* SEARCH\r\n"


def test_curl_url_query_searches(server: ServerHandle) -> None:
    """RFC 5092 ``?search`` URL → ``SEARCH`` (sequence numbers) in the selected mailbox."""
    server.append(raw=message("plain"))
    server.append(raw=message("find xyz"))
    assert curl(server, "INBOX?SUBJECT%20xyz") == b"* SEARCH 2\r\n"


def test_curl_search_with_utf8_charset_in_quoted_string(server: ServerHandle) -> None:
    """RFC 3501 §6.4.4 CHARSET UTF-8 with the non-ASCII text in a quoted string, the way
    curl (and many clients) send it: popgate, like Dovecot, reads it as UTF-8 and matches
    the RFC 2047-encoded subject case-insensitively."""
    server.append(raw=message("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus Wien"))
    server.append(raw=message("Gruesse"))
    out = curl(server, "INBOX", "-X", 'UID SEARCH CHARSET UTF-8 SUBJECT "grüße"')
    assert out == b"* SEARCH 1\r\n"


def test_curl_custom_fetch_flags(server: ServerHandle) -> None:
    """RFC 3501 §6.4.5: ``-X 'FETCH 1:* (FLAGS)'`` prints one FETCH per message with its
    flags as stored; the first session to SELECT sees new messages as \\Recent, the next
    one does not (RFC 3501 §2.3.2)."""
    server.append(raw=message("one"), flags=("\\Seen",))
    server.append(raw=message("two"), flags=("\\Flagged", "$Label"))
    server.append(raw=message("three"))
    out = curl(server, "INBOX", "-X", "FETCH 1:* (FLAGS)")
    assert out.splitlines() == [
        b"* 1 FETCH (FLAGS (\\Recent \\Seen))",
        b"* 2 FETCH (FLAGS (\\Flagged \\Recent $Label))",
        b"* 3 FETCH (FLAGS (\\Recent))",
    ]
    again = curl(server, "INBOX", "-X", "FETCH 1:* (FLAGS)")
    assert again.splitlines() == [
        b"* 1 FETCH (FLAGS (\\Seen))",
        b"* 2 FETCH (FLAGS (\\Flagged $Label))",
        b"* 3 FETCH (FLAGS ())",
    ]
