"""Who sees what on the web page (gateway/web/visibility.py): the one rule, and the
status dict filtered by it in the same shape as `popgate status --json`."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.web.visibility import filter_queue, filter_status, visibility

HOUSEHOLDS = {"family": ["alice", "bob"], "club": ["carol"]}


def _status() -> dict[str, Any]:
    return {
        "version": "0.1.0",
        "pid": 42,
        "config": "/etc/popgate.toml",
        "state_dir": "/var/lib/popgate",
        "started_at": 1.0,
        "now": 100.0,
        "uptime_seconds": 99.0,
        "listeners": {"imap": ["tcp:143"], "metrics": "tcp:9100", "control": "/run/c.sock"},
        "clients": {
            "total": 3,
            "by_state": {"not authenticated": 1, "authenticated": 1, "selected": 1},
            "by_user": {"alice": {"selected": 1}, "bob": {"authenticated": 1}},
        },
        "upstreams": [
            {"name": "home", "owner": "alice", "state": "ok"},
            {"name": "bobs", "owner": "bob", "state": "failing"},
            {"name": "fam", "owner": "shared:family", "state": "ok"},
            {"name": "clubs", "owner": "shared:club", "state": "ok"},
        ],
        "store": {"path": "/var/lib/popgate/store.sqlite", "size_bytes": 1234},
        "users": [
            {"owner": "alice", "mailboxes": [], "messages": 1, "size_bytes": 10},
            {"owner": "bob", "mailboxes": [], "messages": 2, "size_bytes": 20},
            {"owner": "shared:family", "mailboxes": [], "messages": 3, "size_bytes": 30},
        ],
        "recent_errors": [
            {"event": "pop3.failed", "upstream": "bobs"},
            {"event": "pop3.failed", "upstream": "home"},
            {"event": "imap.auth_refused", "user": "alice"},
            {"event": "store.disk_full"},
        ],
    }


def test_a_user_sees_their_own_tree_and_their_households() -> None:
    vis = visibility("alice", [], HOUSEHOLDS)
    assert not vis.admin
    assert vis.owners == {"alice", "shared:family"}
    assert vis.sees("alice") and vis.sees("shared:family")
    assert not vis.sees("bob") and not vis.sees("shared:club") and not vis.sees(None)


def test_an_admin_sees_everything() -> None:
    vis = visibility("carol", ["carol"], HOUSEHOLDS)
    assert vis.admin and vis.sees("alice") and vis.sees("shared:family")
    assert filter_status(_status(), vis) == _status()


def test_a_user_outside_every_household_sees_only_their_own() -> None:
    assert visibility("dave", ["carol"], HOUSEHOLDS).owners == {"dave"}


def test_filtered_status_keeps_the_shape_and_hides_the_rest() -> None:
    out = filter_status(_status(), visibility("alice", ["carol"], HOUSEHOLDS))
    assert set(out) == set(_status())
    assert [u["name"] for u in out["upstreams"]] == ["home", "fam"]
    assert [u["owner"] for u in out["users"]] == ["alice", "shared:family"]
    assert out["pid"] is None and out["config"] is None and out["state_dir"] is None
    assert out["store"] == {"path": None, "size_bytes": None}
    assert out["listeners"] == {"imap": ["tcp:143"], "metrics": None, "control": None}
    assert out["clients"] == {
        "total": 1,
        "by_state": {"not authenticated": 0, "authenticated": 0, "selected": 1},
        "by_user": {"alice": {"selected": 1}},
    }
    # errors about someone else, or about no one in particular, stay with the admins
    assert out["recent_errors"] == [
        {"event": "pop3.failed", "upstream": "home"},
        {"event": "imap.auth_refused", "user": "alice"},
    ]


def test_unknown_status_sections_are_dropped_for_non_admins() -> None:
    status = {**_status(), "secrets_of_the_future": {"x": 1}}
    assert "secrets_of_the_future" not in filter_status(status, visibility("bob", [], {}))
    assert "secrets_of_the_future" in filter_status(status, visibility("bob", ["bob"], {}))


def test_queue_items_are_filtered_by_owner() -> None:
    queue = {"count": 2, "items": [{"owner": "alice"}, {"owner": "bob"}]}
    assert filter_queue(queue, visibility("bob", [], {})) == {
        "items": [{"owner": "bob"}],
        "count": 1,
    }
    assert filter_queue(queue, visibility("x", ["x"], {})) == queue


NAMES = st.sampled_from(["alice", "bob", "carol", "dave", "shared:family", "shared:club"])


@given(
    user=st.sampled_from(["alice", "bob", "carol", "dave"]),
    owners=st.lists(NAMES, max_size=8),
    admins=st.lists(st.sampled_from(["alice", "carol"]), max_size=2),
)
def test_every_upstream_shown_belongs_to_someone_the_user_may_see(
    user: str, owners: list[str], admins: list[str]
) -> None:
    status = {"upstreams": [{"name": f"u{i}", "owner": o} for i, o in enumerate(owners)]}
    vis = visibility(user, admins, HOUSEHOLDS)
    shown = filter_status(status, vis)["upstreams"]
    allowed = {user} | {f"shared:{g}" for g, m in HOUSEHOLDS.items() if user in m}
    if user in admins:
        assert len(shown) == len(owners)
    else:
        assert [u["owner"] for u in shown] == [o for o in owners if o in allowed]
