"""A model check of concurrent sessions (issue 4 acceptance), with hypothesis stateful testing.

Three sessions share one INBOX on the in-process server: an *idler* that sits in IDLE
(RFC 2177), and two *actors* (one plain, one with QRESYNC enabled) that append, flag,
copy, move and expunge in random order while the POP3 side delivers into the same
mailbox (``store.deliver``). Each client keeps its picture of the mailbox (sequence
number → UID, flags) built **only** from the untagged responses it received, exactly as
a mail client must (RFC 3501 §2.3.1.2, §7.3.1, §7.4.1; RFC 7162 §3.2.10 VANISHED). After
every step:

* the idler, still in IDLE, must be told of the change without asking (its picture is
  read from pushed lines until it agrees with the store; the socket timeout is only a
  safety net), then it sends DONE, fills in UIDs it has not learnt with FETCH, and its
  picture must equal the store's;
* each actor sends NOOP and must then agree with the store too.

The session that made a flag change must get at most one FETCH per message for it, and
none carrying FLAGS under ``.SILENT`` (RFC 3501 §6.4.6).
"""

from __future__ import annotations

import re
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.store.interfaces import Delivery
from gateway.testing.imapclient import USER, RawClient, ServerHandle, running_server
from gateway.testing.messages import message

MAX_MESSAGES = 40
"""Appends stop once the INBOX holds this many, to keep each example small."""

READ_SAFETY_TIMEOUT = 10.0
"""Seconds a read may block before a step fails (a push that never comes): a safety net
that keeps a failing example from hanging, not a statement about speed."""

RECENT = "\\Recent"
SETTABLE = ("\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$Label1", "$Work")

_FETCH = re.compile(rb"^\* (\d+) FETCH \((.*)\)\r\n$", re.DOTALL)
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_UID = re.compile(rb"UID (\d+)")
_NUMBERED = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE|RECENT)\r\n$")
_VANISHED = re.compile(rb"^\* VANISHED (\(EARLIER\) )?([0-9:,]+)\r\n$")


def parse_set(text: bytes) -> list[int]:
    out: list[int] = []
    for part in text.split(b","):
        low, _sep, high = part.partition(b":")
        a, b = int(low), int(high or low)
        out.extend(range(min(a, b), max(a, b) + 1))
    return out


def seq_set(numbers: list[int]) -> str:
    return ",".join(str(n) for n in sorted(numbers))


@dataclass
class Picture:
    """One client's view of the selected mailbox, from the responses it was sent.

    ``uids[i]`` is the UID of sequence number ``i + 1``, or None until a FETCH told it.
    """

    uids: list[int | None] = field(default_factory=list)
    flags: list[frozenset[str] | None] = field(default_factory=list)

    def apply(self, line: bytes) -> tuple[int, bytes] | None:
        """Update from one untagged response; returns ``(seq, items)`` for FETCH."""
        m = _NUMBERED.match(line)
        if m is not None:
            number, kind = int(m.group(1)), m.group(2)
            if kind == b"EXISTS":
                assert number >= len(self.uids), f"EXISTS went down without EXPUNGE: {line!r}"
                grow = number - len(self.uids)
                self.uids.extend([None] * grow)
                self.flags.extend([None] * grow)
            elif kind == b"EXPUNGE":
                assert 1 <= number <= len(self.uids), f"EXPUNGE of an unknown number: {line!r}"
                del self.uids[number - 1]
                del self.flags[number - 1]
            return None
        m = _VANISHED.match(line)
        if m is not None:
            assert m.group(1) is None, "VANISHED (EARLIER) outside SELECT/UID FETCH"
            gone = set(parse_set(m.group(2)))
            assert gone <= {
                u for u in self.uids if u is not None
            }, f"VANISHED names UIDs this client does not know: {line!r} {self.uids}"
            keep = [i for i, uid in enumerate(self.uids) if uid not in gone]
            self.uids = [self.uids[i] for i in keep]
            self.flags = [self.flags[i] for i in keep]
            return None
        m = _FETCH.match(line)
        if m is not None:
            seq, items = int(m.group(1)), m.group(2)
            assert 1 <= seq <= len(self.uids), f"FETCH for an unknown number: {line!r}"
            uid = _UID.search(items)
            if uid is not None:
                known = self.uids[seq - 1]
                assert known in (None, int(uid.group(1))), f"seq {seq} changed UID: {line!r}"
                self.uids[seq - 1] = int(uid.group(1))
            flags = _FLAGS.search(items)
            if flags is not None:
                names = flags.group(1).decode().split()
                self.flags[seq - 1] = frozenset(f for f in names if f != RECENT)
            return seq, items
        return None

    def unknown(self) -> list[int]:
        return [i + 1 for i, uid in enumerate(self.uids) if uid is None or self.flags[i] is None]

    def rows(self) -> list[tuple[int | None, frozenset[str] | None]]:
        return list(zip(self.uids, self.flags, strict=True))

    def agrees_loosely(self, truth: list[tuple[int, frozenset[str]]]) -> bool:
        """Same length; every known UID and flag set matches the store's at its number."""
        if len(self.uids) != len(truth):
            return False
        for (uid, flags), (t_uid, t_flags) in zip(self.rows(), truth, strict=True):
            if uid is not None and uid != t_uid:
                return False
            if flags is not None and flags != t_flags:
                return False
        return True


