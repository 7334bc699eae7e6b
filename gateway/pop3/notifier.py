"""Filing failure notices for one upstream: the episode kept on disk, the message appended
to the owner's INBOX.

The decision is :mod:`gateway.pop3.notices` (pure); this module adds the two effects.
The episode lives in ``state_dir/notices/NAME.json`` rather than a store table: it is a
few fields per upstream written only when an episode starts, grows or ends, and a file
keeps the storage contract (and every backend) unchanged. The message goes in with
:meth:`Store.append`, the path an IMAP APPEND takes, so listeners (IDLE sessions) hear of
it and it is an ordinary message from then on. It is appended before the episode is saved
as notified: a crash in between repeats a notice rather than losing it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog

from gateway.pop3.errors import FetchError, OAuthLoginNeeded
from gateway.pop3.notices import Episode, Notice, build_message, next_episode
from gateway.pop3.upstream import Upstream
from gateway.store.interfaces import INBOX
from gateway.store.runner import StoreRunner

log = structlog.get_logger(__name__)

NOTICE_DIR = "notices"
"""Directory under state_dir with one episode file per upstream."""


def episode_path(state_dir: str | os.PathLike[str], upstream: str) -> Path:
    return Path(state_dir) / NOTICE_DIR / f"{upstream}.json"


class FailureNotifier:
    """Called by the poller after each pass (see :meth:`after_pass`)."""

    def __init__(
        self,
        upstream: Upstream,
        store: Any,
        state_dir: str | os.PathLike[str],
        *,
        runner: StoreRunner | None = None,
    ) -> None:
        self.upstream = upstream
        self.store = store
        self.runner = runner
        """Where the store is called: None (or inline) on the caller's thread; a thread
        runner for a store that does not run inline (the notice is then filed later)."""
        self.path = episode_path(state_dir, upstream.name)
        self.episode = self._load()
        self.filed: list[Notice] = []  # this process's notices, for tests and status

    def _load(self) -> Episode:
        try:
            return Episode.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return Episode()
        except (OSError, ValueError) as e:
            log.warning("pop3.notice_state_unreadable", upstream=self.upstream.name, reason=str(e))
            return Episode()

    def _save(self, episode: Episode) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(episode.to_json()), encoding="utf-8")
        os.replace(tmp, self.path)

    def after_pass(self, *, ok: bool, error: BaseException | None, now: float) -> Notice | None:
        """Fold one pass into the episode; file the notice it calls for (if ``notify``)."""
        up = self.upstream
        if not up.notify:
            return None
        kind = None
        if not ok:
            kind = error.kind if isinstance(error, FetchError) else "internal"
        episode, notice = next_episode(
            self.episode,
            ok=ok,
            kind=kind,
            message=str(error) if error is not None else None,
            now=now,
            notify_after=up.notify_after,
            upstream=up.name,
        )
        if notice is not None:
            if notice.what == "failing":
                oauth = up.auth == "oauth2" or isinstance(error, OAuthLoginNeeded)
            else:
                oauth = up.auth == "oauth2"
            raw = build_message(notice, owner=up.owner, host=up.host, oauth=oauth)
            if self.runner is not None and not self.runner.inline:
                # The store is called on a store thread; the episode moves on once filed.
                d = self.runner.run(self._file, raw)
                d.addCallbacks(
                    lambda _: self._filed(notice, episode), lambda f: self._not_filed(f.value)
                )
                return notice
            try:
                self._file(raw)
            except Exception as e:
                self._not_filed(e)
                return None  # the episode is not marked: the next pass tries again
            self._filed(notice, episode)
            return notice
        self._advance(episode)
        return notice

    def _file(self, raw: bytes) -> None:
        mailbox = self.store.get_mailbox(self.upstream.owner, INBOX)
        self.store.append(mailbox.id, raw)

    def _not_filed(self, error: BaseException) -> None:
        up = self.upstream
        log.error("pop3.notice_failed", upstream=up.name, owner=up.owner, reason=str(error))

    def _filed(self, notice: Notice, episode: Episode) -> None:
        up = self.upstream
        self.filed.append(notice)
        log.info(
            "pop3.notice_filed",
            upstream=up.name,
            owner=up.owner,
            notice=notice.what,
            kind=notice.kind,
        )
        self._advance(episode)

    def _advance(self, episode: Episode) -> None:
        if episode != self.episode:
            self.episode = episode
            try:
                self._save(episode)
            except OSError as e:
                log.error(
                    "pop3.notice_state_unwritable", upstream=self.upstream.name, reason=str(e)
                )
