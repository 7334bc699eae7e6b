"""Runs a validated script against one message and returns its final actions (RFC 5228 §2.10).

Sans-I/O: the caller passes the message bytes, the `Envelope` and an environment object
(`SieveEnvironment`) that answers the few questions the script may ask about the outside
world; nothing here touches a store, a socket or the reactor.

The envelope of POP3 mail: there is no SMTP transaction at the gateway, so popgate uses what
the upstream recorded. `Envelope.mail_from` is the Return-Path (RFC 5321 §4.4) of the
message, "" for a null reverse-path; `Envelope.rcpt_to` is the upstream's own address — the
mailbox the POP3 account belongs to — or the Delivered-To field when the provider adds one.

A runtime error (RFC 5228 §2.10.6) never loses mail: `run` returns the implicit keep to
INBOX, no other action, and the error text for the caller to log.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from gateway.sieve import dates
from gateway.sieve.actions import (
    INBOX,
    Action,
    Discard,
    DuplicateMark,
    FileInto,
    Keep,
    Redirect,
    Result,
    Vacation,
    is_inbox,
    merge_flags,
)
from gateway.sieve.errors import SieveRuntimeError
from gateway.sieve.matching import check_regex, match, quote_regex, quote_wildcard
from gateway.sieve.message import Address, SieveMessage, parse_addresses
from gateway.sieve.validator import (
    MAX_REDIRECTS,
    VACATION_DEFAULT_DAYS,
    VACATION_MAX_DAYS,
    VACATION_MIN_DAYS,
    Node,
    Script,
)

MAX_ACTIONS = 32
"""Most actions one run may take (Pigeonhole's sieve_max_actions); more is a runtime error."""

MAX_VARIABLE_SIZE = 4096
"""Longest value a variable holds, in characters; longer values are cut (RFC 5229 §6)."""

DUPLICATE_DEFAULT_PERIOD = 7 * 24 * 3600
"""How long a duplicate ID is remembered without :seconds (RFC 7352 §3.3 leaves it open)."""

DUPLICATE_MAX_PERIOD = 30 * 24 * 3600
"""Upper bound on :seconds (RFC 7352 §3.3 lets an implementation cap it)."""

_VARIABLE_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*|[0-9]+)\}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The message's envelope as Sieve's `envelope` test sees it (RFC 5228 §5.4)."""

    mail_from: str
    rcpt_to: str


class SieveEnvironment(Protocol):
    """What a running script may ask of the world; the fetcher implements it on its store."""

    def mailbox_exists(self, name: str) -> bool:
        """True if the user's mailbox `name` exists now (RFC 5490 §3.1)."""
        ...

    def seen(self, id: str, handle: str, period: int) -> bool:
        """True if (handle, id) was recorded within the last `period` seconds (RFC 7352)."""
        ...

    def now(self) -> dt.datetime:
        """The current time, timezone-aware; its zone is the "local" zone of RFC 5260 §4."""
        ...


class _Stop(Exception):
    pass


