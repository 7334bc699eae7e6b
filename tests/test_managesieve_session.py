"""The ManageSieve session without a socket: the state table, every command's responses
and codes (RFC 5804), authentication, and the checker interface. Actions the session
yields are performed by a tiny driver here (password checks run inline)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.access.filtering import check_script
from gateway.managesieve.parser import (
    Command,
    CommandParser,
    LineTooLong,
    LiteralTooLarge,
)
from gateway.managesieve.session import (
    COMMANDS,
    MAX_FAILED_COMMANDS,
    Close,
    ManageSieveSession,
    ReadString,
    RunBlocking,
    StartTLS,
    State,
)
from gateway.store.memory_scripts import MemoryScriptStore
from gateway.store.scripts import ScriptLimits


class Users:
    def authenticate(self, user: str, password: bytes) -> str | None:
        return user if (user, password) in {("alice", b"pw"), ("bob", b"pw2")} else None


def make(**kwargs: Any) -> ManageSieveSession:
    store = kwargs.pop("store", None) or MemoryScriptStore(ScriptLimits(100, 3))
    kwargs.setdefault("sieve_extensions", ("fileinto",))
    return ManageSieveSession(store, Users(), kwargs.pop("checker", check_script), **kwargs)


def run(session: ManageSieveSession, line: bytes, answers: list[bytes] | None = None) -> bytes:
    """Parse one command line, run it, perform its actions; everything written."""
    parser = CommandParser()
    parser.receive_data(line if line.endswith(b"\r\n") else line + b"\r\n")
    event = parser.next_event()
    gen = session.execute(event) if isinstance(event, Command) else session.protocol_error(event)
    out, sent = b"", None
    pending = list(answers or [])
    while True:
        try:
            item = gen.send(sent)
        except StopIteration:
            return out
        sent = None
        if isinstance(item, bytes):
            out += item
        elif isinstance(item, RunBlocking):
            sent = item.call()
        elif isinstance(item, ReadString):
            out += item.prompt
            sent = pending.pop(0)
        elif isinstance(item, StartTLS):
            out += b"<TLS>"
            session.tls_started()
        elif isinstance(item, Close):
            out += b"<CLOSE>"


def plain(user: str = "alice", password: str = "pw", authz: str = "") -> str:
    return base64.b64encode(f"{authz}\0{user}\0{password}".encode()).decode()


def logged_in(**kwargs: Any) -> ManageSieveSession:
    session = make(**kwargs)
    assert run(session, f'AUTHENTICATE "PLAIN" "{plain()}"'.encode()) == b'OK "Logged in"\r\n'
    return session


# ---- the state table --------------------------------------------------------------------

AUTH_ONLY = [
    'HAVESPACE "a" 1',
    'PUTSCRIPT "a" {5+}\r\nkeep;',
    'CHECKSCRIPT "keep;"',
    "LISTSCRIPTS",
    'SETACTIVE "a"',
    'GETSCRIPT "a"',
    'DELETESCRIPT "a"',
    'RENAMESCRIPT "a" "b"',
    "UNAUTHENTICATE",
]


@pytest.mark.parametrize("line", AUTH_ONLY)
def test_script_commands_need_authentication(line: str) -> None:
    """RFC 5804 §1.4: script commands are refused before login, without touching state."""
    session = make()
    assert run(session, line.encode()).startswith(b'NO "')
    assert session.state is State.NON_AUTHENTICATED


@pytest.mark.parametrize("line", ["STARTTLS", f'AUTHENTICATE "PLAIN" "{plain()}"'])
def test_login_commands_refused_once_authenticated(line: str) -> None:
    session = logged_in(tls_available=True)
    assert run(session, line.encode()).startswith(b"NO ")
    assert session.state is State.AUTHENTICATED


def test_state_table_covers_every_parsed_command() -> None:
    from gateway.managesieve.parser import SIGNATURES

    assert set(COMMANDS) == set(SIGNATURES)


# ---- capabilities -----------------------------------------------------------------------


def test_greeting_capabilities_before_login() -> None:
    """RFC 5804 §1.7: IMPLEMENTATION, SASL, SIEVE from the injected list, STARTTLS while
    possible, VERSION 1.0; no MAXREDIRECTS or NOTIFY (nothing can send mail yet)."""
    greeting = make(tls_available=True).greeting()
    assert greeting == (
        b'"IMPLEMENTATION" "popgate"\r\n"SASL" "PLAIN"\r\n"SIEVE" "fileinto"\r\n'
        b'"STARTTLS"\r\n"UNAUTHENTICATE"\r\n"VERSION" "1.0"\r\nOK "popgate ready"\r\n'
    )


def test_no_password_mechanism_before_tls_off_loopback() -> None:
    """SASL is empty and AUTHENTICATE is NO (ENCRYPT-NEEDED) while passwords are not
    allowed in clear; after STARTTLS, PLAIN is offered and works; STARTTLS is gone."""
    session = make(tls_available=True, plaintext_auth_allowed=False)
    assert b'"SASL" ""\r\n' in session.greeting()
    assert run(session, f'AUTHENTICATE "PLAIN" "{plain()}"'.encode()) == (
        b'NO (ENCRYPT-NEEDED) "Plaintext authentication requires TLS"\r\n'
    )
    out = run(session, b"STARTTLS")
    assert out.startswith(b'OK "Begin TLS negotiation now"\r\n<TLS>"IMPLEMENTATION"')
    assert b'"SASL" "PLAIN"' in out and b'STARTTLS"' not in out.split(b"<TLS>")[1]
    assert out.endswith(b'OK "TLS negotiation successful"\r\n')
    assert run(session, b"STARTTLS").startswith(b"NO ")
    assert run(session, f'AUTHENTICATE "PLAIN" "{plain()}"'.encode()) == b'OK "Logged in"\r\n'


def test_capabilities_after_login_name_the_owner() -> None:
    out = run(logged_in(), b"CAPABILITY")
    assert b'"OWNER" "alice"\r\n' in out and b'"SASL"' not in out
    assert out.endswith(b'OK "Capability completed"\r\n')


def test_starttls_unavailable_without_a_context() -> None:
    assert run(make(), b"STARTTLS") == b'NO "STARTTLS is not available"\r\n'


# ---- authentication ---------------------------------------------------------------------


def test_authenticate_continuation_form() -> None:
    """No initial response: the server sends the empty challenge ``""`` and reads a
    string (quoted or literal)."""
    session = make()
    assert run(session, b'AUTHENTICATE "PLAIN"', [plain().encode()]) == (
        b'""\r\nOK "Logged in"\r\n'
    )


def test_authenticate_cancelled() -> None:
    session = make()
    out = run(session, b'AUTHENTICATE "plain"', [b"*"])
    assert out == b'""\r\nNO "Authentication aborted by client"\r\n'


@pytest.mark.parametrize(
    ("response", "ok"),
    [
        (plain(authz="alice"), True),  # authzid equal to authcid is fine
        (plain(authz="bob"), False),  # acting as another user is not supported
        (plain(password="wrong"), False),
        (plain(user="nobody"), False),
        (base64.b64encode(b"alice\0pw").decode(), False),  # two fields
        ("not base64!", False),
    ],
)
def test_authenticate_outcomes(response: str, ok: bool) -> None:
    session = make()
    out = run(session, f'AUTHENTICATE "PLAIN" "{response}"'.encode())
    assert out.startswith(b"OK" if ok else b"NO")
    assert (session.state is State.AUTHENTICATED) == ok


def test_unsupported_mechanism() -> None:
    assert run(make(), b'AUTHENTICATE "DIGEST-MD5"').startswith(b'NO "Unsupported')


def test_owner_mapping_is_applied_after_login() -> None:
    """The integrator maps users to script owners (households); the session only uses it."""
    session = logged_in(owner_of=lambda user: f"household:{user}")
    run(session, b'PUTSCRIPT "s" "keep;"')
    assert [s.name for s in session.store.list_scripts("household:alice")] == ["s"]


def test_unauthenticate_returns_to_the_first_state() -> None:
    session = logged_in()
    assert run(session, b"UNAUTHENTICATE") == b'OK "Unauthenticate completed"\r\n'
    assert session.state is State.NON_AUTHENTICATED and session.owner is None
    assert run(session, b"LISTSCRIPTS").startswith(b"NO")


def test_logout_closes_after_ok() -> None:
    session = make()
    assert run(session, b"LOGOUT") == b'OK "Logout completed"\r\n<CLOSE>'
    assert session.state is State.LOGOUT


# ---- script commands and their response codes -------------------------------------------


def test_script_lifecycle_responses() -> None:
    s = logged_in()
    assert run(s, b'PUTSCRIPT "a" {5+}\r\nkeep;') == b'OK "Putscript completed"\r\n'
    assert run(s, b'PUTSCRIPT "b" "stop;"') == b'OK "Putscript completed"\r\n'
    assert run(s, b"LISTSCRIPTS") == b'"a"\r\n"b"\r\nOK "Listscripts completed"\r\n'
    assert run(s, b'SETACTIVE "b"') == b'OK "Setactive completed"\r\n'
    assert run(s, b"LISTSCRIPTS") == b'"a"\r\n"b" ACTIVE\r\nOK "Listscripts completed"\r\n'
    assert run(s, b'GETSCRIPT "a"') == b'{5}\r\nkeep;\r\nOK "Getscript completed"\r\n'
    assert run(s, b'DELETESCRIPT "b"') == b'NO (ACTIVE) "Cannot delete the active script"\r\n'
    assert run(s, b'RENAMESCRIPT "b" "a"').startswith(b"NO (ALREADYEXISTS)")
    assert run(s, b'RENAMESCRIPT "b" "c"') == b'OK "Renamescript completed"\r\n'
    assert run(s, b"LISTSCRIPTS") == b'"a"\r\n"c" ACTIVE\r\nOK "Listscripts completed"\r\n'
    assert run(s, b'SETACTIVE ""') == b'OK "Setactive completed"\r\n'
    assert run(s, b'DELETESCRIPT "c"') == b'OK "Deletescript completed"\r\n'
    for line in (b'GETSCRIPT "c"', b'DELETESCRIPT "c"', b'SETACTIVE "c"', b'RENAMESCRIPT "c" "d"'):
        assert run(s, line) == b'NO (NONEXISTENT) "Script does not exist"\r\n'


def test_bad_script_refused_with_line_and_column_and_not_stored() -> None:
    """RFC 5804 §2.6: a script the checker refuses is not stored (the old one stays)."""
    s = logged_in()
    run(s, b'PUTSCRIPT "a" "keep;"')
    out = run(s, b'PUTSCRIPT "a" {12+}\r\nkeep;\r\nfoo;')
    assert out == b"NO \"line 2, column 1: unknown command 'foo'\"\r\n"
    assert s.store.get_script("alice", "a") == "keep;"
    refused = run(s, b'CHECKSCRIPT "if true {"')
    assert refused.startswith(b'NO "line 1, column 9: ') and b"missing '}'" in refused
    assert run(s, b'CHECKSCRIPT "keep;"') == b'OK "Script checked successfully"\r\n'


def test_checker_warnings_become_ok_warnings() -> None:
    s = logged_in(checker=lambda text: ["deprecated thing on line 1"])
    assert run(s, b'CHECKSCRIPT "keep;"') == b'OK (WARNINGS) "deprecated thing on line 1"\r\n'


def test_checker_bug_is_an_internal_error_without_details() -> None:
    def broken(text: str) -> None:
        raise RuntimeError("secret detail")

    out = run(logged_in(checker=broken), b'CHECKSCRIPT "keep;"')
    assert out == b'NO "Internal error, see server log"\r\n'


def test_quota_codes_at_their_edges() -> None:
    """Size: exactly the limit fits, one more is QUOTA/MAXSIZE (PUTSCRIPT, CHECKSCRIPT,
    HAVESPACE); count: the limit fits, one more is QUOTA/MAXSCRIPTS."""
    s = logged_in()  # limits: 100 octets, 3 scripts
    fits, over = b"#" * 99 + b"\n", b"#" * 101
    assert run(s, b'PUTSCRIPT "a" {100+}\r\n' + fits).startswith(b"OK")
    assert run(s, b'PUTSCRIPT "b" {101+}\r\n' + over).startswith(b"NO (QUOTA/MAXSIZE)")
    assert run(s, b'HAVESPACE "b" 100').startswith(b"OK")
    assert run(s, b'HAVESPACE "b" 101').startswith(b"NO (QUOTA/MAXSIZE)")
    run(s, b'PUTSCRIPT "b" "keep;"')
    run(s, b'PUTSCRIPT "c" "keep;"')
    assert run(s, b'PUTSCRIPT "d" "keep;"').startswith(b"NO (QUOTA/MAXSCRIPTS)")
    assert run(s, b'HAVESPACE "d" 1').startswith(b"NO (QUOTA/MAXSCRIPTS)")
    assert run(s, b'HAVESPACE "c" 1').startswith(b"OK")


def test_oversize_literal_from_the_parser_is_quota_maxsize() -> None:
    s = logged_in()
    gen = s.protocol_error(LiteralTooLarge("literal too large", "PUTSCRIPT", 10**6, 100))
    assert b"".join(x for x in gen if isinstance(x, bytes)).startswith(b"NO (QUOTA/MAXSIZE)")


@pytest.mark.parametrize("name", ['""', '"a\\\\\x01"', '"e\xcc\x81"', '"' + "x" * 129 + '"'])
def test_invalid_script_names(name: str) -> None:
    """RFC 5804 §1.6: empty, control characters, non-NFC, too long → NO."""
    s = logged_in()
    out = run(s, b"PUTSCRIPT " + name.encode("latin-1") + b' "keep;"')
    assert out == b'NO "Invalid script name"\r\n'


def test_non_utf8_name_and_script() -> None:
    s = logged_in()
    assert run(s, b'GETSCRIPT "\xff"') == b'NO "Invalid script name"\r\n'
    assert run(s, b'PUTSCRIPT "a" "\xff"') == b'NO "Script is not valid UTF-8"\r\n'


def test_noop_echoes_its_tag() -> None:
    """RFC 5804 §2.13: NOOP's argument comes back in a TAG response code."""
    assert run(make(), b'NOOP "STARTTLS-RESYNC-CAPA"') == (
        b'OK (TAG "STARTTLS-RESYNC-CAPA") "Done"\r\n'
    )
    assert run(make(), b"NOOP") == b'OK "Done"\r\n'


