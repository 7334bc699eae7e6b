"""The IMAP session core and its transport glue: states, authentication, SELECT, catch-up,
IDLE, pipelining, literals, parse errors, timers, STARTTLS and backpressure.

Most tests speak exact bytes over a real loopback socket to an in-process server
(gateway/testing/imapclient.py). A few drive the protocol on a StringTransport with a fake clock
and a hand-fired Deferred, where only that makes ordering or timing deterministic.
"""

from __future__ import annotations

import base64
import importlib.metadata
import re
from array import array
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from gateway.core.criteria import SeqRange, SequenceSet
from gateway.imap.command import Command
from gateway.imap.handler import BadCommand, Refused
from gateway.imap.policy import IMAPLimits
from gateway.imap.session import IMAPSession
from gateway.imap.states import COMMANDS, State
from gateway.imap.view import View
from gateway.store.interfaces import (
    MailboxExists,
    MailboxNotAllowed,
    MailboxNotFound,
    MessageTooLarge,
    OverQuota,
    StoreError,
)
from gateway.store.sqlite import SQLiteStore
from gateway.testing.imapclient import (
    BACKENDS,
    PASSWORD,
    USER,
    RawClient,
    ServerHandle,
    running_server,
)
from gateway.testing.imapsession import WiredServer
from gateway.testing.messages import message
from gateway.testing.tlsca import ServerTLSContext

PRE_LOGIN_CAPS = (
    "IMAP4rev1 IMAP4rev2 AUTH=PLAIN LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE "
    "MULTIAPPEND CHILDREN SPECIAL-USE CREATE-SPECIAL-USE LIST-EXTENDED LIST-STATUS CONDSTORE "
    "QRESYNC ESEARCH STATUS=SIZE QUOTA QUOTA=RES-STORAGE ACL RIGHTS=texk LIST-MYRIGHTS NOTIFY "
    "BINARY SEARCHRES CATENATE WITHIN SAVEDATE PREVIEW OBJECTID SORT SORT=DISPLAY ESORT "
    "CONTEXT=SEARCH CONTEXT=SORT THREAD=ORDEREDSUBJECT THREAD=REFERENCES UTF8=ACCEPT"
)
POST_LOGIN_CAPS = PRE_LOGIN_CAPS.replace(" AUTH=PLAIN", "") + " COMPRESS=DEFLATE"


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path):
    with running_server(tmp_path, backend=request.param) as handle:
        yield handle


@pytest.fixture
def client(server: ServerHandle):
    with server.connect() as raw:
        yield raw


@pytest.fixture
def logged_in(client: RawClient) -> RawClient:
    client.login()
    return client


def inbox(server: ServerHandle):
    return server.store_call(server.store.get_mailbox, USER, "INBOX")


# ---- greeting, CAPABILITY, authentication ------------------------------------------------


def test_greeting_carries_capabilities(client: RawClient) -> None:
    """RFC 3501 §7.1.1 greeting, with the RFC 3501 §7.2.1 CAPABILITY response code."""
    assert client.greeting() == f"* OK [CAPABILITY {PRE_LOGIN_CAPS}] popgate ready\r\n".encode()


def test_capability_changes_after_login(client: RawClient) -> None:
    """RFC 3501 §6.1.1: the capability list may change with the state; the tagged OK of
    LOGIN carries the new list (RFC 3501 §6.2.3, §7.1 CAPABILITY code)."""
    client.greeting()
    assert client.command("a", "CAPABILITY") == (
        f"* CAPABILITY {PRE_LOGIN_CAPS}\r\na OK CAPABILITY completed\r\n".encode()
    )
    assert client.command("b", f'LOGIN {USER} "{PASSWORD}"') == (
        f"b OK [CAPABILITY {POST_LOGIN_CAPS}] Logged in\r\n".encode()
    )
    assert client.command("c", "CAPABILITY") == (
        f"* CAPABILITY {POST_LOGIN_CAPS}\r\nc OK CAPABILITY completed\r\n".encode()
    )


def test_login_failure_is_identical_for_unknown_user_and_wrong_password(
    client: RawClient,
) -> None:
    """RFC 3501 §6.2.3 NO, RFC 5530 AUTHENTICATIONFAILED; the same answer either way so
    user names cannot be probed. The log names user and peer but never the password."""
    client.greeting()
    with structlog.testing.capture_logs() as events:
        wrong = client.command("a", f'LOGIN {USER} "not-the-password"')
        unknown = client.command("b", 'LOGIN mallory "not-the-password"')
    assert wrong == b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    assert unknown == b"b NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    failures = [e for e in events if e["event"] == "imap.auth_failed"]
    assert [e["user"] for e in failures] == [USER, "mallory"]
    assert all(e["peer"].startswith("127.0.0.1:") for e in failures)
    assert "not-the-password" not in repr(events)
    # Still not authenticated: a mailbox command is refused.
    assert client.command("c", "SELECT INBOX") == b"c BAD SELECT not allowed in this state\r\n"


def test_login_ensures_the_users_mailboxes(tmp_path: Path) -> None:
    """A first login provisions INBOX (store.ensure_user), so SELECT INBOX works at once
    (RFC 3501 §5.1: INBOX always exists for a user)."""
    with running_server(tmp_path, seed_user=False) as server, server.connect() as client:
        client.login()
        assert client.command("s", "SELECT INBOX").endswith(
            b"s OK [READ-WRITE] SELECT completed\r\n"
        )


