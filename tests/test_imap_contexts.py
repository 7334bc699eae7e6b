"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4), raw bytes over a real server: UPDATE
contexts reported as ADDTO/REMOVEFROM while another session changes the mailbox,
CANCELUPDATE, PARTIAL, the end of contexts with the selection, and a client-side model
that, applying every update, always holds what a fresh SORT answers."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.imap.contexts import MAX_CONTEXTS
from gateway.testing.imapclient import RawClient, ServerHandle, running_server


def mail(subject: str) -> bytes:
    return b"From: x@example.org\r\nSubject: %s\r\n\r\nbody\r\n" % subject.encode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path) as handle:
        for subject in ("b", "d", "f"):
            handle.append(raw=mail(subject))
        yield handle


@pytest.fixture
def pair(server: ServerHandle) -> Iterator[tuple[RawClient, RawClient]]:
    """``a`` keeps contexts; ``b`` changes the mailbox behind its back."""
    with server.login() as a, server.login() as b:
        a.command("s", "SELECT INBOX")
        b.command("s", "SELECT INBOX")
        yield a, b


def esearch(reply: bytes) -> list[bytes]:
    return [line for line in reply.split(b"\r\n") if line.startswith(b"* ESEARCH")]


def append(client: RawClient, tag: str, raw: bytes, flags: str = "") -> None:
    flag_list = f"({flags}) " if flags else ""
    reply = client.command(tag, b"APPEND INBOX %s{%d+}\r\n" % (flag_list.encode(), len(raw)) + raw)
    assert b" OK [APPENDUID" in reply


def test_capabilities_announce_both_contexts(server: ServerHandle) -> None:
    with server.login() as client:
        caps = client.command("c", "CAPABILITY")
    assert b" ESORT CONTEXT=SEARCH CONTEXT=SORT " in caps


