"""Who may send what through the submission relay: routes, sender checks and limits.

Pure and sans-I/O (no reactor, no store): the session asks, this module answers with a
value or raises :class:`Refusal`, which carries the complete SMTP reply (basic code,
RFC 3463 enhanced code, text). The integrator maps the config (``[[upstreams]]`` with
``addresses`` and ``[upstreams.smtp]``, households, ``[submission]`` limits) onto the
dataclasses here; nothing in this module reads a file.

Rules (issue 15):

- An authenticated user may send only as an address of one of their upstreams or of
  their household's shared upstream (a route lists every user allowed to use it).
- ``MAIL FROM`` picks the route: the route whose ``addresses`` hold the reverse-path.
- Every ``From:`` mailbox (and ``Sender:``, if present) must be one of the user's
  addresses; otherwise ``550 5.7.1`` naming the allowed addresses (RFC 6409 §8.1
  lets a submission server refuse a message whose originator it cannot vouch for).
- Limits: size (RFC 1870), recipients per message (RFC 5321 §4.5.3.1.8), messages per
  user per hour; each refusal has its own enhanced code (RFC 3463).

Addresses are compared case-insensitively as a whole. RFC 5321 §2.4 lets a local-part
be case-sensitive, but every mail provider treats it otherwise, and a user typing
``Alice@ISP.example`` must not be refused.
"""

from __future__ import annotations

import email.utils
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_MAX_MESSAGE_SIZE = 35 * 1024 * 1024
"""SIZE advertised and enforced (RFC 1870), in octets of the message as received. Large
providers accept 25–50 MB; 35 MB covers a 25 MB attachment after base64."""

DEFAULT_MAX_RECIPIENTS = 100
"""Recipients per message; RFC 5321 §4.5.3.1.8 requires at least 100 to be accepted."""

DEFAULT_MAX_MESSAGES_PER_HOUR = 200
"""Messages one user may submit in any sliding hour (a stolen password's blast radius)."""

DEFAULT_QUEUE_LIFETIME = 2 * 24 * 3600.0
"""How long a message is retried before it expires and bounces (``queue_lifetime`` "2d";
RFC 5321 §4.5.4.1 suggests 4-5 days for MTAs; a person's outbox wants to know sooner)."""

RETRY_SCHEDULE: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0)
"""Delay before the n-th retry (the last one repeats): quick first retries for a blip,
then hourly, as RFC 5321 §4.5.4.1 asks (at least 30 minutes once it has failed a while)."""

RATE_WINDOW = 3600.0
"""The window of the per-user message limit, in seconds."""


@dataclass(frozen=True)
class SmtpUpstream:
    """``[upstreams.smtp]`` of one upstream: where and how its mail is relayed."""

    host: str
    port: int = 587
    tls: str = "starttls"
    """``implicit`` (RFC 8314), ``starttls`` (RFC 3207), or ``none`` (loopback only)."""
    ca_file: str | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    timeout: float = 60.0
    """Seconds without an answer from the server before the attempt is abandoned."""
    mechanism: str = "password"
    """``password`` (AUTH PLAIN or LOGIN) or ``xoauth2`` (``password`` is then an OAuth2
    access token, put in before each attempt; SASL XOAUTH2 as Google and Microsoft
    define it)."""


@dataclass(frozen=True)
class SubmissionRoute:
    """One upstream as a way out: its addresses, who may use them, and its SMTP server."""

    name: str
    """The upstream's name (its ``[[upstreams]]`` name), used as the queue's route key."""
    addresses: tuple[str, ...]
    """Envelope/From addresses this upstream sends for."""
    users: frozenset[str]
    """Users allowed to send as these addresses: the owner, or every member of the
    household for a household's shared upstream."""
    smtp: SmtpUpstream | None = None
    """None: the upstream has no SMTP server configured; it can receive, not send."""

    def has(self, address: str) -> bool:
        return normalize_address(address) in {normalize_address(a) for a in self.addresses}


@dataclass(frozen=True)
class SubmissionLimits:
    """Every bound of the submission server (STYLE.md habit 2)."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    max_messages_per_hour: int = DEFAULT_MAX_MESSAGES_PER_HOUR
    """0 means no limit."""
    max_command_line: int = 4096
    """Longest command line, CRLF excluded. RFC 5321 §4.5.3.1.4 says 512, extensions add
    to it (SIZE, AUTH=); RFC 4954 §4 wants room for 12288 in an AUTH exchange, which
    the SASL reader allows separately (:data:`max_sasl_line`)."""
    max_sasl_line: int = 12288
    prelogin_timeout: float = 60.0
    """Seconds without a command before AUTH, then 421 4.4.2."""
    idle_timeout: float = 300.0
    """Seconds without a command after AUTH (RFC 5321 §4.5.3.2.7: 5 minutes)."""
    data_timeout: float = 600.0
    """Seconds without a byte during DATA (RFC 5321 §4.5.3.2.6: 10 minutes)."""
    max_connections_per_ip: int = 50
    max_failed_commands: int = 20
    """Replies of 5xx for syntax/unknown commands in a row before 421 and close."""


class Refusal(Exception):
    """A refused command: the full reply (code, enhanced status code, text)."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text