def test_authenticate_plain_with_initial_response(client: RawClient) -> None:
    """RFC 4959 SASL-IR with RFC 4616 PLAIN; success carries CAPABILITY (RFC 3501 §6.2.2)."""
    client.greeting()
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert client.command("a", f"AUTHENTICATE PLAIN {token}") == (
        f"a OK [CAPABILITY {POST_LOGIN_CAPS}] Logged in\r\n".encode()
    )


def test_authenticate_plain_via_continuation(client: RawClient) -> None:
    """RFC 3501 §6.2.2: without an initial response the server sends "+ " and reads the
    client's base64 line raw."""
    client.greeting()
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.read_line() == b"+ \r\n"
    client.send(base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode()) + b"\r\n")
    assert client.read_until_tagged("a").startswith(b"a OK [CAPABILITY IMAP4rev1 ")


def test_authenticate_cancelled_with_star_is_bad(client: RawClient) -> None:
    """RFC 3501 §6.2.2: a "*" line cancels; the server answers tagged BAD."""
    client.greeting()
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.read_line() == b"+ \r\n"
    client.send(b"*\r\n")
    assert client.read_until_tagged("a") == b"a BAD Authentication cancelled\r\n"
    assert client.command("b", "NOOP") == b"b OK NOOP completed\r\n"


def test_authenticate_wrong_password_and_unknown_mechanism(client: RawClient) -> None:
    """RFC 3501 §6.2.2: NO for a failed exchange and for an unsupported mechanism."""
    client.greeting()
    token = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
    assert client.command("a", f"AUTHENTICATE PLAIN {token}") == (
        b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    )
    assert client.command("b", "AUTHENTICATE CRAM-MD5") == (
        b"b NO Unsupported authentication mechanism\r\n"
    )


def test_login_disabled_without_tls_when_plaintext_refused(tmp_path: Path) -> None:
    """RFC 3501 §6.2.3/§7.2.1: LOGINDISABLED is announced and LOGIN refused when the
    operator allows passwords only over TLS (RFC 5530 PRIVACYREQUIRED)."""
    with running_server(tmp_path, allow_plaintext_auth=False) as server, server.connect() as client:
        greeting = client.greeting()
        assert b" LOGINDISABLED " in greeting and b"AUTH=PLAIN" not in greeting
        assert client.command("a", f'LOGIN {USER} "{PASSWORD}"') == (
            b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure"
            b" connections\r\n"
        )


# ---- the state table ---------------------------------------------------------------------

WRONG_STATE = [
    # (state to reach, command, expected tagged line)
    ("not authenticated", "SELECT INBOX", b"x BAD SELECT not allowed in this state\r\n"),
    ("not authenticated", 'LIST "" *', b"x BAD LIST not allowed in this state\r\n"),
    ("not authenticated", "FETCH 1 FLAGS", b"x BAD FETCH not allowed in this state\r\n"),
    ("not authenticated", "IDLE", b"x BAD IDLE not allowed in this state\r\n"),
    ("authenticated", f'LOGIN {USER} "{PASSWORD}"', b"x BAD LOGIN not allowed in this state\r\n"),
    ("authenticated", "AUTHENTICATE PLAIN", b"x BAD AUTHENTICATE not allowed in this state\r\n"),
    ("authenticated", "CLOSE", b"x BAD CLOSE not allowed in this state\r\n"),
    ("authenticated", "UID FETCH 1 FLAGS", b"x BAD FETCH not allowed in this state\r\n"),
    ("authenticated", "UID EXPUNGE 1", b"x BAD UID EXPUNGE not allowed in this state\r\n"),
    ("selected", "ENABLE CONDSTORE", b"x BAD ENABLE not allowed in this state\r\n"),
    ("selected", "STARTTLS", b"x BAD STARTTLS not allowed in this state\r\n"),
]


@pytest.mark.parametrize(("state", "command", "expected"), WRONG_STATE)
def test_commands_refused_outside_their_states(
    client: RawClient, state: str, command: str, expected: bytes
) -> None:
    """RFC 3501 §3 and §6: each command is valid only in some states; elsewhere the
    server answers BAD and nothing changes."""
    if state == "not authenticated":
        client.greeting()
    else:
        client.login()
    if state == "selected":
        client.command("s", "SELECT INBOX")
    assert client.command("x", command) == expected
    assert client.command("n", "NOOP") == b"n OK NOOP completed\r\n"


def test_state_table_covers_every_state_for_noop_and_logout() -> None:
    """RFC 3501 §6.1: CAPABILITY, NOOP and LOGOUT are valid in any state."""
    for name in ("CAPABILITY", "NOOP", "LOGOUT", "ID"):
        assert COMMANDS[name].states == {
            State.NOT_AUTHENTICATED,
            State.AUTHENTICATED,
            State.SELECTED,
        }


def test_logout_says_bye_then_ok_then_closes(client: RawClient) -> None:
    """RFC 3501 §6.1.3: untagged BYE, tagged OK, then the server closes."""
    client.greeting()
    assert client.command("a", "LOGOUT") == (
        b"* BYE IMAP4rev1 Server logging out\r\na OK LOGOUT completed\r\n"
    )
    assert client.read_to_eof() == b""


