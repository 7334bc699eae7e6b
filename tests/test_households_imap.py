"""Households over the IMAP protocol: the shared namespace, private \\Seen per member, and
isolation for every command that takes a mailbox name (issue 6).

alice and bob are members of the household "family"; carol is not. The family's mail is
delivered into the store as the POP3 fetcher does it (owner ``shared:family``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.interfaces import INBOX, Delivery
from gateway.testing.imapclient import RawClient, ServerHandle, running_server, tagged_line
from gateway.testing.messages import message

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}
FAMILY_OWNER = "shared:family"
SHARED = "Shared/family"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path, users=PASSWORDS, shared={"family": ["alice", "bob"]}) as handle:
        yield handle


def deliver(server: ServerHandle, count: int, start: int = 0) -> None:
    """Messages fetched from the family's upstream, as the fetcher stores them."""

    def run() -> None:
        for i in range(start, start + count):
            raw = message(subject=f"family {i}")
            server.store.deliver(FAMILY_OWNER, INBOX, Delivery("family-pop", f"uidl-{i}", raw))

    server.call(run)


def status_of(client: RawClient, name: str, item: str) -> int:
    reply = client.command("S", f'STATUS "{name}" ({item})')
    assert tagged_line(reply).startswith(b"S OK"), reply
    found = re.search(rb"\(" + item.encode() + rb" (\d+)\)", reply)
    assert found, reply
    return int(found.group(1))


def listed(client: RawClient, pattern: str = "*") -> list[str]:
    reply = client.command("L", f'LIST "" "{pattern}"')
    assert tagged_line(reply).startswith(b"L OK"), reply
    return [m.decode() for m in re.findall(rb'^\* LIST \([^)]*\) "/" "([^"]*)"', reply, re.M)]


# ---- the shared namespace ------------------------------------------------------------


def test_namespace_reports_the_shared_namespace_to_members_only(server: ServerHandle) -> None:
    """RFC 2342 §5: members get ``(("Shared/" "/"))`` as the shared namespace."""
    with server.login("alice") as alice, server.login("carol") as carol:
        assert b'* NAMESPACE (("" "/")) NIL (("Shared/" "/"))\r\n' in alice.command(
            "N", "NAMESPACE"
        )
        assert b'* NAMESPACE (("" "/")) NIL NIL\r\n' in carol.command("N", "NAMESPACE")


def test_list_shows_the_shared_tree_to_members_and_not_to_others(server: ServerHandle) -> None:
    deliver(server, 1)
    with server.login("alice") as alice, server.login("carol") as carol:
        alice.command("C", 'CREATE "Shared/family/Bills"')
        names = listed(alice)
        assert SHARED in names and "Shared/family/Bills" in names and "INBOX" in names
        reply = alice.command("L", 'LIST "" "Shared"')
        assert b'(\\Noselect \\HasChildren) "/" "Shared"' in reply
        assert all(not n.lower().startswith("shared") for n in listed(carol))
        assert b"family" not in carol.command("L", 'LIST "" "*"')


def test_select_status_append_copy_move_and_create_work_inside_the_shared_tree(
    server: ServerHandle,
) -> None:
    deliver(server, 2)
    with server.login("alice") as alice, server.login("bob") as bob:
        assert tagged_line(alice.command("c", 'CREATE "Shared/family/Bills"')).startswith(b"c OK")
        assert "Shared/family/Bills" in listed(bob)
        raw = message(subject="appended by bob")
        bob.send(b'a APPEND "Shared/family/Bills" (\\Seen) {%d+}\r\n%s\r\n' % (len(raw), raw))
        assert tagged_line(bob.read_until_tagged("a")).startswith(b"a OK [APPENDUID")
        assert status_of(alice, "Shared/family/Bills", "MESSAGES") == 1
        assert status_of(alice, "Shared/family/Bills", "UNSEEN") == 1  # bob's \Seen is his
        assert status_of(bob, "Shared/family/Bills", "UNSEEN") == 0
        reply = alice.command("s", f'SELECT "{SHARED}"')
        assert b"* 2 EXISTS" in reply and tagged_line(reply).startswith(b"s OK [READ-WRITE]")
        assert tagged_line(alice.command("k", 'COPY 1 "Shared/family/Bills"')).startswith(b"k OK")
        assert tagged_line(alice.command("m", "MOVE 2 INBOX")).startswith(b"m OK")
        assert status_of(bob, SHARED, "MESSAGES") == 1  # 1 was copied, 2 moved out
        assert status_of(bob, "Shared/family/Bills", "MESSAGES") == 2
        assert status_of(alice, "INBOX", "MESSAGES") == 1
        alice.command("u", "UNSELECT")
        assert tagged_line(
            alice.command("r", "RENAME Shared/family/Bills Shared/family/Paid")
        ).startswith(b"r OK")
        assert "Shared/family/Paid" in listed(bob)
        assert tagged_line(bob.command("d", 'DELETE "Shared/family/Paid"')).startswith(b"d OK")
        assert "Shared/family/Paid" not in listed(alice)