def normalize_address(address: str) -> str:
    """The comparison key of an address (see the module docstring)."""
    return address.strip().strip("<>").casefold()


class SenderPolicy:
    """Routes by address and by user, built once from the config (rebuilt on reload)."""

    def __init__(self, routes: Iterable[SubmissionRoute]) -> None:
        self.routes = tuple(routes)
        self._by_address: dict[str, SubmissionRoute] = {}
        for route in self.routes:
            for address in route.addresses:
                key = normalize_address(address)
                if key in self._by_address:
                    raise ValueError(
                        f"address {address} belongs to upstreams "
                        f"{self._by_address[key].name} and {route.name}"
                    )
                self._by_address[key] = route

    def route_named(self, name: str) -> SubmissionRoute | None:
        for route in self.routes:
            if route.name == name:
                return route
        return None

    def allowed_addresses(self, user: str) -> tuple[str, ...]:
        """Every address ``user`` may send as, in config order."""
        return tuple(a for r in self.routes if user in r.users for a in r.addresses)

    def route_for(self, user: str, mail_from: str) -> SubmissionRoute:
        """The route ``MAIL FROM:<mail_from>`` selects for ``user``, or :class:`Refusal`."""
        if not mail_from:
            raise Refusal(550, "5.7.1", "A null reverse-path is for bounces, not submissions")
        route = self._by_address.get(normalize_address(mail_from))
        if route is None or user not in route.users:
            raise Refusal(550, "5.7.1", f"You may not send as {mail_from}{self._hint(user)}")
        if route.smtp is None:
            raise Refusal(550, "5.7.1", f"{mail_from} has no outgoing server configured in popgate")
        return route

    def check_headers(self, user: str, from_header: Sequence[str], sender: str | None) -> None:
        """Refuse a message whose From (any of its mailboxes) or Sender is not one of
        ``user``'s addresses (``550 5.7.1`` naming the allowed addresses)."""
        allowed = {normalize_address(a) for a in self.allowed_addresses(user)}
        if not from_header:
            raise Refusal(550, "5.6.0", "The message has no From: header (RFC 5322 §3.6)")
        for address in (*from_header, *([sender] if sender else [])):
            if normalize_address(address) not in allowed:
                raise Refusal(
                    550,
                    "5.7.1",
                    f"You may not send with From/Sender {address or '(empty)'}{self._hint(user)}",
                )

    def _hint(self, user: str) -> str:
        allowed = self.allowed_addresses(user)
        if not allowed:
            return "; you have no sending address"
        return "; allowed: " + ", ".join(allowed)


def check_size(size: int, limits: SubmissionLimits) -> None:
    """RFC 1870 §6: a message (or a declared SIZE) over the limit is 552 5.3.4."""
    if size > limits.max_message_size:
        raise Refusal(
            552, "5.3.4", f"Message size exceeds the limit of {limits.max_message_size} octets"
        )


def check_recipient_count(count: int, limits: SubmissionLimits) -> None:
    """RFC 5321 §4.5.3.1.10: too many recipients is 452 4.5.3 (the client sends the
    rest in another transaction)."""
    if count >= limits.max_recipients:
        raise Refusal(452, "4.5.3", f"Too many recipients (at most {limits.max_recipients})")


class RateLimiter:
    """Messages per user in a sliding :data:`RATE_WINDOW`; time is passed in, so tests
    need no clock. Memory is bounded by users × limit timestamps. In memory: a restart
    forgets the window (the queue keeps the messages, not the count).

    One limiter is shared by the submission server (reactor thread) and Sieve's
    redirect/vacation at ingest (a store thread in PostgreSQL mode), so its state is
    guarded by a lock and :meth:`take` checks and counts in one step."""

    def __init__(self, limit: int, window: float = RATE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._sent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, user: str, now: float) -> deque[float]:
        times = self._sent.setdefault(user, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def check(self, user: str, now: float) -> None:
        """:class:`Refusal` 450 4.7.0 when ``user`` is at the limit."""
        if self.limit <= 0:
            return
        with self._lock:
            times = self._recent(user, now)
            full = len(times) >= self.limit
            oldest = times[0] if full else now
        if full:
            wait = int(self.window - (now - oldest)) + 1
            raise Refusal(
                450,
                "4.7.0",
                f"Sending limit of {self.limit} messages per hour reached; "
                f"try again in {wait} seconds",
            )

    def record(self, user: str, now: float) -> None:
        if self.limit > 0:
            with self._lock:
                self._recent(user, now).append(now)

    def take(self, user: str, now: float) -> bool:
        """Count one message for ``user`` unless at the limit (False then), atomically:
        two threads at the limit's edge cannot both get the last place."""
        if self.limit <= 0:
            return True
        with self._lock:
            times = self._recent(user, now)
            if len(times) >= self.limit:
                return False
            times.append(now)
            return True


def retry_delay(attempts: int, schedule: Sequence[float] = RETRY_SCHEDULE) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


def header_addresses(values: Iterable[str]) -> list[str]:
    """The addr-specs of address header values (RFC 5322 §3.4), empty ones dropped."""
    return [addr for _name, addr in email.utils.getaddresses(list(values)) if addr]
