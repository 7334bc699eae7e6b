"""NOTIFY (RFC 5465) over real sockets: one connection NOTIFY-ing, another one (and a POP3
delivery through the store) changing mailboxes; events between commands, while idling,
after commands; NOTIFY NONE; NOTIFICATIONOVERFLOW; a FairEmail-like replay."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.imap import notify
from gateway.store.interfaces import INBOX, Delivery
from gateway.testing.imapclient import (
    PASSWORD,
    USER,
    RawClient,
    ServerHandle,
    running_server,
    tagged_line,
)
from gateway.testing.messages import message

FAIREMAIL_NOTIFY = (
    "NOTIFY SET STATUS (SELECTED (MessageNew (UID RFC822.SIZE FLAGS) MessageExpunge FlagChange))"
    " (PERSONAL (MessageNew MessageExpunge FlagChange))"
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        yield handle


def watcher(server: ServerHandle, notify_command: str = FAIREMAIL_NOTIFY) -> RawClient:
    client = server.login()
    for tag, name in (("C1", "Work"), ("C2", "Lists"), ("C3", "Lists/dev")):
        assert tagged_line(client.command(tag, f"CREATE {name}")).startswith(tag.encode() + b" OK")
    client.command("S", "SELECT INBOX")
    reply = client.command("N", notify_command)
    assert tagged_line(reply) == b"N OK NOTIFY completed", reply
    return client


def deliver_pop3(server: ServerHandle, mailbox: str, uidl: str) -> None:
    """A message fetched by the POP3 side, stored as the fetcher stores it."""
    server.call(
        server.store.deliver, USER, mailbox, Delivery("upstream", uidl, message(subject=uidl))
    )


def test_notify_set_status_reports_each_watched_mailbox_but_the_selected(
    server: ServerHandle,
) -> None:
    server.append("INBOX")
    client = server.login()
    client.command("C", "CREATE Work")
    server.append("Work")
    client.command("S", "SELECT INBOX")
    reply = client.command("N", "NOTIFY SET STATUS (PERSONAL (MessageNew MessageExpunge))")
    validity = server.call(lambda: server.store.get_mailbox(USER, "Work").uidvalidity)
    assert (
        b'* STATUS "Work" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1 HIGHESTMODSEQ ' % validity
        in reply
    )
    assert b'"INBOX"' not in reply
    assert tagged_line(reply) == b"N OK NOTIFY completed"
    client.close()


def test_other_mailboxes_are_announced_between_commands(server: ServerHandle) -> None:
    """Another session's APPEND and STORE, and a POP3 delivery, reach the watcher without
    it sending anything (RFC 5465 §5.1-5.3)."""
    with watcher(server) as alice, server.login() as other:
        work = server.call(lambda: server.store.get_mailbox(USER, "Work").uidvalidity)
        dev = server.call(lambda: server.store.get_mailbox(USER, "Lists/dev").uidvalidity)
        other.command("A", "APPEND Work {3+}\r\nhi!")
        assert alice.read_line() == (
            b'* STATUS "Work" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1 HIGHESTMODSEQ 2)\r\n'
            % work
        )
        other.command("S", "SELECT Work")
        other.command("F", "STORE 1 +FLAGS (\\Seen)")
        assert (
            alice.read_line() == b'* STATUS "Work" (UNSEEN 0 HIGHESTMODSEQ 3)\r\n'
        )  # CONDSTORE on
        deliver_pop3(server, "Lists/dev", "u1")
        assert alice.read_line() == (
            b'* STATUS "Lists/dev" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1 HIGHESTMODSEQ 2)\r\n'
            % dev
        )
        other.command("D", "STORE 1 +FLAGS (\\Deleted)")  # news only because of CONDSTORE
        assert alice.read_line() == b'* STATUS "Work" (HIGHESTMODSEQ 4)\r\n'
        other.command("X", "EXPUNGE")
        assert alice.read_line() == (
            b'* STATUS "Work" (MESSAGES 0 UIDNEXT 2 UNSEEN 0 HIGHESTMODSEQ 5)\r\n'
        )
        # the watcher's own next command still completes normally
        assert alice.command("Z", "NOOP") == b"Z OK NOOP completed\r\n"


def test_selected_mailbox_events_carry_the_messagenew_items(server: ServerHandle) -> None:
    """SELECTED: EXISTS then FETCH with the MessageNew attributes, EXPUNGE at once."""
    with watcher(server) as alice, server.login() as other:
        deliver_pop3(server, INBOX, "u1")
        assert alice.read_line() == b"* 1 EXISTS\r\n"
        assert alice.read_line() == b"* 1 RECENT\r\n"
        line = alice.read_line()
        assert re.fullmatch(
            rb"\* 1 FETCH \(UID 1 RFC822\.SIZE \d+ FLAGS \(\\Recent\) MODSEQ \(\d+\)\)\r\n", line
        )
        other.command("S", "SELECT INBOX")
        other.command("F", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        # NOTIFY SET STATUS enabled CONDSTORE (RFC 7162 §3.1): UID and MODSEQ come along
        assert re.fullmatch(
            rb"\* 1 FETCH \(FLAGS \(\\Deleted \\Recent\) UID 1 MODSEQ \(\d+\)\)\r\n",
            alice.read_line(),
        )
        other.command("X", "EXPUNGE")
        assert alice.read_line() == b"* 1 EXPUNGE\r\n"


def test_events_reach_an_idling_watcher(server: ServerHandle) -> None:
    with watcher(server) as alice, server.login() as other:
        alice.send(b"I IDLE\r\n")
        assert alice.read_line() == b"+ idling\r\n"
        other.command("A", "APPEND Lists {3+}\r\nhi!")
        assert alice.read_line().startswith(b'* STATUS "Lists" (MESSAGES 1 UIDNEXT 2 UIDVALIDITY ')
        deliver_pop3(server, INBOX, "u1")
        assert alice.read_line() == b"* 1 EXISTS\r\n"
        assert alice.read_line() == b"* 1 RECENT\r\n"
        assert alice.read_line().startswith(b"* 1 FETCH (UID 1 ")
        alice.send(b"DONE\r\n")
        assert alice.read_line() == b"I OK IDLE terminated\r\n"


def test_notify_none_and_filters_limit_what_is_told(server: ServerHandle) -> None:
    with watcher(server, "NOTIFY SET (SUBTREE Lists (MessageNew MessageExpunge))") as alice:
        deliver_pop3(server, "Work", "w1")  # not watched
        deliver_pop3(server, "Lists/dev", "d1")
        assert alice.read_line().startswith(b'* STATUS "Lists/dev" (MESSAGES 1 UIDNEXT 2 ')
        assert alice.command("N", "NOTIFY NONE") == b"N OK NOTIFY completed\r\n"
        deliver_pop3(server, "Lists", "l1")
        # nothing unsolicited: the next reply is the command's own
        assert alice.command("Z", "NOOP") == b"Z OK NOOP completed\r\n"


def test_mailbox_name_and_subscription_events(server: ServerHandle) -> None:
    with (
        watcher(server, "NOTIFY SET (PERSONAL (MailboxName SubscriptionChange))") as alice,
        server.login() as other,
    ):
        other.command("C", "CREATE Tmp")
        other.command("S", "SUBSCRIBE Tmp")
        reply = alice.command("Z", "NOOP")  # the store does not announce CREATE itself
        assert reply == (
            b'* LIST () "/" "Tmp"\r\n* LIST (\\Subscribed) "/" "Tmp"\r\nZ OK NOOP completed\r\n'
        )
        other.command("R", "RENAME Tmp Tmp2")
        assert alice.read_line() == b'* LIST () "/" "Tmp2" ("OLDNAME" ("Tmp"))\r\n'
        # the subscription moved with the name (RFC 5465 §5.5)
        assert alice.read_line() == b'* LIST () "/" "Tmp"\r\n'
        assert alice.read_line() == b'* LIST (\\Subscribed) "/" "Tmp2"\r\n'
        other.command("D", "DELETE Tmp2")
        assert alice.read_line() == b'* LIST (\\NonExistent) "/" "Tmp2"\r\n'


def test_notify_grammar_and_unsupported_events(server: ServerHandle) -> None:
    with server.login() as alice:
        for tag, args in (
            ("A", "SET (PERSONAL (MessageNew))"),  # MessageExpunge must come along
            ("B", "SET (PERSONAL (FlagChange))"),
            ("C", "SET (PERSONAL (MessageNew (UID) MessageExpunge))"),  # items: selected only
            ("D", "SET (SELECTED (MailboxName))"),
            ("E", "SET (NOWHERE (MessageNew MessageExpunge))"),
            ("F", "SET"),
            ("G", "FOO"),
        ):
            assert tagged_line(alice.command(tag, f"NOTIFY {args}")).startswith(
                tag.encode() + b" BAD"
            ), args
        reply = tagged_line(
            alice.command("H", "NOTIFY SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))")
        )
        assert reply.startswith(
            b"H NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]"
        )
        assert b" NOTIFY" in alice.command("I", "CAPABILITY")


def test_a_client_that_falls_behind_gets_notificationoverflow(
    server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 5465 §5.8: past the bound, one ``[NOTIFICATIONOVERFLOW]`` and NOTIFY is off."""
    monkeypatch.setattr(notify, "MAX_PENDING", 2)
    with watcher(server) as alice:
        protocol = next(iter(server.factory.protocols))
        session = protocol.session
        ids = [server.mailbox_id(n) for n in ("Work", "Lists", "Lists/dev")]

        def flood() -> None:
            for mailbox_id in ids:  # three changes before any could be delivered
                session.notifier.changed(mailbox_id, None)

        server.call(flood)
        reply = alice.command("Z", "NOOP")
        assert reply == (
            b"* OK [NOTIFICATIONOVERFLOW] Too many changes; NOTIFY is off\r\nZ OK NOOP completed\r\n"
        )
        deliver_pop3(server, "Work", "w1")
        assert alice.command("Y", "NOOP") == b"Y OK NOOP completed\r\n"


