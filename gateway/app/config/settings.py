"""The settings a validated config yields: typed, immutable, with the defaults they document.

Each dataclass is one table of the file (``[limits]``, ``[users.NAME]``, ``[shared.NAME]``,
``[metrics]``, ``[tls]``, ``[security]``, ``[[listeners]]``, ``[store]``, ``[cluster]``); :class:`Config` is the whole.
The per-section parsers (sections.py, upstreams.py, listeners.py) build them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.limits import DEFAULT_MAX_MESSAGE_SIZE
from gateway.imap.policy import IMAPLimits
from gateway.pop3.upstream import Upstream
from gateway.security.authcache import DEFAULT_MAX_ENTRIES, DEFAULT_TTL
from gateway.submission.policy import (
    DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_SUBMISSION_SIZE,
)
from gateway.submission.policy import (
    DEFAULT_MAX_MESSAGES_PER_HOUR,
    DEFAULT_MAX_RECIPIENTS,
    DEFAULT_QUEUE_LIFETIME,
    RETRY_SCHEDULE,
    SmtpUpstream,
)

DEFAULT_STATE_DIR = "/var/lib/popgate"
DEFAULT_IMAP = ("tcp:1143:interface=127.0.0.1",)
DEFAULT_METRICS_LISTEN = "tcp:9143:interface=127.0.0.1"


@dataclass(frozen=True)
class Limits:
    """``[limits]``: what an operator may change of the IMAP server's bounds. The defaults
    are the server's own (:class:`~gateway.imap.policy.IMAPLimits`), defined there once."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_line_length: int = IMAPLimits.max_line_length
    max_pipelined_commands: int = IMAPLimits.max_pipelined_commands
    prelogin_timeout: float = IMAPLimits.prelogin_timeout
    idle_timeout: float = IMAPLimits.idle_timeout
    idle_command_timeout: float = IMAPLimits.idle_command_timeout


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    quota: int | None = None  # bytes of mail the user may keep (RFC 9208 STORAGE); None: no limit


@dataclass(frozen=True)
class Shared:
    """``[shared.NAME]``: a household's shared mailbox tree (owner ``shared:NAME`` in the
    store, ``Shared/NAME`` to its members; see gateway/access/households.py)."""

    name: str
    members: tuple[str, ...]
    quota: int | None = None  # bytes for the whole shared tree; None: no limit


@dataclass(frozen=True)
class Metrics:
    """The Prometheus endpoint ([metrics]): off unless enabled, loopback by default."""

    enabled: bool = False
    listen: str = DEFAULT_METRICS_LISTEN


@dataclass(frozen=True)
class Listener:
    """One IMAP listener (``[server] imap``/``imaps`` or a ``[[listeners]]`` table), or a
    ManageSieve listener (``[server] managesieve``, always "starttls").

    ``tls``: "starttls" (plaintext first, STARTTLS offered when ``[tls]`` is set),
    "implicit" (IMAPS: TLS from the first byte with the ``[tls]`` certificate) or
    "endpoint" (an ``ssl:`` endpoint string that does TLS itself). ``plaintext_auth``:
    LOGIN/AUTHENTICATE allowed before TLS (RFC 3501 §6.2.3 LOGINDISABLED otherwise).
    """

    endpoint: str
    tls: str = "starttls"
    plaintext_auth: bool = False
    local: bool = False
    backlog: int | None = None
    """The listen queue from a ``[[listeners]]`` table's ``backlog``; None: the endpoint
    string's own ``backlog=`` or gateway/app/listening.py's default."""


@dataclass(frozen=True)
class WebListener:
    """One ``[server] web`` listener of the web page (gateway/app/config/web.py).

    ``endpoint`` is as written; ``listen`` is what is bound (``tcp:`` for an ``ssl:``
    listener on the ``[tls]`` certificate). ``tls``: "none" (plain HTTP), "implicit"
    (HTTPS with the ``[tls]`` certificate, reloaded on SIGHUP) or "endpoint" (an
    ``ssl:`` endpoint with its own ``privateKey``/``certKey``).
    """

    endpoint: str
    listen: str
    tls: str = "none"
    local: bool = False


@dataclass(frozen=True)
class TLSSettings:
    """``[tls]``: the server certificate for STARTTLS and IMAPS (reloaded on SIGHUP)."""

    cert_file: str
    key_file: str
    min_version: str = "1.2"