def test_the_shared_root_cannot_be_deleted_renamed_or_recreated(server: ServerHandle) -> None:
    deliver(server, 1)
    with server.login("alice") as alice:
        assert tagged_line(alice.command("d", f'DELETE "{SHARED}"')).startswith(b"d NO [CANNOT]")
        assert tagged_line(alice.command("r", f'RENAME "{SHARED}" Mine')).startswith(b"r NO")
        assert tagged_line(alice.command("c", f'CREATE "{SHARED}"')).startswith(
            b"c NO [ALREADYEXISTS]"
        )
        assert tagged_line(alice.command("x", 'RENAME INBOX "Shared/family/Mine"')).startswith(
            b"x NO [CANNOT]"
        )
        assert status_of(alice, SHARED, "MESSAGES") == 1


# ---- private \Seen -------------------------------------------------------------------


def test_seen_is_private_per_member(server: ServerHandle) -> None:
    """alice reads all three; bob still sees them unread in STATUS, SEARCH and FETCH."""
    deliver(server, 3)
    with server.login("alice") as alice, server.login("bob") as bob:
        alice.command("s", f'SELECT "{SHARED}"')
        alice.command("f", "FETCH 1:3 BODY[]")  # reading sets \Seen (RFC 3501 §6.4.5)
        assert status_of(alice, SHARED, "UNSEEN") == 0
        assert status_of(bob, SHARED, "UNSEEN") == 3
        bob.command("s", f'SELECT "{SHARED}"')
        assert b"* SEARCH 1 2 3\r\n" in bob.command("q", "SEARCH UNSEEN")
        assert b"\\Seen" not in bob.command("f", "FETCH 1:3 FLAGS")
        assert b"* SEARCH\r\n" in alice.command("q", "SEARCH UNSEEN")
        # Shared flags: bob flags and deletes one, alice sees both.
        bob.command("t", "STORE 2 +FLAGS.SILENT (\\Flagged \\Deleted)")
        bob.command("e", "EXPUNGE")
        reply = alice.command("n", "NOOP")
        assert b"* 2 EXPUNGE\r\n" in reply
        assert status_of(alice, SHARED, "MESSAGES") == 2


def test_condstore_changedsince_is_per_member(server: ServerHandle) -> None:
    """RFC 7162: alice's own \\Seen change appears in her CHANGEDSINCE, not in bob's."""
    deliver(server, 2)
    with server.login("alice") as alice, server.login("bob") as bob:
        start = status_of(bob, SHARED, "HIGHESTMODSEQ")
        alice.command("s", f'SELECT "{SHARED}" (CONDSTORE)')
        alice.command("t", "STORE 1 +FLAGS.SILENT (\\Seen)")
        bob.command("s", f'SELECT "{SHARED}" (CONDSTORE)')
        mine = alice.command("f", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {start})")
        theirs = bob.command("f", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {start})")
        assert b"* 1 FETCH" in mine and b"\\Seen" in mine
        assert re.search(rb"^\* \d+ FETCH", theirs, re.M) is None, theirs


def test_idle_pushes_new_shared_mail_to_every_member_and_own_seen_to_own_sessions(
    server: ServerHandle,
) -> None:
    deliver(server, 1)
    with (
        server.login("alice") as alice,
        server.login("bob") as bob,
        server.login("alice") as alice_phone,
    ):
        for client in (bob, alice_phone):
            client.command("s", f'SELECT "{SHARED}"')
            client.send(b"i IDLE\r\n")
            assert client.read_line().startswith(b"+ ")
        deliver(server, 1, start=1)
        for client in (bob, alice_phone):
            line = client.read_line()
            while b"EXISTS" not in line:
                line = client.read_line()
            assert line == b"* 2 EXISTS\r\n"
        alice.command("s", f'SELECT "{SHARED}"')
        alice.command("t", "STORE 1 +FLAGS.SILENT (\\Seen)")
        line = alice_phone.read_line()
        while b"FETCH" not in line:
            line = alice_phone.read_line()
        assert line.startswith(b"* 1 FETCH") and b"\\Seen" in line
        for client in (bob, alice_phone):
            client.send(b"DONE\r\n")
            assert tagged_line(client.read_until_tagged("i")).startswith(b"i OK")
        assert b"\\Seen" not in bob.command("f", "FETCH 1 FLAGS")