# ---- ENABLE, ID, NAMESPACE ------------------------------------------------------------------


def test_enable_reports_only_newly_enabled(logged_in: RawClient) -> None:
    """RFC 5161 §3.2: ENABLED lists what this command enabled; unknown names are
    ignored; QRESYNC implies CONDSTORE (RFC 7162 §3.2.3)."""
    assert logged_in.command("a", "ENABLE QRESYNC X-UNKNOWN") == (
        b"* ENABLED QRESYNC\r\na OK ENABLE completed\r\n"
    )
    assert logged_in.command("b", "ENABLE QRESYNC") == b"* ENABLED\r\nb OK ENABLE completed\r\n"
    # CONDSTORE came with QRESYNC; UTF8=ACCEPT (RFC 6855) is new.
    assert logged_in.command("c", "ENABLE CONDSTORE UTF8=ACCEPT") == (
        b"* ENABLED UTF8=ACCEPT\r\nc OK ENABLE completed\r\n"
    )


def test_id_names_the_server(client: RawClient) -> None:
    """RFC 2971 §3.1: ID works in any state and answers with the server's own list."""
    client.greeting()
    version = importlib.metadata.version("popgate")
    assert client.command("a", 'ID ("name" "imaplib")') == (
        f'* ID ("name" "popgate" "version" "{version}")\r\na OK ID completed\r\n'.encode()
    )


def test_namespace_is_one_personal_namespace(logged_in: RawClient) -> None:
    """RFC 2342 §5: personal namespace "" with delimiter "/", no others."""
    assert logged_in.command("a", "NAMESPACE") == (
        b'* NAMESPACE (("" "/")) NIL NIL\r\na OK NAMESPACE completed\r\n'
    )


# ---- SELECT / EXAMINE ----------------------------------------------------------------------


def select_lines(
    uidvalidity: int, highestmodseq: int, *, readonly: bool, recent: int, mailbox_id: int
) -> bytes:
    permanent = b"()" if readonly else b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label \\*)"
    text = b"Read-only mailbox" if readonly else b"Limited"
    return (
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label)\r\n"
        b"* OK [PERMANENTFLAGS " + permanent + b"] " + text + b"\r\n"
        b"* 3 EXISTS\r\n"
        b"* %d RECENT\r\n"
        b"* OK [UNSEEN 2] Ok\r\n"
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
        b"* OK [UIDNEXT 4] Predicted next UID\r\n"
        b"* OK [MAILBOXID (F%d)] Ok\r\n"
        b"* OK [HIGHESTMODSEQ %d] Ok\r\n"
    ) % (recent, uidvalidity, mailbox_id, highestmodseq)


def test_select_and_examine_responses(server: ServerHandle, client: RawClient) -> None:
    """RFC 3501 §6.3.1-2 and §7.3.1-2 (FLAGS, PERMANENTFLAGS, EXISTS, RECENT, UNSEEN,
    UIDVALIDITY, UIDNEXT), RFC 7162 §3.1.2.1 HIGHESTMODSEQ. EXAMINE is read-only with
    no permanent flags and leaves \\Recent alone; a read-write SELECT claims it
    (§2.3.2), so the next session sees RECENT 0."""
    server.append(flags=("\\Seen",))
    server.append()
    server.append(flags=("$Label",))
    box = inbox(server)
    client.login()
    expected_ro = select_lines(
        box.uidvalidity, box.highestmodseq, readonly=True, recent=3, mailbox_id=box.id
    )
    assert client.command("e", "EXAMINE INBOX") == (
        expected_ro + b"e OK [READ-ONLY] EXAMINE completed\r\n"
    )
    expected_rw = select_lines(
        box.uidvalidity, box.highestmodseq, readonly=False, recent=3, mailbox_id=box.id
    )
    assert client.command("s", "SELECT INBOX") == (
        b"* OK [CLOSED] Previous mailbox closed\r\n"
        + expected_rw
        + b"s OK [READ-WRITE] SELECT completed\r\n"
    )
    with server.connect() as other:
        other.login()
        again = select_lines(
            box.uidvalidity, box.highestmodseq, readonly=False, recent=0, mailbox_id=box.id
        )
        assert (
            other.command("s", "SELECT inbox") == again + b"s OK [READ-WRITE] SELECT completed\r\n"
        )


def test_failed_select_leaves_selected_state(logged_in: RawClient) -> None:
    """RFC 3501 §6.3.1: a failed SELECT closes the previously selected mailbox;
    RFC 5530 NONEXISTENT; RFC 7162 §3.2.11 CLOSED."""
    logged_in.command("a", "SELECT INBOX")
    assert logged_in.command("b", "SELECT Nowhere") == (
        b"* OK [CLOSED] Previous mailbox closed\r\nb NO [NONEXISTENT] Mailbox does not exist\r\n"
    )
    assert logged_in.command("c", "FETCH 1 FLAGS") == b"c BAD FETCH not allowed in this state\r\n"


def test_select_qresync_requires_enable(logged_in: RawClient) -> None:
    """RFC 7162 §3.2.5: QRESYNC parameter without ENABLE QRESYNC is BAD."""
    assert logged_in.command("a", "SELECT INBOX (QRESYNC (1 1))") == (
        b"a BAD QRESYNC parameter requires ENABLE QRESYNC first\r\n"
    )


