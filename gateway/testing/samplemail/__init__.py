"""Deterministic, realistic sample mail for the demo, tests and benchmarks.

A gateway is only as good as its handling of the mail people actually get, so the samples
cover what a family mailbox sees: personal notes, newsletters and shop orders, written in
German, French, Japanese and English, with emoji. Structurally they mix text/plain,
multipart/alternative (RFC 2046 §5.1.4), multipart/mixed with attachments, forwarded
message/rfc822 parts (RFC 2046 §5.2.1), RFC 2047 encoded-words in subjects and display names,
RFC 2231 encoded attachment file names, and 7bit, 8bit, quoted-printable and base64 bodies
(RFC 2045 §6). Every message is RFC 5322 with CRLF line endings and lines under 78 octets.

The same (count, seed, start, size_profile) always yields the same bytes. Invented names only;
every domain is under example.org or example.net (RFC 2606), every IP address in a
documentation range (RFC 5737).

The package: ``phrases`` (who writes, in which language), ``content`` (what a message says,
drawn from a seeded RNG), ``assembly`` (its MIME shape and header fields), and here the
entry points.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator

from gateway.testing.samplemail.assembly import assemble, forward
from gateway.testing.samplemail.content import (
    MAX_ATTACHMENT_BYTES,
    PROFILES,
    SIZE_PROFILES,
    Profile,
    family,
    newsletter,
    shop,
)
from gateway.testing.samplemail.phrases import RECIPIENT

__all__ = [
    "DEFAULT_START",
    "MAX_ATTACHMENT_BYTES",
    "RECIPIENT",
    "SIZE_PROFILES",
    "generate",
    "iter_messages",
    "make_message",
]

DEFAULT_START = dt.datetime(2024, 3, 4, 7, 30, tzinfo=dt.UTC)
"""When the first message is dated unless `start` is given: fixed, so output is reproducible."""

MAX_GAP_SECONDS = 6 * 3600
"""Largest gap between consecutive messages' dates in `generate`."""


def make_message(
    i: int,
    rng: random.Random,
    when: dt.datetime,
    *,
    size_profile: str = "demo",
) -> bytes:
    """Build message number `i`, dated `when`, drawing every choice from `rng`.

    A naive `when` is taken as UTC. The Date: header names the same instant, written in the
    sender's own UTC offset (RFC 5322 §3.3). Returns the message with CRLF line endings.
    """
    profile = _profile(size_profile)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    with_attachment = rng.random() < profile.attachment_share
    roll = rng.random()
    if not with_attachment and roll < 0.12:
        message = forward(i, rng, when, profile)
    else:
        kind = family if roll < 0.45 else newsletter if roll < 0.75 else shop
        content = kind(i, rng, profile, with_attachment)
        message = assemble(content, rng, when, received=True)
    return message.render().replace(b"\n", b"\r\n")


def _profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown size_profile {name!r}; choose from {SIZE_PROFILES}") from None


def iter_messages(
    count: int,
    seed: int = 0,
    *,
    start: dt.datetime | None = None,
    size_profile: str = "demo",
) -> Iterator[bytes]:
    """Yield `count` messages one at a time (for benchmarks too large to hold in memory).

    Dates start at `start` (default DEFAULT_START; naive means UTC) and increase by
    whole seconds, up to MAX_GAP_SECONDS apart, so mailbox order is date order.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    _profile(size_profile)
    rng = random.Random(seed)
    when = DEFAULT_START if start is None else start
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    when = when.replace(microsecond=0)
    for i in range(count):
        yield make_message(i, rng, when, size_profile=size_profile)
        when += dt.timedelta(seconds=rng.randint(60, MAX_GAP_SECONDS))


def generate(
    count: int,
    seed: int = 0,
    *,
    start: dt.datetime | None = None,
    size_profile: str = "demo",
) -> list[bytes]:
    """Return `count` deterministic sample messages (CRLF, RFC 5322); see `iter_messages`.

    size_profile "demo" keeps messages small; "realistic" gives a median near 4 KB with
    about one message in ten carrying an attachment of up to MAX_ATTACHMENT_BYTES.
    """
    return list(iter_messages(count, seed, start=start, size_profile=size_profile))
