"""The ACL read side over the wire (RFC 4314, RFC 8440): MYRIGHTS, GETACL, LISTRIGHTS and
LIST RETURN (MYRIGHTS) tell the rights popgate really enforces; SETACL/DELETEACL are NO.

alice and bob are members of the household "family"; carol is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.imapclient import ServerHandle, running_server, tagged_line

PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path, users=PASSWORDS, shared={"family": ["alice", "bob"]}) as handle:
        yield handle


def test_capabilities_announce_acl_rights_and_list_myrights(server: ServerHandle) -> None:
    with server.connect() as client:
        greeting = client.greeting()
    for capability in (b" ACL", b" RIGHTS=texk", b" LIST-MYRIGHTS"):
        assert capability in greeting


def test_myrights_tell_what_popgate_enforces(server: ServerHandle) -> None:
    """INBOX and the shared root cannot be deleted: no ``x``; ``p`` and ``a`` never."""
    with server.login("alice") as alice:
        alice.command("C1", "CREATE Work")
        alice.command("C2", "CREATE Shared/family/Bills")
        assert alice.command("A", "MYRIGHTS INBOX") == (
            b'* MYRIGHTS "INBOX" lrswikte\r\nA OK MYRIGHTS completed\r\n'
        )
        assert b'* MYRIGHTS "Work" lrswikxte\r\n' in alice.command("B", "MYRIGHTS Work")
        assert b'* MYRIGHTS "Shared/family" lrswikte\r\n' in alice.command(
            "C", "MYRIGHTS Shared/family"
        )
        assert b'* MYRIGHTS "Shared/family/Bills" lrswikxte\r\n' in alice.command(
            "D", "MYRIGHTS Shared/family/Bills"
        )
        # what the rights say is what happens
        assert tagged_line(alice.command("E", "DELETE Shared/family")).startswith(b"E NO")
        assert tagged_line(alice.command("F", "DELETE Shared/family/Bills")).startswith(b"F OK")


def test_unreachable_and_missing_mailboxes_answer_the_same(server: ServerHandle) -> None:
    """RFC 4314 §6: an ACL command must not reveal a mailbox the user cannot see."""
    with server.login("carol") as carol:
        for tag, name in (("A", "Shared/family"), ("B", "Nope")):
            assert tagged_line(carol.command(tag, f"MYRIGHTS {name}")) == (
                f"{tag} NO [NONEXISTENT] Mailbox does not exist".encode()
            )
            assert b"NONEXISTENT" in carol.command(tag, f"GETACL {name}")
            assert b"NONEXISTENT" in carol.command(tag, f"SETACL {name} carol +l")


def test_getacl_lists_owner_or_household_members(server: ServerHandle) -> None:
    with server.login("alice") as alice:
        assert alice.command("A", "GETACL INBOX") == (
            b'* ACL "INBOX" "alice" lrswikte\r\nA OK GETACL completed\r\n'
        )
        assert b'* ACL "Shared/family" "alice" lrswikte "bob" lrswikte\r\n' in alice.command(
            "B", "GETACL Shared/family"
        )


def test_listrights_says_nothing_can_be_granted(server: ServerHandle) -> None:
    with server.login("alice") as alice:
        assert b'* LISTRIGHTS "Shared/family" "bob" lrswikte\r\n' in alice.command(
            "A", "LISTRIGHTS Shared/family bob"
        )
        assert b'* LISTRIGHTS "Shared/family" "carol" ""\r\n' in alice.command(
            "B", "LISTRIGHTS Shared/family carol"
        )
        assert b'* LISTRIGHTS "INBOX" "anyone" ""\r\n' in alice.command(
            "C", "LISTRIGHTS INBOX anyone"
        )


def test_setacl_and_deleteacl_are_refused_with_a_reason(server: ServerHandle) -> None:
    with server.login("alice") as alice:
        reply = tagged_line(alice.command("A", "SETACL Shared/family carol lrs"))
        assert reply.startswith(b"A NO [NOPERM] Access rights are fixed")
        reply = tagged_line(alice.command("B", "DELETEACL INBOX bob"))
        assert reply.startswith(b"B NO [NOPERM]")
        assert tagged_line(alice.command("C", "SETACL INBOX bob L!")).startswith(b"C BAD")
        assert tagged_line(alice.command("D", "MYRIGHTS")).startswith(b"D BAD")
        assert tagged_line(alice.command("E", "LISTRIGHTS INBOX")).startswith(b"E BAD")


def test_list_return_myrights_follows_each_selectable_name(server: ServerHandle) -> None:
    """RFC 8440 §3: ``* MYRIGHTS`` after each LIST line, none for \\NonExistent names."""
    with server.login("alice") as alice:
        alice.command("C", "CREATE Shared/family/Bills")
        reply = alice.command("L", 'LIST "" "*" RETURN (MYRIGHTS)')
    lines = reply.split(b"\r\n")
    assert lines[0] == b'* LIST (\\HasNoChildren) "/" "INBOX"'
    assert lines[1] == b'* MYRIGHTS "INBOX" lrswikte'
    at = lines.index(b'* LIST (\\HasChildren) "/" "Shared/family"')
    assert lines[at + 1] == b'* MYRIGHTS "Shared/family" lrswikte'
    assert lines[at + 3] == b'* MYRIGHTS "Shared/family/Bills" lrswikxte'
    shared = lines.index(b'* LIST (\\NonExistent \\HasChildren) "/" "Shared"')
    assert not lines[shared + 1].startswith(b"* MYRIGHTS")
    assert lines[-2] == b"L OK LIST completed"