def test_select_qresync_reports_vanished_and_changed(
    server: ServerHandle, client: RawClient
) -> None:
    """RFC 7162 §3.2.5.1: after the usual SELECT responses, VANISHED (EARLIER) for UIDs
    expunged since the client's modseq, then FETCH (UID FLAGS MODSEQ) for changes; none
    of that when UIDVALIDITY differs."""
    for _ in range(3):
        server.append()
    box = inbox(server)
    known = box.highestmodseq
    store = server.store
    server.store_call(store.store_flags, box.id, [1], "+", ["\\Deleted"])
    server.store_call(store.expunge, box.id)
    result = server.store_call(store.store_flags, box.id, [3], "+", ["\\Flagged"])
    modseq = result.updated[0].modseq
    client.login()
    client.command("e", "ENABLE QRESYNC")
    reply = client.command("s", f"SELECT INBOX (QRESYNC ({box.uidvalidity} {known} 1:3))")
    tail = reply[reply.index(b"* OK [HIGHESTMODSEQ") :]
    assert tail == (
        b"* OK [HIGHESTMODSEQ %d] Ok\r\n"
        b"* VANISHED (EARLIER) 1\r\n"
        b"* 2 FETCH (UID 3 FLAGS (\\Flagged \\Recent) MODSEQ (%d))\r\n"
        b"s OK [READ-WRITE] SELECT completed\r\n"
    ) % (modseq, modseq)
    other = client.command("t", f"SELECT INBOX (QRESYNC ({box.uidvalidity + 1} {known}))")
    assert b"VANISHED" not in other and b"FETCH" not in other


# ---- catch-up: what other sessions did ---------------------------------------------------


def test_noop_reports_new_expunged_and_reflagged_messages(
    server: ServerHandle, logged_in: RawClient
) -> None:
    """RFC 3501 §6.1.2 and §7.3.1/§7.4.1: NOOP returns EXISTS/RECENT for new messages,
    EXPUNGE (numbers valid as each line is read) for removed ones and FETCH FLAGS for
    flag changes made elsewhere."""
    for _ in range(3):
        server.append()
    logged_in.command("s", "SELECT INBOX")
    assert logged_in.command("a", "NOOP") == b"a OK NOOP completed\r\n"
    server.append()
    assert logged_in.command("b", "NOOP") == b"* 4 EXISTS\r\n* 4 RECENT\r\nb OK NOOP completed\r\n"
    box = inbox(server)
    server.store_call(server.store.store_flags, box.id, [2, 3], "+", ["\\Deleted"])
    server.store_call(server.store.expunge, box.id)
    server.store_call(server.store.store_flags, box.id, [4], "+", ["\\Seen"])
    assert logged_in.command("c", "CHECK") == (
        b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n* 2 FETCH (FLAGS (\\Recent \\Seen))\r\nc OK CHECK completed\r\n"
    )


def test_expunge_not_sent_during_fetch_store_search(
    server: ServerHandle, logged_in: RawClient
) -> None:
    """RFC 3501 §7.4.1: no EXPUNGE while responding to FETCH, STORE or SEARCH (the
    message keeps its number meanwhile); it comes with the next command that may carry
    it, here UID SEARCH (a UID command, which may)."""
    server.append()
    server.append()
    logged_in.command("s", "SELECT INBOX")
    box = inbox(server)
    server.store_call(server.store.store_flags, box.id, [1], "+", ["\\Deleted"])
    server.store_call(server.store.expunge, box.id)
    assert (
        logged_in.command("a", "FETCH 2 (UID)") == b"* 2 FETCH (UID 2)\r\na OK FETCH completed\r\n"
    )
    assert logged_in.command("b", "SEARCH ALL") == b"* SEARCH 2\r\nb OK SEARCH completed\r\n"
    assert logged_in.command("c", "STORE 2 +FLAGS.SILENT (\\Seen)") == b"c OK STORE completed\r\n"
    assert logged_in.command("d", "UID SEARCH ALL") == (
        b"* SEARCH 2\r\n* 1 EXPUNGE\r\nd OK SEARCH completed\r\n"
    )


def test_flag_change_fetch_carries_uid_and_modseq_under_condstore(
    server: ServerHandle, logged_in: RawClient
) -> None:
    """RFC 7162 §3.1 (and §3.2.4): once CONDSTORE is on, unsolicited FETCH responses
    carry UID and MODSEQ."""
    server.append()
    logged_in.command("e", "ENABLE CONDSTORE")
    logged_in.command("s", "SELECT INBOX")
    box = inbox(server)
    result = server.store_call(server.store.store_flags, box.id, [1], "+", ["\\Answered"])
    modseq = result.updated[0].modseq
    assert logged_in.command("a", "NOOP") == (
        b"* 1 FETCH (FLAGS (\\Answered \\Recent) UID 1 MODSEQ (%d))\r\na OK NOOP completed\r\n"
        % modseq
    )


