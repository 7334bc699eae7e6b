"""Translation of a :mod:`gateway.core.criteria` tree into one parameterised SQL query.

SEARCH is answered by the database (RFC 3501 §6.4.4) rather than by loading messages:
each criteria node becomes a boolean SQL expression over ``mailbox_message mm`` joined
with ``message m``, using the precomputed columns and tables of :mod:`gateway.store.schema`.
Every user value is a bound parameter; only fixed SQL text written here is ever
concatenated. Each node's expression yields 0 or 1, never NULL, so ``NOT`` keeps its
two-valued meaning.

The SQL is written once for both SQL backends: a :class:`Dialect` supplies what differs
between SQLite and PostgreSQL (the parameter marker, boolean literals, substring test,
and how a long list of UID ranges is passed): :data:`SQLITE` here, and
``POSTGRESQL`` with the PostgreSQL store.

Trees are bounded (:data:`MAX_SEARCH_NODES`, :data:`MAX_SEARCH_DEPTH`) so that a
hostile SEARCH cannot exceed SQLite's expression-depth or parameter limits (going over
raises :class:`~gateway.store.errors.SearchTooComplex`, a StoreError), and long
AND/OR chains are emitted as balanced trees to keep the SQL expression shallow.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.core.criteria import (
    All,
    And,
    Criteria,
    Date,
    EmailId,
    Flag,
    Header,
    Instant,
    ModSeq,
    Not,
    Or,
    Seq,
    SequenceSet,
    Size,
    Text,
    Uid,
    Within,
)
from gateway.core.flags import RECENT, canonical_flag, is_system_flag
from gateway.store.errors import SearchTooComplex
from gateway.store.objectid import EMAILID_HEX, EPOCH_ORDINAL, email_id_prefix
from gateway.store.sqlite_flagindex import flag_term, is_indexed
from gateway.store.sqlite_textindex import TABLE as TEXT_INDEX
from gateway.store.sqlite_textindex import UNINDEXED, indexable, match_expression

MAX_SEARCH_NODES = 500
"""Most criteria nodes one SEARCH may hold; IMAP clients send a handful."""

MAX_SEARCH_DEPTH = 40
"""Deepest nesting of NOT/OR/AND accepted."""

ADDRESS_ROW_PREFIX = ":"
"""``header_field`` rows named ``":from"`` (``":to"``, ``":cc"``, ``":bcc"``) hold the
field's addresses as parsed (:func:`gateway.message.envelope.address_text`), which
SEARCH FROM/TO/CC/BCC match. No real field name contains a colon (RFC 5322 §2.2), so
these rows never answer a ``HEADER`` key."""


def address_row_name(field: str) -> str:
    """The ``header_field`` name under which ``field``'s parsed addresses are stored."""
    return ADDRESS_ROW_PREFIX + field


MAX_INLINE_UID_RANGES = 8
"""UID sets with more ranges than this are passed as one JSON parameter instead of an
``OR`` chain of ``BETWEEN``s, bounding the number of SQL parameters per node."""


def _sqlite_uid_ranges(ranges: list[tuple[int, int]], mailbox_id: int) -> tuple[str, list]:
    # One JSON parameter, each range answered by a primary-key range scan (CROSS JOIN
    # keeps json_each outermost); the subquery is uncorrelated, so SQLite evaluates it
    # once into an ephemeral index that IN probes.
    return (
        "(mm.uid IN (SELECT x.uid FROM json_each(?) r CROSS JOIN mailbox_message x"
        " WHERE x.mailbox_id = ?"
        " AND x.uid BETWEEN json_extract(r.value, '$[0]') AND json_extract(r.value, '$[1]')))",
        [json.dumps(ranges), mailbox_id],
    )


