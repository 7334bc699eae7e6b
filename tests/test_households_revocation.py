"""Access is checked per command against the current config (issue 20, item 3).

A reload that removes bob from a household, or deletes bob, must reach bob's open
sessions: a session with the shared mailbox selected ends with ``* BYE`` before its next
command does anything (FETCH, STORE, COPY, EXPUNGE alike), an idling one is told at once,
and a deleted user's sessions end the same way. Why BYE and not ``[CLOSED]``: see
gateway/imap/session.py.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock

from gateway.access.households import Households, UserStore
from gateway.app import config as configmod
from gateway.app.service import build_service, reload
from gateway.security.passwords import hash_password
from gateway.store.interfaces import MailboxNotFound
from gateway.store.memory import MemoryStore
from gateway.testing.imapclient import PASSWORD, USER, RawClient, ServerHandle, running_server
from gateway.testing.messages import message

BOB, BOB_PASSWORD = "bob", "bob-password"
WITHDRAWN = b"* BYE [NOPERM] Access to the selected mailbox was withdrawn\r\n"
REMOVED = b"* BYE Your account was removed\r\n"


@pytest.fixture
def family(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(
        tmp_path, users={BOB: BOB_PASSWORD}, shared={"family": [USER, BOB]}
    ) as server:
        factory = server.factory
        server.call(setattr, factory, "directory", factory.authenticator)
        server.call(server.store.ensure_user, BOB)
        server.call(server.store.ensure_user, "shared:family")
        shared = server.mailbox_id("INBOX", "shared:family")
        for _ in range(2):
            server.call(server.store.append, shared, message(), [])
        yield server


def _bob_in_family(server: ServerHandle) -> RawClient:
    client = server.connect()
    client.login(BOB, BOB_PASSWORD)
    assert b"s OK" in client.command("s", 'SELECT "Shared/family"')
    return client


def _remove_bob(server: ServerHandle) -> None:
    """What the service's reload hooks do when [shared.family] loses bob."""

    def run() -> None:
        server.factory.households.update({"family": [USER]})
        server.factory.access_changed()

    server.call(run)


def _shared_state(server: ServerHandle) -> tuple[list[tuple[int, frozenset[str]]], int]:
    def read() -> tuple[list[tuple[int, frozenset[str]]], int]:
        store = server.store
        shared = store.get_mailbox("shared:family", "INBOX").id
        rows = [(r.uid, r.flags) for r in store.message_rows(shared)]
        return rows, len(store.message_rows(store.get_mailbox(BOB, "INBOX").id))

    return server.call(read)


@pytest.mark.parametrize(
    "command",
    [
        "FETCH 1:* (FLAGS BODY[])",
        "STORE 1 +FLAGS (\\Deleted)",
        "COPY 1:* INBOX",
        "EXPUNGE",
        "UID FETCH 1:* FLAGS",
        "NOOP",
    ],
)
def test_a_removed_member_with_the_shared_mailbox_selected_is_told_bye(
    family: ServerHandle, command: str
) -> None:
    with _bob_in_family(family) as bob:
        if command == "EXPUNGE":
            assert b"d OK" in bob.command("d", "STORE 1 +FLAGS (\\Deleted)")
        before = _shared_state(family)
        _remove_bob(family)
        bob.send(f"c {command}\r\n".encode())
        assert bob.read_to_eof() == WITHDRAWN
        assert _shared_state(family) == before  # the command did nothing at all


def test_a_removed_member_without_it_selected_keeps_the_session(family: ServerHandle) -> None:
    with family.connect() as bob:
        bob.login(BOB, BOB_PASSWORD)
        assert b"s OK" in bob.command("s", "SELECT INBOX")
        _remove_bob(family)
        assert bob.command("n", "NOOP").endswith(b"n OK NOOP completed\r\n")
        assert bob.command("x", 'SELECT "Shared/family"').endswith(
            b"x NO [NONEXISTENT] Mailbox does not exist\r\n"
        )
        assert b"Shared/family" not in bob.command("l", 'LIST "" "*"')


def test_an_idling_removed_member_is_told_at_once(family: ServerHandle) -> None:
    with _bob_in_family(family) as bob:
        bob.send(b"i IDLE\r\n")
        assert bob.read_line() == b"+ idling\r\n"
        _remove_bob(family)
        assert bob.read_to_eof() == WITHDRAWN  # without sending DONE or anything else