def test_vanished_replaces_expunge_under_qresync(
    server: ServerHandle, logged_in: RawClient
) -> None:
    """RFC 7162 §3.2.10: with QRESYNC enabled, removals are reported as VANISHED."""
    for _ in range(3):
        server.append()
    logged_in.command("e", "ENABLE QRESYNC")
    logged_in.command("s", "SELECT INBOX")
    box = inbox(server)
    server.store_call(server.store.store_flags, box.id, [1, 2], "+", ["\\Deleted"])
    server.store_call(server.store.expunge, box.id)
    assert logged_in.command("a", "NOOP") == b"* VANISHED 1:2\r\na OK NOOP completed\r\n"


def test_status_is_fresh_even_for_the_selected_mailbox(
    server: ServerHandle, logged_in: RawClient
) -> None:
    """RFC 3501 §6.3.10: STATUS figures come from the store, not the session's view."""
    server.append()
    logged_in.command("s", "SELECT INBOX")
    server.append()
    reply = logged_in.command("a", "STATUS INBOX (MESSAGES UIDNEXT)")
    assert reply.startswith(b'* STATUS "INBOX" (MESSAGES 2 UIDNEXT 3)\r\n')


def test_close_expunges_silently_and_unselect_does_not(
    server: ServerHandle, logged_in: RawClient
) -> None:
    """RFC 3501 §6.4.2: CLOSE removes \\Deleted messages without EXPUNGE responses;
    RFC 3691 UNSELECT leaves them; neither works after EXAMINE's read-only select."""
    for _ in range(2):
        server.append(flags=("\\Deleted",))
    logged_in.command("s", "SELECT INBOX")
    assert logged_in.command("a", "UNSELECT") == b"a OK UNSELECT completed\r\n"
    logged_in.command("e", "EXAMINE INBOX")
    assert logged_in.command("b", "CLOSE") == b"b OK CLOSE completed\r\n"
    assert b"MESSAGES 2" in logged_in.command("c", "STATUS INBOX (MESSAGES)")
    logged_in.command("s2", "SELECT INBOX")
    assert logged_in.command("d", "CLOSE") == b"d OK CLOSE completed\r\n"
    assert b"MESSAGES 0" in logged_in.command("f", "STATUS INBOX (MESSAGES)")
    assert logged_in.command("g", "FETCH 1 FLAGS") == b"g BAD FETCH not allowed in this state\r\n"


# ---- IDLE ------------------------------------------------------------------------------------


def test_idle_pushes_new_messages_and_ends_on_done(
    server: ServerHandle, logged_in: RawClient
) -> None:
    """RFC 2177 §3: "+ idling", then untagged responses as the mailbox changes (here an
    append by the POP3 side, straight into the store), until DONE."""
    server.append()
    logged_in.command("s", "SELECT INBOX")
    logged_in.send(b"i IDLE\r\n")
    assert logged_in.read_line() == b"+ idling\r\n"
    server.append()
    assert logged_in.read_line() == b"* 2 EXISTS\r\n"
    assert logged_in.read_line() == b"* 2 RECENT\r\n"
    box = inbox(server)
    if not server.store.runs_inline:
        pytest.skip("two writes in one reactor turn: only an inline store can make them")

    def delete_first() -> None:  # one reactor turn, so one push
        server.store.store_flags(box.id, [1], "+", ["\\Deleted"])
        server.store.expunge(box.id)

    server.call(delete_first)
    assert logged_in.read_line() == b"* 1 EXPUNGE\r\n"
    logged_in.send(b"DONE\r\n")
    assert logged_in.read_until_tagged("i") == b"i OK IDLE terminated\r\n"
    assert logged_in.command("n", "NOOP") == b"n OK NOOP completed\r\n"


def test_idle_ended_by_anything_but_done_is_bad(logged_in: RawClient) -> None:
    """RFC 2177 §3: only DONE ends IDLE; any other line is an error (BAD), after which
    the session carries on normally."""
    logged_in.send(b"i IDLE\r\n")
    assert logged_in.read_line() == b"+ idling\r\n"
    logged_in.send(b"a NOOP\r\n")
    assert logged_in.read_until_tagged("i") == b"i BAD Expected DONE to end IDLE\r\n"
    assert logged_in.command("b", "NOOP") == b"b OK NOOP completed\r\n"


def test_idle_keepalive_and_timeout_with_fake_clock(tmp_path: Path) -> None:
    """RFC 2177 §3 keep-alive ("* OK Still here" every two minutes) and the IDLE time
    limit, then RFC 3501 §5.4 autologout with BYE."""
    limits = IMAPLimits(idle_keepalive=120.0, idle_command_timeout=600.0)
    with running_server(tmp_path, fake_clock=True, limits=limits) as server:
        with server.connect() as client:
            client.login()
            client.send(b"i IDLE\r\n")
            assert client.read_line() == b"+ idling\r\n"
            server.advance(120)
            assert client.read_line() == b"* OK Still here\r\n"
            server.advance(120)
            assert client.read_line() == b"* OK Still here\r\n"
            server.advance(360)
            rest = client.read_to_eof()
            assert rest.endswith(b"* BYE Autologout; idle for too long\r\n")


