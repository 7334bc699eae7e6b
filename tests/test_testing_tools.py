"""The shared test tooling in gateway/testing: the cheap authenticator keeps the product's
contract and stays out of the product, and the sans-I/O session driver performs every
action the session can yield or fails loudly (it never drops one)."""

from __future__ import annotations

import ast
import base64
import hmac
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, get_args

import pytest

from gateway.imap.handler import (
    Action,
    Close,
    IdleEvent,
    Pause,
    ReadLine,
    RunBlocking,
    StartCompress,
    StartTLS,
    WaitIdle,
)
from gateway.security.auth import PasswordTable
from gateway.security.passwords import hash_password
from gateway.testing import auth as cheap_auth
from gateway.testing.auth import CheapPasswords
from gateway.testing.imapsession import PASSWORD, USER, SessionDriver, UnexpectedAction
from gateway.testing.messages import message

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"

# ---- the cheap authenticator ------------------------------------------------------------


@pytest.mark.parametrize(
    "table",
    [
        pytest.param(lambda: CheapPasswords({"alice": "pw"}), id="cheap"),
        pytest.param(lambda: PasswordTable({"alice": hash_password("pw")}), id="scrypt"),
    ],
)
def test_cheap_passwords_answer_as_the_scrypt_table_does(table: Any) -> None:
    """Same Authenticator contract as gateway.security.auth.PasswordTable: the canonical
    name for the right password; None alike for a wrong password and an unknown user."""
    authenticator = table()
    assert authenticator.authenticate("alice", b"pw") == "alice"
    assert authenticator.authenticate("alice", b"pw2") is None
    assert authenticator.authenticate("alice", b"") is None
    assert authenticator.authenticate("mallory", b"pw") is None
    assert authenticator.users() == ["alice"]


def test_cheap_passwords_compare_in_constant_time_for_known_and_unknown_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every check is one hmac.compare_digest of two equal-length digests, whoever asks:
    the answer's timing says nothing about the password or whether the user exists."""
    compared: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(cheap_auth.hmac, "compare_digest", recording)
    table = CheapPasswords({"alice": "pw"})
    table.authenticate("alice", b"pw")
    table.authenticate("alice", b"a much longer wrong password")
    table.authenticate("nobody", b"pw")
    assert compared == [(32, 32)] * 3


def test_cheap_passwords_replace_swaps_the_table() -> None:
    table = CheapPasswords({"alice": "old"})
    table.replace({"alice": b"new", "bob": "pw"})
    assert table.authenticate("alice", b"old") is None
    assert table.authenticate("alice", b"new") == "alice"
    assert table.authenticate("bob", b"pw") == "bob"


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_cheap_passwords_are_only_reachable_from_the_testing_package() -> None:
    """No product module (app, cli, protocols) can hand the cheap table to a server: only
    gateway/testing imports it (and the config only accepts scrypt hashes)."""
    users = [
        str(path.relative_to(GATEWAY))
        for path in GATEWAY.rglob("*.py")
        if "testing" not in path.relative_to(GATEWAY).parts
        and any(name.startswith("gateway.testing.auth") for name in _imports(path))
    ]
    assert users == []


# ---- the sans-I/O session driver -----------------------------------------------------------


def test_idle_runs_on_scripted_lines_and_events(harness: SessionDriver) -> None:
    """WaitIdle (RFC 2177) is resumed with each scripted input in turn: a keep-alive tick,
    a change to the selected mailbox, then DONE."""
    harness.select()
    harness.select()  # nothing \\Recent any more
    out = harness.run(b"i IDLE", [IdleEvent.KEEPALIVE, b"DONE"])
    assert out == b"+ idling\r\n* OK Still here\r\ni OK IDLE terminated\r\n"

    def delivery_while_idling() -> Iterator[bytes | IdleEvent]:
        harness.add(message())
        yield IdleEvent.CHANGED
        yield b"DONE"

    out = harness.run(b"j IDLE", delivery_while_idling())
    assert out == b"+ idling\r\n* 1 EXISTS\r\n* 1 RECENT\r\nj OK IDLE terminated\r\n"