def test_fairemail_like_replay(server: ServerHandle) -> None:
    """FairEmail's order: CAPABILITY, ENABLE, NAMESPACE, LIST, NOTIFY SET STATUS, SELECT,
    IDLE; new mail in another folder and the inbox arrives as STATUS and EXISTS/FETCH."""
    from tests.test_client_dialects import Dialect

    with server.connect() as raw, server.login() as other:
        other.command("C", "CREATE Archive")
        raw.greeting()
        d = Dialect(raw)
        d.ok(f'LOGIN {USER} "{PASSWORD}"')
        caps = d.ok("CAPABILITY")[0]
        assert b" NOTIFY" in caps and b" CONDSTORE" in caps
        d.ok("ENABLE CONDSTORE QRESYNC")
        d.ok("NAMESPACE")
        d.ok('LIST "" "*" RETURN (SUBSCRIBED SPECIAL-USE)')
        status = d.ok(FAIREMAIL_NOTIFY)
        assert status and all(line.startswith(b"* STATUS ") for line in status)
        assert any(line.startswith(b'* STATUS "Archive" (MESSAGES 0 UIDNEXT 1') for line in status)
        d.ok("SELECT INBOX (CONDSTORE)")
        tag = d.tag()
        raw.send(f"{tag} IDLE\r\n".encode())
        assert raw.read_line().startswith(b"+ ")
        deliver_pop3(server, "Archive", "a1")
        line = raw.read_line()
        assert re.match(
            rb'\* STATUS "Archive" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1 '
            rb"HIGHESTMODSEQ \d+\)\r\n",
            line,
        ), line
        deliver_pop3(server, INBOX, "i1")
        assert raw.read_line() == b"* 1 EXISTS\r\n"
        assert raw.read_line() == b"* 1 RECENT\r\n"
        assert re.match(
            rb"\* 1 FETCH \(UID 1 RFC822\.SIZE \d+ FLAGS \(\\Recent\) MODSEQ", raw.read_line()
        )
        raw.send(b"DONE\r\n")
        assert d.lines(tag)[-1].startswith(f"{tag} OK".encode())
        d.ok("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)")
