"""One POP3 upstream's settings, as the fetcher and poller need them.

Defined here, not in the app layer, so that the protocol package depends on nothing above
it; :mod:`gateway.app.config` builds these from the TOML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.limits import DEFAULT_MAX_MESSAGE_SIZE
from gateway.oauth.settings import OAuth2Settings

DEFAULT_POLL_INTERVAL = 300.0
DEFAULT_TIMEOUT = 60.0
DEFAULT_NOTIFY_AFTER = 6 * 3600.0
"""``notify_after``: a failure lasting this long files a notice even if it may pass."""


@dataclass(frozen=True)
class Upstream:
    name: str
    owner: str
    host: str
    port: int
    tls: str
    username: str
    password: str = field(repr=False)
    ca_file: str | None = None
    folder: str = "INBOX"
    poll_interval: float = DEFAULT_POLL_INTERVAL
    keep_on_server: bool = True
    timeout: float = DEFAULT_TIMEOUT
    auth: str = "auto"  # "auto" | "user" | "apop" | "plain" | "oauth2"
    allow_plaintext: bool = False
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    delete_after: float | None = None  # seconds after fetching; None = never
    delete_when_over: int | None = None  # bytes on the server; None = no size policy
    quota: int | None = None  # the upstream mailbox's quota in bytes, for "80%"
    deleted_in_imap: str = "keep"  # "keep" | "delete": DELE upstream once expunged here
    dedup: bool = True  # same bytes via another upstream into the same folder: store once
    oauth2: OAuth2Settings | None = None  # [upstreams.oauth2], required for auth = "oauth2"
    notify: bool = True  # failure notices into the owner's INBOX (gateway.pop3.notices)
    notify_after: float = DEFAULT_NOTIFY_AFTER  # seconds failing before a notice anyway
