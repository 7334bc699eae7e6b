"""Checks a parsed script against the commands, tests and extensions popgate supports.

It turns the syntax tree into `Node`s whose tagged arguments are already sorted by role
(match type, comparator, address part...), so the interpreter never re-reads raw
arguments. The rules are RFC 5228 §3.2 (require comes first and names known extensions),
§2.7 (comparators and match types), §8.2 (argument shapes) and each extension's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway.sieve.errors import SieveValidationError
from gateway.sieve.matching import COMPARATORS, RELATIONS, check_regex
from gateway.sieve.parser import Argument, Command, Number, StringList, Tag, Test, parse

EXTENSIONS = frozenset(
    {
        "fileinto",
        "envelope",
        "mailbox",
        "imap4flags",
        "copy",
        "body",
        "variables",
        "relational",
        "date",
        "index",
        "regex",
        "duplicate",
        "vacation",
        "vacation-seconds",
        "encoded-character",
        "comparator-i;ascii-numeric",
        "comparator-i;octet",
        "comparator-i;ascii-casemap",
    }
)
"""Extensions a script may `require` (RFC 5228 §3.2); the capability list of ManageSieve."""

SENDING = frozenset({"vacation", "vacation-seconds", "redirect"})
"""Extensions and commands that send mail through the submission relay: accepted only
when the script's owner has an upstream with ``[upstreams.smtp]`` (``compile_script(...,
sending=True)``); otherwise refused at upload with :data:`NO_SENDING_UPSTREAM`."""

NO_SENDING_UPSTREAM = (
    "sends mail through the submission relay, which needs one of your upstreams to have "
    "[upstreams.smtp] configured; you have none"
)
"""Why a sending action is refused (the end of the upload error)."""

NEVER = frozenset({"reject", "ereject"})
"""Refused always: a POP3 message was already accepted by the provider, so refusing it
now can only mean sending a non-delivery report to its (often forged) sender: backscatter
(RFC 5429 §2.1.1 asks to refuse at SMTP time, which popgate never sees)."""

REJECT_REFUSED = (
    "is not supported: POP3 mail was already accepted by your provider, so a reject would "
    "bounce it to a possibly forged sender (backscatter); use discard or fileinto instead"
)

NEEDS_SUBMISSION = SENDING | NEVER
"""Everything that would send mail: the one refusal point (kept name, issue 16)."""

MAX_REDIRECTS = 4
"""Most redirects one run may do (RFC 5228 §4.2 asks for a limit; Pigeonhole's
``sieve_max_redirects`` default); ManageSieve announces it as MAXREDIRECTS (RFC 5804 §1.7)."""

VACATION_MIN_DAYS = 1
"""RFC 5230 §4.1: :days below 1 is raised to 1 (sites may set a higher minimum)."""

VACATION_DEFAULT_DAYS = 7
"""RFC 5230 §4.1: the period without :days."""

VACATION_MAX_DAYS = 90
"""Longest :days honoured (RFC 5230 §4.1 lets sites cap it)."""

MAX_VARIABLES = 255
"""Most distinct variables one script may set (RFC 5229 §6 lets implementations bound it)."""

MAX_VARIABLE_NAME = 64
"""Longest variable name accepted."""

DATE_PARTS = frozenset(
    {
        "year", "month", "day", "date", "julian", "hour", "minute", "second", "time",
        "iso8601", "std11", "zone", "weekday",
    }
)  # fmt: skip
"""Date parts of RFC 5260 §4.2."""

_HEADER_NAME = re.compile(r"[!-9;-~]+")
_ZONE = re.compile(r"[+-](\d\d)(\d\d)")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENCODED = re.compile(r"\$\{(hex|unicode):([^}]*)\}", re.IGNORECASE)


@dataclass(slots=True)
class Node:
    """A validated command or test: tags by role, positional arguments, children."""

    name: str
    tags: dict[str, Any]
    args: list[Any]
    tests: list[Node]
    block: list[Node] | None
    line: int
    column: int
    children: list[Node] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Tag:
    role: str
    value: str | None = None  # None, "s" string, "n" number, "l" string list
    ext: str | None = None


_MATCH = {
    "is": _Tag("match"),
    "contains": _Tag("match"),
    "matches": _Tag("match"),
    "regex": _Tag("match", None, "regex"),
    "count": _Tag("match", "s", "relational"),
    "value": _Tag("match", "s", "relational"),
    "comparator": _Tag("comparator", "s"),
}
_ADDRESS_PART = {"all": _Tag("addrpart"), "localpart": _Tag("addrpart"), "domain": _Tag("addrpart")}
_INDEX = {"index": _Tag("index", "n", "index"), "last": _Tag("last", None, "index")}
_MODIFIERS = {
    "lower": _Tag("mod40"),
    "upper": _Tag("mod40"),
    "lowerfirst": _Tag("mod30"),
    "upperfirst": _Tag("mod30"),
    "quotewildcard": _Tag("mod20"),
    "quoteregex": _Tag("mod20", None, "regex"),
    "length": _Tag("mod10"),
}


@dataclass(frozen=True, slots=True)
class _Spec:
    args: tuple[str, ...] = ()
    tags: dict[str, _Tag] = field(default_factory=dict)
    ext: str | None = None
    tests: str = ""  # "" none, "1" one test, "list" a test list
    block: bool = False
    optional_first: bool = False  # first positional may be omitted (variable name)


COMMANDS: dict[str, _Spec] = {
    "require": _Spec(("l",)),
    "if": _Spec(tests="1", block=True),
    "elsif": _Spec(tests="1", block=True),
    "else": _Spec(block=True),
    "stop": _Spec(),
    "keep": _Spec(tags={"flags": _Tag("flags", "l", "imap4flags")}),
    "discard": _Spec(),
    "fileinto": _Spec(
        ("s",),
        {
            "flags": _Tag("flags", "l", "imap4flags"),
            "copy": _Tag("copy", None, "copy"),
            "create": _Tag("create", None, "mailbox"),
        },
        "fileinto",
    ),
    "setflag": _Spec(("s", "l"), ext="imap4flags", optional_first=True),
    "addflag": _Spec(("s", "l"), ext="imap4flags", optional_first=True),
    "removeflag": _Spec(("s", "l"), ext="imap4flags", optional_first=True),
    "set": _Spec(("s", "s"), dict(_MODIFIERS), "variables"),
    "redirect": _Spec(("s",), {"copy": _Tag("copy", None, "copy")}),
    "vacation": _Spec(
        ("s",),
        {
            "days": _Tag("period", "n"),
            "seconds": _Tag("period", "n", "vacation-seconds"),
            "subject": _Tag("subject", "s"),
            "from": _Tag("from", "s"),
            "addresses": _Tag("addresses", "l"),
            "mime": _Tag("mime"),
            "handle": _Tag("handle", "s"),
        },
        "vacation",
    ),
}

TESTS: dict[str, _Spec] = {
    "address": _Spec(("l", "l"), {**_MATCH, **_ADDRESS_PART, **_INDEX}),
    "envelope": _Spec(("l", "l"), {**_MATCH, **_ADDRESS_PART}, "envelope"),
    "header": _Spec(("l", "l"), {**_MATCH, **_INDEX}),
    "exists": _Spec(("l",)),
    "size": _Spec((), {"over": _Tag("size", "n"), "under": _Tag("size", "n")}),
    "allof": _Spec(tests="list"),
    "anyof": _Spec(tests="list"),
    "not": _Spec(tests="1"),
    "true": _Spec(),
    "false": _Spec(),
    "body": _Spec(
        ("l",),
        {
            **_MATCH,
            "raw": _Tag("transform"),
            "text": _Tag("transform"),
            "content": _Tag("transform", "l"),
        },
        "body",
    ),
    "string": _Spec(("l", "l"), dict(_MATCH), "variables"),
    "hasflag": _Spec(("l", "l"), dict(_MATCH), "imap4flags", optional_first=True),
    "mailboxexists": _Spec(("l",), ext="mailbox"),
    "date": _Spec(
        ("s", "s", "l"),
        {
            **_MATCH,
            **_INDEX,
            "zone": _Tag("zone", "s", "date"),
            "originalzone": _Tag("zone", None, "date"),
        },
        "date",
    ),
    "currentdate": _Spec(("s", "l"), {**_MATCH, "zone": _Tag("zone", "s", "date")}, "date"),
    "duplicate": _Spec(
        (),
        {
            "handle": _Tag("handle", "s"),
            "header": _Tag("dupid", "s"),
            "uniqueid": _Tag("dupid", "s"),
            "seconds": _Tag("seconds", "n"),
            "last": _Tag("last"),
        },
        "duplicate",
    ),
}


def decode_encoded_characters(value: str) -> str:
    """RFC 5228 §2.4.2.4: ${hex:...} and ${unicode:...}; a malformed one stays as written."""

    def repl(m: re.Match[str]) -> str:
        items = m.group(2).split()
        try:
            if m.group(1).lower() == "hex":
                return bytes(int(x, 16) for x in items).decode("utf-8")
            chars = [int(x, 16) for x in items]
            if any(c > 0x10FFFF or 0xD800 <= c <= 0xDFFF for c in chars):
                return m.group(0)
            return "".join(chr(c) for c in chars)
        except (ValueError, UnicodeDecodeError):
            return m.group(0)

    return _ENCODED.sub(repl, value)


class _Validator:
    def __init__(self, sending: bool) -> None:
        self.sending = sending
        self.required: set[str] = set()
        self.variables: set[str] = set()

    def refuse_sending(self, name: str, where: Command | Test | Argument) -> None:
        if name in NEVER:
            raise self.fail(where, f"{name} {REJECT_REFUSED}")
        if name in SENDING and not self.sending:
            raise self.fail(where, f"{name} {NO_SENDING_UPSTREAM}")

    def fail(self, where: Command | Test | Argument, message: str) -> SieveValidationError:
        return SieveValidationError(where.line, where.column, message)

    def need(self, ext: str | None, where: Command | Test | Argument, what: str) -> None:
        if ext is not None and ext not in self.required:
            raise self.fail(where, f'{what} needs require "{ext}"')

    def commands(self, commands: list[Command], top: bool) -> list[Node]:
        out: list[Node] = []
        previous = None
        seen_other = False
        for cmd in commands:
            if cmd.name == "require":
                if not top or seen_other:
                    raise self.fail(cmd, "require must come before any other command")
                self.require(cmd)
                previous = cmd.name
                continue
            seen_other = True
            if cmd.name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise self.fail(cmd, f"{cmd.name} must follow if or elsif")
            node = self.node(cmd, COMMANDS, "command")
            if cmd.name in ("elsif", "else"):
                out[-1].children.append(node)
            else:
                out.append(node)
            previous = cmd.name
        return out

    def require(self, cmd: Command) -> None:
        if len(cmd.args) != 1 or not isinstance(cmd.args[0], StringList) or cmd.tests:
            raise self.fail(cmd, "require takes one string list")
        for name in cmd.args[0].values:
            lowered = name.lower() if name.lower().startswith("comparator-") else name
            self.refuse_sending(lowered, cmd.args[0])
            if lowered not in EXTENSIONS:
                raise self.fail(cmd.args[0], f'unknown extension "{name}"')
            self.required.add(lowered)

    def node(self, item: Command | Test, table: dict[str, _Spec], kind: str) -> Node:
        self.refuse_sending(item.name, item)
        spec = table.get(item.name)
        if spec is None:
            raise self.fail(item, f"unknown {kind} '{item.name}'")
        self.need(spec.ext, item, f"{kind} {item.name}")
        tags: dict[str, Any] = {}
        positional: list[Argument] = []
        args = list(item.args)
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if not isinstance(arg, Tag):
                positional.append(arg)
                continue
            if positional:
                raise self.fail(arg, f"tag :{arg.name} must come before positional arguments")
            tag = spec.tags.get(arg.name)
            if tag is None:
                raise self.fail(arg, f"{item.name} has no tag :{arg.name}")
            self.need(tag.ext, arg, f":{arg.name}")
            if tag.role in tags or (tag.role == "match" and "match" in tags):
                raise self.fail(arg, f":{arg.name} conflicts with an earlier tag")
            value: Any = True
            if tag.value is not None:
                if i >= len(args):
                    raise self.fail(arg, f":{arg.name} needs an argument")
                value = self.value(args[i], tag.value, f":{arg.name}")
                i += 1
            if tag.role == "comparator":
                tags["comparator"] = value
            elif tag.role == "match":
                tags["match"] = arg.name
                if tag.value is not None:
                    tags["relation"] = value
            elif tag.role.startswith("mod"):
                tags[tag.role] = arg.name
            elif tag.role in ("addrpart", "transform", "zone", "size", "dupid", "period"):
                tags[tag.role] = arg.name if tag.value is None else (arg.name, value)
            else:
                tags[tag.role] = value
        if item.name == "size" and "size" not in tags:
            raise self.fail(item, "size needs :over or :under")
        values = self.positional(item, spec, positional)
        node = Node(item.name, tags, values, [], None, item.line, item.column)
        self.tests_of(item, spec, node)
        if isinstance(item, Command):
            if spec.block and item.block is None:
                raise self.fail(item, f"{item.name} needs a block")
            if not spec.block and item.block is not None:
                raise self.fail(item, f"{item.name} takes no block")
            if item.block is not None:
                node.block = self.commands(item.block, False)
        self.check(node, item)
        return node

    def value(self, arg: Argument, kind: str, what: str) -> Any:
        if kind == "n":
            if not isinstance(arg, Number):
                raise self.fail(arg, f"{what} needs a number")
            return arg.value
        if not isinstance(arg, StringList):
            raise self.fail(arg, f"{what} needs a string{' list' if kind == 'l' else ''}")
        values = [self.string(v) for v in arg.values]
        if kind == "s":
            if not arg.single and len(values) != 1:
                raise self.fail(arg, f"{what} needs a single string, not a list")
            return values[0]
        return values

    def string(self, value: str) -> str:
        if "encoded-character" in self.required and "${" in value:
            return decode_encoded_characters(value)
        return value

    def positional(self, item: Command | Test, spec: _Spec, given: list[Argument]) -> list[Any]:
        kinds = spec.args
        if spec.optional_first and len(given) == len(kinds) - 1:
            kinds = kinds[1:]
            prefix: list[Any] = [None]
        else:
            prefix = []
        if len(given) != len(kinds):
            raise self.fail(
                item, f"{item.name} takes {len(kinds)} positional argument(s), got {len(given)}"
            )
        return prefix + [self.value(a, k, item.name) for a, k in zip(given, kinds, strict=True)]

    def tests_of(self, item: Command | Test, spec: _Spec, node: Node) -> None:
        if spec.tests == "":
            if item.tests:
                raise self.fail(item, f"{item.name} takes no test")
            return
        if not item.tests:
            raise self.fail(item, f"{item.name} needs a test")
        if spec.tests == "1" and len(item.tests) != 1:
            raise self.fail(item, f"{item.name} takes exactly one test")
        node.tests = [self.node(t, TESTS, "test") for t in item.tests]

    def check(self, node: Node, item: Command | Test) -> None:
        """Rules that span arguments: comparator, relation, regex, zones, names."""
        tags = node.tags
        comparator = tags.get("comparator")
        if comparator is not None:
            if comparator not in COMPARATORS:
                raise self.fail(item, f'unknown comparator "{comparator}"')
            if comparator == "i;ascii-numeric":
                self.need("comparator-i;ascii-numeric", item, "comparator i;ascii-numeric")
                if tags.get("match") in ("contains", "matches", "regex"):
                    raise self.fail(item, f":{tags['match']} cannot use i;ascii-numeric")
        if "relation" in tags and "${" not in tags["relation"]:
            if tags["relation"].lower() not in RELATIONS:
                raise self.fail(item, f'unknown relational operator "{tags["relation"]}"')
            tags["relation"] = tags["relation"].lower()
        if tags.get("match") == "regex":
            for key in node.args[-1] if node.args else []:
                if "${" in key and "variables" in self.required:
                    continue
                problem = check_regex(key)
                if problem is not None:
                    raise self.fail(item, problem)
        if "last" in tags and "index" not in tags and node.name != "duplicate":
            raise self.fail(item, ":last needs :index")
        if "index" in tags and tags["index"] < 1:
            raise self.fail(item, ":index counts from 1")
        zone = tags.get("zone")
        if isinstance(zone, tuple) and not _ZONE.fullmatch(zone[1]):
            raise self.fail(item, f'zone "{zone[1]}" is not +hhmm or -hhmm')
        if node.name in ("date", "currentdate"):
            part = node.args[-2]
            if "${" not in part and part.lower() not in DATE_PARTS:
                raise self.fail(item, f'unknown date part "{part}"')
        if node.name in ("header", "address", "exists", "date"):
            names = node.args[0] if node.name != "date" else [node.args[0]]
            for name in names:
                if "${" not in name and not _HEADER_NAME.fullmatch(name):
                    raise self.fail(item, f'invalid header name "{name}"')
        if node.name == "envelope":
            for part in node.args[0]:
                if part.lower() not in ("from", "to") and "${" not in part:
                    raise self.fail(item, f'unknown envelope part "{part}"')
        if node.name == "set":
            self.variable_name(item, node.args[0])

        if node.name in ("setflag", "addflag", "removeflag", "hasflag") and node.args[0]:
            self.need("variables", item, "a flag variable")
            for name in [node.args[0]] if isinstance(node.args[0], str) else node.args[0]:
                self.variable_name(item, name)

    def variable_name(self, item: Command | Test, name: str) -> None:
        if not _VARIABLE_NAME.fullmatch(name) or len(name) > MAX_VARIABLE_NAME:
            raise self.fail(item, f'invalid variable name "{name}"')
        self.variables.add(name.lower())
        if len(self.variables) > MAX_VARIABLES:
            raise self.fail(item, f"more than {MAX_VARIABLES} variables")


@dataclass(slots=True)
class Script:
    """A validated script, ready for `interpreter.run`; `required` lists its extensions."""

    commands: list[Node]
    required: frozenset[str]


def compile_script(source: str | bytes, *, sending: bool = False) -> Script:
    """Parse and validate a script (what PUTSCRIPT and CHECKSCRIPT do, RFC 5804 §2.6).

    ``sending``: the owner has an upstream that can send (``[upstreams.smtp]``), so
    ``redirect`` and ``vacation`` are allowed; ``reject``/``ereject`` never are.
    Raises SieveSyntaxError (or its subclass SieveValidationError) with line and column.
    """
    validator = _Validator(sending)
    commands = validator.commands(parse(source), True)
    return Script(commands, frozenset(validator.required))
