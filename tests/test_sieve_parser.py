"""Sieve lexer, parser and validator: grammar of RFC 5228 §8, positions, limits, refusals."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sieve import SieveSyntaxError, SieveValidationError, compile_script
from gateway.sieve.matching import MAX_REGEX_LENGTH
from gateway.sieve.parser import (
    MAX_NESTING_DEPTH,
    MAX_NUMBER,
    MAX_SCRIPT_SIZE,
    Command,
    Number,
    StringList,
    Tag,
    parse,
    quote,
)
from gateway.sieve.validator import MAX_VARIABLE_NAME, MAX_VARIABLES


def _error(source: str | bytes) -> SieveSyntaxError:
    with pytest.raises(SieveSyntaxError) as info:
        compile_script(source)
    return info.value


# -- grammar --------------------------------------------------------------------------


def test_comments_strings_numbers_and_blocks_parse() -> None:
    """Hash and bracket comments are skipped; K/M/G multiply (RFC 5228 §2.4.1)."""
    tree = parse("# c\nif /* x */ size :over 10K { keep; }\nstop;")
    assert [c.name for c in tree] == ["if", "stop"]
    test = tree[0].tests[0]
    assert test.name == "size"
    assert isinstance(test.args[0], Tag) and test.args[0].name == "over"
    assert isinstance(test.args[1], Number) and test.args[1].value == 10 * 1024
    assert tree[0].block is not None and tree[0].block[0].name == "keep"


def test_quoted_string_escapes() -> None:
    """Backslash quotes the next character; other escapes just drop the backslash."""
    (cmd,) = parse(r'x "a\"b\\c\d";')
    arg = cmd.args[0]
    assert isinstance(arg, StringList) and arg.values == ['a"b\\cd']


def test_multiline_string_dot_unstuffing() -> None:
    """RFC 5228 §2.4.2: text: ... lone "." ends it; a leading dot is removed."""
    (cmd,) = parse("x text: # comment\nline one\n..dotted\n.\n;")
    arg = cmd.args[0]
    assert isinstance(arg, StringList) and arg.values == ["line one\r\n.dotted\r\n"]


def test_string_list_and_test_list() -> None:
    (cmd,) = parse('if anyof (true, header :is ["a","b"] "c") { }')
    anyof = cmd.tests[0]
    assert [t.name for t in anyof.tests] == ["true", "header"]
    arg = anyof.tests[1].args[1]
    assert isinstance(arg, StringList) and arg.values == ["a", "b"] and not arg.single


def test_identifiers_are_case_insensitive() -> None:
    assert parse("KEEP;")[0].name == "keep"


@pytest.mark.parametrize(
    ("source", "line", "column", "fragment"),
    [
        ("keep", 1, 1, "expected ';'"),
        ('keep;\nfileinto "x', 2, 10, "unterminated quoted string"),
        ("keep;\n  /* open", 2, 3, "unterminated /* comment */"),
        ("if true { keep;", 1, 15, "missing '}'"),
        ("x text:\nabc\n", 1, 3, "unterminated text:"),
        ("keep;\n\n   @", 3, 4, "unexpected character"),
        ('if header :is ["a", ] "b" {}', 1, 21, "expected a string"),
        ("x 99999999999999999999;", 1, 3, "number exceeds"),
    ],
)
def test_syntax_errors_carry_line_and_column(
    source: str, line: int, column: int, fragment: str
) -> None:
    err = _error(source)
    assert (err.line, err.column) == (line, column)
    assert fragment in err.message


def test_invalid_utf8_reports_position() -> None:
    err = _error(b'keep;\nfileinto "\xff";')
    assert (err.line, err.message) == (2, "script is not valid UTF-8")


# -- limits, each at its edge -----------------------------------------------------------


def test_script_size_limit_edge() -> None:
    filler = "#" + "x" * (MAX_SCRIPT_SIZE - 7) + "\nkeep;"
    assert len(filler.encode()) == MAX_SCRIPT_SIZE
    compile_script(filler)
    assert "larger than" in _error(filler + " ").message


def test_nesting_limit_edge() -> None:
    def nested(depth: int) -> str:
        return "if true { " * depth + "keep;" + " }" * depth

    compile_script(nested(MAX_NESTING_DEPTH))
    assert "nested deeper" in _error(nested(MAX_NESTING_DEPTH + 1)).message

    def nested_tests(depth: int) -> str:
        return "if " + "not " * (depth - 1) + "true { keep; }"

    compile_script(nested_tests(MAX_NESTING_DEPTH))
    assert "nested deeper" in _error(nested_tests(MAX_NESTING_DEPTH + 1)).message


def test_number_limit_edge() -> None:
    compile_script(f"if size :over {MAX_NUMBER} {{ keep; }}")
    assert "exceeds" in _error(f"if size :over {MAX_NUMBER + 1} {{ keep; }}").message


def test_variable_count_and_name_limits() -> None:
    head = 'require "variables";\n'
    ok = head + "".join(f'set "v{i}" "x";\n' for i in range(MAX_VARIABLES))
    compile_script(ok)
    assert "more than" in _error(ok + 'set "extra" "x";').message
    compile_script(head + f'set "{"n" * MAX_VARIABLE_NAME}" "x";')
    assert (
        "invalid variable name"
        in _error(head + f'set "{"n" * (MAX_VARIABLE_NAME + 1)}" "";').message
    )


def test_regex_size_limit_edge() -> None:
    head = 'require "regex";\nif header :regex "subject" '
    compile_script(head + quote("a" * MAX_REGEX_LENGTH) + " { keep; }")
    assert "longer than" in _error(head + quote("a" * (MAX_REGEX_LENGTH + 1)) + " {}").message


def test_compiled_regex_size_limit_edge() -> None:
    """Bounded repeats are unrolled; the compiled program has a named cap."""
    head = 'require "regex";\nif header :regex "subject" '
    compile_script(head + quote("(a{255}){10}") + " { keep; }")
    assert "too large" in _error(head + quote("((a{255}){255}){10}") + " {}").message


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [(r"(a)\1", "backreferences"), ("a{300}", "repeat count"), ("(ab", "missing ')'"),
     ("*a", "nothing to repeat"), ("[[:nope:]]", "character class"), ("[z-a]", "reversed")],
)  # fmt: skip
def test_bad_regexes_are_refused_with_a_reason(pattern: str, fragment: str) -> None:
    err = _error(f'require "regex"; if header :regex "subject" {quote(pattern)} {{ keep; }}')
    assert isinstance(err, SieveValidationError) and fragment in err.message


@pytest.mark.parametrize(
    "pattern", ["^Re: (.*)$", "[[:digit:]]{7}", "(foo|bar)baz", "a(b)?c+", "(a+)+$", "(a|aa)*b"]
)
def test_ordinary_and_backtracking_shaped_regexes_are_accepted(pattern: str) -> None:
    """The engine is linear (gateway/sieve/regex.py), so no shape needs refusing."""
    compile_script(f'require "regex"; if header :regex "subject" {quote(pattern)} {{ keep; }}')


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ('require "vacation";', "needs one of your upstreams to have [upstreams.smtp]"),
        ('redirect "a@example.org";', "needs one of your upstreams to have [upstreams.smtp]"),
        ('reject "no";', "reject is not supported: POP3 mail was already accepted"),
        ('require "ereject";', "backscatter"),
        ('require "foo";', 'unknown extension "foo"'),
        ('fileinto "x";', 'needs require "fileinto"'),
        ('keep; require "fileinto";', "require must come before"),
        ("frobnicate;", "unknown command 'frobnicate'"),
        ("if frob { }", "unknown test 'frob'"),
        ('if header :frob "a" "b" {}', "has no tag :frob"),
        ('if header :is :contains "a" "b" {}', "conflicts"),
        ('if header "a" {}', "positional argument"),
        ('if header :comparator "i;foo" "a" "b" {}', "unknown comparator"),
        ('if header :contains :comparator "i;ascii-numeric" "a" "b" {}', "i;ascii-numeric"),
        ('require "relational"; if header :value "zz" "a" "b" {}', "unknown relational"),
        ('require ["date","index"]; if date :last "date" "year" "1" {}', ":last needs :index"),
        ('require "date"; if date "date" "era" "1" {}', "unknown date part"),
        ('require "date"; if date :zone "CET" "date" "year" "1" {}', "zone"),
        ('if header :is "bad name" "x" {}', "invalid header name"),
        ("else { keep; }", "must follow if"),
        ("if true keep;", "true takes no test"),
        ("if true", "expected ';' or '{'"),
        ("keep { }", "takes no block"),
        ('require "imap4flags"; setflag "v" "\\\\Seen";', 'needs require "variables"'),
        ("if size 10 { }", "needs :over or :under"),
    ],
)
def test_validation_errors(source: str, fragment: str) -> None:
    assert fragment in _error(source).message


def test_refusal_points_at_the_extension_name() -> None:
    err = _error('require "fileinto";\nrequire ["copy", "vacation"];')
    assert (err.line, err.column) == (2, 9)


def test_every_supported_extension_can_be_required() -> None:
    from gateway.sieve import EXTENSIONS

    every = "require [" + ", ".join(quote(e) for e in sorted(EXTENSIONS)) + "];"
    compile_script(every, sending=True)  # vacation needs an upstream that can send


def test_encoded_character_decodes_only_when_required() -> None:
    """RFC 5228 §2.4.2.4: ${hex:..}/${unicode:..} need require "encoded-character"."""
    script = compile_script(
        'require "encoded-character"; if header :is "s" "${hex:41 42}${unicode:263a}" {}'
    )
    assert script.commands[0].tests[0].args[1] == ["AB\u263a"]
    plain = compile_script('if header :is "s" "${hex:41}" {}')
    assert plain.commands[0].tests[0].args[1] == ["${hex:41}"]


# -- properties -------------------------------------------------------------------------


@given(st.text())
def test_quoted_strings_round_trip(value: str) -> None:
    """parse(quote(s)) gives back s exactly, whatever characters it holds."""
    if "\x00" in value or "\ud800" <= max(value, default="a") <= "\udfff":
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return
    (cmd,) = parse(f"x {quote(value)};")
    arg = cmd.args[0]
    assert isinstance(arg, StringList) and arg.values == [value]


@given(st.integers(min_value=0, max_value=2**32), st.sampled_from(["", "K", "m", "G"]))
def test_numbers_round_trip(value: int, unit: str) -> None:
    factor = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit.upper()]
    (cmd,) = parse(f"x {value}{unit};")
    arg = cmd.args[0]
    assert isinstance(arg, Number) and arg.value == value * factor


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_syntax_errors(data: bytes) -> None:
    try:
        compile_script(data)
    except SieveSyntaxError:
        pass


_TOKENS = st.sampled_from(
    ["if", "keep", ";", "{", "}", "(", ")", "[", "]", ",", ":is", '"a"', "1K", "true",
     "header", "text:\nx\n.\n", "#c\n", "/*c*/", "not", "anyof", "require", '"fileinto"']
)  # fmt: skip


@settings(max_examples=300)
@given(st.lists(_TOKENS, max_size=30))
def test_random_token_soup_only_ever_raises_syntax_errors(tokens: list[str]) -> None:
    try:
        compile_script(" ".join(tokens))
    except SieveSyntaxError as exc:
        assert exc.line >= 1 and exc.column >= 1


def test_commands_keep_their_positions() -> None:
    tree = parse("keep;\n  stop;")
    assert [(c.line, c.column) for c in tree] == [(1, 1), (2, 3)]
    assert isinstance(tree[0], Command)
