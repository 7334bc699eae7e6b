"""Web sessions: a bounded server-side table of random ids, the cookie that carries one,
and the synchronizer token every form must echo (CSRF).

Why server-side: signing out or expiring ends the session for real (a signed cookie
would stay valid until its own expiry), and the cookie holds nothing but a random id.

* Ids and tokens are 256 random bits (``secrets.token_urlsafe(32)``); a new id is made at
  sign-in, so an id planted before sign-in is worthless (session fixation).
* Sessions end ``idle_timeout`` after their last use and ``lifetime`` after sign-in,
  whichever is first. The table holds at most ``max_sessions`` (least recently used
  out first), so memory is bounded whatever clients do.
* Before sign-in a visitor gets an *anonymous* session (kept in a second table of its
  own, so a flood of visitors can never push signed-in users out) whose token protects
  the sign-in form against login CSRF.
* The cookie (RFC 6265 §4.1; SameSite from RFC 6265bis §4.1.2.7) is ``HttpOnly`` (no
  script reads it), ``SameSite=Strict`` (no other site's page sends it), ``Path=/``,
  and ``Secure`` when the listener is TLS, so a browser never sends it in clear.
* Tokens are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE_NAME = "popgate_session"
"""The session cookie's name."""

TOKEN_BYTES = 32
"""Random bytes in a session id and in a CSRF token (256 bits)."""

IDLE_TIMEOUT = 2 * 3600.0
"""A signed-in session unused this long ends."""

LIFETIME = 12 * 3600.0
"""A signed-in session ends this long after sign-in, however busy."""

ANONYMOUS_TIMEOUT = 15 * 60.0
"""A sign-in form is good this long."""

MAX_SESSIONS = 10_000
"""Most sessions of each kind (signed-in, anonymous) held at once."""

MAX_ID_LENGTH = 64
"""A cookie value longer than this is not looked up (ids are 43 characters)."""


@dataclass
class Session:
    """One browser's session. ``user`` is None before sign-in. ``notice`` is a one-shot
    message for the next page (what "fetch now" did), kept here rather than in the URL
    so that nothing a page shows can be chosen by a link."""

    id: str
    csrf: str
    user: str | None
    created: float
    last_seen: float
    notice: str | None = field(default=None)


class _Table:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: OrderedDict[str, Session] = OrderedDict()

    def put(self, session: Session) -> None:
        self.items[session.id] = session
        self.items.move_to_end(session.id)
        while len(self.items) > self.limit:
            self.items.popitem(last=False)


class SessionTable:
    """Every live session of one web service, on an injected clock (epoch seconds)."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        lifetime: float = LIFETIME,
        anonymous_timeout: float = ANONYMOUS_TIMEOUT,
        max_sessions: int = MAX_SESSIONS,
        token: Callable[[], str] = lambda: secrets.token_urlsafe(TOKEN_BYTES),
    ) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.anonymous_timeout = anonymous_timeout
        self._token = token
        self._users = _Table(max_sessions)
        self._anonymous = _Table(max_sessions)

    def __len__(self) -> int:
        return len(self._users.items) + len(self._anonymous.items)

    def _new(self, user: str | None) -> Session:
        now = self.clock()
        session = Session(
            id=self._token(), csrf=self._token(), user=user, created=now, last_seen=now
        )
        (self._users if user is not None else self._anonymous).put(session)
        return session

    def anonymous(self) -> Session:
        """A session for a visitor who has not signed in (it carries the form token)."""
        return self._new(None)

    def sign_in(self, user: str, previous: Session | None = None) -> Session:
        """A new session (new id, new token) for ``user``; ``previous`` ends."""
        if previous is not None:
            self.end(previous.id)
        return self._new(user)

    def _expired(self, session: Session, now: float) -> bool:
        if session.user is None:
            return now - session.created > self.anonymous_timeout
        return now - session.last_seen > self.idle_timeout or now - session.created > self.lifetime

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its last use becomes now), or None."""
        if not session_id or len(session_id) > MAX_ID_LENGTH:
            return None
        now = self.clock()
        for table in (self._users, self._anonymous):
            session = table.items.get(session_id)
            if session is None:
                continue
            if self._expired(session, now):
                del table.items[session_id]
                return None
            session.last_seen = now
            table.items.move_to_end(session_id)
            return session
        return None

    def end(self, session_id: str) -> None:
        self._users.items.pop(session_id, None)
        self._anonymous.items.pop(session_id, None)

    def sweep(self) -> int:
        """Forget every expired session (``get`` forgets them lazily too); how many went."""
        now = self.clock()
        gone = 0
        for table in (self._users, self._anonymous):
            for sid in [s for s, v in table.items.items() if self._expired(v, now)]:
                del table.items[sid]
                gone += 1
        return gone


def csrf_ok(session: Session | None, token: str | None) -> bool:
    """Whether a form's token is this session's (constant-time; no session, no match)."""
    if session is None or not token:
        return False
    return hmac.compare_digest(session.csrf.encode(), token.encode("utf-8", "replace"))


def session_cookie(session_id: str, *, secure: bool, max_age: float | None = None) -> str:
    """The ``Set-Cookie`` value carrying a session id."""
    parts = [f"{COOKIE_NAME}={session_id}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append(f"Max-Age={int(max_age)}")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def clearing_cookie(*, secure: bool) -> str:
    """The ``Set-Cookie`` value that makes a browser forget the session cookie."""
    return session_cookie("", secure=secure, max_age=0)