@dataclass(frozen=True)
class Security:
    """``[security]``: login penalties, failure budgets and connection limits."""

    auth_penalty_initial: float = 2.0
    auth_penalty_max: float = 15.0
    auth_failure_window: float = 15 * 60.0
    auth_failures_per_ip: int = 30
    auth_failures_per_user: int = 100
    max_connections_per_user_ip: int = 50
    max_connections_per_ip: int = 1000
    auth_cache_size: int = DEFAULT_MAX_ENTRIES
    """Users whose last successful password check is remembered (0: off), see
    gateway/security/authcache.py."""
    auth_cache_ttl: float = DEFAULT_TTL


STORE_BACKENDS = ("sqlite", "postgresql")
DEFAULT_LEASE = 30.0
MIN_LEASE = 5.0


@dataclass(frozen=True)
class StoreSettings:
    """``[store]``: where mail lives. "sqlite": the file in ``state_dir`` (the default);
    "postgresql": the database ``dsn`` names (a libpq URI without a password), the
    password read from ``password_file`` (mode 0600/0640) when given."""

    backend: str = "sqlite"
    dsn: str | None = None
    password_file: str | None = None
    password: str | None = field(default=None, repr=False)
    flag_fsync: str = "optimized"
    """Whether a flag change's tagged OK waits for its fsync (SQLite) or WAL flush
    (PostgreSQL) ("always") or not ("optimized", as Dovecot's default;
    :mod:`gateway.imap.durability`, ``PostgresStore.lazy_flags``)."""


@dataclass(frozen=True)
class Cluster:
    """``[cluster]``: this node's name (unique per node, default the host name) and how
    long its claim on an upstream lasts unless renewed (``lease``, at least 5 s)."""

    node: str
    lease: float = DEFAULT_LEASE


@dataclass(frozen=True)
class Config:
    path: str
    state_dir: str
    imap: tuple[str, ...]
    log_level: str
    log_format: str
    limits: Limits
    users: dict[str, User]
    upstreams: tuple[Upstream, ...]
    metrics: Metrics = Metrics()
    tls: TLSSettings | None = None
    listeners: tuple[Listener, ...] = ()
    security: Security = Security()
    shared: dict[str, Shared] = field(default_factory=dict)
    managesieve: tuple[Listener, ...] = ()
    """``[server] managesieve``: ManageSieve (RFC 5804) listeners; none by default."""
    submission: SubmissionSettings = field(default_factory=lambda: SubmissionSettings())
    sending: tuple[Sending, ...] = ()

    # the web page (issue 18): its listeners, its admins, and whether plain HTTP may
    # take passwords from other machines (server.allow_insecure_listener)
    web: tuple[WebListener, ...] = ()
    admins: tuple[str, ...] = ()
    allow_insecure_listener: bool = False

    store: StoreSettings = StoreSettings()
    cluster: Cluster | None = None  # None only for Configs built in code; parse() sets it

    trace_users: tuple[str, ...] = ()
    """``[debug] trace_users``: whose IMAP connections are traced (issue 17)."""


# ---- sending mail (issue 15): [server] submission/submissions, [submission], smtp --------


@dataclass(frozen=True)
class SubmissionSettings:
    """``[submission]``: the submission relay's limits and queue lifetime, with the
    ``[server] submission``/``submissions`` listeners (none: the relay is off)."""

    listeners: tuple[Listener, ...] = ()
    max_message_size: int = DEFAULT_SUBMISSION_SIZE
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    max_messages_per_hour: int = DEFAULT_MAX_MESSAGES_PER_HOUR
    queue_lifetime: float = DEFAULT_QUEUE_LIFETIME
    retry_intervals: tuple[float, ...] = RETRY_SCHEDULE
    """Waits before the 1st, 2nd, ... retry of a message (the last one repeats)."""


@dataclass(frozen=True)
class Sending:
    """What one ``[[upstreams]]`` table says about sending: the addresses it sends for,
    who may use them, and its ``[upstreams.smtp]`` server (None: it cannot send)."""

    upstream: str
    owner: str
    addresses: tuple[str, ...]
    smtp: SmtpUpstream | None = None
    oauth2: bool = False
    """The SMTP password is the upstream's OAuth2 access token (SASL XOAUTH2)."""