@dataclass(frozen=True)
class Dialect:
    """What the translation needs to know about one database's SQL."""

    name: str
    param: str  # the bound-parameter marker
    true: str
    false: str
    position: str  # a function (haystack, needle) → 1-based position, 0 when absent
    uid_ranges: Callable[[list[tuple[int, int]], int], tuple[str, list]]
    clean: Callable[[str], str]  # a text parameter as the database can take it
    fence: str = ""
    """Ends a per-message ``EXISTS`` subquery (header fields, text): PostgreSQL's
    ``OFFSET 0`` keeps it a probe of the message's own rows by primary key for each
    row of the mailbox, where the planner otherwise turns it into a semi-join that
    scans every message's rows in the store (``SEARCH FROM x`` of a 200-message
    mailbox: 1 ms instead of 15-24 ms on the bench's ten accounts, and growing with
    the store, not the mailbox)."""
    indexed_flag: Callable[[str, bool], str | None] = lambda flag, present: None
    """A system flag test (canonical flag, present) written as an index of this
    database answers it, or None for the generic test with a bound parameter."""

    def contains(self, haystack: str) -> str:
        """The test "the parameter occurs in ``haystack``" (one parameter)."""
        return f"{self.position}({haystack}, {self.param}) > 0"


def _sqlite_indexed_flag(flag: str, present: bool) -> str | None:
    # The partial indexes of gateway/store/sqlite_flagindex.py match only their own WHERE
    # text with its literal: a bound parameter would leave SQLite scanning the mailbox.
    return flag_term(flag, present) if is_indexed(flag, present) else None


SQLITE = Dialect(
    "sqlite", "?", "1", "0", "instr", _sqlite_uid_ranges, str, indexed_flag=_sqlite_indexed_flag
)
"""SQLite's dialect (the PostgreSQL one is in :mod:`gateway.store.postgres.rows`)."""


@dataclass
class Query:
    """A complete SQL statement selecting matching UIDs in ascending order, and its parameters."""

    sql: str
    params: list[object] = field(default_factory=list)
    uses_largest: bool = False
    """Whether ``largest_uid`` went into it (a UID set with ``*``): a caller that passed a
    placeholder must then read the largest UID and build it again."""


