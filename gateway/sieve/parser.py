"""Lexer and parser for the Sieve grammar of RFC 5228 §8, producing a plain syntax tree.

The parser knows nothing about which commands exist: that is the validator's job, so the
same tree serves CHECKSCRIPT (RFC 5804 §2.12) and execution. Every node carries its line and
column so that errors can point at them. Nesting and script size are bounded by named limits
so a hostile upload cannot exhaust the stack or memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sieve.errors import SieveSyntaxError

MAX_SCRIPT_SIZE = 1024 * 1024
"""Largest script accepted, in octets (Pigeonhole's sieve_max_script_size default)."""

MAX_NESTING_DEPTH = 32
"""Deepest nesting of blocks, and separately of tests, accepted (Pigeonhole uses 32 too)."""

MAX_NUMBER = 2**63 - 1
"""Largest number after its K/M/G quantifier (RFC 5228 §2.4.1 asks for at least 2**31)."""

_QUANTIFIERS = {"k": 1024, "m": 1024**2, "g": 1024**3}
_PUNCTUATION = frozenset(";,()[]{}")


@dataclass(frozen=True, slots=True)
class Token:
    """One lexical token; `kind` is ident, tag, number, string or the punctuation itself."""

    kind: str
    value: str | int
    line: int
    column: int


@dataclass(slots=True)
class StringList:
    """A string or bracketed string list (RFC 5228 §2.4.2); `single` if written without [ ]."""

    values: list[str]
    single: bool
    line: int
    column: int


@dataclass(slots=True)
class Number:
    """A number with its quantifier applied (RFC 5228 §2.4.1)."""

    value: int
    line: int
    column: int


@dataclass(slots=True)
class Tag:
    """A tagged argument such as `:contains`, name stored lower-case without the colon."""

    name: str
    line: int
    column: int


Argument = StringList | Number | Tag


@dataclass(slots=True)
class Test:
    """A test (RFC 5228 §3.3 grammar `test`): name, arguments and nested tests."""

    name: str
    args: list[Argument]
    tests: list[Test]
    line: int
    column: int


@dataclass(slots=True)
class Command:
    """A command (RFC 5228 §8.2): its block is None when it ends in a semicolon."""

    name: str
    args: list[Argument]
    tests: list[Test]
    block: list[Command] | None
    line: int
    column: int
    test_list: bool = field(default=False)


def _is_ident_start(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _is_ident_char(ch: str) -> bool:
    return _is_ident_start(ch) or ("0" <= ch <= "9")


class _Lexer:
    """Turns script text into tokens, tracking line and column for every one."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.col = 1

    def _advance(self, n: int) -> None:
        chunk = self.text[self.pos : self.pos + n]
        newlines = chunk.count("\n")
        if newlines:
            self.line += newlines
            self.col = n - chunk.rfind("\n")
        else:
            self.col += n
        self.pos += n

    def _error(self, message: str, line: int | None = None, col: int | None = None) -> None:
        raise SieveSyntaxError(line or self.line, col or self.col, message)

    def _skip_space(self) -> None:
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r\n":
                self._advance(1)
            elif ch == "#":
                end = text.find("\n", self.pos)
                self._advance((len(text) if end < 0 else end + 1) - self.pos)
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    self._error("unterminated /* comment */")
                self._advance(end + 2 - self.pos)
            else:
                return

    def tokens(self) -> list[Token]:
        out: list[Token] = []
        text = self.text
        while True:
            self._skip_space()
            if self.pos >= len(text):
                return out
            line, col, ch = self.line, self.col, text[self.pos]
            if ch in _PUNCTUATION:
                self._advance(1)
                out.append(Token(ch, ch, line, col))
            elif ch == '"':
                out.append(Token("string", self._quoted(), line, col))
            elif ch == ":":
                end = self.pos + 1
                if end >= len(text) or not _is_ident_start(text[end]):
                    self._error("':' must start a tag such as :is")
                while end < len(text) and _is_ident_char(text[end]):
                    end += 1
                name = text[self.pos + 1 : end].lower()
                self._advance(end - self.pos)
                out.append(Token("tag", name, line, col))
            elif "0" <= ch <= "9":
                out.append(Token("number", self._number(), line, col))
            elif _is_ident_start(ch):
                end = self.pos
                while end < len(text) and _is_ident_char(text[end]):
                    end += 1
                word = text[self.pos : end]
                if word.lower() == "text" and text.startswith(":", end):
                    self._advance(end + 1 - self.pos)
                    out.append(Token("string", self._multiline(line, col), line, col))
                else:
                    self._advance(end - self.pos)
                    out.append(Token("ident", word.lower(), line, col))
            else:
                self._error(f"unexpected character {ch!r}")

    def _quoted(self) -> str:
        """RFC 5228 §2.4.2: backslash escapes the next character; other escapes drop the \\."""
        text, start_line, start_col = self.text, self.line, self.col
        i = self.pos + 1
        parts: list[str] = []
        while True:
            j = i
            while j < len(text) and text[j] not in '"\\':
                j += 1
            parts.append(text[i:j])
            if j >= len(text):
                self._error("unterminated quoted string", start_line, start_col)
            if text[j] == '"':
                self._advance(j + 1 - self.pos)
                return "".join(parts)
            if j + 1 >= len(text):
                self._error("unterminated quoted string", start_line, start_col)
            parts.append(text[j + 1])
            i = j + 2

    def _number(self) -> int:
        text, end = self.text, self.pos
        while end < len(text) and "0" <= text[end] <= "9":
            end += 1
        value = int(text[self.pos : end])
        if end < len(text) and text[end].lower() in _QUANTIFIERS:
            value *= _QUANTIFIERS[text[end].lower()]
            end += 1
        if value > MAX_NUMBER:
            self._error(f"number exceeds the limit of {MAX_NUMBER}")
        self._advance(end - self.pos)
        return value

    def _multiline(self, line: int, col: int) -> str:
        """RFC 5228 §2.4.2 multi-line string: lines up to a lone ".", leading dot unstuffed."""
        text = self.text
        i = self.pos
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "#":
            i = text.find("\n", i)
            i = len(text) if i < 0 else i
        elif text.startswith("\r\n", i):
            i += 1
        if i >= len(text) or text[i] != "\n":
            self._error("text: must be followed by a line break", line, col)
        i += 1
        lines: list[str] = []
        while True:
            end = text.find("\n", i)
            if end < 0:
                self._error(
                    "unterminated text: string (missing a line with a single '.')", line, col
                )
            body = text[i:end]
            if body.endswith("\r"):
                body = body[:-1]
            i = end + 1
            if body == ".":
                break
            if body.startswith("."):
                body = body[1:]
            lines.append(body + "\r\n")
        self._advance(i - self.pos)
        return "".join(lines)


def tokenize(source: str | bytes) -> list[Token]:
    """Split a script into tokens; raise SieveSyntaxError with the position on failure."""
    if isinstance(source, bytes):
        if len(source) > MAX_SCRIPT_SIZE:
            raise SieveSyntaxError(1, 1, f"script larger than {MAX_SCRIPT_SIZE} octets")
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            before = source[: exc.start]
            line = before.count(b"\n") + 1
            column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
            raise SieveSyntaxError(line, column, "script is not valid UTF-8") from None
    elif len(source.encode("utf-8", "surrogatepass")) > MAX_SCRIPT_SIZE:
        raise SieveSyntaxError(1, 1, f"script larger than {MAX_SCRIPT_SIZE} octets")
    if "\x00" in source:
        line = source.count("\n", 0, source.index("\x00")) + 1
        raise SieveSyntaxError(line, 1, "script contains a NUL character")
    return _Lexer(source).tokens()


class _Parser:
    """Recursive descent over the token list, RFC 5228 §8.2 rule by rule."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0

    def _peek(self) -> Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _error_at(self, tok: Token | None, message: str) -> SieveSyntaxError:
        if tok is None:
            last = self.tokens[-1] if self.tokens else None
            line, col = (last.line, last.column) if last else (1, 1)
            return SieveSyntaxError(line, col, f"unexpected end of script: {message}")
        shown = tok.value if tok.kind != "string" else "a string"
        return SieveSyntaxError(tok.line, tok.column, f"{message}, found {shown!r}")

    def _expect(self, kind: str, message: str) -> Token:
        tok = self._peek()
        if tok is None or tok.kind != kind:
            raise self._error_at(tok, message)
        self.i += 1
        return tok

    def commands(self, depth: int, closing: bool) -> list[Command]:
        out: list[Command] = []
        while True:
            tok = self._peek()
            if tok is None:
                if closing:
                    raise self._error_at(None, "missing '}'")
                return out
            if tok.kind == "}" and closing:
                self.i += 1
                return out
            if tok.kind != "ident":
                raise self._error_at(tok, "expected a command name")
            self.i += 1
            args, tests, test_list = self._arguments(0)
            end = self._peek()
            if end is not None and end.kind == ";":
                self.i += 1
                block = None
            elif end is not None and end.kind == "{":
                if depth + 1 > MAX_NESTING_DEPTH:
                    raise SieveSyntaxError(
                        end.line, end.column, f"blocks nested deeper than {MAX_NESTING_DEPTH}"
                    )
                self.i += 1
                block = self.commands(depth + 1, True)
            else:
                raise self._error_at(end, f"expected ';' or '{{' after command {tok.value}")
            out.append(Command(str(tok.value), args, tests, block, tok.line, tok.column, test_list))

    def _arguments(self, depth: int) -> tuple[list[Argument], list[Test], bool]:
        args: list[Argument] = []
        while True:
            tok = self._peek()
            if tok is None:
                return args, [], False
            if tok.kind == "string" or tok.kind == "[":
                args.append(self._string_list())
            elif tok.kind == "number":
                self.i += 1
                args.append(Number(int(tok.value), tok.line, tok.column))
            elif tok.kind == "tag":
                self.i += 1
                args.append(Tag(str(tok.value), tok.line, tok.column))
            elif tok.kind == "ident":
                return args, [self._test(depth + 1)], False
            elif tok.kind == "(":
                return args, self._test_list(depth + 1), True
            else:
                return args, [], False

    def _string_list(self) -> StringList:
        tok = self._peek()
        assert tok is not None
        self.i += 1
        if tok.kind == "string":
            return StringList([str(tok.value)], True, tok.line, tok.column)
        values = [str(self._expect("string", "expected a string in the list").value)]
        while True:
            nxt = self._peek()
            if nxt is not None and nxt.kind == ",":
                self.i += 1
                values.append(str(self._expect("string", "expected a string after ','").value))
            elif nxt is not None and nxt.kind == "]":
                self.i += 1
                return StringList(values, False, tok.line, tok.column)
            else:
                raise self._error_at(nxt, "expected ',' or ']' in string list")

    def _test(self, depth: int) -> Test:
        tok = self._expect("ident", "expected a test")
        if depth > MAX_NESTING_DEPTH:
            raise SieveSyntaxError(
                tok.line, tok.column, f"tests nested deeper than {MAX_NESTING_DEPTH}"
            )
        args, tests, _ = self._arguments(depth)
        return Test(str(tok.value), args, tests, tok.line, tok.column)

    def _test_list(self, depth: int) -> list[Test]:
        self._expect("(", "expected '('")
        tests = [self._test(depth)]
        while True:
            tok = self._peek()
            if tok is not None and tok.kind == ",":
                self.i += 1
                tests.append(self._test(depth))
            elif tok is not None and tok.kind == ")":
                self.i += 1
                return tests
            else:
                raise self._error_at(tok, "expected ',' or ')' in test list")


def parse(source: str | bytes) -> list[Command]:
    """Parse a whole script into its top-level commands (no validation).

    Raises SieveSyntaxError(line, column, message) on the first grammar error.
    """
    return _Parser(tokenize(source)).commands(0, False)


def quote(value: str) -> str:
    """Write `value` as a Sieve quoted string that parses back to exactly `value`."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