class _Run:
    def __init__(
        self, script: Script, message: bytes, envelope: Envelope, env: SieveEnvironment
    ) -> None:
        self.required = script.required
        self.variables_on = "variables" in script.required
        self.msg = SieveMessage(message)
        self.envelope = envelope
        self.env = env
        self.variables: dict[str, str] = {}
        self.match_vars: list[str] = []
        self.flags: tuple[str, ...] = ()
        self.actions: list[Action] = []
        self.count = 0
        self.implicit_keep = True
        self.duplicates: list[DuplicateMark] = []
        self._now: dt.datetime | None = None

    # -- strings and variables (RFC 5229 §3) ------------------------------------------

    def expand(self, value: str) -> str:
        if not self.variables_on or "${" not in value:
            return value

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.isdigit():
                index = int(name)
                return self.match_vars[index] if index < len(self.match_vars) else ""
            return self.variables.get(name.lower(), "")

        return _VARIABLE_REF.sub(repl, value)

    def expand_all(self, values: Iterable[str]) -> list[str]:
        return [self.expand(v) for v in values]

    # -- commands ----------------------------------------------------------------------

    def block(self, nodes: list[Node]) -> None:
        for node in nodes:
            self.command(node)

    def command(self, node: Node) -> None:
        name = node.name
        if name == "if":
            for branch in [node, *node.children]:
                if branch.name == "else" or self.test(branch.tests[0]):
                    assert branch.block is not None
                    self.block(branch.block)
                    return
        elif name == "stop":
            raise _Stop
        elif name == "keep":
            self.add(Keep(self.flag_arg(node)))
            self.implicit_keep = False
        elif name == "discard":
            self.add(Discard())
            self.implicit_keep = False
        elif name == "fileinto":
            mailbox = self.expand(node.args[0])
            create = bool(node.tags.get("create"))
            if not mailbox:
                raise SieveRuntimeError(f"line {node.line}: fileinto an empty mailbox name")
            if not create and not is_inbox(mailbox) and not self.env.mailbox_exists(mailbox):
                raise SieveRuntimeError(
                    f'line {node.line}: mailbox "{mailbox}" does not exist (use :create)'
                )
            flags = self.flag_arg(node)
            self.add(Keep(flags) if is_inbox(mailbox) else FileInto(mailbox, flags, create))
            if not node.tags.get("copy"):
                self.implicit_keep = False
        elif name in ("setflag", "addflag", "removeflag"):
            self.flag_command(node)
        elif name == "set":
            self.set_variable(node)
        elif name == "redirect":
            self.redirect(node)
        elif name == "vacation":
            self.vacation(node)
        else:  # validated scripts hold no other command
            raise SieveRuntimeError(f"line {node.line}: unsupported command {name}")

    def add(self, action: Action) -> None:
        self.count += 1
        if self.count > MAX_ACTIONS:
            raise SieveRuntimeError(f"more than {MAX_ACTIONS} actions")
        self.actions.append(action)

    def flag_arg(self, node: Node) -> tuple[str, ...]:
        if "flags" in node.tags:
            return _flag_list(self.expand_all(node.tags["flags"]))
        return self.flags

    def flag_command(self, node: Node) -> None:
        variable, values = node.args
        given = _flag_list(self.expand_all(values))
        current = self.flags if variable is None else _flag_list([self.get(variable)])
        if node.name == "setflag":
            new = given
        elif node.name == "addflag":
            new = merge_flags(current, given)
        else:
            drop = {f.lower() for f in given}
            new = tuple(f for f in current if f.lower() not in drop)
        if variable is None:
            self.flags = new
        else:
            self.variables[variable.lower()] = " ".join(new)

    def redirect(self, node: Node) -> None:
        """RFC 5228 §4.2: one address; a repeat to the same address is one redirect."""
        address = self.expand(node.args[0]).strip()
        parsed = parse_addresses(address)
        if len(parsed) != 1 or parsed[0].domain is None or not parsed[0].localpart:
            raise SieveRuntimeError(f'line {node.line}: redirect to an invalid address "{address}"')
        target = parsed[0].all
        if not any(
            isinstance(a, Redirect) and a.address.lower() == target.lower() for a in self.actions
        ):
            redirects = sum(isinstance(a, Redirect) for a in self.actions)
            if redirects >= MAX_REDIRECTS:
                raise SieveRuntimeError(f"more than {MAX_REDIRECTS} redirects")
            self.add(Redirect(target, bool(node.tags.get("copy"))))
        if not node.tags.get("copy"):
            self.implicit_keep = False

    def vacation(self, node: Node) -> None:
        """RFC 5230 §4: at most one per run (§4.7 makes a second one an error)."""
        if any(isinstance(a, Vacation) for a in self.actions):
            raise SieveRuntimeError(f"line {node.line}: vacation more than once")
        kind, amount = node.tags.get("period", ("days", VACATION_DEFAULT_DAYS))
        if kind == "days":
            period = min(max(amount, VACATION_MIN_DAYS), VACATION_MAX_DAYS) * 86400
        else:  # RFC 6131 §2: :seconds 0 means "always reply"; capped like :days
            period = min(amount, VACATION_MAX_DAYS * 86400)
        reason = self.expand(node.args[0])
        subject = node.tags.get("subject")
        sender = node.tags.get("from")
        addresses = tuple(self.expand_all(node.tags.get("addresses", ())))
        mime = bool(node.tags.get("mime"))
        handle = node.tags.get("handle")
        if handle is None:
            # RFC 5230 §4.2: without :handle, the reply's content identifies it
            handle = "\x00".join(
                [reason, subject or "", sender or "", " ".join(addresses), str(mime)]
            )
        self.add(
            Vacation(
                reason=reason,
                handle=self.expand(handle),
                period=period,
                subject=None if subject is None else self.expand(subject),
                from_address=None if sender is None else self.expand(sender),
                addresses=addresses,
                mime=mime,
            )
        )

    def get(self, name: str) -> str:
        return self.variables.get(name.lower(), "")

    def set_variable(self, node: Node) -> None:
        """RFC 5229 §4: modifiers apply from highest precedence to lowest."""
        value = self.expand(node.args[1])
        for role in ("mod40", "mod30", "mod20", "mod10"):
            modifier = node.tags.get(role)
            if modifier is None:
                continue
            if modifier == "lower":
                value = value.lower()
            elif modifier == "upper":
                value = value.upper()
            elif modifier == "lowerfirst":
                value = value[:1].lower() + value[1:]
            elif modifier == "upperfirst":
                value = value[:1].upper() + value[1:]
            elif modifier == "quotewildcard":
                value = quote_wildcard(value)
            elif modifier == "quoteregex":
                value = quote_regex(value)
            elif modifier == "length":
                value = str(len(value))
        self.variables[node.args[0].lower()] = value[:MAX_VARIABLE_SIZE]

    # -- tests ---------------------------------------------------------------------------

    def test(self, node: Node) -> bool:
        name = node.name
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(node.tests[0])
        if name == "allof":
            return all(self.test(t) for t in node.tests)
        if name == "anyof":
            return any(self.test(t) for t in node.tests)
        if name == "exists":
            return all(self.msg.has_header(h) for h in self.expand_all(node.args[0]))
        if name == "size":
            kind, limit = node.tags["size"]
            return self.msg.size > limit if kind == "over" else self.msg.size < limit
        if name == "mailboxexists":
            return all(self.env.mailbox_exists(m) for m in self.expand_all(node.args[0]))
        if name == "duplicate":
            return self.duplicate(node)
        return self.compare(node, self.values(node), node.args[-1])

    def values(self, node: Node) -> Iterable[str]:
        name = node.name
        if name == "header":
            return [v for h in self.expand_all(node.args[0]) for v in self.indexed(node, h)]
        if name == "address":
            values = [
                v for h in self.expand_all(node.args[0]) for v in self.indexed(node, h, raw=True)
            ]
            return self.address_parts(node, [a for v in values for a in parse_addresses(v)])
        if name == "envelope":
            return self.envelope_values(node)
        if name == "body":
            return self.body_values(node)
        if name == "string":
            values = self.expand_all(node.args[0])
            if node.tags.get("match") == "count":
                return [v for v in values if v]
            return values
        if name == "hasflag":
            if node.args[0] is None:
                return self.flags
            return _flag_list([self.get(v) for v in self.expand_all(node.args[0])])
        if name == "date":
            header = self.expand(node.args[0])
            found = [dates.parse_header_date(v) for v in self.indexed(node, header)]
            return [self.date_value(node, when) for when in found if when is not None]
        if name == "currentdate":
            if self._now is None:
                self._now = self.env.now()
            return [self.date_value(node, self._now, current=True)]
        raise SieveRuntimeError(f"line {node.line}: unsupported test {name}")

    def indexed(self, node: Node, header: str, raw: bool = False) -> list[str]:
        values = self.msg.raw_values(header) if raw else self.msg.header_values(header)
        index = node.tags.get("index")
        if index is None:
            return values
        position = len(values) - index if node.tags.get("last") else index - 1
        return [values[position]] if 0 <= position < len(values) else []

    def address_parts(self, node: Node, addresses: Iterable[Address]) -> list[str]:
        part = node.tags.get("addrpart", "all")
        out = []
        for address in addresses:
            if part == "all":
                out.append(address.all)
            elif part == "localpart":
                out.append(address.localpart)
            elif address.domain is not None:
                out.append(address.domain)
        return out

    def envelope_values(self, node: Node) -> list[str]:
        out: list[str] = []
        for part in self.expand_all(node.args[0]):
            value = self.envelope.mail_from if part.lower() == "from" else self.envelope.rcpt_to
            value = value.strip()
            if value.startswith("<") and value.endswith(">"):
                value = value[1:-1]
            if value == "":
                if node.tags.get("addrpart", "all") == "all":
                    out.append("")
                continue
            out.extend(self.address_parts(node, parse_addresses(value)))
        return out

    def body_values(self, node: Node) -> list[str]:
        transform = node.tags.get("transform", "text")
        if transform == "raw":
            body = self.msg.raw_body
            return [body.decode("utf-8", "replace")] if body else []
        if transform == "text":
            return [p.text for p in self.msg.body_parts(None, True)]
        _name, types = transform
        return [p.text for p in self.msg.body_parts(self.expand_all(types), False)]

    def date_value(self, node: Node, when: dt.datetime, current: bool = False) -> str:
        zone = node.tags.get("zone")
        if isinstance(zone, tuple):
            when = when.astimezone(dates.zone_of(self.expand(zone[1])))
        elif zone is None and not current:
            if self._now is None:
                self._now = self.env.now()
            when = when.astimezone(self._now.tzinfo)
        return dates.date_part(when, self.expand(node.args[-2]))

    def compare(self, node: Node, values: Iterable[str], keys: list[str]) -> bool:
        match_type = node.tags.get("match", "is")
        comparator = self.expand(node.tags.get("comparator", "i;ascii-casemap"))
        relation = node.tags.get("relation")
        if relation is not None:
            relation = self.expand(relation).lower()
            if relation not in ("gt", "ge", "lt", "le", "eq", "ne"):
                raise SieveRuntimeError(f"line {node.line}: bad relational operator {relation}")
        keys = self.expand_all(keys)
        if match_type == "regex":
            for key in keys:
                problem = check_regex(key)
                if problem is not None:
                    raise SieveRuntimeError(f"line {node.line}: {problem}")
        matched, captures = match(values, keys, match_type, comparator, relation)
        if matched and captures is not None and self.variables_on:
            self.match_vars = captures
        return matched

    def duplicate(self, node: Node) -> bool:
        """RFC 7352 §3: the ID is tracked whatever the answer; the caller records it."""
        kind_value = node.tags.get("dupid")
        if kind_value is not None and kind_value[0] == "uniqueid":
            unique: str | None = self.expand(kind_value[1])
        else:
            header = self.expand(kind_value[1]) if kind_value else "message-id"
            found = self.msg.header_values(header)
            unique = found[0].strip() if found else None
        if not unique:
            return False
        handle = self.expand(node.tags.get("handle", ""))
        period = min(node.tags.get("seconds", DUPLICATE_DEFAULT_PERIOD), DUPLICATE_MAX_PERIOD)
        seen = self.env.seen(unique, handle, period)
        self.duplicates.append(DuplicateMark(unique, handle, period, bool(node.tags.get("last"))))
        return seen

    # -- result --------------------------------------------------------------------------

    def result(self) -> Result:
        actions = list(self.actions)
        if self.implicit_keep:
            actions.append(Keep(self.flags))
        return Result(_merge(actions), self.implicit_keep, None, self.duplicates)


