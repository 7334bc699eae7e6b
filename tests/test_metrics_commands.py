"""The command families as plain counts (issue 19): the same exposition as prometheus-client's
counter and histogram would write for the same commands, byte for byte."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from twisted.internet import task

from gateway.app.metrics import COMMAND_BUCKETS, GatewayMetrics
from gateway.imap.states import COMMANDS


def _command_lines(text: bytes) -> list[bytes]:
    return [
        line
        for line in text.splitlines()
        if b"popgate_imap_command" in line and b"_created" not in line
    ]


def test_plain_counts_expose_what_the_library_objects_would() -> None:
    """Random names (known, UID forms, unknown, unparseable), statuses and durations,
    including exact bucket bounds, zero and beyond the last bound."""
    m = GatewayMetrics(reactor=task.Clock(), known_commands=COMMANDS, version="9.9")
    registry = CollectorRegistry()
    commands = Counter(
        "popgate_imap_commands",
        "IMAP commands answered, by command name and tagged status (OK, NO, BAD).",
        ("command", "status"),
        registry=registry,
    )
    seconds = Histogram(
        "popgate_imap_command_duration_seconds",
        "Time from parsing an IMAP command to its tagged completion (IDLE excluded).",
        ("command",),
        buckets=COMMAND_BUCKETS,
        registry=registry,
    )
    rng = random.Random(3)
    names = ["NOOP", "FETCH", "UID FETCH", "STORE", "IDLE", "XYZZY", None]
    durations = [0.0, *COMMAND_BUCKETS, 0.0004, 0.003, 0.7, 11.0, 400.0]
    for _ in range(500):
        name = rng.choice(names)
        status = rng.choice(["OK", "NO", "BAD"])
        value = rng.choice(durations)
        m.command_done(name, value, status, None)
        label = "UNPARSEABLE" if name is None else "OTHER" if name == "XYZZY" else name
        commands.labels(command=label, status=status).inc()
        if label != "IDLE":
            seconds.labels(command=label).observe(value)
    ours = _command_lines(generate_latest(m.registry))
    reference = _command_lines(generate_latest(registry))
    assert ours == reference
    assert len(ours) > 100