def test_prelogin_and_inactivity_autologout(tmp_path: Path) -> None:
    """RFC 3501 §5.4: an idle connection is logged out with BYE; before login after
    60 seconds, after login after 30 minutes (each command restarts the timer)."""
    with running_server(tmp_path, fake_clock=True) as server:
        with server.connect() as early:
            early.greeting()
            server.advance(59)
            assert early.command("a", "NOOP") == b"a OK NOOP completed\r\n"
            server.advance(60)
            assert early.read_to_eof() == b"* BYE Autologout; idle for too long\r\n"
        with server.connect() as later:
            later.login()
            server.advance(29 * 60)
            assert later.command("a", "NOOP") == b"a OK NOOP completed\r\n"
            server.advance(30 * 60)
            assert later.read_to_eof() == b"* BYE Autologout; idle for too long\r\n"


# ---- pipelining, literals, parse errors --------------------------------------------------------


def test_pipelined_commands_answered_in_order(server: ServerHandle, client: RawClient) -> None:
    """RFC 3501 §5.5: a client may send several commands at once; the server runs them in
    order, so SELECT after a LOGIN still waiting on the password check succeeds."""
    server.append()
    client.greeting()
    client.send(
        f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc FETCH 1 (UID)\r\nd NOOP\r\n'.encode()
    )
    out = client.read_until_tagged("d")
    tags = [
        line.split(b" ")[0] for line in out.split(b"\r\n") if line and not line.startswith(b"*")
    ]
    assert tags == [b"a", b"b", b"c", b"d"]
    assert (
        b"b OK [READ-WRITE] SELECT completed\r\n* 1 FETCH (UID 1)\r\nc OK FETCH completed\r\n"
        in out
    )


def test_synchronizing_literal_gets_a_continuation(client: RawClient) -> None:
    """RFC 3501 §7.5: "+" invites the literal; LITERAL+ (RFC 7888) needs none."""
    client.greeting()
    client.send(b"a LOGIN {5}\r\n")
    assert client.read_line() == b"+ Ready for literal data\r\n"
    client.send(b"alice {14+}\r\nalice-password\r\n")
    assert client.read_until_tagged("a").startswith(b"a OK [CAPABILITY ")


def test_parse_errors_are_bad_and_the_session_continues(client: RawClient) -> None:
    """RFC 3501 §7.1.3: a command that cannot be parsed is BAD (tagged when the tag could
    be read, untagged otherwise) and the connection stays usable."""
    client.greeting()
    client.send(b"a FROBNICATE\r\n")
    assert client.read_line().startswith(b"a BAD ")
    client.send(b"(((\r\n")
    assert client.read_line().startswith(b"* BAD ")
    assert client.command("b", "NOOP") == b"b OK NOOP completed\r\n"


def test_too_long_line_is_fatal(tmp_path: Path) -> None:
    """A line beyond the configured limit cannot be resynchronised: RFC 3501 §7.1.5 BYE
    and close."""
    with running_server(tmp_path, limits=IMAPLimits(max_line_length=1024)) as server:
        with server.connect() as client:
            client.greeting()
            client.send(b"a NOOP " + b"x" * 4096 + b"\r\n")
            rest = client.read_to_eof()
            assert re.fullmatch(rb"\* BYE \[TOOBIG\] [^\r\n]+\r\n", rest), rest


# ---- STARTTLS ----------------------------------------------------------------------------------


def test_starttls_discards_pipelined_plaintext(tmp_path: Path) -> None:
    """RFC 3501 §6.2.1 STARTTLS; plaintext sent after it in the same packet is thrown
    away, not run after the handshake (CVE-2011-0411). After TLS, STARTTLS and
    LOGINDISABLED disappear from CAPABILITY (RFC 3501 §6.2.1) and login works."""
    from gateway.testing.tlsca import make_ca

    ca = make_ca(tmp_path / "ca")
    options = ServerTLSContext(*ca.issue(tmp_path / "ca"))
    with (
        running_server(tmp_path, tls_context_factory=options, allow_plaintext_auth=False) as server,
        server.connect() as client,
    ):
        greeting = client.greeting()
        assert b" STARTTLS LOGINDISABLED " in greeting
        client.send(b"a STARTTLS\r\nb LOGIN alice alice-password\r\n")
        assert client.read_line() == b"a OK Begin TLS negotiation now\r\n"
        client.start_tls(ca.client_context())
        caps = client.command("c", "CAPABILITY")
        assert b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps
        assert b" AUTH=PLAIN " in caps
        assert not any(line.startswith(b"b ") for line in caps.split(b"\r\n"))
        assert client.command("d", f'LOGIN {USER} "{PASSWORD}"').startswith(b"d OK ")
        assert client.command("e", "STARTTLS") == b"e BAD STARTTLS not allowed in this state\r\n"


# ---- the glue without a socket: ordering, backpressure ------------------------------------------


def wired_server(directory: Path, **kwargs: Any) -> WiredServer:
    """The server protocol on a StringTransport and a fake clock, over a SQLite store."""
    store = SQLiteStore(directory / "wired.sqlite")
    store.ensure_user(USER)
    return WiredServer(store, passwords={USER: PASSWORD}, **kwargs)