def test_idle_without_scripted_input_fails_loudly(harness: SessionDriver) -> None:
    """An action the test gave no input for stops the test; it is never resumed with None."""
    with pytest.raises(UnexpectedAction, match="WaitIdle"):
        harness.run(b"i IDLE")


def test_unused_scripted_input_fails_loudly(harness: SessionDriver) -> None:
    with pytest.raises(UnexpectedAction, match="never asked for"):
        harness.run(b"n NOOP", [b"DONE"])


def test_readline_writes_the_prompt_and_takes_the_next_line(tmp_path: Path) -> None:
    """ReadLine (RFC 3501 §6.2.2 AUTHENTICATE): the continuation request goes out, the
    scripted line comes back, and the password check (RunBlocking) runs inline."""
    driver = SessionDriver(tmp_path / "store.db", login=False)
    try:
        response = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        out = driver.run(b"a AUTHENTICATE PLAIN", [response])
        assert out.startswith(b"+ \r\na OK ")
        with pytest.raises(UnexpectedAction, match="takes a line"):
            SessionDriver(tmp_path / "other.db", login=False).run(
                b"b AUTHENTICATE PLAIN", [IdleEvent.CHANGED]
            )
    finally:
        driver.close()


def test_logout_marks_the_connection_closed(harness: SessionDriver) -> None:
    assert not harness.closed
    assert harness.run(b"z LOGOUT").endswith(b"z OK LOGOUT completed\r\n")
    assert harness.closed


def test_failed_blocking_call_is_thrown_into_the_command(harness: SessionDriver) -> None:
    """As the glue does: a RunBlocking call that raises resumes the command with the
    exception, so the command's own error handling runs."""

    def failing() -> None:
        raise OSError("disk gone")

    def command() -> Generator[Any, Any, str]:
        try:
            yield RunBlocking(failing)
        except OSError as error:
            yield b"* caught %s\r\n" % str(error).encode()
        yield Close()
        return "done"

    out, result = harness.drive(command(), ())
    assert (out, result, harness.closed) == ([b"* caught disk gone\r\n"], "done", True)


@pytest.mark.parametrize("action", [StartTLS(), "not an action"])
def test_actions_without_a_sans_io_meaning_fail_loudly(
    harness: SessionDriver, action: object
) -> None:
    def command() -> Generator[Any, Any, None]:
        yield action

    with pytest.raises(UnexpectedAction):
        harness.drive(command(), ())


def test_the_driver_performs_or_refuses_every_action_the_handlers_define(
    harness: SessionDriver,
) -> None:
    """Each member of gateway.imap.handler.Action is performed (or, for StartTLS, refused
    by name), never treated as unknown: an action added to the handlers fails this test
    until the driver knows it."""
    performed: list[Any] = [
        (RunBlocking(lambda: "ran"), (), "ran"),
        (ReadLine(b"+ \r\n"), [b"line"], b"line"),
        (WaitIdle(), [IdleEvent.CHANGED], IdleEvent.CHANGED),
        (Pause(), (), None),
        (Close(), (), None),
    ]
    transport_only = {StartTLS, StartCompress}
    assert {type(action) for action, _, _ in performed} | transport_only == set(get_args(Action))
    for action, inputs, answer in performed:

        def command(action: Any = action) -> Generator[Any, Any, Any]:
            return (yield action)

        assert harness.drive(command(), inputs)[1] == answer
    assert harness.closed
    with pytest.raises(UnexpectedAction, match="StartTLS needs a transport"):
        harness.drive((action for action in [StartTLS()]), ())
    with pytest.raises(UnexpectedAction, match="StartCompress needs a transport"):
        harness.drive((action for action in [StartCompress()]), ())
