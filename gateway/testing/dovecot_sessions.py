"""POP3 sessions as Dovecot's log records them: when each began and ended, to prove none overlapped.

The cluster acceptance test (issue 13) must show that at most one node polls an upstream
at any moment, from the upstream's side. Dovecot logs each POP3 login (``pop3-login:
Info: Login: user=<alice>, ..., session=<ID>``) and the end of that session
(``pop3(alice)<PID><ID>: Info: Disconnected: ...``), both with the session ID; with
:data:`PRECISE_LOG_TIMESTAMPS` in the instance's config (``extra_config``), the lines carry
microseconds, so two sessions a few milliseconds apart are still told apart.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

PRECISE_LOG_TIMESTAMPS = 'log_timestamp = "%Y-%m-%d %H:%M:%S.%{usecs} "\n'
"""Dovecot config: every log line starts with a timestamp in microseconds."""

_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6})"
_LOGIN = re.compile(_STAMP + r" pop3-login: Info: Login: user=<([^>]*)>.*session=<([^>]+)>")
_END = re.compile(_STAMP + r" pop3\(([^)]*)\)<\d+><([^>]+)>: Info: Disconnected")


@dataclass(frozen=True)
class Session:
    """One POP3 session of ``user``: login and end times (None: no end logged yet)."""

    id: str
    user: str
    began: dt.datetime
    ended: dt.datetime | None


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f")


def pop3_sessions(log_text: str, user: str) -> list[Session]:
    """Every logged-in POP3 session of ``user``, in login order."""
    began: dict[str, dt.datetime] = {}
    ended: dict[str, dt.datetime] = {}
    for line in log_text.splitlines():
        if (m := _LOGIN.match(line)) and m.group(2) == user:
            began[m.group(3)] = _time(m.group(1))
        elif (m := _END.match(line)) and m.group(2) == user:
            ended[m.group(3)] = _time(m.group(1))
    return sorted(
        (Session(sid, user, when, ended.get(sid)) for sid, when in began.items()),
        key=lambda s: s.began,
    )


def overlaps(sessions: list[Session]) -> list[tuple[Session, Session]]:
    """Pairs of sessions where the later one logged in before the earlier one ended (a
    session without a logged end overlaps everything after it)."""
    found = []
    ordered = sorted(sessions, key=lambda s: s.began)
    for i, first in enumerate(ordered):
        for later in ordered[i + 1 :]:
            if first.ended is None or later.began < first.ended:
                found.append((first, later))
    return found