def test_commands_wait_behind_a_pending_password_check(tmp_path: Path) -> None:
    """RFC 3501 §5.5: while LOGIN waits for the off-thread password check, pipelined
    commands are not answered; they run, in order, once it completes."""
    pending: list[tuple[Deferred, object]] = []

    def run_blocking(call):
        d: Deferred = Deferred()
        pending.append((d, call))
        return d

    wired = wired_server(tmp_path, run_blocking=run_blocking)
    try:
        wired.take()
        wired.feed(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc NOOP\r\n'.encode())
        assert wired.take() == b""
        assert len(pending) == 1
        d, call = pending[0]
        d.callback(call())
        out = wired.take()
        assert out.startswith(b"a OK [CAPABILITY ")
        assert out.endswith(b"b OK [READ-WRITE] SELECT completed\r\nc OK NOOP completed\r\n")
    finally:
        wired.close()


def test_output_stops_while_transport_is_paused(tmp_path: Path) -> None:
    """Backpressure with RFC 3501 §5.5 ordering kept: while the transport has paused us
    (IPushProducer), no more response chunks are pulled from the command; they flow
    again on resumeProducing. Pipelined input is not parsed meanwhile, and reading
    pauses once too much of it waits."""
    limits = IMAPLimits(max_buffered_input=4096)
    wired = wired_server(tmp_path, limits=limits)
    try:
        box = wired.store.get_mailbox(USER, "INBOX")
        big = message(body="x" * 200_000 + "\r\n")
        for _ in range(5):
            wired.store.append(box.id, big)
        wired.feed(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\n'.encode())
        wired.take()
        wired.protocol.pauseProducing()
        wired.feed(b"c FETCH 1:* BODY.PEEK[]\r\n")
        assert len(wired.take()) < 200_000  # at most the first chunk went out
        wired.feed(b"d NOOP\r\n" * 1000)
        assert wired.transport.producerState == "paused"
        wired.protocol.resumeProducing()
        out = wired.take()
        # Only max_pipelined_commands commands before the reactor gets a turn back.
        assert out.count(b"OK NOOP completed") == limits.max_pipelined_commands - 1
        for _ in range(20):
            wired.clock.advance(0)  # the reactor turns that let the rest run
        out += wired.take()
        assert out.count(b" FETCH (BODY[] {") == 5
        assert out.count(b"OK NOOP completed") == 1000
        assert out.index(b"c OK FETCH completed") < out.index(b"d OK NOOP completed")
        assert wired.transport.producerState == "producing"
    finally:
        wired.close()


def test_idle_push_and_keepalive_on_fake_clock(tmp_path: Path) -> None:
    """RFC 2177: the store's change listener wakes an idling session on the next reactor
    turn; the keep-alive timer runs on the injected clock."""
    wired = wired_server(tmp_path)
    try:
        box = wired.store.get_mailbox(USER, "INBOX")
        wired.feed(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
        assert wired.take().endswith(b"+ idling\r\n")
        wired.store.append(box.id, message())
        assert wired.take() == b""  # told on the next turn, not inside the writer's call
        wired.clock.advance(0)
        assert wired.take() == b"* 1 EXISTS\r\n* 1 RECENT\r\n"
        wired.clock.advance(120)
        assert wired.take() == b"* OK Still here\r\n"
        wired.feed(b"DONE\r\n")
        assert wired.take() == b"c OK IDLE terminated\r\n"
    finally:
        wired.close()


def test_unexpected_handler_error_is_serverbug_without_details(tmp_path: Path) -> None:
    """STYLE.md habit 4 / RFC 5530 SERVERBUG: an unexpected exception is logged with its
    traceback and answered NO [SERVERBUG] without the exception text."""
    wired = wired_server(tmp_path)
    try:
        wired.feed(f'a LOGIN {USER} "{PASSWORD}"\r\n'.encode())
        wired.take()

        def broken(*_args, **_kwargs):
            raise RuntimeError("secret detail")

        wired.store.counts = broken  # type: ignore[method-assign]
        with structlog.testing.capture_logs() as events:
            wired.feed(b"b STATUS INBOX (MESSAGES)\r\n")
        assert wired.take() == b"b NO [SERVERBUG] Internal error, see server log\r\n"
        errors = [e for e in events if e["event"] == "imap.command_error"]
        assert errors and errors[0]["kind"] == "internal" and errors[0]["command"] == "STATUS"
        wired.feed(b"c NOOP\r\n")
        assert wired.take() == b"c OK NOOP completed\r\n"
    finally:
        wired.close()


# ---- the selected-mailbox view and the error mapping, without any I/O -----------------------


def seqset(text: str) -> SequenceSet:
    def number(part: str) -> int | None:
        return None if part == "*" else int(part)

    ranges = []
    for item in text.split(","):
        low, _, high = item.partition(":")
        ranges.append(SeqRange(number(low), number(high or low)))
    return SequenceSet(tuple(ranges))


def view_of(uids: list[int]) -> View:
    return View(None, False, uids, 1)


def test_view_keeps_a_compact_uid_map_and_only_unreported_own_changes() -> None:
    """A view holds its UIDs as array('I') (4 bytes a message) and no per-message flags:
    note_flags remembers only changes past highestmodseq (what a catch-up would report
    again), the catch-up forgets them, and expunges leave uids and \\Recent in step."""
    view = View(None, False, [3, 7, 9, 20], 10, recent=[7, 20])
    assert isinstance(view.uids, array) and view.uids.typecode == "I"
    view.note_flags(9, frozenset({"\\Seen"}), 8)  # not news to any catch-up
    view.note_flags(7, frozenset({"\\Seen"}), 12)
    view.note_flags(99, frozenset(), 13)  # not in the view
    assert view.reported == {7: 12}
    assert view.knows(7, 12) and view.knows(9, 10) and not view.knows(9, 11)
    assert view.shown_flags(7, frozenset()) == {"\\Recent"}
    assert view.shown_flags(9, frozenset({"\\Recent"})) == frozenset()
    view.caught_up(12)
    assert view.reported == {} and view.highestmodseq == 12
    assert view.forget([7, 8, 20]) == [(4, 20), (2, 7)]
    assert list(view.uids) == [3, 9] and list(view.recent) == []


def test_view_resolves_sequence_numbers_and_uids() -> None:
    """RFC 3501 §6.4.8 and §9: in UID mode "*" is the largest UID and "n:*" always
    includes it; absent UIDs are ignored. Sequence numbers beyond the mailbox are BAD,
    except that "1:*" in an empty mailbox names nothing."""
    view = view_of([3, 7, 9, 20])
    assert view.resolve(seqset("1:*"), uid_mode=True) == [3, 7, 9, 20]
    assert view.resolve(seqset("25:*"), uid_mode=True) == [20]
    assert view.resolve(seqset("4:8,100"), uid_mode=True) == [7]
    assert view.resolve(seqset("2,4,2:3"), uid_mode=False) == [7, 9, 20]
    assert view.resolve(seqset("*"), uid_mode=False) == [20]
    with pytest.raises(BadCommand):
        view.resolve(seqset("5"), uid_mode=False)
    empty = view_of([])
    assert empty.resolve(seqset("1:*"), uid_mode=False) == []
    assert empty.resolve(seqset("1:*"), uid_mode=True) == []
    with pytest.raises(BadCommand):
        empty.resolve(seqset("1"), uid_mode=False)
    assert view.seq_of(9) == 3 and view.seq_of(8) is None


@given(
    uids=st.lists(st.integers(1, 60), unique=True).map(sorted),
    ranges=st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(1, 70)), st.one_of(st.none(), st.integers(1, 70))
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_view_uid_resolution_matches_brute_force(uids: list[int], ranges: list) -> None:
    """RFC 3501 §6.4.8: UID sets name exactly the existing UIDs inside their ranges, with
    "*" standing for the largest UID in the mailbox."""
    view = view_of(uids)
    sset = SequenceSet(tuple(SeqRange(a, b) for a, b in ranges))
    largest = uids[-1] if uids else 0
    expected = [u for u in uids if sset.contains(u, largest)]
    assert view.resolve(sset, uid_mode=True) == expected


ERROR_CODES = [
    (MailboxNotFound("x"), "SELECT", "NO", "NONEXISTENT"),
    (MailboxNotFound("x"), "APPEND", "NO", "TRYCREATE"),
    (MailboxNotFound("x"), "COPY", "NO", "TRYCREATE"),
    (MailboxNotFound("x"), "MOVE", "NO", "TRYCREATE"),
    (MailboxExists("x"), "CREATE", "NO", "ALREADYEXISTS"),
    (MailboxNotAllowed("x"), "DELETE", "NO", "CANNOT"),
    (OverQuota("x"), "APPEND", "NO", "OVERQUOTA"),
    (MessageTooLarge("x"), "APPEND", "NO", "TOOBIG"),
    (StoreError("disk on fire"), "FETCH", "NO", "SERVERBUG"),
    (Refused("nope", "READ-ONLY"), "STORE", "NO", "READ-ONLY"),
    (BadCommand("bad set"), "FETCH", "BAD", None),
    (KeyError("internal"), "FETCH", "NO", "SERVERBUG"),
]


@pytest.mark.parametrize(("error", "command", "status", "code"), ERROR_CODES)
def test_errors_map_to_response_codes(error: Exception, command: str, status: str, code) -> None:
    """RFC 5530 response codes, and RFC 3501 §6.3.11/§6.4.7 TRYCREATE for a missing
    APPEND/COPY/MOVE target; unexpected errors never show their text."""
    session = IMAPSession(store=None, authenticator=None)  # type: ignore[arg-type]
    reply = session.reply_for_error(error, Command(tag="t", name=command))
    assert (reply.status, reply.code) == (status, code)
    assert "disk on fire" not in reply.text and "internal" not in reply.text


@pytest.mark.postgres
def test_on_postgresql_no_store_call_runs_on_the_reactor_thread(tmp_path: Path) -> None:
    """With a store that does not run inline, command steps run on store threads: the
    store's guard refuses the reactor thread, and a whole session still works."""
    from gateway.store.postgres import ReactorThreadCall

    with running_server(tmp_path, backend="postgresql") as server:
        with pytest.raises(ReactorThreadCall):
            server.call(server.store.list_mailboxes, USER)
        server.append()
        with server.login() as client:
            assert client.command("s", "SELECT INBOX").endswith(
                b"s OK [READ-WRITE] SELECT completed\r\n"
            )
            reply = client.command("f", "FETCH 1 (FLAGS)")
            assert b"* 1 FETCH (FLAGS (\\Recent))" in reply
            assert client.command("l", "LOGOUT").endswith(b"l OK LOGOUT completed\r\n")
