"""Date parsing and the date parts of RFC 5260 §4.2, for the `date` and `currentdate` tests.

Header dates follow RFC 5322 §3.3 including its obsolete forms (two-digit years, named
zones), via the standard library; an unparseable date makes the test false (RFC 5260 §4.1).
"""

from __future__ import annotations

import datetime as dt
import email.utils

_MJD_EPOCH = dt.date(1858, 11, 17)


def parse_header_date(value: str) -> dt.datetime | None:
    """The instant named by a Date-like header, keeping its original offset; None if invalid.

    For Received-style fields the date follows the last ";" (RFC 5260 §4.1).
    """
    if ";" in value:
        value = value.rsplit(";", 1)[1]
    parsed = email.utils.parsedate_tz(value.strip())
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    offset = parsed[9] or 0
    try:
        return dt.datetime(
            year, month, day, hour, minute, second, tzinfo=dt.timezone(dt.timedelta(seconds=offset))
        )
    except (ValueError, OverflowError):
        return None


def zone_of(text: str) -> dt.timezone:
    """A +hhmm / -hhmm zone argument as a tzinfo (validated before)."""
    sign = -1 if text[0] == "-" else 1
    return dt.timezone(sign * dt.timedelta(hours=int(text[1:3]), minutes=int(text[3:5])))


def _zone_text(when: dt.datetime) -> str:
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def date_part(when: dt.datetime, part: str) -> str:
    """One date part of RFC 5260 §4.2 (e.g. "year" → "2024", "weekday" → "0" for Sunday).

    iso8601 writes a zero offset as "Z", as RFC 3339 §5.6 allows and Pigeonhole does.
    """
    part = part.lower()
    if part == "year":
        return f"{when.year:04d}"
    if part == "month":
        return f"{when.month:02d}"
    if part == "day":
        return f"{when.day:02d}"
    if part == "date":
        return f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
    if part == "julian":
        return str((when.date() - _MJD_EPOCH).days)
    if part == "hour":
        return f"{when.hour:02d}"
    if part == "minute":
        return f"{when.minute:02d}"
    if part == "second":
        return f"{when.second:02d}"
    if part == "time":
        return f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    if part == "iso8601":
        zone = _zone_text(when)
        suffix = "Z" if zone == "+0000" else zone[:3] + ":" + zone[3:]
        return when.strftime("%Y-%m-%dT%H:%M:%S") + suffix
    if part == "std11":
        return email.utils.format_datetime(when).replace(" -0000", " +0000")
    if part == "zone":
        return _zone_text(when)
    if part == "weekday":
        return str((when.weekday() + 1) % 7)
    return ""
