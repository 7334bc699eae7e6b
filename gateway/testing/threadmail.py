"""A realistic threaded mailbox for SORT/THREAD tests and the bench (RFC 5256).

:func:`thread_corpus` builds conversations the way mail clients write them: replies with
``In-Reply-To``/``References`` chains (sometimes truncated to In-Reply-To only), ``Re:``,
``RE: Re:``, ``Fwd:``, ``[list]`` tags, ``(fwd)`` trailers and ``[Fwd: ...]`` wrappers,
parents that never arrived, repeated Message-IDs, messages without a Message-ID, dates
in many time zones, missing and unparsable Date: fields, display names plain, quoted and
RFC 2047-encoded, empty From/To/Cc. Deterministic for a seed; CRLF line ends, so every
server counts the same RFC822.SIZE. Text stays ASCII after decoding: servers fold
non-ASCII letters differently (Dovecot by Unicode titlecase, RFC 5256 by
``i;ascii-casemap``), which is a documented difference, not what a differential should trip on.
"""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass

TOPICS = (
    "budget 2024",
    "Holiday plans",
    "holiday plans",
    "School trip",
    "car insurance renewal",
    "Dinner on Friday?",
    "photos",
    "[garden] tomatoes",
    "Meeting notes",
    "meeting notes",
    "The roof",
    "_underscore first",
    "zebra crossing",
    "Invoice #4411",
    "quick question",
    "",
    "   spaced    out   subject ",
    "Re",
    "Fwd",
    "[blob only]",
)
PEOPLE = (
    ("Alice Martin", "alice@example.org"),
    ("bob", "Bob@Example.org"),
    ('"Carol, Q."', "carol@mail.example"),
    ("=?utf-8?q?Dan_Smith?=", "dan@example.net"),
    ("", "eve@example.com"),
    ("Zoe", "zoe@example.org"),
    ("", "_list@lists.example"),
    ("frank", "frank.x@example.org"),
)
ZONES = ("+0000", "-0800", "+0100", "+1400", "-1200", "+0530", "-0000", "")
REPLY_PREFIXES = ("Re: ", "RE: ", "re: ", "Re: Re: ", "Re[2]: ", "Fwd: ", "FW: ", "[list] Re: ")


@dataclass(frozen=True)
class Mail:
    """One message of the corpus: its bytes, INTERNALDATE and own Message-ID (or None)."""

    raw: bytes
    internaldate: datetime.datetime
    message_id: str | None


def _address(rng: random.Random) -> str:
    name, addr = rng.choice(PEOPLE)
    return f"{name} <{addr}>" if name else addr


def _date(rng: random.Random, when: datetime.datetime) -> str | None:
    roll = rng.random()
    if roll < 0.03:
        return None
    if roll < 0.05:
        return "yesterday, around noon"
    zone = rng.choice(ZONES)
    shown = when
    if zone and zone != "-0000":
        sign = 1 if zone[0] == "+" else -1
        delta = datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        shown = when + sign * delta
    text = shown.strftime("%a, %d %b %Y %H:%M:%S")
    return f"{text} {zone}".rstrip()


def thread_corpus(count: int = 2000, seed: int = 5256) -> list[Mail]:
    """``count`` messages of threaded conversations, in delivery (UID) order."""
    rng = random.Random(seed)
    start = datetime.datetime(2024, 3, 1, 8, 0, tzinfo=datetime.UTC)
    mails: list[Mail] = []
    threads: list[list[tuple[str, str]]] = []  # per thread: (message-id, subject) so far
    used_ids: list[str] = []
    for n in range(count):
        when = start + datetime.timedelta(minutes=rng.randrange(0, 60 * 24 * 90))
        internal = start + datetime.timedelta(minutes=n * 7 + (n % 3 == 0))
        if n % 97 == 0 and mails:
            internal = mails[-1].internaldate  # ties in ARRIVAL
        mid: str | None = f"m{n}.{rng.randrange(10**6)}@example.org"
        roll = rng.random()
        if roll < 0.02:
            mid = None
        elif roll < 0.035 and used_ids:
            mid = rng.choice(used_ids)  # a repeated Message-ID
        references: list[str] = []
        in_reply_to: str | None = None
        if threads and rng.random() < 0.6:
            thread = rng.choice(threads)
            depth = rng.randrange(len(thread))
            chain = [i for i, _ in thread[: depth + 1]]
            base = thread[0][1]
            prefix = rng.choice(REPLY_PREFIXES)
            style = rng.random()
            if style < 0.05:
                subject = f"[Fwd: {base}]"
            elif style < 0.1:
                subject = f"{base} (fwd)"
            elif style < 0.15:
                subject = base  # a reply whose client dropped the Re:
            else:
                subject = prefix + base
            if rng.random() < 0.1:
                chain = [f"lost{rng.randrange(10**6)}@example.org", *chain]  # never arrived
            in_reply_to = chain[-1]
            if rng.random() < 0.8:
                references = chain if rng.random() < 0.85 else chain[-1:]
            thread.append((mid or f"none{n}", subject))
        else:
            subject = rng.choice(TOPICS)
            if rng.random() < 0.05:
                subject = "=?utf-8?q?" + subject.replace(" ", "_") + "?="
            threads.append([(mid or f"none{n}", subject)])
        if mid is not None:
            used_ids.append(mid)
        lines = []
        if rng.random() > 0.02:
            lines.append(f"From: {_address(rng)}")
        if rng.random() > 0.05:
            tos = [_address(rng) for _ in range(rng.choice((1, 1, 2, 3)))]
            lines.append("To: " + ", ".join(tos))
        if rng.random() < 0.3:
            lines.append(f"Cc: {_address(rng)}")
        if rng.random() > 0.01:
            lines.append(f"Subject: {subject}")
        date = _date(rng, when)
        if date is not None:
            lines.append(f"Date: {date}")
        if mid is not None:
            lines.append(f"Message-ID: <{mid}>")
        if in_reply_to is not None:
            lines.append(f"In-Reply-To: <{in_reply_to}>")
        if references:
            lines.append("References: " + "\r\n ".join(f"<{r}>" for r in references))
        body = "".join(f"line {i} of message {n}\r\n" for i in range(rng.randrange(1, 40)))
        raw = ("\r\n".join(lines) + "\r\n\r\n" + body).encode("ascii")
        mails.append(Mail(raw, internal, mid))
    return mails