class Client:
    """A raw IMAP client with a :class:`Picture`; every line it reads updates it."""

    def __init__(self, server: ServerHandle, name: str, qresync: bool = False) -> None:
        self.name = name
        self.raw: RawClient = server.connect()
        self.raw.sock.settimeout(READ_SAFETY_TIMEOUT)
        self.raw.login()
        self.picture = Picture()
        self.counter = 0
        self.qresync = qresync
        if qresync:
            self.command("ENABLE QRESYNC")
        self.command("SELECT INBOX")

    def tag(self) -> str:
        self.counter += 1
        return f"{self.name}{self.counter}"

    def read_line(self) -> bytes:
        line = self.raw.read_line()
        self.picture.apply(line)
        return line

    def command(self, text: str | bytes) -> list[bytes]:
        """Send a command; returns its lines (untagged ones already applied)."""
        tag = self.tag()
        data = text.encode() if isinstance(text, str) else text
        self.raw.send(tag.encode() + b" " + data + b"\r\n")
        lines: list[bytes] = []
        while True:
            line = self.read_line()
            lines.append(line)
            if line.startswith(tag.encode() + b" "):
                assert line.startswith(tag.encode() + b" OK"), (text, lines)
                return lines

    def fill_in(self) -> None:
        """Learn UIDs and flags of numbers announced by EXISTS only (what clients do)."""
        unknown = self.picture.unknown()
        if unknown:
            self.command(f"FETCH {seq_set(unknown)} (UID FLAGS)")
        assert self.picture.unknown() == []

    def close(self) -> None:
        self.raw.close()


def settable_flags() -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(SETTABLE), max_size=3)


