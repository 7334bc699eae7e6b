"""Failure notices: when one is filed (gateway.pop3.notices, pure), what it says, and the
notifier that keeps episodes across restarts and appends to the owner's INBOX."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import pytest

from gateway.pop3.errors import (
    FetchError,
    LoginFailed,
    OAuthLoginNeeded,
    StepTimeout,
    TLSVerificationError,
)
from gateway.pop3.notices import Episode, Notice, build_message, next_episode
from gateway.pop3.notifier import FailureNotifier, episode_path
from gateway.pop3.upstream import Upstream
from gateway.store.memory import MemoryStore

HOUR = 3600.0


def fold(episode: Episode, ok: bool, kind: str | None, now: float, after: float = 6 * HOUR) -> Any:
    return next_episode(
        episode, ok=ok, kind=kind, message="m", now=now, notify_after=after, upstream="up"
    )


@pytest.mark.parametrize("kind", ["auth", "tls_verify", "sys_perm"])
def test_a_permanent_failure_is_noticed_at_once_and_only_once(kind: str) -> None:
    episode, notice = fold(Episode(), False, kind, 100)
    assert notice is not None and notice.what == "failing" and notice.since == 100
    for t in range(101, 200):
        episode, notice = fold(episode, False, kind, t)
        assert notice is None
    episode, notice = fold(episode, True, None, 300)
    assert notice is not None and notice.what == "recovered" and notice.failures == 100
    assert episode == Episode()


def test_a_temporary_failure_is_noticed_only_after_notify_after() -> None:
    episode, notice = fold(Episode(), False, "timeout", 0)
    assert notice is None
    episode, notice = fold(episode, False, "connect", 6 * HOUR - 1)
    assert notice is None
    episode, notice = fold(episode, False, "connect", 6 * HOUR)
    assert notice is not None and notice.since == 0 and notice.kind == "connect"
    episode, notice = fold(episode, False, "auth", 7 * HOUR)
    assert notice is None  # once per episode, even when the kind changes


def test_a_short_episode_ends_silently() -> None:
    episode, _ = fold(Episode(), False, "timeout", 0)
    episode, notice = fold(episode, True, None, 60)
    assert notice is None and episode == Episode()


def test_cancelled_passes_change_nothing() -> None:
    episode, _ = fold(Episode(), False, "timeout", 0)
    assert fold(episode, False, "cancelled", 10) == (episode, None)


def test_the_message_names_upstream_failure_time_and_what_to_do() -> None:
    notice = Notice(
        "failing",
        "alice-outlook",
        since=1_700_000_000,
        at=1_700_000_100,
        kind="auth",
        message="invalid_grant",
    )
    raw = build_message(notice, owner="alice", host="outlook.office365.com", oauth=True)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["From"] == "popgate <postmaster@localhost>"
    assert msg["Subject"] == "popgate: fetching from alice-outlook fails"
    assert msg["Auto-Submitted"] == "auto-generated"
    body = msg.get_content()
    assert "outlook.office365.com" in body and "2023-11-14 22:13:20 UTC" in body
    assert "run: popgate oauth login alice-outlook" in body
    assert raw == build_message(notice, owner="alice", host="outlook.office365.com", oauth=True)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_password_and_certificate_advice() -> None:
    for kind, words in (("auth", "app password"), ("tls_verify", "ca_file")):
        raw = build_message(
            Notice("failing", "isp", 0, 0, kind=kind), owner="bob", host="h", oauth=False
        )
        assert words in email.message_from_bytes(raw, policy=email.policy.default).get_content()


# ---- the notifier -----------------------------------------------------------------------


def upstream(**kw: Any) -> Upstream:
    settings: dict[str, Any] = dict(
        name="alice-outlook", owner="alice", host="outlook.example", port=995,
        tls="implicit", username="alice@outlook.example", password="", auth="oauth2",
    )  # fmt: skip
    settings.update(kw)
    return Upstream(**settings)


def inbox(store: MemoryStore, owner: str = "alice") -> list[bytes]:
    box = store.get_mailbox(owner, "INBOX")
    return [store.message_bytes(box.id, r.uid) for r in store.message_rows(box.id)]


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.ensure_user("alice")
    return s


def test_one_notice_per_episode_through_the_store_listeners(store, tmp_path: Path) -> None:
    heard: list[int] = []
    store.add_listener(heard.append)  # what wakes IDLE sessions
    notifier = FailureNotifier(upstream(), store, tmp_path)
    error = OAuthLoginNeeded("grant revoked; run: popgate oauth login alice-outlook")
    for t in range(10):
        notifier.after_pass(ok=False, error=error, now=1000 + t)
    assert len(inbox(store)) == 1 and heard
    assert b"popgate oauth login alice-outlook" in inbox(store)[0]
    notifier.after_pass(ok=True, error=None, now=2000)
    notifier.after_pass(ok=True, error=None, now=2100)
    messages = inbox(store)
    assert len(messages) == 2 and b"works again" in messages[1]


def test_episode_survives_a_restart(store, tmp_path: Path) -> None:
    error = LoginFailed("refused")
    FailureNotifier(upstream(), store, tmp_path).after_pass(ok=False, error=error, now=10)
    assert episode_path(tmp_path, "alice-outlook").is_file()
    again = FailureNotifier(upstream(), store, tmp_path)  # a new process
    again.after_pass(ok=False, error=error, now=20)
    assert len(inbox(store)) == 1
    again.after_pass(ok=True, error=None, now=30)
    assert len(inbox(store)) == 2


def test_a_long_temporary_failure_is_dated_from_its_start_across_restarts(
    store, tmp_path: Path
) -> None:
    up = upstream(notify_after=HOUR)
    FailureNotifier(up, store, tmp_path).after_pass(ok=False, error=StepTimeout("t"), now=0)
    later = FailureNotifier(up, store, tmp_path)
    later.after_pass(ok=False, error=StepTimeout("t"), now=HOUR)
    assert later.filed and later.filed[0].since == 0


def test_notify_false_files_nothing(store, tmp_path: Path) -> None:
    notifier = FailureNotifier(upstream(notify=False), store, tmp_path)
    notifier.after_pass(ok=False, error=TLSVerificationError("bad cert"), now=0)
    assert inbox(store) == []


def test_shared_upstream_notice_goes_to_the_shared_inbox(tmp_path: Path) -> None:
    s = MemoryStore()
    s.ensure_user("shared:family")
    notifier = FailureNotifier(upstream(owner="shared:family", auth="user"), s, tmp_path)
    notifier.after_pass(ok=False, error=LoginFailed("no"), now=0)
    assert len(inbox(s, "shared:family")) == 1


def test_a_failed_delivery_is_tried_again_next_pass(tmp_path: Path) -> None:
    s = MemoryStore()  # no INBOX yet: the append fails
    notifier = FailureNotifier(upstream(), s, tmp_path)
    notifier.after_pass(ok=False, error=FetchError("x"), now=0)
    notifier.after_pass(ok=False, error=LoginFailed("no"), now=1)
    s.ensure_user("alice")
    notifier.after_pass(ok=False, error=LoginFailed("no"), now=2)
    assert len(inbox(s)) == 1