def test_unicode_script_names_round_trip() -> None:
    s = logged_in()
    name = "Règles d'été".encode()
    run(s, b'PUTSCRIPT "' + name + b'" "keep;"')
    assert run(s, b"LISTSCRIPTS") == b'"' + name + b'"\r\nOK "Listscripts completed"\r\n'


# ---- protocol errors ----------------------------------------------------------------------


def test_unknown_command_is_no_and_repeated_garbage_is_bye() -> None:
    """ManageSieve has no BAD: NO, and after MAX_FAILED_COMMANDS in a row, BYE."""
    s = make()
    for _ in range(MAX_FAILED_COMMANDS - 1):
        assert run(s, b"FROB") == b'NO "FROB: unknown command"\r\n'
    assert run(s, b"FROB") == b'BYE "Too many invalid commands"\r\n<CLOSE>'


def test_a_good_command_resets_the_garbage_count() -> None:
    s = make()
    for _ in range(MAX_FAILED_COMMANDS - 1):
        run(s, b"FROB")
    run(s, b"NOOP")
    assert run(s, b"FROB").startswith(b"NO")


def test_fatal_parse_error_is_bye() -> None:
    s = make()
    gen = s.protocol_error(LineTooLong("line longer than 10 octets"))
    assert list(gen) == [b'BYE "line longer than 10 octets"\r\n', Close()]


def test_maxredirects_is_announced_and_the_owner_checker_sees_the_owner() -> None:
    """RFC 5804 §1.7 MAXREDIRECTS; redirect/vacation allowed per owner (issue 16)."""
    seen: list[tuple[str, str]] = []

    def owner_checker(owner: str, text: str) -> None:
        seen.append((owner, text))
        check_script(text, sending=owner == "alice")

    session = make(max_redirects=4, owner_checker=owner_checker)
    assert b'"MAXREDIRECTS" "4"' in session.capability_lines()
    assert b"MAXREDIRECTS" not in make().capability_lines()
    run(session, f'AUTHENTICATE "PLAIN" "{plain()}"'.encode())
    assert run(session, b'CHECKSCRIPT "redirect \\"x@y.example\\";"').startswith(b"OK")
    assert seen == [("alice", 'redirect "x@y.example";')]
    other = make(owner_checker=owner_checker)
    run(other, f'AUTHENTICATE "PLAIN" "{plain("bob", "pw2")}"'.encode())
    refused = run(other, b'CHECKSCRIPT "redirect \\"x@y.example\\";"')
    assert refused.startswith(b"NO") and b"[upstreams.smtp]" in refused
