"""Mailbox commands over a real socket: LIST/LSUB wildcards and hierarchy, LIST-EXTENDED,
LIST-STATUS, CREATE/DELETE/RENAME (INBOX rules, hierarchy, special-use), SUBSCRIBE,
STATUS and mailbox-name encoding, checked byte for byte where the format matters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.imap.handler import Refused
from gateway.imap.listpattern import matcher
from gateway.imap.session import IMAPSession
from gateway.testing.imapclient import BACKENDS, USER, RawClient, ServerHandle, running_server
from gateway.testing.messages import message

# Beyond ensure_user's INBOX, Sent, Drafts, Trash, Junk, Archive (all subscribed):
EXTRA_MAILBOXES = ("Work/Projects/2024", "Work/Admin", "Personal", "INBOX/Sub")
ALL_NAMES = {
    "INBOX",
    "INBOX/Sub",
    "Archive",
    "Drafts",
    "Junk",
    "Personal",
    "Sent",
    "Trash",
    "Work",
    "Work/Admin",
    "Work/Projects",
    "Work/Projects/2024",
}

_LIST_LINE = re.compile(rb'\* (LIST|LSUB) \(([^)]*)\) "/" "([^"]*)"(.*)\r\n')


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path):
    with running_server(tmp_path, backend=request.param) as handle:
        for name in EXTRA_MAILBOXES:
            handle.store_call(handle.store.create_mailbox, USER, name)
        yield handle


@pytest.fixture
def client(server: ServerHandle):
    with server.connect() as raw:
        raw.login()
        yield raw


def listed(reply: bytes) -> list[tuple[str, str]]:
    """(attributes, name) of each LIST/LSUB line, in order."""
    return [
        (m.group(2).decode(), m.group(3).decode())
        for line in reply.splitlines(keepends=True)
        if (m := _LIST_LINE.fullmatch(line))
    ]


def names(reply: bytes) -> set[str]:
    return {name for _attrs, name in listed(reply)}


# ---- LIST patterns ---------------------------------------------------------------------------

LIST_PATTERNS = [
    # (reference, pattern, expected names)
    ("", "*", ALL_NAMES),
    ("", "%", {"INBOX", "Archive", "Drafts", "Junk", "Personal", "Sent", "Trash", "Work"}),
    ("Work/", "%", {"Work/Admin", "Work/Projects"}),
    ("Work", "%", {"Work/Admin", "Work/Projects"}),
    ("Work/", "*", {"Work/Admin", "Work/Projects", "Work/Projects/2024"}),
    ("", "Work/*", {"Work/Admin", "Work/Projects", "Work/Projects/2024"}),
    ("", "Work/%/%", {"Work/Projects/2024"}),
    ("", "%/%", {"INBOX/Sub", "Work/Admin", "Work/Projects"}),
    ("", "*Pro*", {"Work/Projects", "Work/Projects/2024"}),
    ("", "W%", {"Work"}),
    ("", "inbox", {"INBOX"}),
    ("", "InBox/%", {"INBOX/Sub"}),
    ("", "In*", {"INBOX", "INBOX/Sub"}),
    ("", "*box", {"INBOX"}),
    ("", "Work/Admin", {"Work/Admin"}),
    ("", "Nothing*", set()),
]


@pytest.mark.parametrize(("reference", "pattern", "expected"), LIST_PATTERNS)
def test_list_wildcards(
    client: RawClient, reference: str, pattern: str, expected: set[str]
) -> None:
    """RFC 3501 §6.3.8: "*" matches across levels, "%" within one; the pattern is read
    relative to the reference; INBOX matches case-insensitively (§5.1)."""
    reply = client.command("l", f'LIST "{reference}" "{pattern}"')
    assert reply.endswith(b"l OK LIST completed\r\n")
    assert names(reply) == expected


def test_list_puts_inbox_first(client: RawClient) -> None:
    """Clients show INBOX first; RFC 3501 §6.3.8 leaves the order free."""
    assert listed(client.command("l", 'LIST "" "*"'))[0][1] == "INBOX"


def test_list_attributes_byte_for_byte(client: RawClient) -> None:
    """RFC 3501 §7.2.2 LIST response; RFC 3348/5258 \\HasChildren/\\HasNoChildren;
    RFC 6154 §2 special-use attributes on the default folders."""
    assert client.command("l", 'LIST "" "%"') == (
        b'* LIST (\\HasChildren) "/" "INBOX"\r\n'
        b'* LIST (\\HasNoChildren \\Archive) "/" "Archive"\r\n'
        b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
        b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n'
        b'* LIST (\\HasNoChildren) "/" "Personal"\r\n'
        b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
        b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n'
        b'* LIST (\\HasChildren) "/" "Work"\r\n'
        b"l OK LIST completed\r\n"
    )


def test_list_empty_pattern_gives_delimiter(client: RawClient) -> None:
    """RFC 3501 §6.3.8: an empty pattern returns the delimiter and root name."""
    assert client.command("l", 'LIST "" ""') == (
        b'* LIST (\\Noselect) "/" ""\r\nl OK LIST completed\r\n'
    )


def test_list_shows_superior_left_by_delete(client: RawClient) -> None:
    """RFC 3501 §6.3.4 and §6.3.8: a deleted mailbox whose children remain is listed as
    \\Noselect; under LIST-EXTENDED as \\NonExistent (RFC 5258 §3.4). It cannot be
    selected."""
    assert client.command("d", "DELETE Work/Projects") == b"d OK DELETE completed\r\n"
    assert client.command("l", 'LIST "" "Work/%"') == (
        b'* LIST (\\HasNoChildren) "/" "Work/Admin"\r\n'
        b'* LIST (\\Noselect \\HasChildren) "/" "Work/Projects"\r\n'
        b"l OK LIST completed\r\n"
    )
    assert client.command("m", 'LIST () "" "Work/%"') == (
        b'* LIST (\\HasNoChildren) "/" "Work/Admin"\r\n'
        b'* LIST (\\NonExistent \\HasChildren) "/" "Work/Projects"\r\n'
        b"m OK LIST completed\r\n"
    )
    assert client.command("s", "SELECT Work/Projects") == (
        b"s NO [NONEXISTENT] Mailbox does not exist\r\n"
    )


def test_matcher_treats_only_inbox_case_insensitively() -> None:
    """RFC 3501 §5.1: only INBOX is case-insensitive; other names are exact."""
    assert matcher("inbox/%")("INBOX/Sub")
    assert not matcher("work")("Work")
    # "inbox%" reaches INBOX itself, and a mailbox literally spelt "inboxes", but not
    # "INBOXES", which is an ordinary (case-sensitive) name.
    assert matcher("inbox%")("INBOX") and matcher("inbox%")("inboxes")
    assert not matcher("inbox%")("INBOXES")
    assert matcher("%")("anything") and not matcher("%")("a/b")


# ---- LIST-EXTENDED, LIST-STATUS, SPECIAL-USE -------------------------------------------------


def test_list_subscribed_selection(server: ServerHandle, client: RawClient) -> None:
    """RFC 5258 §3.1 SUBSCRIBED selection: subscribed names with \\Subscribed, including
    one whose mailbox does not exist (\\NonExistent)."""
    client.command("a", "SUBSCRIBE Gone")
    assert client.command("l", 'LIST (SUBSCRIBED) "" "*"') == (
        b'* LIST (\\HasChildren \\Subscribed) "/" "INBOX"\r\n'
        b'* LIST (\\HasNoChildren \\Subscribed \\Archive) "/" "Archive"\r\n'
        b'* LIST (\\HasNoChildren \\Subscribed \\Drafts) "/" "Drafts"\r\n'
        b'* LIST (\\NonExistent \\Subscribed) "/" "Gone"\r\n'
        b'* LIST (\\HasNoChildren \\Subscribed \\Junk) "/" "Junk"\r\n'
        b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" "Sent"\r\n'
        b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "/" "Trash"\r\n'
        b"l OK LIST completed\r\n"
    )


def test_list_recursivematch_childinfo(client: RawClient) -> None:
    """RFC 5258 §3.5: with RECURSIVEMATCH, a matching parent of a subscribed child that
    the pattern does not reach carries CHILDINFO ("SUBSCRIBED")."""
    client.command("a", "SUBSCRIBE Work/Admin")
    reply = client.command("l", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert b'* LIST (\\HasChildren) "/" "Work" ("CHILDINFO" ("SUBSCRIBED"))\r\n' in reply
    assert names(reply) == {"INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash", "Work"}


def test_list_return_subscribed_and_special_use_selection(client: RawClient) -> None:
    """RFC 5258 §3.2 RETURN (SUBSCRIBED); RFC 6154 §5.1 SPECIAL-USE selection lists only
    special-use mailboxes."""
    assert client.command("a", 'LIST "" "Sent" RETURN (SUBSCRIBED)') == (
        b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" "Sent"\r\na OK LIST completed\r\n'
    )
    reply = client.command("b", 'LIST (SPECIAL-USE) "" "*"')
    assert names(reply) == {"Archive", "Drafts", "Junk", "Sent", "Trash"}


def test_list_status_follows_each_list_line(server: ServerHandle, client: RawClient) -> None:
    """RFC 5819 §2: RETURN (STATUS (...)) puts a STATUS response right after the LIST
    response of each selectable mailbox, and none for a non-existent one."""
    server.append()
    client.command("d", "DELETE Work")
    reply = client.command("l", 'LIST "" "%" RETURN (STATUS (MESSAGES UNSEEN))')
    lines = reply.split(b"\r\n")
    assert lines[0] == b'* LIST (\\HasChildren) "/" "INBOX"'
    assert lines[1] == b'* STATUS "INBOX" (MESSAGES 1 UNSEEN 1)'
    work = lines.index(b'* LIST (\\NonExistent \\HasChildren) "/" "Work"')
    assert not lines[work + 1].startswith(b"* STATUS")
    statuses = [line for line in lines if line.startswith(b"* STATUS")]
    assert len(statuses) == 7  # INBOX, Archive, Drafts, Junk, Personal, Sent, Trash


# ---- LSUB, SUBSCRIBE, UNSUBSCRIBE ------------------------------------------------------------


def test_lsub_percent_returns_unsubscribed_parent_as_noselect(client: RawClient) -> None:
    """RFC 3501 §6.3.9: a name "%" reaches that is not subscribed but has subscribed
    inferiors is returned \\Noselect; "*" returns the inferior itself."""
    client.command("a", "SUBSCRIBE Work/Projects")
    assert client.command("l", 'LSUB "" "W%"') == (
        b'* LSUB (\\Noselect) "/" "Work"\r\nl OK LSUB completed\r\n'
    )
    assert client.command("m", 'LSUB "" "W*"') == (
        b'* LSUB () "/" "Work/Projects"\r\nm OK LSUB completed\r\n'
    )


def test_subscribe_unsubscribe_and_deleted_subscription(client: RawClient) -> None:
    """RFC 3501 §6.3.6-7, §6.3.9: subscriptions show in LSUB; one whose mailbox was
    deleted stays (\\Noselect) until unsubscribed."""
    assert client.command("a", "SUBSCRIBE Personal") == b"a OK SUBSCRIBE completed\r\n"
    assert names(client.command("b", 'LSUB "" "*"')) == {
        "INBOX",
        "Archive",
        "Drafts",
        "Junk",
        "Sent",
        "Trash",
        "Personal",
    }
    client.command("c", "DELETE Personal")
    assert client.command("d", 'LSUB "" "Personal"') == (
        b'* LSUB (\\Noselect) "/" "Personal"\r\nd OK LSUB completed\r\n'
    )
    assert client.command("e", "UNSUBSCRIBE Personal") == b"e OK UNSUBSCRIBE completed\r\n"
    assert client.command("f", 'LSUB "" "Personal"') == b"f OK LSUB completed\r\n"


# ---- CREATE ----------------------------------------------------------------------------------


def test_create_variants(client: RawClient) -> None:
    """RFC 3501 §6.3.3: a trailing delimiter is dropped; superiors are created; an
    existing name (INBOX in any case too) is NO [ALREADYEXISTS] (RFC 5530); names with
    wildcards or empty levels are NO [CANNOT]."""
    assert re.fullmatch(
        rb"a OK \[MAILBOXID \(F\d+\)\] CREATE completed\r\n", client.command("a", "CREATE Foo/")
    )
    assert client.command("b", "CREATE Foo") == b"b NO [ALREADYEXISTS] Mailbox already exists\r\n"
    assert client.command("c", "CREATE inbox") == b"c NO [ALREADYEXISTS] INBOX always exists\r\n"
    assert client.command("d", 'CREATE "a*b"') == (
        b"d NO [CANNOT] Mailbox names may not contain % or *\r\n"
    )
    assert client.command("e", 'CREATE "a//b"') == (
        b"e NO [CANNOT] Operation not allowed on this mailbox\r\n"
    )
    assert re.fullmatch(
        rb"f OK \[MAILBOXID \(F\d+\)\] CREATE completed\r\n", client.command("f", "CREATE x/y/z")
    )
    assert client.command("l", 'LIST "" "x*"') == (
        b'* LIST (\\HasChildren) "/" "x"\r\n'
        b'* LIST (\\HasChildren) "/" "x/y"\r\n'
        b'* LIST (\\HasNoChildren) "/" "x/y/z"\r\n'
        b"l OK LIST completed\r\n"
    )


def test_create_special_use(client: RawClient) -> None:
    """RFC 6154 §3 CREATE ... (USE (\\Sent)); an unsupported attribute is NO [USEATTR]
    (§5.3)."""
    assert re.fullmatch(
        rb"a OK \[MAILBOXID \(F\d+\)\] CREATE completed\r\n",
        client.command("a", "CREATE Outbox (USE (\\Sent))"),
    )
    assert client.command("l", 'LIST "" Outbox') == (
        b'* LIST (\\HasNoChildren \\Sent) "/" "Outbox"\r\nl OK LIST completed\r\n'
    )
    assert client.command("b", "CREATE Everything (USE (\\All))") == (
        b"b NO [USEATTR] Special-use attribute \\All is not supported\r\n"
    )


def test_mailbox_names_in_modified_utf7(server: ServerHandle, client: RawClient) -> None:
    """RFC 3501 §5.1.3: modified UTF-7 on the wire, Unicode in the store; an undecodable
    name is NO (it names a mailbox that cannot exist, RFC 3501 §6.3.1), not BAD."""
    assert re.fullmatch(
        rb"a OK \[MAILBOXID \(F\d+\)\] CREATE completed\r\n",
        client.command("a", 'CREATE "&AOk-t&AOk-"'),
    )
    stored = server.store_call(lambda: [m.name for m in server.store.list_mailboxes(USER)])
    assert "été" in stored
    assert client.command("l", 'LIST "" "*t&AOk-"') == (
        b'* LIST (\\HasNoChildren) "/" "&AOk-t&AOk-"\r\nl OK LIST completed\r\n'
    )
    assert client.command("b", 'CREATE "&Jjo"').startswith(b"b NO [CANNOT] ")


def test_mailbox_names_after_utf8_accept() -> None:
    """RFC 6855 §3: once UTF8=ACCEPT is enabled, names are UTF-8 both ways (in quoted
    strings, as Dovecot sends them); INBOX stays case-insensitive (RFC 3501 §5.1)."""
    session = IMAPSession(store=None, authenticator=None, utf8_available=True)  # type: ignore[arg-type]
    assert session.mailbox_name(b"&AOk-t&AOk-") == "été"
    assert session.enable(["UTF8=ACCEPT"]) == ["UTF8=ACCEPT"]
    assert session.mailbox_name("été".encode()) == "été"
    assert session.mailbox_name(b"inbox/x") == "INBOX/x"
    assert session.wire_name("été") == b'"' + "été".encode() + b'"'
    assert session.wire_name('a"b') == b'"a\\"b"'
    # Invalid UTF-8 is a name no mailbox can have: NO [CANNOT], not BAD (RFC 3501 §6.3.1).
    with pytest.raises(Refused) as refused:
        session.mailbox_name(b"\xff")
    assert refused.value.code == "CANNOT"


# ---- DELETE ----------------------------------------------------------------------------------


def test_delete_rules(client: RawClient) -> None:
    """RFC 3501 §6.3.4: INBOX cannot be deleted (NO [CANNOT]); a missing mailbox is
    NO [NONEXISTENT] (RFC 5530)."""
    assert client.command("a", "DELETE inbox") == b"a NO [CANNOT] INBOX cannot be deleted\r\n"
    assert client.command("b", "DELETE Nope") == b"b NO [NONEXISTENT] Mailbox does not exist\r\n"
    assert client.command("c", "DELETE Personal") == b"c OK DELETE completed\r\n"
    assert "Personal" not in names(client.command("l", 'LIST "" "*"'))


def test_delete_selected_mailbox_closes_it(server: ServerHandle, client: RawClient) -> None:
    """Deleting the selected mailbox closes it first (RFC 7162 §3.2.11 CLOSED), leaving
    the session authenticated (RFC 3501 §3)."""
    client.command("s", "SELECT Personal")
    assert client.command("d", "DELETE Personal") == (
        b"* OK [CLOSED] Mailbox closed\r\nd OK DELETE completed\r\n"
    )
    assert client.command("f", "FETCH 1 FLAGS") == b"f BAD FETCH not allowed in this state\r\n"


def test_selected_mailbox_deleted_elsewhere_ends_the_session(
    server: ServerHandle, client: RawClient
) -> None:
    """RFC 3501 §7.1.5: when another session deletes the selected mailbox, the view can
    no longer be reconciled; the server says BYE (as Dovecot does) and closes."""
    client.command("s", "SELECT Personal")
    server.store_call(server.store.delete_mailbox, USER, "Personal")
    client.send(b"n NOOP\r\n")
    assert client.read_to_eof() == b"* BYE Selected mailbox was deleted, have to disconnect\r\n"


# ---- RENAME ----------------------------------------------------------------------------------


def test_rename_moves_children(client: RawClient) -> None:
    """RFC 3501 §6.3.5: inferior names are renamed along with the mailbox."""
    assert client.command("r", "RENAME Work Job") == b"r OK RENAME completed\r\n"
    assert names(client.command("l", 'LIST "" "Jo*"')) == {
        "Job",
        "Job/Admin",
        "Job/Projects",
        "Job/Projects/2024",
    }
    assert names(client.command("m", 'LIST "" "Work*"')) == set()


def test_rename_errors(client: RawClient) -> None:
    """RFC 3501 §6.3.5 / RFC 5530: target exists → ALREADYEXISTS; source missing →
    NONEXISTENT; into its own child or with wildcards → CANNOT."""
    assert client.command("a", "RENAME Personal Sent") == (
        b"a NO [ALREADYEXISTS] Mailbox already exists\r\n"
    )
    assert client.command("b", "RENAME Nope X") == b"b NO [NONEXISTENT] Mailbox does not exist\r\n"
    assert client.command("c", "RENAME Work Work/Sub") == (
        b"c NO [CANNOT] Cannot rename a mailbox into its own child\r\n"
    )
    assert client.command("d", 'RENAME Work "W%"') == (
        b"d NO [CANNOT] Mailbox names may not contain % or *\r\n"
    )
    assert client.command("e", "RENAME Work inbox") == (
        b"e NO [ALREADYEXISTS] Target mailbox already exists\r\n"
    )


def test_rename_inbox_moves_messages_and_keeps_inbox(
    server: ServerHandle, client: RawClient
) -> None:
    """RFC 3501 §6.3.5: renaming INBOX moves its messages to the new name and leaves an
    empty INBOX (its inferiors stay). A session with INBOX selected learns of the
    removals in the catch-up after RENAME."""
    server.append()
    server.append()
    client.command("s", "SELECT INBOX")
    assert client.command("r", "RENAME INBOX Old") == (
        b"* 2 EXPUNGE\r\n* 1 EXPUNGE\r\nr OK RENAME completed\r\n"
    )
    assert client.command("a", "STATUS INBOX (MESSAGES)") == (
        b'* STATUS "INBOX" (MESSAGES 0)\r\na OK STATUS completed\r\n'
    )
    assert client.command("b", "STATUS Old (MESSAGES)") == (
        b'* STATUS "Old" (MESSAGES 2)\r\nb OK STATUS completed\r\n'
    )
    assert "INBOX/Sub" in names(client.command("l", 'LIST "" "*"'))


# ---- STATUS ----------------------------------------------------------------------------------


def test_status_all_items(server: ServerHandle, client: RawClient) -> None:
    """RFC 3501 §6.3.10 / §7.2.4, RFC 7162 §3.1.8 HIGHESTMODSEQ, RFC 8438 SIZE, in the
    order asked."""
    first, second = message("one"), message("two", body="longer body text\r\n")
    server.append(raw=first, flags=("\\Seen",))
    server.append(raw=second)
    box = server.store_call(server.store.get_mailbox, USER, "INBOX")
    reply = client.command(
        "a", "STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE)"
    )
    assert reply == (
        b'* STATUS "INBOX" (MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY %d UNSEEN 1 '
        b"HIGHESTMODSEQ %d SIZE %d)\r\na OK STATUS completed\r\n"
        % (box.uidvalidity, box.highestmodseq, len(first) + len(second))
    )
    assert client.command("b", "STATUS Nope (MESSAGES)") == (
        b"b NO [NONEXISTENT] Mailbox does not exist\r\n"
    )


def test_create_then_select_new_mailbox(tmp_path: Path) -> None:
    """RFC 3501 §6.3.3 then §6.3.1: a created mailbox is immediately selectable, empty."""
    with running_server(tmp_path) as server, server.connect() as client:
        client.login()
        client.command("c", "CREATE Fresh")
        reply = client.command("s", "SELECT Fresh")
        assert b"* 0 EXISTS\r\n* 0 RECENT\r\n" in reply
        assert b"UNSEEN" not in reply
        assert reply.endswith(b"s OK [READ-WRITE] SELECT completed\r\n")