def _flag_list(values: Iterable[str]) -> tuple[str, ...]:
    """RFC 5232 §3: each string is a space-separated list of flags; duplicates dropped."""
    return merge_flags((), tuple(f for v in values for f in v.split()))


def _merge(actions: list[Action]) -> list[Action]:
    """One final action per mailbox, flags united; Keep absorbs fileinto "INBOX"."""
    out: list[Action] = []
    where: dict[str, int] = {}
    for action in actions:
        if isinstance(action, Redirect | Vacation):
            out.append(action)
            continue
        if isinstance(action, Discard):
            if not any(isinstance(a, Discard) for a in out):
                out.append(action)
            continue
        key = INBOX if isinstance(action, Keep) else action.mailbox
        if key not in where:
            where[key] = len(out)
            out.append(action)
            continue
        prior = out[where[key]]
        flags = merge_flags(prior.flags, action.flags)
        if isinstance(prior, Keep):
            out[where[key]] = Keep(flags)
        else:
            assert isinstance(action, FileInto)
            out[where[key]] = FileInto(prior.mailbox, flags, prior.create or action.create)
    return out


def run(script: Script, message: bytes, envelope: Envelope, env: SieveEnvironment) -> Result:
    """Execute `script` for one message; never raises for a runtime problem.

    On a runtime error (or any unexpected failure) the result is the implicit keep to
    INBOX without flags, with `error` describing what went wrong (RFC 5228 §2.10.6).
    """
    state = _Run(script, message, envelope, env)
    try:
        state.block(script.commands)
    except _Stop:
        pass
    except SieveRuntimeError as exc:
        return Result([Keep()], True, str(exc), state.duplicates)
    except Exception as exc:
        return Result([Keep()], True, f"internal error: {exc!r}", state.duplicates)
    return state.result()
