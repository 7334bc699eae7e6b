"""STORE's server-side function: a flag change made in the database, in one round trip.

A STORE (RFC 3501 §6.4.6) on PostgreSQL took two round trips
(:mod:`gateway.store.postgres.flagwrite`): the lock and the rows, then the writes; the
flag arithmetic between them ran in Python (:func:`gateway.store.rowdata.plan_flags`).
:data:`STORE_FLAGS_FUNCTION` (installed by a schema migration) does the same steps in
the database, in one call: it locks the mailbox row (``FOR UPDATE``, as before: writers
to one mailbox, on any node, take turns), computes each row's new flags, writes the rows
that change with one new modseq (HIGHESTMODSEQ + 1, RFC 7162 §3.1.1), moves
HIGHESTMODSEQ, sends the change notice (delivered on commit only,
:mod:`gateway.store.postgres.changes`) and answers every row it read.

The arithmetic is :func:`~gateway.store.rowdata.plan_flags`'s for a mailbox that is not
shared (no private \\Seen), written in SQL: flags are compared by their lower-case form
(keywords case-insensitively; system flags are stored in canonical case), ``+FLAGS``
keeps a flag's stored spelling and adds the given spelling of the new ones, ``-FLAGS``
removes, ``FLAGS`` replaces; a row whose set of flags does not change is not written
and keeps its modseq; under UNCHANGEDSINCE (RFC 7162 §3.1.3) a row changed after it is
refused. The new text is the flags sorted by code point and joined by one space
(:func:`~gateway.store.rowdata.flags_text`): flags are ASCII atoms, so ``COLLATE "C"``
(byte order) and ``lower(... COLLATE "C")`` (ASCII case) are Python's ``sorted`` and
``str.lower``. A differential test holds the two to the same answers
(tests/test_store_pg_writes.py).

A call that writes nothing (``+FLAGS \\Seen`` of a message already seen, most of the
mix's STOREs) and a flag-only write under ``flag_fsync = "optimized"`` commit with
``synchronous_commit`` off (local to the call's own transaction): nothing, or only a
flag, to make durable, as before (a ROLLBACK, or ``SET LOCAL``).
"""

from __future__ import annotations

STORE_FLAGS_FUNCTION = r"""
CREATE OR REPLACE FUNCTION popgate_store_flags(
    p_mailbox bigint, p_uids bigint[], p_mode text, p_keys text[], p_flags text[],
    p_unchangedsince bigint, p_lazy boolean, p_channel text, p_payload text)
RETURNS TABLE (r_uid bigint, r_flags text, r_recent smallint, r_modseq bigint,
               r_state smallint)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_head bigint;
    v_written bigint;
BEGIN
    SELECT m.highestmodseq INTO v_head FROM mailbox m WHERE m.id = p_mailbox FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    WITH cur AS (
        SELECT mm.uid, t.tokens,
               ARRAY(SELECT lower(x COLLATE "C") FROM unnest(t.tokens) x) AS keys
        FROM mailbox_message mm,
             LATERAL (SELECT string_to_array(mm.flags, ' ') AS tokens) t
        WHERE mm.mailbox_id = p_mailbox AND mm.uid = ANY(p_uids)
          AND (p_unchangedsince IS NULL OR mm.modseq <= p_unchangedsince)
    ), planned AS (
        SELECT cur.uid, cur.keys, CASE p_mode
            WHEN '+' THEN cur.tokens || ARRAY(
                SELECT g.f FROM unnest(p_keys, p_flags) AS g(k, f)
                WHERE g.k <> ALL (cur.keys))
            WHEN '-' THEN ARRAY(
                SELECT x FROM unnest(cur.tokens) x
                WHERE lower(x COLLATE "C") <> ALL (p_keys))
            ELSE p_flags END AS new
        FROM cur
    ), changed AS (
        SELECT p.uid, p.new FROM planned p
        WHERE NOT (ARRAY(SELECT lower(x COLLATE "C") FROM unnest(p.new) x) @> p.keys
               AND p.keys @> ARRAY(SELECT lower(x COLLATE "C") FROM unnest(p.new) x))
    )
    UPDATE mailbox_message mm
    SET flags = array_to_string(
            ARRAY(SELECT x FROM unnest(c.new) x ORDER BY x COLLATE "C"), ' '),
        modseq = v_head + 1
    FROM changed c
    WHERE mm.mailbox_id = p_mailbox AND mm.uid = c.uid;
    GET DIAGNOSTICS v_written = ROW_COUNT;
    IF v_written > 0 THEN
        UPDATE mailbox SET highestmodseq = v_head + 1 WHERE id = p_mailbox;
        PERFORM pg_notify(p_channel, p_payload);
    END IF;
    IF v_written = 0 OR p_lazy THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    r_uid := 0; r_flags := ''; r_recent := 0; r_modseq := v_head; r_state := 9;
    RETURN NEXT;
    RETURN QUERY
        SELECT mm.uid, mm.flags, mm.recent, mm.modseq,
               (CASE WHEN v_written > 0 AND mm.modseq = v_head + 1 THEN 1
                     WHEN p_unchangedsince IS NOT NULL AND mm.modseq > p_unchangedsince THEN 2
                     ELSE 0 END)::smallint
        FROM mailbox_message mm
        WHERE mm.mailbox_id = p_mailbox AND mm.uid = ANY(p_uids)
        ORDER BY mm.uid;
END
$fn$
"""
"""``popgate_store_flags(mailbox, uids, mode, keys, flags, unchangedsince, lazy, channel,
payload)``: ``keys`` the given flags' lower-case forms, ``flags`` their spellings (in
the same order, as :func:`~gateway.store.rules.flag_map` gives them). Answers first
(0, '', 0, HIGHESTMODSEQ before the call, 9), then every row of ``uids`` in UID order
with its flags and modseq after the call and a state: 1 written (with the new modseq),
2 refused under UNCHANGEDSINCE, 0 left alone. No row at all: no such mailbox."""

STORE_FLAGS_CALL = (
    "SELECT * FROM popgate_store_flags(%s, %s::bigint[], %s, %s::text[], %s::text[],"
    " %s::bigint, %s, %s, %s)"
)
"""The call, one statement in autocommit (its own transaction)."""

WRITTEN, REFUSED, LEFT_ALONE, HEAD = 1, 2, 0, 9
"""The ``r_state`` values of :data:`STORE_FLAGS_FUNCTION`'s rows."""
