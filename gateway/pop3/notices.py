"""Failure notices (pure): when a failing upstream deserves a message in its owner's
INBOX, and the message itself.

An *episode* runs from the first failed pass after a success to the next success. Within
one, at most one "fetching fails" notice is filed: at once when the failure will not fix
itself (:data:`PERMANENT_KINDS`: login refused, OAuth grant revoked, certificate not
trusted, RFC 3206 ``[SYS/PERM]``), else once the episode is older than ``notify_after``. The
success that ends an episode with a notice files one "fetching works again" notice. An
episode without a notice ends silently. :mod:`gateway.pop3.notifier` keeps the
:class:`Episode` on disk (so restarts neither repeat nor lose a notice) and delivers.
"""

from __future__ import annotations

import datetime
import email.policy
import email.utils
import hashlib
from dataclasses import asdict, dataclass, replace
from email.message import EmailMessage
from typing import Any

PERMANENT_KINDS = frozenset({"auth", "tls_verify", "sys_perm"})
"""Fetch error kinds that need a person: noticed on the first failure."""

NOTICE_FROM = "popgate <postmaster@localhost>"

_IGNORED_KINDS = frozenset({"cancelled"})
"""Outcomes that are no verdict on the upstream (the service stopping)."""


@dataclass(frozen=True)
class Episode:
    """What is remembered about the current failure episode of one upstream (times are
    epoch seconds). ``failing_since`` None: the last pass succeeded."""

    failing_since: float | None = None
    kind: str | None = None
    message: str | None = None
    failures: int = 0
    notified_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Episode:
        if not isinstance(data, dict):
            return cls()
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            return cls(**known)
        except TypeError:
            return cls()


@dataclass(frozen=True)
class Notice:
    """One message to file. ``what`` is "failing" or "recovered"."""

    what: str
    upstream: str
    since: float
    at: float
    kind: str | None = None
    message: str | None = None
    failures: int = 0


def next_episode(
    episode: Episode,
    *,
    ok: bool,
    kind: str | None,
    message: str | None,
    now: float,
    notify_after: float,
    upstream: str,
) -> tuple[Episode, Notice | None]:
    """Fold one pass's outcome into the episode; return the new episode and the notice
    to file now, if any."""
    if not ok and kind in _IGNORED_KINDS:
        return episode, None
    if ok:
        if episode.failing_since is None:
            return episode, None
        notice = None
        if episode.notified_at is not None:
            notice = Notice(
                "recovered",
                upstream,
                since=episode.failing_since,
                at=now,
                kind=episode.kind,
                message=episode.message,
                failures=episode.failures,
            )
        return Episode(), notice
    since = episode.failing_since if episode.failing_since is not None else now
    episode = replace(
        episode, failing_since=since, kind=kind, message=message, failures=episode.failures + 1
    )
    if episode.notified_at is not None:
        return episode, None
    if kind in PERMANENT_KINDS or now - since >= notify_after:
        episode = replace(episode, notified_at=now)
        return episode, Notice(
            "failing",
            upstream,
            since=since,
            at=now,
            kind=kind,
            message=message,
            failures=episode.failures,
        )
    return episode, None


def advice(kind: str | None, upstream: str, *, oauth: bool) -> str:
    """What the owner (or the operator) should do about a failure of ``kind``."""
    if kind == "auth" and oauth:
        return (
            "The OAuth sign-in for this account is no longer accepted (revoked, expired, or\n"
            "the password changed). Sign in again on the gateway host:\n\n"
            f"    run: popgate oauth login {upstream}\n\n"
            "(add --config FILE when the configuration is not /etc/popgate/popgate.toml)\n"
            "and follow the link it prints. Fetching resumes by itself; no restart needed."
        )
    if kind == "auth":
        return (
            "The provider refused the user name or password. Check them in the\n"
            f"[[upstreams]] entry named {upstream!r} (or the password file it points to),\n"
            "then run: popgate reload. Some providers need an app password instead."
        )
    if kind == "tls_verify":
        return (
            "The server's TLS certificate is not trusted for this host name. Check the\n"
            "host name in the configuration; if the server uses a private CA, set ca_file."
        )
    if kind == "sys_perm":
        return "The provider reports a permanent problem with this account: check it in their web mail."
    return (
        "popgate keeps retrying with backoff. If this goes on, check the network and the\n"
        "provider's status page, and `popgate status` for details."
    )


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def build_message(notice: Notice, *, owner: str, host: str, oauth: bool) -> bytes:
    """The notice as a plain-text RFC 5322 message (UTF-8, CRLF line ends), deterministic
    for a given notice (its Message-ID is derived from it)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = NOTICE_FROM
    msg["To"] = f"{owner}@localhost" if ":" not in owner else "postmaster@localhost"
    msg["Date"] = email.utils.format_datetime(
        datetime.datetime.fromtimestamp(notice.at, datetime.UTC)
    )
    seed = f"{notice.what}|{notice.upstream}|{notice.since}|{notice.at}".encode()
    msg["Message-ID"] = f"<notice.{hashlib.sha256(seed).hexdigest()[:24]}@popgate.localhost>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834 §5: no auto-replies to this
    if notice.what == "recovered":
        msg["Subject"] = f"popgate: fetching from {notice.upstream} works again"
        body = (
            f"Fetching mail from the upstream {notice.upstream!r} ({host}) works again.\n\n"
            f"It had failed since {_when(notice.since)} ({notice.failures} failed passes; last\n"
            f"error: {notice.kind}). Mail that arrived meanwhile is being fetched now.\n"
        )
    else:
        msg["Subject"] = f"popgate: fetching from {notice.upstream} fails"
        body = (
            f"popgate cannot fetch mail from the upstream {notice.upstream!r} ({host}).\n\n"
            f"Failing since: {_when(notice.since)}\n"
            f"What failed:   {notice.kind}\n"
            f"Details:       {notice.message or '-'}\n\n"
            f"What to do:\n{advice(notice.kind, notice.upstream, oauth=oauth)}\n\n"
            "You get one more message when fetching works again.\n"
        )
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    return msg.as_bytes()
