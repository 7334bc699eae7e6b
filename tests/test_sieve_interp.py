"""Sieve interpreter: actions, implicit keep, extensions, runtime errors and limits."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sieve import (
    Discard,
    DuplicateMark,
    Envelope,
    FileInto,
    Keep,
    Result,
    compile_script,
    run,
)
from gateway.sieve.interpreter import MAX_ACTIONS, MAX_VARIABLE_SIZE
from gateway.sieve.matching import MAX_REGEX_SUBJECT, match
from gateway.sieve.message import decode_header_value, parse_addresses
from gateway.sieve.parser import quote
from gateway.sieve.regex import compile_regex

MESSAGE = (
    b"Return-Path: <news@lists.example.org>\r\n"
    b"Received: from a by mx1.example.org; Mon, 04 Mar 2024 07:31:00 +0000\r\n"
    b"Received: from b by a; Mon, 04 Mar 2024 08:30:30 +0100\r\n"
    b"From: =?utf-8?q?J=C3=BCrgen?= <Juergen.Mueller@Example.NET>, tom@example.org\r\n"
    b"To: Friends: bob@example.org, (c) carol@example.org;, alice@example.org\r\n"
    b"Subject: [acme-users] [fwd] version 1.0 is out\r\n"
    b"Date: Sun, 03 Mar 2024 23:30:00 -0500\r\n"
    b"Message-ID: <id-1@example.org>\r\n"
    b"List-Id: Acme <acme.lists.example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe, invoice\r\n"
    b"--b\r\nContent-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nPHA+SGVsbG8gPGI+d29ybGQ8L2I+PC9wPg==\r\n--b--\r\n"
)
ENVELOPE = Envelope("news@lists.example.org", "alice@example.org")
NOW = dt.datetime(2024, 3, 5, 12, 0, tzinfo=dt.UTC)


class FakeEnvironment:
    """Recording fake of SieveEnvironment."""

    def __init__(self, mailboxes: set[str] | None = None, seen: set[str] | None = None) -> None:
        self.mailboxes = mailboxes if mailboxes is not None else {"Lists", "Work", "Archive"}
        self.seen_ids = seen or set()
        self.asked: list[tuple[str, str, int]] = []

    def mailbox_exists(self, name: str) -> bool:
        return name.upper() == "INBOX" or name in self.mailboxes

    def seen(self, id: str, handle: str, period: int) -> bool:
        self.asked.append((id, handle, period))
        return id in self.seen_ids

    def now(self) -> dt.datetime:
        return NOW


def go(source: str, message: bytes = MESSAGE, env: FakeEnvironment | None = None) -> Result:
    return run(compile_script(source), message, ENVELOPE, env or FakeEnvironment())


def folders(source: str, message: bytes = MESSAGE) -> dict[str, tuple[str, ...]]:
    result = go(source, message)
    assert result.error is None, result.error
    return result.folders()


# -- actions and implicit keep (RFC 5228 §2.10.2, §4) --------------------------------------


def test_empty_script_keeps() -> None:
    assert go("").actions == [Keep()]


def test_fileinto_cancels_implicit_keep_and_copy_does_not() -> None:
    assert folders('require "fileinto"; fileinto "Lists";') == {"Lists": ()}
    both = folders('require ["fileinto","copy"]; fileinto :copy "Lists";')
    assert both == {"Lists": (), "INBOX": ()}


def test_discard_and_stop() -> None:
    result = go("discard; stop; keep;")
    assert result.actions == [Discard()] and result.folders() == {}


def test_keep_and_fileinto_inbox_merge_with_flag_union() -> None:
    """One final action per mailbox; Pigeonhole unites the flags of merged actions."""
    src = 'require ["fileinto","imap4flags"]; addflag "A"; keep; addflag "B"; fileinto "inbox";'
    assert go(src).actions == [Keep(("A", "B"))]


def test_if_elsif_else_takes_one_branch() -> None:
    src = (
        'require "fileinto"; if false { fileinto "Lists"; } '
        'elsif true { fileinto "Work"; } else { fileinto "Archive"; }'
    )
    assert folders(src) == {"Work": ()}


# -- tests ---------------------------------------------------------------------------


def test_header_is_rfc2047_decoded_before_comparison() -> None:
    assert folders(
        'require "fileinto"; if header :contains "from" "Jürgen" { fileinto "Work"; }'
    ) == {"Work": ()}


def test_address_parts_groups_and_multiple_from() -> None:
    src = (
        'require "fileinto";'
        'if address :domain :is "from" "example.net" { fileinto "Lists"; }'
        'if address :localpart :is "from" "tom" { fileinto "Work"; }'
        'if address :all :is "to" "carol@example.org" { fileinto "Archive"; }'
    )
    assert set(folders(src)) == {"Lists", "Work", "Archive"}


def test_parse_addresses_handles_groups_comments_routes() -> None:
    found = parse_addresses('G: a@x.org, (c) "B b" <b(z)@y.org>;, <@r.net:c@z.org>, bad')
    assert [a.all for a in found] == ["a@x.org", "b@y.org", "c@z.org", "bad"]
    assert parse_addresses("undisclosed-recipients:;") == []


def test_envelope_parts() -> None:
    src = (
        'require ["envelope","fileinto"];'
        'if envelope :domain :is "from" "lists.example.org" { fileinto "Lists"; }'
        'if envelope :localpart :is "to" "alice" { fileinto "Work"; }'
    )
    assert set(folders(src)) == {"Lists", "Work"}


def test_exists_size_and_logic() -> None:
    size = len(MESSAGE)
    src = (
        'require "fileinto";'
        f'if allof (exists ["list-id","subject"], size :over {size - 1}, size :under {size + 1},'
        ' not exists "x-none", anyof (false, true)) { fileinto "Lists"; }'
        f"if size :over {size} {{ discard; }}"
    )
    assert folders(src) == {"Lists": ()}


def test_comparators() -> None:
    assert match(["ABC"], ["abc"], "is", "i;ascii-casemap") == (True, None)
    assert match(["ABC"], ["abc"], "is", "i;octet") == (False, None)
    assert match(["Ä"], ["ä"], "is", "i;ascii-casemap") == (False, None)  # ASCII only
    assert match(["042"], ["42"], "is", "i;ascii-numeric") == (True, None)
    assert match(["x"], ["99999"], "value", "i;ascii-numeric", "gt") == (True, None)


def test_matches_wildcards_and_escapes() -> None:
    assert match(["Hello world"], ["?X*"], "matches", "i;ascii-casemap")[0] is False
    assert match(["a*b"], ["a\\*b"], "matches", "i;octet")[0] is True
    assert match(["axb"], ["a\\*b"], "matches", "i;octet")[0] is False


def test_match_variables_follow_rfc5229_example() -> None:
    src = (
        'require ["variables","fileinto","mailbox"];'
        'if header :matches "subject" "[*] *" { fileinto :create "${1}/${2}"; }'
    )
    assert folders(src) == {"acme-users/[fwd] version 1.0 is out": ()}


def test_set_modifiers_apply_by_precedence() -> None:
    src = (
        'require ["variables","fileinto","mailbox"];'
        'set :upperfirst :lower "a" "hELLO"; set :length "n" "${a}";'
        'set :quotewildcard "q" "*?"; fileinto :create "${a}-${n}-${q}";'
    )
    assert folders(src) == {"Hello-5-\\*\\?": ()}


def test_variable_size_limit_edge() -> None:
    src = (
        'require ["variables","fileinto","mailbox"];'
        f'set "v" "{"x" * (MAX_VARIABLE_SIZE + 10)}"; set :length "n" "${{v}}";'
        'fileinto :create "${n}";'
    )
    assert folders(src) == {str(MAX_VARIABLE_SIZE): ()}


def test_imap4flags_internal_variable_and_named_variables() -> None:
    src = (
        'require ["imap4flags","variables","fileinto"];'
        'setflag "\\\\Seen $A"; addflag ["$B", "\\\\seen"]; removeflag "$A";'
        'addflag "mine" "X Y"; removeflag "mine" "X";'
        'if hasflag :is "mine" "Y" { fileinto :flags "${mine}" "Work"; }'
        'if hasflag :contains "b" { fileinto "Lists"; }'
    )
    assert folders(src) == {"Work": ("Y",), "Lists": ("\\Seen", "$B")}


def test_implicit_keep_carries_internal_flags() -> None:
    assert go('require "imap4flags"; addflag "\\\\Flagged";').actions == [Keep(("\\Flagged",))]


def test_body_text_content_and_raw() -> None:
    src = (
        'require ["body","fileinto"];'
        'if body :text :contains "Grüße" { fileinto "Lists"; }'
        'if body :content "text/html" :contains "<b>world" { fileinto "Work"; }'
        'if body :raw :contains "=C3=BC" { fileinto "Archive"; }'
    )
    assert set(folders(src)) == {"Lists", "Work", "Archive"}


def test_relational_count_and_value() -> None:
    src = (
        'require ["relational","comparator-i;ascii-numeric","fileinto"];'
        'if address :count "eq" :comparator "i;ascii-numeric" "to" "3" { fileinto "Lists"; }'
        'if header :value "gt" "subject" "[a" { fileinto "Work"; }'
    )
    assert set(folders(src)) == {"Lists", "Work"}


def test_date_zones_and_parts() -> None:
    src = (
        'require ["date","fileinto","index"];'
        'if date :originalzone :is "date" "date" "2024-03-03" { fileinto "Lists"; }'
        'if date :zone "+0000" :is "date" "time" "04:30:00" { fileinto "Work"; }'
        'if date :index 2 :originalzone :is "received" "zone" "+0100" { fileinto "Archive"; }'
        'if currentdate :is "date" "2024-03-05" { keep; }'
    )
    assert set(folders(src)) == {"Lists", "Work", "Archive", "INBOX"}


def test_date_default_zone_is_the_environment_clock_zone() -> None:
    src = 'require ["date","fileinto"]; if date :is "date" "weekday" "1" { fileinto "Work"; }'
    assert folders(src) == {"Work": ()}  # Sunday 23:30 -0500 is Monday in UTC


def test_missing_or_bad_date_is_false() -> None:
    src = 'require ["date","fileinto"]; if date :matches "x-date" "year" "*" { fileinto "Work"; }'
    assert folders(src) == {"INBOX": ()}


def test_index_last() -> None:
    src = 'require ["index","fileinto"]; if header :index 1 :last :contains "received" "from b" { fileinto "Work"; }'
    assert folders(src) == {"Work": ()}


def test_regex_with_captures_and_posix_classes() -> None:
    src = (
        'require ["regex","variables","fileinto","mailbox"];'
        'if header :regex "subject" "version ([[:digit:]]+)\\\\.([0-9])" { fileinto :create "v${1}-${2}"; }'
    )
    assert folders(src) == {"v1-0": ()}


@pytest.mark.parametrize("pattern", ["a*a*a*b$", "(a+)+b", "(a|aa)*c", "(.*a){12}x"])
def test_regex_on_a_huge_header_stays_fast(pattern: str) -> None:
    """Patterns that backtrack exponentially in `re` stay linear here (regex.py)."""
    big = b"Subject: " + b"a" * (4 * MAX_REGEX_SUBJECT) + b"\r\n\r\nx"
    result = go(f'require "regex"; if header :regex "subject" {quote(pattern)} {{ discard; }}', big)
    assert result.actions == [Keep()]
    # Work, not seconds: the matcher carries each program step at most once per position.
    rx = compile_regex(pattern)
    subject = "a" * MAX_REGEX_SUBJECT
    found, work = rx.search_counted(subject)
    assert found is None
    assert work <= (len(subject) + 1) * len(rx.program)


def test_duplicate_asks_and_reports_marks() -> None:
    env = FakeEnvironment(seen={"<id-1@example.org>"})
    src = (
        'require ["duplicate","fileinto"];'
        'if duplicate { fileinto "Archive"; }'
        'if duplicate :uniqueid "u" :handle "h" :seconds 60 :last { fileinto "Work"; }'
    )
    result = go(src, env=env)
    assert result.folders() == {"Archive": ()}
    assert result.duplicates == [
        DuplicateMark("<id-1@example.org>", "", 7 * 24 * 3600, False),
        DuplicateMark("u", "h", 60, True),
    ]


def test_mailboxexists_and_create() -> None:
    src = (
        'require ["mailbox","fileinto"];'
        'if mailboxexists ["Lists","INBOX"] { fileinto :create "New/Box"; }'
        'if mailboxexists "Nope" { discard; }'
    )
    assert go(src).actions == [FileInto("New/Box", (), True)]


def test_string_test_count_ignores_empty_strings() -> None:
    src = (
        'require ["variables","relational","comparator-i;ascii-numeric","fileinto"];'
        'if string :count "eq" :comparator "i;ascii-numeric" ["a", "", "b"] "2" { fileinto "Work"; }'
    )
    assert folders(src) == {"Work": ()}


# -- runtime errors: mail is never lost (RFC 5228 §2.10.6) ---------------------------------


def test_fileinto_missing_mailbox_falls_back_to_inbox_with_error() -> None:
    result = go('require ["fileinto","imap4flags"]; fileinto "Lists"; fileinto :flags "X" "Gone";')
    assert result.actions == [Keep()]
    assert result.error is not None and '"Gone" does not exist' in result.error


def test_too_many_actions_edge() -> None:
    boxes = {f"B{i}" for i in range(MAX_ACTIONS + 1)}
    env = FakeEnvironment(mailboxes=boxes)
    ok = 'require "fileinto";' + "".join(f'fileinto "B{i}";' for i in range(MAX_ACTIONS))
    assert len(run(compile_script(ok), MESSAGE, ENVELOPE, env).actions) == MAX_ACTIONS
    over = ok + f'fileinto "B{MAX_ACTIONS}";'
    result = run(compile_script(over), MESSAGE, ENVELOPE, env)
    assert result.actions == [Keep()] and "actions" in (result.error or "")


def test_bad_regex_from_a_variable_is_a_runtime_error() -> None:
    src = 'require ["regex","variables"]; set "p" "(a+"; if header :regex "subject" "${p}" { discard; }'
    result = go(src)
    assert result.actions == [Keep()] and "missing ')'" in (result.error or "")


# -- properties ------------------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_any_message_bytes_give_a_result(raw: bytes) -> None:
    """Whatever arrives from POP3, every test runs and the message ends up somewhere."""
    src = (
        'require ["body","date","regex","relational","variables","fileinto","mailbox"];'
        'if anyof (header :regex "subject" "^(.*)$", address :count "gt" "from" "0",'
        ' body :contains "x", date :value "gt" "date" "date" "2000", size :over 10)'
        ' { fileinto :create "Hit"; }'
    )
    result = go(src, raw)
    assert result.error is None
    assert result.folders()


@given(st.text(st.characters(blacklist_characters="\x00"), max_size=40))
def test_quotewildcard_then_matches_is_equality(value: str) -> None:
    """RFC 5229 §4.1: a :quotewildcard'ed value used as :matches key matches only itself.
    (NUL is left out: a script may not contain one, which the parser tests cover.)"""
    src = (
        'require ["variables","fileinto"];'
        f'set :quotewildcard "k" {quote(value)}; set "v" {quote(value)};'
        'if string :matches :comparator "i;octet" "${v}" "${k}" { fileinto "Work"; }'
    )
    if "${" in value:
        return
    assert folders(src) == {"Work": ()}


def test_decode_header_value_joins_adjacent_words() -> None:
    assert decode_header_value("=?utf-8?q?a?= =?utf-8?q?b?= c") == "ab c"
    assert decode_header_value("=?x-unknown?q?abc?=") == "abc"
