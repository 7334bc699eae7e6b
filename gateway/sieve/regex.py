"""A linear-time matcher for the POSIX extended regexes of :regex (draft-ietf-sieve-regex).

Why not `re`: Python's engine backtracks, and a user's pattern such as "a*a*a*b$" on a
64 KiB header takes hours — one script would stall the reactor for every user. This module
compiles the pattern to a small program and runs it as a Pike VM (Thompson's construction
with capture slots): time is O(len(subject) × len(program)), whatever the pattern, and
memory is O(len(program)). Captures follow leftmost-first priority like Perl/Python; POSIX
asks for leftmost-longest submatches, which only changes ${1}.. in rare ambiguous patterns.

Supported: literals, ".", "[...]" with ranges, negation and [:class:], "^", "$", groups,
"|", "*", "+", "?", "{m}", "{m,}", "{m,n}", and the GNU escapes \\w \\W \\s \\S \\d \\D.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MAX_PROGRAM = 20000
"""Largest compiled program (bounded repeats are unrolled); bigger patterns are refused."""

MAX_REPEAT = 255
"""Largest m or n in {m,n} (POSIX RE_DUP_MAX is 255)."""

_CLASSES: dict[str, Callable[[str], bool]] = {
    "alpha": lambda c: c.isascii() and c.isalpha(),
    "digit": lambda c: "0" <= c <= "9",
    "alnum": lambda c: c.isascii() and c.isalnum(),
    "upper": lambda c: "A" <= c <= "Z",
    "lower": lambda c: "a" <= c <= "z",
    "space": lambda c: c in " \t\r\n\v\f",
    "blank": lambda c: c in " \t",
    "punct": lambda c: c.isascii() and c.isprintable() and not c.isalnum() and c != " ",
    "xdigit": lambda c: c in "0123456789abcdefABCDEF",
    "cntrl": lambda c: ord(c) < 32 or ord(c) == 127,
    "print": lambda c: " " <= c <= "~",
    "graph": lambda c: "!" <= c <= "~",
}
_ESCAPES: dict[str, Callable[[str], bool]] = {
    "w": lambda c: c.isalnum() or c == "_",
    "s": lambda c: c.isspace(),
    "d": lambda c: "0" <= c <= "9",
}


class RegexError(ValueError):
    """The pattern is not a regex this engine accepts; the message says why."""


@dataclass(slots=True)
class _Node:
    kind: str  # char, cat, alt, star, group, bol, eol, empty
    pred: Callable[[str], bool] | None = None
    children: list[_Node] | None = None
    index: int = 0


class _Parser:
    def __init__(self, pattern: str, casemap: bool) -> None:
        self.p = pattern
        self.i = 0
        self.groups = 0
        self.casemap = casemap

    def fail(self, message: str) -> RegexError:
        return RegexError(f"{message} at offset {self.i}")

    def parse(self) -> _Node:
        node = self.alt()
        if self.i < len(self.p):
            raise self.fail("unmatched ')'")
        return node

    def alt(self) -> _Node:
        branches = [self.seq()]
        while self.i < len(self.p) and self.p[self.i] == "|":
            self.i += 1
            branches.append(self.seq())
        return branches[0] if len(branches) == 1 else _Node("alt", children=branches)

    def seq(self) -> _Node:
        items: list[_Node] = []
        while self.i < len(self.p) and self.p[self.i] not in "|)":
            items.append(self.repeat(self.atom()))
        return _Node("cat", children=items)

    def repeat(self, node: _Node) -> _Node:
        while self.i < len(self.p):
            ch = self.p[self.i]
            if ch == "*":
                lo, hi = 0, None
            elif ch == "+":
                lo, hi = 1, None
            elif ch == "?":
                lo, hi = 0, 1
            elif ch == "{" and self._brace() is not None:
                lo, hi = self._brace()  # type: ignore[misc]
                self.i = self.p.index("}", self.i)
            else:
                return node
            self.i += 1
            if node.kind in ("bol", "eol"):
                continue
            parts = [node] * lo
            if hi is None:
                parts.append(_Node("star", children=[node]))
            else:
                parts.extend([_Node("opt", children=[node])] * (hi - lo))
            node = _Node("cat", children=parts)
        return node

    def _brace(self) -> tuple[int, int | None] | None:
        end = self.p.find("}", self.i)
        if end < 0:
            return None
        body = self.p[self.i + 1 : end]
        lo_text, comma, hi_text = body.partition(",")
        if not lo_text.isdigit() or (hi_text and not hi_text.isdigit()):
            return None
        lo = int(lo_text)
        hi = None if comma and not hi_text else int(hi_text or lo_text)
        if lo > MAX_REPEAT or (hi is not None and (hi > MAX_REPEAT or hi < lo)):
            raise self.fail(f"repeat count over {MAX_REPEAT} or reversed")
        return lo, hi

    def atom(self) -> _Node:
        ch = self.p[self.i]
        self.i += 1
        if ch == "(":
            self.groups += 1
            index = self.groups
            inner = self.alt()
            if self.i >= len(self.p) or self.p[self.i] != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return _Node("group", children=[inner], index=index)
        if ch == ".":
            return _Node("char", pred=lambda c: True)
        if ch == "^":
            return _Node("bol")
        if ch == "$":
            return _Node("eol")
        if ch == "[":
            return self.bracket()
        if ch in "*+?":
            raise self.fail(f"nothing to repeat before '{ch}'")
        if ch == "\\":
            if self.i >= len(self.p):
                raise self.fail("trailing backslash")
            ch = self.p[self.i]
            self.i += 1
            if ch.lower() in _ESCAPES:
                test = _ESCAPES[ch.lower()]
                return _Node("char", pred=test if ch.islower() else (lambda c, t=test: not t(c)))
            if ch.isdigit():
                raise self.fail("backreferences are not supported")
        return _Node("char", pred=self._literal(ch))

    def _literal(self, ch: str) -> Callable[[str], bool]:
        if self.casemap and ch.isascii() and ch.isalpha():
            pair = ch.lower() + ch.upper()
            return lambda c: c in pair
        return lambda c: c == ch

    def bracket(self) -> _Node:
        negate = self.p.startswith("^", self.i)
        self.i += negate
        tests: list[Callable[[str], bool]] = []
        ranges: list[tuple[str, str]] = []
        first = True
        while True:
            if self.i >= len(self.p):
                raise self.fail("missing ']'")
            ch = self.p[self.i]
            if ch == "]" and not first:
                self.i += 1
                break
            first = False
            if self.p.startswith("[:", self.i):
                end = self.p.find(":]", self.i + 2)
                name = self.p[self.i + 2 : end] if end > 0 else ""
                if name not in _CLASSES:
                    raise self.fail("unknown character class")
                tests.append(_CLASSES[name])
                self.i = end + 2
                continue
            self.i += 1
            if self.p.startswith("-", self.i) and self.p[self.i + 1 : self.i + 2] not in ("]", ""):
                hi = self.p[self.i + 1]
                self.i += 2
                if hi < ch:
                    raise self.fail("reversed range")
                ranges.append((ch, hi))
            else:
                ranges.append((ch, ch))
        casemap = self.casemap

        def pred(c: str) -> bool:
            options = (c, c.lower(), c.upper()) if casemap and c.isascii() else (c,)
            hit = any(lo <= o <= hi for o in options for lo, hi in ranges) or any(
                t(c) for t in tests
            )
            return hit != negate

        return _Node("char", pred=pred)


# Program instructions: (op, a, b) with op in CHAR, SPLIT, JMP, SAVE, BOL, EOL, MATCH.
_CHAR, _SPLIT, _JMP, _SAVE, _BOL, _EOL, _MATCH = range(7)


class _Compiler:
    def __init__(self) -> None:
        self.prog: list[list] = []

    def emit(self, op: int, a: object = None, b: object = None) -> int:
        if len(self.prog) >= MAX_PROGRAM:
            raise RegexError(f"regex too large once compiled (over {MAX_PROGRAM} steps)")
        self.prog.append([op, a, b])
        return len(self.prog) - 1

    def node(self, n: _Node) -> None:
        kind = n.kind
        if kind == "char":
            self.emit(_CHAR, n.pred)
        elif kind == "bol":
            self.emit(_BOL)
        elif kind == "eol":
            self.emit(_EOL)
        elif kind == "cat":
            for child in n.children or []:
                self.node(child)
        elif kind == "group":
            self.emit(_SAVE, 2 * n.index)
            self.node((n.children or [])[0])
            self.emit(_SAVE, 2 * n.index + 1)
        elif kind == "alt":
            children = n.children or []
            jumps = []
            for k, child in enumerate(children):
                if k < len(children) - 1:
                    split = self.emit(_SPLIT)
                    self.prog[split][1] = len(self.prog)
                    self.node(child)
                    jumps.append(self.emit(_JMP))
                    self.prog[split][2] = len(self.prog)
                else:
                    self.node(child)
            for j in jumps:
                self.prog[j][1] = len(self.prog)
        elif kind == "star":
            split = self.emit(_SPLIT)
            self.prog[split][1] = len(self.prog)
            self.node((n.children or [])[0])
            self.emit(_JMP, split)
            self.prog[split][2] = len(self.prog)
        elif kind == "opt":
            split = self.emit(_SPLIT)
            self.prog[split][1] = len(self.prog)
            self.node((n.children or [])[0])
            self.prog[split][2] = len(self.prog)


@dataclass(frozen=True, slots=True)
class Regex:
    """A compiled pattern; `search` returns the captures or None."""

    program: tuple[tuple, ...]
    groups: int

    def search(self, text: str) -> list[str] | None:
        """Leftmost match anywhere in `text`: [whole, group1, ...] ("" for unset groups)."""
        return self.search_counted(text)[0]

    def search_counted(self, text: str) -> tuple[list[str] | None, int]:
        """:meth:`search` plus its work: the threads carried from one position to the
        next, never more than ``(len(text) + 1) * len(program)`` (each program step at
        most once per position). That bound is what keeps a hostile pattern linear in
        the input, and the tests check it rather than a clock."""
        prog, slots = self.program, 2 * (self.groups + 1)
        n = len(text)
        work = 0
        clist: list[tuple[int, tuple]] = []
        matched: tuple | None = None
        for pos in range(n + 1):
            if matched is None:
                start = [None] * slots
                start[0] = pos
                clist = clist + [(0, tuple(start))]  # lowest priority: a later start
            if not clist:
                break
            nlist: list[tuple[int, tuple]] = []
            seen: set[int] = set()
            stack: list[tuple[int, tuple]] = []
            ch = text[pos] if pos < n else None
            step: list[tuple[int, tuple]] = []
            for pc0, caps0 in clist:
                stack.append((pc0, caps0))
                while stack:
                    pc, caps = stack.pop()
                    if pc in seen:
                        continue
                    seen.add(pc)
                    op, a, b = prog[pc]
                    if op == _JMP:
                        stack.append((a, caps))
                    elif op == _SPLIT:
                        stack.append((b, caps))
                        stack.append((a, caps))
                    elif op == _SAVE:
                        new = list(caps)
                        new[a] = pos
                        stack.append((pc + 1, tuple(new)))
                    elif op == _BOL:
                        if pos == 0:
                            stack.append((pc + 1, caps))
                    elif op == _EOL:
                        if pos == n:
                            stack.append((pc + 1, caps))
                    elif op == _MATCH:
                        new = list(caps)
                        new[1] = pos
                        matched = tuple(new)
                        stack.clear()
                        break  # lower-priority threads are cut
                    else:
                        step.append((pc, caps))
                else:
                    continue
                break
            if ch is not None:
                for pc, caps in step:
                    if prog[pc][1](ch):
                        nlist.append((pc + 1, caps))
            clist = nlist
            work += len(clist)
            if matched is not None and not clist:
                break
        if matched is None:
            return None, work
        out = []
        for g in range(self.groups + 1):
            s, e = matched[2 * g], matched[2 * g + 1]
            out.append(text[s:e] if s is not None and e is not None else "")
        return out, work


def compile_regex(pattern: str, casemap: bool = False) -> Regex:
    """Compile a POSIX extended regex; `casemap` folds ASCII case (i;ascii-casemap)."""
    parser = _Parser(pattern, casemap)
    tree = parser.parse()
    compiler = _Compiler()
    compiler.node(tree)
    compiler.emit(_MATCH)
    program = tuple(tuple(ins) for ins in compiler.prog)
    return Regex(program, parser.groups)
