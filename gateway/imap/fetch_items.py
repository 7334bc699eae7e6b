"""FETCH item rendering: turns parsed fetch items into a per-message plan and wire bytes.

RFC 3501 §6.4.5 (FETCH) and §7.4.2 (FETCH response). The plan is compiled once per
command so the per-message loop is a flat dispatch over small integer codes with
bytes joins, which keeps ``FETCH 1:* (FLAGS UID RFC822.SIZE ENVELOPE BODYSTRUCTURE)``
over 10,000 messages well under a second of Python work: ENVELOPE and BODYSTRUCTURE
are already wire forms (computed at ingest), flag lists are formatted once per distinct
flag set and cached.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.imap import wire
from gateway.imap.command import BinarySection, BodySection, FetchAttr, FetchItem
from gateway.imap.view import flag_list
from gateway.message.binary import binary_section
from gateway.message.preview import preview
from gateway.message.sections import section, top_header_cutter
from gateway.store.interfaces import MessageInfo, MessageSummary

# Item codes of a compiled plan (small ints: the per-message loop compares them).
FLAGS = 0
INTERNALDATE = 1
RFC822_SIZE = 2
ENVELOPE = 3
BODY = 4
BODYSTRUCTURE = 5
UID = 6
MODSEQ = 7
SECTION = 8
SAVEDATE = 9  # RFC 8514 §4.1
EMAILID = 10  # RFC 8474 §5.1
THREADID = 11  # RFC 8474 §5.2
PREVIEW = 12  # RFC 8970 §3

_ATTR_CODES = {
    "SAVEDATE": SAVEDATE,
    "EMAILID": EMAILID,
    "THREADID": THREADID,
    "PREVIEW": PREVIEW,
    "FLAGS": FLAGS,
    "INTERNALDATE": INTERNALDATE,
    "RFC822.SIZE": RFC822_SIZE,
    "ENVELOPE": ENVELOPE,
    "BODY": BODY,
    "BODYSTRUCTURE": BODYSTRUCTURE,
    "UID": UID,
    "MODSEQ": MODSEQ,
}

INLINE_LITERAL_LIMIT = 1024
"""A body literal longer than this is returned as its own chunk rather than copied into
a joined response line: the handler then copies it at most once (into its flush
buffer, or in pieces for a large one). Each copy of a 33 MB ``UID FETCH 1:500
BODY.PEEK[]`` costs a few milliseconds; only short literals (header fields) are worth
joining."""

FLAG_CACHE_LIMIT = 4096
"""Distinct flag sets whose wire form is kept; a mailbox rarely has more than a few dozen."""

_flag_cache: dict[frozenset[str], bytes] = {}


def flags_item(flags: frozenset[str]) -> bytes:
    """``FLAGS (...)`` for a flag set, formatted once per distinct set (bounded cache)."""
    item = _flag_cache.get(flags)
    if item is None:
        if len(_flag_cache) >= FLAG_CACHE_LIMIT:
            _flag_cache.clear()
        item = b"FLAGS " + flag_list(flags)
        _flag_cache[flags] = item
    return item


@dataclass(frozen=True)
class Section:
    """One body-content item: ``BODY[...]``, ``BODY.PEEK[...]`` or an RFC822 form.

    ``name`` is the response item name (RFC 3501 §7.4.2: ``BODY[section]<origin>``; the
    RFC822 forms answer under their own names); ``seen`` says whether fetching it sets
    ``\\Seen`` (§6.4.5: everything but BODY.PEEK and RFC822.HEADER does).
    """

    name: bytes
    part: tuple[int, ...]
    kind: str
    fields: tuple[str, ...]
    partial: tuple[int, int] | None
    seen: bool
    binary: int = 0  # 0: BODY/RFC822 forms; BINARY_CONTENT or BINARY_SIZE (RFC 3516)


BINARY_CONTENT = 1
BINARY_SIZE = 2


@dataclass(frozen=True)
class FetchPlan:
    """A compiled FETCH: the items in request order plus what the loop must prepare."""

    steps: tuple[tuple[int, Section | None], ...]
    needs_bytes: bool  # some item needs the raw message
    sets_seen: bool  # some item sets \Seen when the mailbox is read-write
    has_flags: bool
    has_uid: bool
    has_modseq: bool
    template: bytes | None = None
    """For a plan of stored items only (:data:`_TEMPLATE_ITEMS`), the whole response as
    one bytes format, filled by :attr:`picks` from ``(seq, FLAGS item, modseq, *info)``;
    None otherwise."""
    picks: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None
    summary_picks: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None
    """For a plan of the items a :class:`MessageSummary` holds (not BODY): fills
    :attr:`template` from ``(seq, FLAGS item, *summary)`` (gateway.imap.fetch_stored)."""
    flags_only: bool = False
    has_threadid: bool = False  # THREADID is asked for: the loop derives it per batch
    head_template: bytes | None = None
    """For a plan of stored items and whole-message ``BODY[HEADER]`` /
    ``BODY[HEADER.FIELDS (...)]`` sections (a client's list view), the whole response
    as one bytes format; :attr:`head_steps` fill it (:func:`render`)."""
    head_steps: tuple[tuple[int, Callable[[bytes, str], bytes] | None], ...] = ()
    """Per item of :attr:`head_template`: (index into ``(seq, FLAGS item, modseq,
    *info)``, None) for a stored item, (-1, cutter) for a header section."""
    header_names: tuple[str, ...] | None = None
    """For a plan of FLAGS, UID, MODSEQ, RFC822.SIZE and one whole-message
    ``BODY.PEEK[HEADER.FIELDS (names)]`` (a client's list view): the names. Its messages
    come from :meth:`~gateway.store.interfaces.Messages.message_header_fields`, and
    :attr:`summary_picks` fill :attr:`template` from ``(seq, FLAGS item, *head,
    len(head.fields))`` (gateway.imap.fetch_stored)."""


_TEMPLATE_ITEMS: dict[int, tuple[bytes, str | None]] = {
    FLAGS: (b"%s", None),
    MODSEQ: (b"MODSEQ (%d)", "modseq"),
    UID: (b"UID %d", "uid"),
    RFC822_SIZE: (b"RFC822.SIZE %d", "size"),
    ENVELOPE: (b"ENVELOPE %s", "envelope"),
    BODYSTRUCTURE: (b"BODYSTRUCTURE %s", "bodystructure"),
    BODY: (b"BODY %s", "body"),
}
"""Items whose wire form is a stored value in a fixed frame (the field holding it): a plan
of only these is rendered by one ``%`` format per message (the FETCH 1:* of a client's
first sync: about three times faster than the general item loop, issue 19)."""


def _info_index(field: str | None) -> int:
    """Where ``field`` sits in ``(seq, FLAGS item, modseq, *info)`` (:func:`render`)."""
    if field is None:
        return 1
    return 2 if field == "modseq" else 3 + MessageInfo._fields.index(field)


def _template(steps: Sequence[tuple[int, Section | None]]) -> tuple[bytes | None, Any, Any]:
    """The plan's one-format template, its picks from a :class:`MessageInfo`'s values
    and, if every item is in a :class:`MessageSummary`, its picks from a summary's."""
    if not steps or any(code not in _TEMPLATE_ITEMS for code, _ in steps):
        return None, None, None
    forms = [_TEMPLATE_ITEMS[code] for code, _ in steps]
    template = b"* %d FETCH (" + b" ".join(form for form, _ in forms) + b")\r\n"
    picks = operator.itemgetter(0, *(_info_index(field) for _, field in forms))
    if any(field is not None and field not in MessageSummary._fields for _, field in forms):
        return template, picks, None
    summary = operator.itemgetter(
        0, *(1 if field is None else 2 + MessageSummary._fields.index(field) for _, field in forms)
    )
    return template, picks, summary


PLANS_KEPT = 256
"""Distinct requests whose plans are kept (each cache below)."""

_BY_IDENTITY: dict[tuple[int, object], tuple[tuple[FetchItem, ...], Any]] = {}
"""What was worked out for a request's items, by the items tuple's identity: the grammar
hands out the same tuple for the same request text (``fetch_grammar._PARSED_TAILS``), and
looking it up by value hashes every item through its dataclass ``__hash__`` (~13,000
instructions per FETCH of the mix, issue 19 session 6). The entry holds the tuple, so its
id is not reused while it is kept."""


def _by_identity(
    items: tuple[FetchItem, ...], question: object, answer: Callable[..., Any], *args: Any
) -> Any:
    """``answer(items, *args)``, kept in :data:`_BY_IDENTITY` under ``question``."""
    key = (id(items), question)
    kept = _BY_IDENTITY.get(key)
    if kept is not None and kept[0] is items:
        return kept[1]
    value = answer(items, *args)
    if len(_BY_IDENTITY) >= PLANS_KEPT:
        _BY_IDENTITY.clear()
    _BY_IDENTITY[key] = (items, value)
    return value


def compiled_plan(items: tuple[FetchItem, ...], uid_mode: bool, with_modseq: bool) -> FetchPlan:
    """:func:`compile_plan`, once per distinct request: a client repeats the same few
    (mbsync's ``BODY.PEEK[]`` 10,000 times in a first sync; issue 19). Items and plans
    are frozen, so a plan is shared safely."""
    return _by_identity(items, (uid_mode, with_modseq), _plan_by_value, uid_mode, with_modseq)


def asks_modseq(items: tuple[FetchItem, ...]) -> bool:
    """Whether MODSEQ is among the items (RFC 7162 §3.1.4.1: it enables CONDSTORE); once
    per distinct item list, as the plan is."""
    return _by_identity(items, asks_modseq, _names_modseq)


def _names_modseq(items: tuple[FetchItem, ...]) -> bool:
    return any(isinstance(item, FetchAttr) and item.name.upper() == "MODSEQ" for item in items)


@functools.lru_cache(maxsize=PLANS_KEPT)
def _plan_by_value(items: tuple[FetchItem, ...], uid_mode: bool, with_modseq: bool) -> FetchPlan:
    """The plan of items equal to earlier ones (the same request parsed again)."""
    return compile_plan(items, uid_mode, with_modseq)


def compile_plan(items: Iterable[FetchItem], uid_mode: bool, with_modseq: bool) -> FetchPlan:
    """Compile parsed items; duplicates collapse to their first occurrence.

    ``uid_mode`` adds UID (RFC 3501 §6.4.8: UID FETCH always returns it); ``with_modseq``
    adds MODSEQ (RFC 7162 §3.1.4.1: CHANGEDSINCE implies it, and once CONDSTORE is
    active every FETCH response carries it). Implied items go after the requested ones.
    """
    steps: list[tuple[int, Section | None]] = []
    seen_names: set[bytes] = set()
    codes: set[int] = set()
    section_index: dict[bytes, int] = {}
    for item in items:
        if isinstance(item, FetchAttr):
            name = item.name.upper()
            if name in _ATTR_CODES:
                code = _ATTR_CODES[name]
                if code not in codes:
                    codes.add(code)
                    steps.append((code, None))
                continue
            if name == "RFC822":
                sec = Section(b"RFC822", (), "", (), None, True)
            elif name == "RFC822.HEADER":
                sec = Section(b"RFC822.HEADER", (), "HEADER", (), None, False)
            elif name == "RFC822.TEXT":
                sec = Section(b"RFC822.TEXT", (), "TEXT", (), None, True)
            else:
                raise ValueError(f"unknown fetch attribute {item.name!r}")
        elif isinstance(item, BinarySection):
            sec = Section(
                item.response_name().encode("ascii"),
                item.part,
                "",
                (),
                item.partial,
                not item.peek and not item.size_only,
                BINARY_SIZE if item.size_only else BINARY_CONTENT,
            )
        elif isinstance(item, BodySection):
            sec = Section(
                item.response_name().encode("ascii"),
                item.part,
                item.kind,
                item.fields,
                item.partial,
                not item.peek,
            )
        else:  # pragma: no cover - the parser only builds the two kinds
            raise TypeError(f"not a fetch item: {item!r}")
        if sec.name in seen_names:
            # BODY[] and BODY.PEEK[] answer under one name: answer once, and a
            # non-peek request anywhere still sets \Seen.
            if sec.seen:
                i = section_index[sec.name]
                old = steps[i][1]
                assert old is not None
                steps[i] = (
                    SECTION,
                    Section(
                        old.name, old.part, old.kind, old.fields, old.partial, True, old.binary
                    ),
                )
            continue
        seen_names.add(sec.name)
        section_index[sec.name] = len(steps)
        codes.add(SECTION)
        steps.append((SECTION, sec))
    if uid_mode and UID not in codes:
        codes.add(UID)
        steps.append((UID, None))
    if with_modseq and MODSEQ not in codes:
        codes.add(MODSEQ)
        steps.append((MODSEQ, None))
    sections = [s for code, s in steps if code == SECTION and s is not None]
    template, picks, summary_picks = _template(steps)
    header = _header_fields_template(steps) if len(sections) == 1 else None
    header_names = None
    if header is not None:
        template, summary_picks, header_names = header
    head_template, head_steps = _head_template(steps) if sections else (None, ())
    return FetchPlan(
        steps=tuple(steps),
        needs_bytes=bool(sections) or PREVIEW in codes,
        sets_seen=any(s.seen for s in sections),
        has_flags=FLAGS in codes,
        has_uid=UID in codes,
        has_modseq=MODSEQ in codes,
        template=template,
        picks=picks,
        summary_picks=summary_picks,
        has_threadid=THREADID in codes,
        flags_only=summary_picks is not None
        and all(code in (FLAGS, UID, MODSEQ) for code, _ in steps),
        head_template=head_template,
        head_steps=head_steps,
        header_names=header_names,
    )


_HEAD_ROW_ITEMS: dict[int, tuple[bytes, int]] = {
    FLAGS: (b"%s", 1),
    UID: (b"UID %d", 2),
    MODSEQ: (b"MODSEQ (%d)", 4),
    RFC822_SIZE: (b"RFC822.SIZE %d", 5),
}
"""Items a :class:`~gateway.store.interfaces.MessageHead` fills, their frame and index in
``(seq, FLAGS item, uid, flags, modseq, size, fields, len(fields))``."""


def _header_fields_template(
    steps: Sequence[tuple[int, Section | None]],
) -> tuple[bytes, Callable[[tuple[Any, ...]], tuple[Any, ...]], tuple[str, ...]] | None:
    """The template, its picks and the field names of a list view's plan
    (:attr:`FetchPlan.header_names`), or None for any other plan."""
    forms: list[bytes] = []
    picks = [0]
    names: tuple[str, ...] | None = None
    for code, sec in steps:
        if code in _HEAD_ROW_ITEMS:
            form, index = _HEAD_ROW_ITEMS[code]
            forms.append(form)
            picks.append(index)
            continue
        if (
            code != SECTION
            or sec is None
            or names is not None
            or sec.seen  # BODY[...] sets \Seen: the general loop does that
            or sec.binary
            or sec.part
            or sec.partial is not None
            or sec.kind.upper() != "HEADER.FIELDS"
        ):
            return None
        names = sec.fields
        forms.append(sec.name.replace(b"%", b"%%") + b" {%d}\r\n%s")
        picks += [7, 6]
    if names is None:
        return None
    template = b"* %d FETCH (" + b" ".join(forms) + b")\r\n"
    return template, operator.itemgetter(*picks), names


def _head_template(
    steps: Sequence[tuple[int, Section | None]],
) -> tuple[bytes | None, tuple[tuple[int, Callable[[bytes, str], bytes] | None], ...]]:
    """:attr:`FetchPlan.head_template` and its steps, if every item is a stored one of
    :data:`_TEMPLATE_ITEMS` or a whole-message header section that
    :func:`~gateway.message.sections.top_header_cutter` cuts; else (None, ())."""
    forms: list[bytes] = []
    out: list[tuple[int, Callable[[bytes, str], bytes] | None]] = []
    for code, sec in steps:
        if code in _TEMPLATE_ITEMS:
            form, field = _TEMPLATE_ITEMS[code]
            forms.append(form)
            out.append((_info_index(field), None))
            continue
        if code != SECTION or sec is None or sec.binary or sec.part or sec.partial:
            return None, ()
        cutter = top_header_cutter(sec.kind, sec.fields)
        if cutter is None:
            return None, ()
        forms.append(sec.name.replace(b"%", b"%%") + b" {%d}\r\n%s")
        out.append((-1, cutter))
    return b"* %d FETCH (" + b" ".join(forms) + b")\r\n", tuple(out)


def section_bytes(raw: bytes, parts: str, sec: Section) -> bytes:
    """The bytes of one body item, partial range applied (RFC 3501 §6.4.5: an origin
    beyond the end gives the empty string, a count beyond the end is truncated)."""
    if not sec.part and not sec.kind:
        data = raw
    else:
        data = section(raw, parts, sec.part, sec.kind, sec.fields)
    if sec.partial is not None:
        origin, count = sec.partial
        data = data[origin : origin + count]
    return data


_NOT_7BIT = re.compile(rb"[\x00\x80-\xff]")


def _binary_item(raw: bytes, info: MessageInfo, sec: Section) -> bytes:
    """One BINARY or BINARY.SIZE item (RFC 3516 §4.2); a missing part is NIL (size 0).

    The content goes in a literal8 when the decoded part holds NUL or 8-bit octets, judged
    on the whole part before any ``<partial>`` cut, as Dovecot does; a 7-bit part (text
    in base64) is an ordinary literal. Raises :class:`gateway.message.binary.UnknownCte`."""
    data = binary_section(raw, info.parts, sec.part)
    if sec.binary == BINARY_SIZE:
        return b"%s %d" % (sec.name, 0 if data is None else len(data))
    if data is None:
        return sec.name + b" NIL"
    marker = b"~" if _NOT_7BIT.search(data) else b""
    if sec.partial is not None:
        origin, count = sec.partial
        data = data[origin : origin + count]
    return b"%s %s{%d}\r\n" % (sec.name, marker, len(data)) + data


def render(
    plan: FetchPlan,
    seq: int,
    info: MessageInfo,
    flags: frozenset[str] | None,
    modseq: int,
    raw: bytes | None,
    extra: Sequence[int] = (),
    *,
    threadid: str | None = None,
) -> list[bytes]:
    """One ``* seq FETCH (...)`` response as a list of chunks.

    ``flags`` is the flag set to report (None when FLAGS is not reported); ``extra``
    lists item codes to append after the plan's items (FLAGS, UID or MODSEQ made
    necessary by an implicit ``\\Seen``). ``raw`` is the message, given only when a
    body item needs it (:attr:`FetchPlan.needs_bytes`). Normally one chunk comes back;
    a body literal longer than :data:`INLINE_LITERAL_LIMIT` comes back as a chunk of
    its own.
    """
    picks = plan.picks
    if picks is not None and not extra and (flags is not None) == plan.has_flags:
        item = b"" if flags is None else flags_item(flags)
        return [plan.template % picks((seq, item, modseq, *info))]  # type: ignore[operator]
    head = plan.head_template
    if head is not None and not extra and (flags is not None) == plan.has_flags:
        assert raw is not None
        fields = (seq, b"" if flags is None else flags_item(flags), modseq, *info)
        values: list[Any] = [seq]
        for index, cutter in plan.head_steps:
            if cutter is None:
                values.append(fields[index])
                continue
            data = cutter(raw, info.parts)
            if len(data) > INLINE_LITERAL_LIMIT:
                break  # a long literal goes out as a chunk of its own: the general loop
            values.append(len(data))
            values.append(data)
        else:
            return [head % tuple(values)]
    out: list[bytes] = []
    cur: list[bytes] = []
    for code, sec in plan.steps if not extra else (*plan.steps, *((c, None) for c in extra)):
        if code == FLAGS:
            if flags is not None:
                cur.append(flags_item(flags))
        elif code == UID:
            cur.append(b"UID %d" % info.uid)
        elif code == RFC822_SIZE:
            cur.append(b"RFC822.SIZE %d" % info.size)
        elif code == ENVELOPE:
            cur.append(b"ENVELOPE " + info.envelope)
        elif code == BODYSTRUCTURE:
            cur.append(b"BODYSTRUCTURE " + info.bodystructure)
        elif code == BODY:
            cur.append(b"BODY " + info.body)
        elif code == INTERNALDATE:
            cur.append(b"INTERNALDATE " + wire.format_internaldate(info.internaldate))
        elif code == MODSEQ:
            cur.append(b"MODSEQ (%d)" % modseq)
        elif code == SAVEDATE:
            saved = info.savedate
            cur.append(
                b"SAVEDATE " + (b"NIL" if saved is None else wire.format_internaldate(saved))
            )
        elif code == EMAILID:
            cur.append(
                b"EMAILID " + (b"NIL" if not info.emailid else b"(%s)" % info.emailid.encode())
            )
        elif code == THREADID:
            # RFC 8474 §5.2; the caller derives it (gateway.store.objectid.thread_id).
            cur.append(b"THREADID " + (b"(%s)" % threadid.encode() if threadid else b"NIL"))
        elif code == PREVIEW:
            assert raw is not None
            cur.append(b"PREVIEW " + wire.quote(preview(raw).encode("utf-8")))
        elif sec is not None and sec.binary:
            assert raw is not None
            item = _binary_item(raw, info, sec)
            if len(item) > INLINE_LITERAL_LIMIT:
                head, _, data = item.partition(b"\r\n")
                cur.append(head + b"\r\n")
                prefix = b"" if out else b"* %d FETCH (" % seq
                out.append(prefix + b" ".join(cur))
                out.append(data)
                cur = [b""]
            else:
                cur.append(item)
        else:
            assert sec is not None and raw is not None
            data = section_bytes(raw, info.parts, sec)
            head = b"%s {%d}\r\n" % (sec.name, len(data))
            if len(data) > INLINE_LITERAL_LIMIT:
                cur.append(head)
                prefix = b"" if out else b"* %d FETCH (" % seq
                out.append(prefix + b" ".join(cur))
                out.append(data)
                cur = [b""]  # the next item still needs its separating space
            else:
                cur.append(head + data)
    if out:
        out.append(b" ".join(cur) + b")\r\n")
        return out
    return [b"* %d FETCH (%s)\r\n" % (seq, b" ".join(cur))]