def test_search_update_reports_flag_changes_arrivals_and_expunges(
    pair: tuple[RawClient, RawClient],
) -> None:
    """RFC 5267 §4.3: with UPDATE alone the initial response carries no result; later
    changes come as ADDTO/REMOVEFROM with position 0 (a SEARCH result has no order),
    ADDTO after the EXISTS that numbers the new message, REMOVEFROM before the EXPUNGE
    while its sequence number still holds."""
    a, b = pair
    assert a.command("a1", "SEARCH RETURN (UPDATE) FLAGGED") == (
        b'* ESEARCH (TAG "a1")\r\na1 OK SEARCH completed\r\n'
    )
    b.command("b1", "STORE 2 +FLAGS.SILENT (\\Flagged)")
    reply = a.command("n1", "NOOP")
    assert esearch(reply) == [b'* ESEARCH (TAG "a1") ADDTO (0 2)']
    assert reply.index(b"* 2 FETCH (FLAGS (\\Flagged") < reply.index(b"* ESEARCH")
    append(b, "b2", mail("c"), "\\Flagged")
    append(b, "b3", mail("e"))
    assert esearch(a.command("n2", "NOOP")) == [b'* ESEARCH (TAG "a1") ADDTO (0 4)']
    b.command("b4", "STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.command("b5", "EXPUNGE")
    assert a.command("n3", "NOOP") == (
        b'* ESEARCH (TAG "a1") REMOVEFROM (0 2)\r\n' b"* 2 EXPUNGE\r\n" b"n3 OK NOOP completed\r\n"
    )
    # Changes made by the client itself are reported too (as Dovecot does).
    assert esearch(a.command("a2", "STORE 1 +FLAGS (\\Flagged)")) == [
        b'* ESEARCH (TAG "a1") ADDTO (0 1)'
    ]
    assert esearch(a.command("a3", "UID SEARCH RETURN (UPDATE ALL) FLAGGED")) == [
        b'* ESEARCH (TAG "a3") UID ALL 1,4'
    ]
    assert esearch(a.command("a4", "STORE 1,3 -FLAGS (\\Flagged)")) == [
        b'* ESEARCH (TAG "a1") REMOVEFROM (0 1,3)',
        b'* ESEARCH (TAG "a3") UID REMOVEFROM (0 1,4)',
    ]


def test_sort_update_gives_positions_in_the_sorted_result(
    pair: tuple[RawClient, RawClient],
) -> None:
    """RFC 5267 §4.3: a SORT context's positions are places in the sorted result (never
    0): insertions at their final positions from the lowest up, removals at their old
    positions from the highest down, one pair per message."""
    a, b = pair
    assert esearch(a.command("s1", "SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 ALL")) == [
        b'* ESEARCH (TAG "s1") ALL 1:3'
    ]
    assert esearch(a.command("s2", "UID SORT RETURN (UPDATE) (REVERSE SUBJECT) UTF-8 ALL")) == [
        b'* ESEARCH (TAG "s2") UID'
    ]
    append(b, "b1", mail("c"))  # b c d f
    append(b, "b2", mail("a"))  # a b c d f
    assert esearch(a.command("n1", "NOOP")) == [
        b'* ESEARCH (TAG "s1") ADDTO (1 5 3 4)',
        b'* ESEARCH (TAG "s2") UID ADDTO (3 4 5 5)',
    ]
    b.command("b3", "STORE 1,3 +FLAGS.SILENT (\\Deleted)")  # b and f
    b.command("b4", "EXPUNGE")
    assert a.command("n2", "NOOP") == (
        b'* ESEARCH (TAG "s1") REMOVEFROM (5 3 2 1)\r\n'
        b'* ESEARCH (TAG "s2") UID REMOVEFROM (4 1 1 3)\r\n'
        b"* 3 EXPUNGE\r\n* 1 EXPUNGE\r\n"
        b"n2 OK NOOP completed\r\n"
    )
    assert a.command("v", "SORT (SUBJECT) UTF-8 ALL") == b"* SORT 3 2 1\r\nv OK SORT completed\r\n"


def test_context_follows_the_messages_a_command_named(pair: tuple[RawClient, RawClient]) -> None:
    """Sequence numbers and ``*`` name messages when the context is made: ``2:3`` keeps
    following those two, ``UID 2:*`` does not grow with new arrivals."""
    a, b = pair
    a.command("a1", "SEARCH RETURN (UPDATE) 2:3 UNFLAGGED")
    a.command("a2", "UID SEARCH RETURN (UPDATE) UID 2:* UNFLAGGED")
    b.command("b1", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.command("b2", "EXPUNGE")
    append(b, "b3", mail("z"))
    assert esearch(a.command("n1", "NOOP")) == []
    b.command("b4", "STORE 1 +FLAGS.SILENT (\\Flagged)")  # UID 2, now number 1
    assert esearch(a.command("n2", "NOOP")) == [
        b'* ESEARCH (TAG "a1") REMOVEFROM (0 1)',
        b'* ESEARCH (TAG "a2") UID REMOVEFROM (0 2)',
    ]


def test_cancelupdate_and_leaving_the_mailbox_end_contexts(
    pair: tuple[RawClient, RawClient],
) -> None:
    """RFC 5267 §4.3 CANCELUPDATE; an unknown tag is NO (as Dovecot), and a context lives
    only as long as the selection."""
    a, b = pair
    a.command("a1", "SEARCH RETURN (UPDATE) UNSEEN")
    a.command("a2", "SEARCH RETURN (UPDATE) SEEN")
    assert a.command("c1", 'CANCELUPDATE "a1"') == b"c1 OK CANCELUPDATE completed\r\n"
    assert a.command("c2", 'CANCELUPDATE "a1"') == (b"c2 NO no search context has the tag 'a1'\r\n")
    b.command("b1", "STORE 1 +FLAGS.SILENT (\\Seen)")
    assert esearch(a.command("n1", "NOOP")) == [b'* ESEARCH (TAG "a2") ADDTO (0 1)']
    a.command("u", "UNSELECT")
    a.command("s", "SELECT INBOX")
    b.command("b2", "STORE 2 +FLAGS.SILENT (\\Seen)")
    assert esearch(a.command("n2", "NOOP")) == []
    assert a.command("c3", 'CANCELUPDATE "a2"').startswith(b"c3 NO ")
    assert a.command("c4", "CANCELUPDATE a2").startswith(b"c4 BAD ")


def test_too_many_contexts_is_noupdate(pair: tuple[RawClient, RawClient]) -> None:
    """RFC 5267 §4.3: a server may refuse to keep a context: ``NO [NOUPDATE "tag"]``,
    the search itself answered as usual."""
    a, _b = pair
    for i in range(MAX_CONTEXTS):
        a.command(f"k{i}", "SEARCH RETURN (UPDATE) ALL")
    assert a.command("x", "SEARCH RETURN (UPDATE COUNT) ALL") == (
        b'* ESEARCH (TAG "x") COUNT 3\r\n'
        b'* NO [NOUPDATE "x"] Too many contexts\r\n'
        b"x OK SEARCH completed\r\n"
    )
    assert a.command("c", 'CANCELUPDATE "x"').startswith(b"c NO ")


def test_updates_arrive_during_idle(pair: tuple[RawClient, RawClient]) -> None:
    a, b = pair
    a.command("a1", "SEARCH RETURN (UPDATE) FLAGGED")
    a.send(b"i IDLE\r\n")
    assert a.read_line() == b"+ idling\r\n"
    b.command("b1", "STORE 3 +FLAGS.SILENT (\\Flagged)")
    assert a.read_line().startswith(b"* 3 FETCH (FLAGS (\\Flagged")
    assert a.read_line() == b'* ESEARCH (TAG "a1") ADDTO (0 3)\r\n'
    a.send(b"DONE\r\n")
    assert a.read_until_tagged("i") == b"i OK IDLE terminated\r\n"


def test_partial_search_and_sort(pair: tuple[RawClient, RawClient]) -> None:
    """RFC 5267 §4.4: PARTIAL low:high is that window of the result (either order of the
    bounds), NIL when it holds nothing; with ALL it is BAD (as Dovecot)."""
    a, _b = pair
    assert esearch(a.command("p1", "SEARCH RETURN (MIN MAX COUNT PARTIAL 3:2) ALL")) == [
        b'* ESEARCH (TAG "p1") MIN 1 MAX 3 PARTIAL (2:3 2:3) COUNT 3'
    ]
    assert esearch(a.command("p2", "UID SEARCH RETURN (PARTIAL 5:9) ALL")) == [
        b'* ESEARCH (TAG "p2") UID PARTIAL (5:9 NIL)'
    ]
    assert esearch(a.command("p3", "SORT RETURN (PARTIAL 1:2) (REVERSE SUBJECT) UTF-8 ALL")) == [
        b'* ESEARCH (TAG "p3") PARTIAL (1:2 3,2)'
    ]
    assert a.command("p4", "SEARCH RETURN (PARTIAL 1:2 ALL) ALL") == (
        b"p4 BAD SEARCH: PARTIAL conflicts with ALL\r\n"
    )
    assert esearch(a.command("p5", "SEARCH RETURN (CONTEXT) ALL")) == [
        b'* ESEARCH (TAG "p5") ALL 1:3'
    ]


_ESEARCH = re.compile(rb'\* ESEARCH \(TAG "(\w+)"\) UID (ADDTO|REMOVEFROM) \(([0-9 ]+)\)')


def _apply(model: dict[str, list[int]], reply: bytes) -> None:
    """What a client does with the updates (RFC 5267 §4.3): each (position, uid) pair in
    the order sent, on the list as it stands."""
    for tag, verb, body in _ESEARCH.findall(reply):
        numbers = [int(n) for n in body.split()]
        result = model[tag.decode()]
        for pos, uid in zip(numbers[::2], numbers[1::2], strict=True):
            if verb == b"ADDTO":
                result.insert(pos - 1, uid)
            else:
                assert result[pos - 1] == uid, (reply, result)
                del result[pos - 1]


def _sorted_uids(client: RawClient, program: str, criteria: str) -> list[int]:
    reply = client.command("q", f"UID SORT ({program}) UTF-8 {criteria}")
    line = reply.split(b"\r\n")[0]
    return [int(n) for n in line.split()[2:]]


def test_a_client_applying_every_update_holds_the_fresh_sort(server: ServerHandle) -> None:
    """Random arrivals, flag changes and expunges by another session: after each round,
    the lists a client keeps from ADDTO/REMOVEFROM equal a fresh UID SORT."""
    rnd = random.Random(5267)
    contexts = {"k1": ("SUBJECT", "UNFLAGGED"), "k2": ("REVERSE ARRIVAL", "FLAGGED")}
    with server.login() as a, server.login() as b:
        a.command("s", "SELECT INBOX")
        b.command("s", "SELECT INBOX")
        model: dict[str, list[int]] = {}
        for tag, (program, criteria) in contexts.items():
            a.command(tag, f"UID SORT RETURN (UPDATE) ({program}) UTF-8 {criteria}")
            model[tag] = _sorted_uids(a, program, criteria)
        for round_ in range(12):
            for i in range(rnd.randint(0, 3)):
                subject = rnd.choice("abcdefgh") * rnd.randint(1, 3)
                append(b, f"b{round_}x{i}", mail(subject), rnd.choice(["", "\\Flagged"]))
            counted = b.command("c", "SEARCH RETURN (COUNT) ALL")
            count = int(re.search(rb"COUNT (\d+)", counted).group(1))  # type: ignore[union-attr]
            if count:
                seqs = ",".join(str(rnd.randint(1, count)) for _ in range(3))
                flag = rnd.choice(["+FLAGS.SILENT", "-FLAGS.SILENT"])
                b.command(f"f{round_}", f"STORE {seqs} {flag} (\\Flagged)")
                if rnd.random() < 0.4:
                    b.command(
                        f"d{round_}", f"STORE {rnd.randint(1, count)} +FLAGS.SILENT (\\Deleted)"
                    )
                    b.command(f"e{round_}", "EXPUNGE")
            _apply(model, a.command(f"n{round_}", "NOOP"))
            for tag, (program, criteria) in contexts.items():
                assert model[tag] == _sorted_uids(a, program, criteria), (round_, tag)