def check_size(criteria: Criteria) -> None:
    """Raise :class:`SearchTooComplex` if the tree is too large or too deep to translate."""
    nodes = 0
    stack: list[tuple[Criteria, int]] = [(criteria, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_SEARCH_NODES:
            raise SearchTooComplex(f"search criteria exceed {MAX_SEARCH_NODES} keys")
        if depth > MAX_SEARCH_DEPTH:
            raise SearchTooComplex(f"search criteria nest deeper than {MAX_SEARCH_DEPTH} levels")
        if isinstance(node, And):
            stack.extend((k, depth + 1) for k in node.keys)
        elif isinstance(node, Or):
            stack.append((node.left, depth + 1))
            stack.append((node.right, depth + 1))
        elif isinstance(node, Not):
            stack.append((node.key, depth + 1))


def build_query(
    mailbox_id: int,
    criteria: Criteria,
    largest_uid: int,
    *,
    source: str = "mailbox_message",
    source_params: Sequence[object] = (),
    columns: str = "mm.uid",
    extra_join: str = "",
    order: str = "mm.uid",
    text_index: bool = False,
    dialect: Dialect = SQLITE,
) -> Query:
    """The statement answering ``criteria`` in one mailbox.

    SORT and THREAD (:mod:`gateway.store.sorting`) reuse it with their own ``columns``,
    ``extra_join`` (after ``message m`` when the criteria need it) and ``order``; fixed
    SQL text only. ``text_index`` (SQLite only) answers BODY/TEXT from the FTS5 index.

    ``source`` replaces the ``mailbox_message`` table as the rows searched: a SQL
    store passes a subquery with a shared mailbox member's own view of flags and modseqs
    (same columns), whose parameters are ``source_params``.

    ``text_index`` says the database has the FTS5 trigram index of
    :mod:`gateway.store.sqlite_textindex`: BODY and TEXT needles it can answer are looked
    up there (and in the few messages it does not hold) instead of scanned, with the same
    results.

    ``largest_uid`` is the value of ``*`` in UID sets (RFC 3501 §6.4.8: "the largest
    number in use"); with an empty mailbox the caller may pass 0, nothing can match.
    Raises :class:`ValueError` for a ``Seq`` key (the session must rewrite those to
    ``Uid``), an unknown key or operator, and :class:`SearchTooComplex`.
    """
    check_size(criteria)
    translator = _Translator(mailbox_id, largest_uid, dialect, text_index=text_index)
    where = translator.expr(criteria)
    join = " JOIN message m ON m.id = mm.message_id" if translator.needs_message else ""
    join += extra_join
    sql = (
        f"SELECT {columns} FROM {source} mm{join}"
        f" WHERE mm.mailbox_id = {dialect.param} AND ({where}) ORDER BY {order}"
    )
    return Query(sql, [*source_params, mailbox_id, *translator.params], translator.used_largest)


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-adjacent inclusive ranges covering the same integers."""
    out: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            if high > out[-1][1]:
                out[-1] = (out[-1][0], high)
        else:
            out.append((low, high))
    return out


def _balanced(op: str, parts: list[str]) -> str:
    """``a op b op c ...`` parenthesised as a balanced tree (depth log2 n, not n)."""
    if len(parts) == 1:
        return parts[0]
    mid = len(parts) // 2
    return f"({_balanced(op, parts[:mid])} {op} {_balanced(op, parts[mid:])})"


_DATE_OPS = {"before": "<", "on": "=", "since": ">="}
_DATE_COLUMNS = {
    "internal": "m.internal_day",
    "sent": "m.sent_day",
    # RFC 8514 §4.2: the save date's UTC day (see gateway.store.objectid)
    "saved": f"(mm.savedate / 86400 + {EPOCH_ORDINAL})",
}
_INSTANT_OPS = {"before": "<", "since": ">="}
_SIZE_OPS = {"larger": ">", "smaller": "<"}


class _Translator:
    """Walks one tree, collecting parameters in the order their markers appear."""

    def __init__(
        self, mailbox_id: int, largest_uid: int, dialect: Dialect, *, text_index: bool = False
    ) -> None:
        self.mailbox_id = mailbox_id
        self.largest_uid = largest_uid
        self.used_largest = False
        self.dialect = dialect
        self.p = dialect.param
        self.text_index = text_index
        self.params: list[object] = []
        self.needs_message = False

    def expr(self, node: Criteria) -> str:
        if isinstance(node, All):
            return self.dialect.true
        if isinstance(node, And):
            if not node.keys:
                return self.dialect.true
            return _balanced("AND", [self.expr(k) for k in node.keys])
        if isinstance(node, Or):
            return f"({self.expr(node.left)} OR {self.expr(node.right)})"
        if isinstance(node, Not):
            return f"(NOT {self.expr(node.key)})"
        if isinstance(node, Flag):
            return self._flag(node)
        if isinstance(node, Header):
            return self._header(node)
        if isinstance(node, Text):
            return self._text(node)
        if isinstance(node, Date):
            return self._date(node)
        if isinstance(node, Size):
            op = _SIZE_OPS.get(node.op)
            if op is None:
                raise ValueError(f"unknown SIZE operator {node.op!r}")
            self.needs_message = True
            self.params.append(int(node.size))
            return f"(m.size {op} {self.p})"
        if isinstance(node, Uid):
            return self._uid(node.set)
        if isinstance(node, ModSeq):
            self.params.append(int(node.modseq))
            return f"(mm.modseq >= {self.p})"
        if isinstance(node, Instant):
            op = _INSTANT_OPS.get(node.op)
            if op is None:
                raise ValueError(f"unknown INTERNALDATE comparison {node.op!r}")
            self.needs_message = True
            self.params.append(int(node.epoch))
            return f"(m.internaldate {op} {self.p})"
        if isinstance(node, EmailId):
            prefix = email_id_prefix(node.value)
            if prefix is None:
                return self.dialect.false
            self.needs_message = True
            self.params.append(prefix)
            return f"(substr(m.sha256, 1, {EMAILID_HEX // 2}) = {self.p})"
        if isinstance(node, Within):
            raise ValueError("Within keys must be rewritten to Instant before reaching the store")
        if isinstance(node, Seq):
            raise ValueError("Seq search keys must be rewritten to Uid before reaching the store")
        raise ValueError(f"unknown search key {node!r}")

    def _flag(self, node: Flag) -> str:
        flag = canonical_flag(node.flag)
        if flag == RECENT:
            return "(mm.recent = 1)" if node.present else "(mm.recent = 0)"
        if is_system_flag(flag):
            indexed = self.dialect.indexed_flag(flag, node.present)
            if indexed is not None:
                return f"({indexed})"
            # Stored in canonical case: an exact token match suffices.
            self.params.append(f" {flag} ")
            test = self.dialect.contains("' ' || mm.flags || ' '")
        else:
            # Keywords compare case-insensitively (ASCII, as atoms are ASCII).
            self.params.append(f" {flag.lower()} ")
            test = self.dialect.contains("' ' || lower(mm.flags) || ' '")
        return f"({test})" if node.present else f"(NOT ({test}))"

    def _header(self, node: Header) -> str:
        if ":" in node.field:
            return self.dialect.false  # no field name holds a colon (RFC 5322 §2.2)
        clean = self.dialect.clean
        name = node.field.lower()
        self.params.append(clean(address_row_name(name) if node.address else name))
        if node.value == "":
            # RFC 3501 §6.4.4: an empty string matches every message with the field.
            return (
                "EXISTS (SELECT 1 FROM header_field h"
                f" WHERE h.message_id = mm.message_id AND h.name = {self.p}{self.dialect.fence})"
            )
        self.params.append(clean(node.value.casefold()))
        return (
            "EXISTS (SELECT 1 FROM header_field h WHERE h.message_id = mm.message_id"
            f" AND h.name = {self.p} AND {self.dialect.contains('h.value_folded')}"
            f"{self.dialect.fence})"
        )

    def _text(self, node: Text) -> str:
        value = self.dialect.clean(node.value.casefold())
        contains = self.dialect.contains
        if node.where == "BODY":
            scan, scan_params = contains("t.text_folded"), [value]
        elif node.where == "TEXT":
            scan = f"({contains('t.header_folded')} OR {contains('t.text_folded')})"
            scan_params = [value, value]
        else:
            raise ValueError(f"unknown text search location {node.where!r}")
        if not (self.text_index and indexable(value)):
            self.params.extend(scan_params)
            return (
                "EXISTS (SELECT 1 FROM message_text t WHERE t.message_id = mm.message_id"
                f" AND {scan}{self.dialect.fence})"
            )
        # Both subqueries are uncorrelated: SQLite runs each once and probes its result per
        # row. The second scans the few messages the index does not hold.
        self.params.append(match_expression(value, body_only=node.where == "BODY"))
        self.params.extend(scan_params)
        return (
            f"(mm.message_id IN (SELECT rowid FROM {TEXT_INDEX} WHERE {TEXT_INDEX} MATCH ?)"
            f" OR mm.message_id IN (SELECT u.message_id FROM {UNINDEXED} u"
            f" CROSS JOIN message_text t ON t.message_id = u.message_id WHERE {scan}))"
        )

    def _date(self, node: Date) -> str:
        column = _DATE_COLUMNS.get(node.field)
        op = _DATE_OPS.get(node.op)
        if column is None or op is None:
            raise ValueError(f"unknown date search {node.field!r} {node.op!r}")
        self.needs_message = True
        self.params.append(node.date.toordinal())
        return f"({column} {op} {self.p})"

    def _uid(self, uids: SequenceSet) -> str:
        if uids.saved:
            raise ValueError("$ must be replaced by the saved UIDs before reaching the store")
        if any(r.start is None or r.end is None for r in uids.ranges):
            self.used_largest = True
        ranges = merge_ranges(uids.resolve(self.largest_uid))
        if not ranges:
            return self.dialect.false
        if len(ranges) <= MAX_INLINE_UID_RANGES:
            tests = []
            for low, high in ranges:
                self.params.extend((low, high))
                tests.append(f"(mm.uid BETWEEN {self.p} AND {self.p})")
            return _balanced("OR", tests)
        sql, params = self.dialect.uid_ranges(ranges, self.mailbox_id)
        self.params.extend(params)
        return sql
