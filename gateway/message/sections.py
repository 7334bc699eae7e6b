"""Cutting ``BODY[section]`` (RFC 3501 §6.4.5) out of the stored bytes by the part map.

FETCH never re-parses a message: :func:`section` resolves a dotted part number in the JSON
part map that :func:`gateway.message.analysis.analyze` stored, and slices the exact bytes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable

from gateway.message.fields import scan_fields

_CRLF = b"\r\n"


def _kids(node: list) -> list | None:
    return node[5] if len(node) > 5 and node[4] == "M" else None


def _enter(message: list, num: int) -> list | None:
    """Part ``num`` of a message's body: the N-th body part of a multipart body, or, for a
    non-multipart message, part 1 only, which is the body itself (RFC 3501 §6.4.5)."""
    kids = _kids(message)
    if kids is not None:
        return kids[num - 1] if 1 <= num <= len(kids) else None
    return message if num == 1 else None


def resolve_node(root: list, part: tuple[int, ...]) -> list | None:
    """The part-map node for a dotted part number (RFC 3501 §6.4.5).

    Below a message/rfc822 part the numbering continues in the encapsulated message.
    RFC 3501 gives a non-multipart message "only a part 1", its body; read the same way, a
    single part (neither multipart nor message) inside a multipart has one sub-part, 1,
    which is that part itself, once: ``.1`` cannot name a part that a ``.1`` just named.
    This is Dovecot 2.3's numbering (``BODY[1.1]`` of a multipart's text part 1 is that
    text; of a plain non-MIME message, whose part 1 already is its body, it is missing),
    checked by tests/test_imap_sections_dovecot.py. A missing part is an empty string
    (:func:`section`), as in Dovecot.
    """
    node = _enter(root, part[0])
    itself = node is root  # the "part 1" of a non-multipart message is that message
    for num in part[1:]:
        if node is None:
            return None
        kids = _kids(node)
        if kids is not None:
            node = kids[num - 1] if 1 <= num <= len(kids) else None
            itself = False
        elif len(node) > 5 and node[4] == "R":
            inner = node[5]
            node = _enter(inner, num)
            itself = node is inner
        elif num != 1 or itself:
            return None
        else:
            itself = True
    return node


_ROOT_OFFSETS = re.compile(r"\[(\d+),(\d+),(\d+),(\d+)[],]")
"""The start of a compact part map (:func:`gateway.message.structure.part_map`): the
message's header start and end, body start and end."""

_FIELD_NAME = re.compile(r"[!-9;-~]+")
"""A field name as RFC 5322 §2.2 allows it (printable ASCII but the colon): what the
fast path of :func:`_header_fields` can match by pattern, exactly as the field scan does."""

_PLAIN_FIELDS_CACHE = 256
"""Compiled HEADER.FIELDS patterns kept (clients ask for the same few lists)."""


@functools.lru_cache(maxsize=_PLAIN_FIELDS_CACHE)
def _fields_pattern(names: tuple[str, ...]) -> re.Pattern[bytes] | None:
    """One pattern matching every wanted field, folded lines included (None: some name is
    not a plain field name, and only the field scan gives its exact meaning)."""
    if not names or not all(_FIELD_NAME.fullmatch(n) for n in names):
        return None
    alternatives = b"|".join(re.escape(n.encode("ascii")) for n in sorted(set(names)))
    return re.compile(
        rb"^(?:" + alternatives + rb")[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*\n?",
        re.IGNORECASE | re.MULTILINE,
    )


def _header_fields(raw: bytes, message: list, names: tuple[str, ...], keep: bool) -> bytes:
    """HEADER.FIELDS (``keep``) or HEADER.FIELDS.NOT: the original field bytes, folding kept,
    in order, then the empty line (RFC 3501 §6.4.5).

    HEADER.FIELDS of plain names (a client's list view: FROM SUBJECT DATE...) is one
    pattern search over the header instead of a field-by-field scan in Python (~6x less
    CPU on 25 messages, issue 19). It selects the same bytes as the scan: a field
    starts a line with the name, optional blanks and the colon, and takes the lines
    that fold it. ASCII case folding equals the scan's Unicode one for these names, except
    that the scan also folds ``ß`` to ``SS``; a header holding that byte takes the scan.
    """
    if keep:
        start, end = message[0], message[1]
        pattern = _fields_pattern(names)
        if pattern is not None and raw.find(b"\xdf", start, end) < 0:
            return _matched_fields(pattern, raw, start, end)
    return _scanned_header_fields(raw, message, names, keep)


