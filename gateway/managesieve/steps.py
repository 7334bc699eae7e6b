"""Command steps on a store thread: how the ManageSieve glue keeps database round trips off
the reactor for a store that does not run inline (ARCHITECTURE.md, "Store calls and the
reactor"), as the IMAP server does (``gateway/imap/steps.py``).

The session is sans-I/O: a command is a generator whose handler calls the script store
between two yields. With a :class:`~gateway.store.runner.ThreadRunner`, the glue
(:mod:`gateway.managesieve.server`) advances that generator with :func:`run_steps` on a
store thread until it yields an action or ends, one batch at a time per connection, and
writes the bytes and performs the action back on the reactor thread. Responses are small
(a script is at most the store's size limit), so a batch needs no output budget.
"""

from __future__ import annotations

from typing import Any

from gateway.managesieve.handler import Run

DONE = object()
"""What :func:`run_steps` returns as the action when the command's generator ended."""


def run_steps(run: Run, throw: BaseException | None, value: Any) -> tuple[list[bytes], Any]:
    """Advance ``run`` (on a store thread): ``throw`` or ``send(value)``, then
    ``send(None)`` while it yields bytes, until it yields an action or ends
    (:data:`DONE`). Returns (the bytes to write, the action)."""
    chunks: list[bytes] = []
    while True:
        try:
            item = run.throw(throw) if throw is not None else run.send(value)
        except StopIteration:
            return chunks, DONE
        throw = value = None
        if not isinstance(item, bytes):
            return chunks, item
        if item:
            chunks.append(item)