# ---- isolation -----------------------------------------------------------------------

# Names a non-member (carol) might try to reach the family's or alice's mail with.
PROBES = [
    "Shared/family",
    "Shared/family/Bills",
    "shared/family",
    "SHARED/family",
    "Shared/Family",
    "Shared/family/INBOX",
    "Shared/family/inbox",
    "Shared/./family",
    "Shared/family/../family",
    "Shared/../Shared/family",
    "/Shared/family",
    "Shared//family",
    "Shared/fam*",
    "Shared/%",
    "Shared/*",
    "INBOX/../Shared/family",
    "INBOX/../../alice/Secret",
    "../alice/Secret",
    "~alice/Secret",
    "Shared/alice/Secret",
    "Shared/family/../../alice/Secret",
    "Shared",
]
PERSONAL_LITERALS = {"~alice/Secret"}
"""Probes that are merely a (non-existent) name in the prober's own namespace."""
MUTF7_PROBES = ["Shared&AC8-family", "&AFM-hared/family", "Shared/family&AC8-Bills"]
"""``&AC8-`` is ``/`` and ``&AFM-`` is ``S`` in modified UTF-7: non-canonical, refused."""


@pytest.fixture
def probed(server: ServerHandle) -> Iterator[tuple[ServerHandle, RawClient]]:
    """carol logged in and selected on her INBOX (one message), with the family tree and
    alice's private folder holding mail she must never reach."""
    deliver(server, 2)
    with server.login("alice") as alice:
        assert tagged_line(alice.command("c", 'CREATE "Shared/family/Bills"')).startswith(b"c OK")
        assert tagged_line(alice.command("c", "CREATE Secret")).startswith(b"c OK")
        alice.command("b", 'SUBSCRIBE "Shared/family"')
    server.call(lambda: server.store.ensure_user("carol"))
    server.call(lambda: server.store.append(server.store.get_mailbox("carol", INBOX).id, message()))
    with server.login("carol") as carol:
        assert tagged_line(carol.command("s", "SELECT INBOX")).startswith(b"s OK")
        yield server, carol
    with server.login("alice") as alice:  # nothing carol did reached the family or alice
        assert status_of(alice, SHARED, "MESSAGES") == 2
        assert status_of(alice, "Shared/family/Bills", "MESSAGES") == 0
        assert status_of(alice, "Secret", "MESSAGES") == 0
        assert {"Shared/family", "Shared/family/Bills", "Secret"} <= set(listed(alice))
        assert b'"Shared/family"' in alice.command("l", 'LSUB "" "*"')


def refused(reply: bytes, tag: str) -> bool:
    """The command failed (NO or BAD) and no untagged data names a probed mailbox."""
    last = tagged_line(reply)
    untagged = reply[: len(reply) - len(last) - 2]
    leaked = re.search(rb"\* (STATUS|LIST|LSUB|\d+ EXISTS)", untagged)
    return (last.startswith(tag.encode() + b" NO") or last.startswith(tag.encode() + b" BAD")) and (
        leaked is None
    )


COMMANDS = [
    "SELECT {n}",
    "EXAMINE {n}",
    "DELETE {n}",
    "RENAME {n} Stolen",
    "SUBSCRIBE {n}",
    "STATUS {n} (MESSAGES UNSEEN)",
    "COPY 1 {n}",
    "MOVE 1 {n}",
    "UID COPY 1 {n}",
    "UID MOVE 1 {n}",
    "GETQUOTAROOT {n}",
]