def _matched_fields(pattern: re.Pattern[bytes], raw: bytes, start: int, end: int) -> bytes:
    """The fields ``pattern`` (:func:`_fields_pattern`) matches in ``raw[start:end]``,
    then the empty line. From the start of ``raw``, the search takes the bounds without a
    copy of the header (``^`` matches at position 0, not at a later ``pos``)."""
    chunks = pattern.findall(raw, 0, end) if start == 0 else pattern.findall(raw[start:end])
    # Every match ends with its line end but one that runs to the region's end.
    if chunks and not chunks[-1].endswith(b"\n"):
        chunks.append(_CRLF)
    chunks.append(_CRLF)
    return b"".join(chunks)


def top_header_cutter(kind: str, fields: tuple[str, ...]) -> Callable[[bytes, str], bytes] | None:
    """For ``BODY[HEADER]`` or ``BODY[HEADER.FIELDS (plain names)]`` of the whole
    message: a function ``(raw, parts) -> bytes`` giving what :func:`section` gives, with
    the per-request work (case, the field pattern) done once here and the per-message
    work cut to the root's offsets and one search (a list view's FETCH of 25 messages,
    issue 19). None for any other section."""
    kind = kind.upper()
    if kind == "HEADER":

        def header(raw: bytes, parts: str) -> bytes:
            head = _ROOT_OFFSETS.match(parts)
            if head is None:
                return section(raw, parts, (), kind, fields)
            return raw[int(head.group(1)) : int(head.group(3))]

        return header
    pattern = _fields_pattern(fields) if kind == "HEADER.FIELDS" else None
    if pattern is None:
        return None

    def header_fields(raw: bytes, parts: str) -> bytes:
        head = _ROOT_OFFSETS.match(parts)
        if head is None:
            return section(raw, parts, (), kind, fields)
        start, end = int(head.group(1)), int(head.group(2))
        if raw.find(b"\xdf", start, end) >= 0:  # the scan's ß folding (_header_fields)
            return _scanned_header_fields(raw, [start, end], fields, True)
        return _matched_fields(pattern, raw, start, end)

    return header_fields


def header_span(parts: str) -> int | None:
    """Octets from the start of a message that every whole-message header section needs
    (its header section and the empty line after it), from the root offsets of its part
    map; None when the map does not start with them (then read the whole message)."""
    head = _ROOT_OFFSETS.match(parts)
    return None if head is None else int(head.group(3))


def _scanned_header_fields(raw: bytes, message: list, names: tuple[str, ...], keep: bool) -> bytes:
    """:func:`_header_fields` by scanning the header field by field (the definition)."""
    wanted = {n.upper() for n in names}
    out: list[bytes] = []
    for f in scan_fields(raw, message[0], message[1]):
        match = f.name is not None and f.name.upper() in wanted
        if match == keep:
            chunk = raw[f.start : f.end]
            out.append(chunk if chunk.endswith(b"\n") else chunk + _CRLF)
    out.append(_CRLF)
    return b"".join(out)


def _message_section(raw: bytes, message: list, kind: str, fields: tuple[str, ...]) -> bytes:
    if kind == "HEADER":
        return raw[message[0] : message[2]]
    if kind == "TEXT":
        return raw[message[2] : message[3]]
    if kind == "HEADER.FIELDS":
        return _header_fields(raw, message, fields, True)
    if kind == "HEADER.FIELDS.NOT":
        return _header_fields(raw, message, fields, False)
    return b""


def section(
    raw: bytes, parts: str, part: tuple[int, ...], kind: str, fields: tuple[str, ...] = ()
) -> bytes:
    """The exact bytes of ``BODY[section]`` (RFC 3501 §6.4.5), before <partial> slicing.

    ``parts`` is :attr:`Analysis.parts` for these ``raw`` bytes. A section that does not
    exist (no such part; HEADER/TEXT of a part that is not message/rfc822; MIME of the
    whole message) gives b"".
    """
    kind = kind.upper()
    if not part:
        if kind == "":
            return raw
        # The top level needs only the root's four offsets, the map's first four numbers.
        head = _ROOT_OFFSETS.match(parts)
        top = [int(n) for n in head.groups()] if head is not None else json.loads(parts)
        return _message_section(raw, top, kind, fields)
    root = json.loads(parts)
    node = resolve_node(root, part)
    if node is None:
        return b""
    if kind == "":
        return raw[node[2] : node[3]]
    if kind == "MIME":
        return raw[node[0] : node[2]]
    if len(node) > 4 and node[4] == "R":
        return _message_section(raw, node[5], kind, fields)
    return b""