def test_the_remaining_member_is_not_disturbed(family: ServerHandle) -> None:
    with family.connect() as alice:
        alice.login(USER, PASSWORD)
        assert b"s OK" in alice.command("s", 'SELECT "Shared/family"')
        alice.send(b"i IDLE\r\n")
        assert alice.read_line() == b"+ idling\r\n"
        _remove_bob(family)
        alice.send(b"DONE\r\n")
        assert alice.read_line() == b"i OK IDLE terminated\r\n"
        assert b"f OK" in alice.command("f", "FETCH 1 FLAGS")


def _delete_bob(server: ServerHandle) -> None:
    """What `popgate deluser bob` + SIGHUP do to the live objects."""

    def run() -> None:
        server.factory.authenticator.replace({USER: PASSWORD})
        server.factory.access_changed()

    server.call(run)


def test_a_deleted_users_sessions_end_at_their_next_command(family: ServerHandle) -> None:
    with family.connect() as bob:
        bob.login(BOB, BOB_PASSWORD)
        assert b"s OK" in bob.command("s", "SELECT INBOX")
        _delete_bob(family)
        bob.send(b"f FETCH 1:* FLAGS\r\n")
        assert bob.read_to_eof() == REMOVED


def test_a_deleted_users_idling_session_ends_at_once(family: ServerHandle) -> None:
    with family.connect() as bob:
        bob.login(BOB, BOB_PASSWORD)
        bob.send(b"i IDLE\r\n")  # authenticated state: IDLE without a mailbox
        assert bob.read_line() == b"+ idling\r\n"
        _delete_bob(family)
        assert bob.read_to_eof() == REMOVED
    family.wait_until(lambda: len(family.factory.protocols) == 0, "session gone")


def test_a_deleted_user_cannot_authenticate_plain_either(family: ServerHandle) -> None:
    _delete_bob(family)
    with family.connect() as bob:
        bob.greeting()
        token = base64.b64encode(f"\0{BOB}\0{BOB_PASSWORD}".encode()).decode()
        assert bob.command("a", f"AUTHENTICATE PLAIN {token}").startswith(b"a NO")


# ---- the access layer's backstop -------------------------------------------------------


def test_mailbox_ids_handed_out_before_removal_answer_nonexistent() -> None:
    """UserStore checks the *current* membership for ids too, not only for names."""
    store = MemoryStore()
    households = Households({"family": ["alice", "bob"]})
    view = UserStore(store, "bob", households)
    view.ensure_user("bob")
    shared = view.get_mailbox("bob", "Shared/family").id
    own = view.get_mailbox("bob", "INBOX").id
    view.append(shared, message())
    households.update({"family": ["alice"]})
    assert not view.may_use(shared) and view.may_use(own)
    calls = [
        lambda: view.message_uids(shared),
        lambda: view.message_bytes(shared, 1),
        lambda: view.store_flags(shared, [1], "+", ["\\Deleted"]),
        lambda: view.copy(shared, [1], own),
        lambda: view.copy(own, [1], shared),
        lambda: view.expunge(shared),
        lambda: view.changes_since(shared, 0),
    ]
    for call in calls:
        with pytest.raises(MailboxNotFound):
            call()
    assert not view.may_use(own + shared + 100)  # never handed out: no


# ---- the service wiring ------------------------------------------------------------------


def test_reload_wakes_sessions_and_the_directory_follows_the_config(tmp_path: Path) -> None:
    path = tmp_path / "popgate.toml"

    def write(users: dict[str, str]) -> None:
        lines = ["[server]", f'state_dir = "{tmp_path / "state"}"']
        for name, password in users.items():
            lines += [f"[users.{name}]", f'password = "{hash_password(password)}"']
        path.write_text("\n".join(lines) + "\n")

    write({USER: PASSWORD, BOB: BOB_PASSWORD})
    top = build_service(configmod.load(path), MemoryReactorClock())
    try:
        factory = top.imap_factory
        assert factory.directory.knows(BOB)
        assert factory.penalty.known_sources is top.store  # known sources persist

        class Recorder:
            woken = 0

            def access_changed(self) -> None:
                Recorder.woken += 1

        factory.protocols.add(Recorder())
        write({USER: PASSWORD})
        assert reload(top) is True
        assert not factory.directory.knows(BOB) and Recorder.woken == 1
    finally:
        top.store.close()