@pytest.mark.parametrize("name", PROBES)
def test_non_member_cannot_reach_the_shared_tree_or_others_mailboxes(
    probed: tuple[ServerHandle, RawClient], name: str
) -> None:
    """Every mailbox-name command refuses every probe, and says nothing about it."""
    _server, carol = probed
    quoted = '"' + name + '"'
    for i, template in enumerate(COMMANDS):
        tag = f"p{i}"
        reply = carol.command(tag, template.format(n=quoted))
        if template.startswith("SUBSCRIBE") and name in PERSONAL_LITERALS:
            # RFC 3501 §6.3.6 lets anyone subscribe a name that does not exist; this one is
            # in carol's own namespace and gives her nothing.
            assert tagged_line(reply).startswith(tag.encode() + b" OK")
            lsub = carol.command("l", f'LSUB "" {quoted}')
            assert b"(\\Noselect)" in lsub, lsub
            continue
        assert refused(reply, tag), (template, name, reply)
        if template.startswith(("SELECT", "EXAMINE")):
            carol.command("s", "SELECT INBOX")  # a failed SELECT deselected
    raw = message(subject="planted")
    carol.send(b"a APPEND %s {%d+}\r\n%s\r\n" % (quoted.encode(), len(raw), raw))
    assert refused(carol.read_until_tagged("a"), "a"), name
    assert status_of(carol, "INBOX", "MESSAGES") == 1  # nothing moved away


@pytest.mark.parametrize("name", [p for p in PROBES if p not in PERSONAL_LITERALS])
def test_non_member_cannot_create_in_the_shared_namespace(
    probed: tuple[ServerHandle, RawClient], name: str
) -> None:
    """CREATE of any name in (or posing as) the shared namespace, or with a ``..`` or
    ``.`` level, is refused; so is RENAME of carol's own mailbox onto such a name."""
    _server, carol = probed
    assert refused(carol.command("c", f'CREATE "{name}/Evil"'), "c")
    assert refused(carol.command("c", f'CREATE "{name}"'), "c")
    carol.command("m", "CREATE Mine")
    assert refused(carol.command("r", f'RENAME Mine "{name}"'), "r")


@pytest.mark.parametrize("pattern", ["*", "%", "Shared/*", "Shared/%", "*family*", "%/%", "S*"])
def test_list_and_lsub_show_non_members_nothing_shared(
    probed: tuple[ServerHandle, RawClient], pattern: str
) -> None:
    _server, carol = probed
    for reference in ("", "Shared/", "Shared/family/", "shared/"):
        for verb in ("LIST", "LSUB"):
            reply = carol.command("l", f'{verb} "{reference}" "{pattern}"')
            assert tagged_line(reply).startswith(b"l OK"), reply
            assert b"family" not in reply.lower() and b"secret" not in reply.lower(), reply


def test_unsubscribe_by_a_non_member_touches_only_their_own_list(
    probed: tuple[ServerHandle, RawClient],
) -> None:
    """UNSUBSCRIBE is always harmless (RFC 3501 §6.3.7): carol's cannot remove alice's."""
    _server, carol = probed
    assert tagged_line(carol.command("u", f'UNSUBSCRIBE "{SHARED}"')).startswith(b"u OK")
    # the fixture's teardown checks alice's subscription to Shared/family is still there


@pytest.mark.parametrize("name", MUTF7_PROBES)
def test_modified_utf7_encodings_of_the_delimiter_are_refused(
    probed: tuple[ServerHandle, RawClient], name: str
) -> None:
    _server, carol = probed
    for i, template in enumerate(COMMANDS + ["CREATE {n}"]):
        tag = f"u{i}"
        reply = carol.command(tag, template.format(n=name))
        # RFC 3501 §6.3.1: a well-formed command naming a mailbox that cannot exist is NO.
        assert tagged_line(reply).startswith(tag.encode() + b" NO"), (template, reply)


def test_member_case_games_do_not_create_look_alikes(server: ServerHandle) -> None:
    """Even a member cannot create ``shared/family`` next to ``Shared/family``."""
    deliver(server, 1)
    with server.login("alice") as alice:
        for name in ("shared/family", "SHARED", "Shared", "Shared/family/INBOX", "Shared/x"):
            assert refused(alice.command("c", f'CREATE "{name}"'), "c"), name
        assert refused(alice.command("c", 'CREATE "Shared/family/a/../b"'), "c")
        shared_names = [n for n in listed(alice) if n.lower().startswith("shared")]
        assert shared_names == ["Shared", SHARED]  # "Shared" is the \Noselect parent


def test_a_member_removed_from_the_household_loses_access(server: ServerHandle) -> None:
    deliver(server, 1)
    with server.login("bob") as bob:
        assert status_of(bob, SHARED, "MESSAGES") == 1
        server.call(server.factory.households.update, {"family": ["alice"]})
        assert refused(bob.command("s", f'STATUS "{SHARED}" (MESSAGES)'), "s")
        assert SHARED not in listed(bob)
