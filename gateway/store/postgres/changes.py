"""Cross-node change notices: the NOTIFY channel and the payload a committed write sends.

Several popgate nodes share one database (issue 13); a change committed on one node must
reach IDLE and selected sessions on all of them. Every write that changed mailboxes sends
``pg_notify(channel, payload)`` inside its own transaction, so PostgreSQL delivers it to
the listening nodes only if, and once, it commits (PostgreSQL docs, "NOTIFY": notices
of a transaction that rolls back are never delivered). The receiving side, the LISTEN
bridge, lives in :mod:`gateway.store.postgres.push`.

A payload is JSON, ``{"o": origin, "m": [mailbox ids]}``: the ``origin`` names the
writing store (node name, process id, a random tag) so a node skips its own notices (it
has already told its listeners, after the commit); the ids are what local listeners get.
PostgreSQL caps a payload below 8000 bytes, so many ids go out as several notices of the
same transaction (:data:`MAX_PAYLOAD`), never truncated.

The channel is per schema (:func:`channel_for`): two stores in different schemas of one
database (tests do this) have unrelated mailbox ids and must not hear each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

CHANNEL = "popgate_changes"
"""The NOTIFY channel of a store in the default schema (``public``)."""

MAX_PAYLOAD = 7000
"""Bytes per notice, well below PostgreSQL's 8000-byte payload limit."""

MAX_CHANNEL = 63
"""PostgreSQL identifiers (channel names among them) are at most 63 bytes (NAMEDATALEN-1)."""


def channel_for(schema: str | None) -> str:
    """The channel of a store whose tables live in ``schema`` (``current_schema()``)."""
    if schema in (None, "", "public"):
        return CHANNEL
    name = f"{CHANNEL}.{schema}"
    if len(name.encode()) > MAX_CHANNEL:
        name = f"{CHANNEL}.{hashlib.sha256(schema.encode()).hexdigest()[:40]}"
    return name


def encode(origin: str, mailbox_ids: Iterable[int]) -> list[str]:
    """The payloads announcing these mailbox ids, each under :data:`MAX_PAYLOAD` bytes."""
    head = json.dumps({"o": origin, "m": []}, separators=(",", ":"))
    room = MAX_PAYLOAD - len(head.encode())
    payloads: list[str] = []
    batch: list[int] = []
    used = 0
    for mailbox_id in sorted(set(mailbox_ids)):
        cost = len(str(mailbox_id)) + 1
        if batch and used + cost > room:
            payloads.append(_dump(origin, batch))
            batch, used = [], 0
        batch.append(mailbox_id)
        used += cost
    if batch:
        payloads.append(_dump(origin, batch))
    return payloads


def _dump(origin: str, ids: list[int]) -> str:
    return json.dumps({"o": origin, "m": ids}, separators=(",", ":"))


@dataclass(frozen=True)
class Notice:
    """One decoded payload: who wrote, which mailboxes changed."""

    origin: str
    mailbox_ids: tuple[int, ...]


class BadNotice(ValueError):
    """A payload on the channel that popgate did not write (or a newer format)."""


def decode(payload: str) -> Notice:
    """The :class:`Notice` in ``payload``; raises :class:`BadNotice` if it is not one."""
    try:
        data = json.loads(payload)
        origin, ids = data["o"], data["m"]
    except (ValueError, TypeError, KeyError) as error:
        raise BadNotice("not a popgate change notice") from error
    if not isinstance(origin, str) or not isinstance(ids, list):
        raise BadNotice("not a popgate change notice")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BadNotice("mailbox ids must be integers")
    return Notice(origin, tuple(ids))