class SyncMachine(RuleBasedStateMachine):
    """Random operations by two actors and the POP3 side, watched by an idler."""

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        directory = Path(self.stack.enter_context(tempfile.TemporaryDirectory()))
        self.server = self.stack.enter_context(running_server(directory))
        self.inbox = self.server.mailbox_id("INBOX")
        self.delivered = 0
        self.idler = Client(self.server, "i")
        self.actors = [Client(self.server, "a"), Client(self.server, "q", qresync=True)]
        self.start_idle()

    def teardown(self) -> None:
        for client in (self.idler, *self.actors):
            client.close()
        self.stack.close()

    # -- helpers --

    def truth(self) -> list[tuple[int, frozenset[str]]]:
        rows = self.server.call(self.server.store.message_rows, self.inbox)
        return [(row.uid, frozenset(row.flags - {RECENT})) for row in rows]

    def start_idle(self) -> None:
        self.idle_tag = self.idler.tag()
        self.idler.raw.send(self.idle_tag.encode() + b" IDLE\r\n")
        while not self.idler.read_line().startswith(b"+ "):
            pass

    def count(self) -> int:
        return len(self.truth())

    def pick(self, actor: Client, data: st.DataObject) -> list[int]:
        """Some sequence numbers of the actor's picture (at least one)."""
        size = len(actor.picture.uids)
        return data.draw(
            st.lists(st.integers(1, size), min_size=1, max_size=min(size, 4), unique=True)
        )

    # -- rules --

    @precondition(lambda self: self.count() < MAX_MESSAGES)
    @rule(which=st.integers(0, 1), flags=settable_flags(), copies=st.integers(1, 2))
    def append(self, which: int, flags: frozenset[str], copies: int) -> None:
        """APPEND (or MULTIAPPEND of two) to the selected mailbox (RFC 3501 §6.3.11)."""
        actor = self.actors[which]
        body = message(f"appended-{self.delivered}")
        self.delivered += 1
        flag_text = " ".join(sorted(flags))
        one = f" ({flag_text}) {{{len(body)}+}}\r\n".encode() + body
        actor.command(b"APPEND INBOX" + one * copies)

    @precondition(lambda self: self.count() < MAX_MESSAGES)
    @rule()
    def deliver(self) -> None:
        """The POP3 fetcher delivers a new message (store.deliver on the reactor)."""
        self.delivered += 1
        delivery = Delivery("isp", f"uidl-{self.delivered}", message(f"pop-{self.delivered}"))
        self.server.call(self.server.store.deliver, USER, "INBOX", delivery)

    @precondition(lambda self: self.count() > 0)
    @rule(
        which=st.integers(0, 1),
        mode=st.sampled_from(["+", "-", ""]),
        flags=settable_flags(),
        silent=st.booleans(),
        uid=st.booleans(),
        data=st.data(),
    )
    def store(
        self, which: int, mode: str, flags: frozenset[str], silent: bool, uid: bool, data
    ) -> None:
        """STORE / UID STORE, maybe .SILENT (RFC 3501 §6.4.6)."""
        actor = self.actors[which]
        seqs = self.pick(actor, data)
        picture = actor.picture
        target = [picture.uids[s - 1] for s in seqs] if uid else seqs
        verb = "UID STORE" if uid else "STORE"
        item = f"{mode}FLAGS{'.SILENT' if silent else ''}"
        lines = actor.command(f"{verb} {seq_set(target)} {item} ({' '.join(sorted(flags))})")
        fetched = [int(m.group(1)) for m in map(_FETCH.match, lines) if m]
        assert len(fetched) == len(set(fetched)), f"two FETCH for one message: {lines}"
        if silent:
            assert not any(_FETCH.match(x) and b"FLAGS" in x for x in lines), lines
            # The client applies its own change, as RFC 3501 §6.4.6 expects of it.
            for s in seqs:
                old = picture.flags[s - 1] or frozenset()
                picture.flags[s - 1] = (
                    old | flags if mode == "+" else old - flags if mode == "-" else flags
                )
        else:
            assert sorted(fetched) == sorted(seqs), lines

    @precondition(lambda self: self.count() > 0)
    @rule(which=st.integers(0, 1), data=st.data(), uid=st.booleans(), move=st.booleans())
    def copy_or_move(self, which: int, data, uid: bool, move: bool) -> None:
        """COPY back into INBOX (new messages) or MOVE to Archive (RFC 6851)."""
        actor = self.actors[which]
        seqs = self.pick(actor, data)
        target = [actor.picture.uids[s - 1] for s in seqs] if uid else seqs
        verb = ("UID " if uid else "") + ("MOVE" if move else "COPY")
        if not move and self.count() + len(seqs) > MAX_MESSAGES:
            return
        actor.command(f"{verb} {seq_set(target)} {'Archive' if move else 'INBOX'}")

    @precondition(lambda self: self.count() > 0)
    @rule(which=st.integers(0, 1), data=st.data(), uid=st.booleans())
    def delete_and_expunge(self, which: int, data, uid: bool) -> None:
        """STORE +FLAGS \\Deleted, then EXPUNGE or UID EXPUNGE (RFC 3501 §6.4.3, RFC 4315)."""
        actor = self.actors[which]
        seqs = self.pick(actor, data)
        uids = [actor.picture.uids[s - 1] for s in seqs]
        actor.command(f"STORE {seq_set(seqs)} +FLAGS.SILENT (\\Deleted)")
        for s in seqs:
            actor.picture.flags[s - 1] = (actor.picture.flags[s - 1] or frozenset()) | {"\\Deleted"}
        actor.command(f"UID EXPUNGE {seq_set(uids)}" if uid else "EXPUNGE")

    @precondition(lambda self: self.count() > 0)
    @rule(which=st.integers(0, 1), data=st.data())
    def fetch_flags(self, which: int, data) -> None:
        """A non-UID FETCH: expunges by others must wait (RFC 3501 §7.4.1)."""
        actor = self.actors[which]
        seqs = self.pick(actor, data)
        lines = actor.command(f"FETCH {seq_set(seqs)} (FLAGS)")
        assert not any(line.endswith(b" EXPUNGE\r\n") for line in lines), lines

    # -- the check after every step --

    @invariant()
    def every_view_matches_the_store(self) -> None:
        truth = self.truth()
        # The idler hears about the change while still idling.
        picture = self.idler.picture
        while not picture.agrees_loosely(truth):
            self.idler.read_line()
        self.idler.raw.send(b"DONE\r\n")
        while True:
            line = self.idler.read_line()
            if line.startswith(self.idle_tag.encode() + b" "):
                assert line.startswith(self.idle_tag.encode() + b" OK"), line
                break
        self.idler.fill_in()
        assert picture.rows() == truth, ("idler", picture.rows(), truth)
        self.start_idle()
        for actor in self.actors:
            actor.command("NOOP")
            actor.fill_in()
            assert actor.picture.rows() == truth, (actor.name, actor.picture.rows(), truth)


SyncMachine.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestConcurrentSessionsAgreeWithTheStore = SyncMachine.TestCase
