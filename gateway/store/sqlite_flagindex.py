"""Partial indexes of the SQLite store over the flag tests that would otherwise scan a mailbox.

SEARCH UNSEEN, SEARCH FLAGGED, EXPUNGE's \\Deleted rows, SELECT's \\Recent set, its first
unseen message and its keywords in use (RFC 3501 §6.4.4, §6.4.3, §2.3.2, §7.1) each tested or
read every row of the mailbox:
a string test on the space-separated ``flags`` text (or the ``recent`` bit) per message, so
their cost grew with the mailbox while Dovecot's index answers them at a near-constant cost
(issue 19, "Mailbox size and the mix"). A partial index holds only the rows that pass one
test, so such a query walks the rows it returns and no others: O(matches + log n).

SQLite uses a partial index only when the query's WHERE clause has, as one of its AND terms,
the index's own WHERE expression written the same way, with the same literal values (a
bound parameter does not match). So the expressions live here once, with the column as a
parameter of the text: :func:`flag_term` gives the query's term (``mm.flags``),
:data:`FLAG_INDEX_DDL` the indexes built from the same text (``flags``). The flags are fixed
system flags, stored in canonical case (gateway/store/rowdata.py), so the literal in the SQL
is fixed text written here, never a client's value. Each index covers the columns its
queries read (the term's own column, which SQLite tests again on each row the index gives,
and ``message_id`` for EXPUNGE and for a criterion on the message): one column short, the
planner would rather scan the table than look each row up in it.

The indexes are kept by SQLite itself on every write that touches ``flags`` or ``recent``
(STORE, APPEND, COPY/MOVE, expunge); there is no counter to keep in step by hand. Each costs
an index entry per row that passes its test, and one index write when a row enters or leaves
the set.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.flags import DELETED, FLAGGED, SEEN

INDEXED_FLAGS: dict[tuple[str, bool], str] = {
    (SEEN, False): "mailbox_message_unseen",
    (FLAGGED, True): "mailbox_message_flagged",
    (DELETED, True): "mailbox_message_deleted",
}
"""(system flag, present) → the partial index holding exactly the rows with that test true."""

RECENT_INDEX = "mailbox_message_recent"
"""The partial index of the rows with the \\Recent bit set (``recent = 1``)."""

FLAG_TEXT_INDEX = "mailbox_message_flag_text"
"""The partial index of the rows with any flag, by flag text: SELECT's keywords in use
(RFC 3501 §7.2.6) are read from it one distinct text at a time."""


def flag_term(flag: str, present: bool, column: str = "mm.flags") -> str:
    """The SQL test "``column`` has (``present``) or lacks the token ``flag``": the same
    exact-token test as ``instr(' ' || flags || ' ', ' \\Seen ') > 0`` with a bound
    parameter, written with the literal so that the partial index of :data:`INDEXED_FLAGS`
    can answer it. ``flag`` must be a system flag in canonical case."""
    if not flag.startswith("\\") or not flag[1:].isalpha():
        raise ValueError(f"not a system flag: {flag!r}")
    return f"instr(' ' || {column} || ' ', ' {flag} ') {'>' if present else '='} 0"


def is_indexed(flag: str, present: bool) -> bool:
    """Whether a partial index answers :func:`flag_term` of ``flag`` and ``present``."""
    return (flag, present) in INDEXED_FLAGS


FLAG_INDEX_DDL: Sequence[str] = (
    *(
        f"CREATE INDEX IF NOT EXISTS {name}"
        " ON mailbox_message (mailbox_id, uid, message_id, flags)"
        f" WHERE {flag_term(flag, present, 'flags')}"
        for (flag, present), name in INDEXED_FLAGS.items()
    ),
    f"CREATE INDEX IF NOT EXISTS {RECENT_INDEX} ON mailbox_message (mailbox_id, uid, recent)"
    " WHERE recent = 1",
    f"CREATE INDEX IF NOT EXISTS {FLAG_TEXT_INDEX} ON mailbox_message (mailbox_id, flags)"
    " WHERE flags != ''",
)
"""The indexes, idempotent (a file that has them already keeps them)."""
