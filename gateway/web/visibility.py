"""Who sees what on the web page: the one rule, as pure functions.

A user sees the upstreams and mailboxes of the store owners they may read over IMAP:
their own (owner = their name) and their households' shared trees (owner
``shared:NAME`` for every household they belong to, :mod:`gateway.access.households`).
An admin (``[server] admins``) sees every owner and the gateway-wide details (config
path, state directory, listeners, recent errors).

:func:`filter_status` applies the rule to a ``popgate status --json`` dict
(:mod:`gateway.app.status`). It fails closed: for a non-admin, sections it does not
know are dropped and recent errors are kept only when they name something the user may
see, so a new status field never leaks by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.access.households import shared_owner


@dataclass(frozen=True)
class Visibility:
    """What one signed-in user may see."""

    user: str
    admin: bool
    owners: frozenset[str]
    """The store owners whose upstreams and mailboxes are shown (all, for an admin)."""

    def sees(self, owner: object) -> bool:
        return self.admin or (isinstance(owner, str) and owner in self.owners)


def visibility(
    user: str, admins: Iterable[str], households: Mapping[str, Iterable[str]]
) -> Visibility:
    """The rule: admins see everything; anyone else their own tree and the shared trees
    of the households they are a member of."""
    owners = {user} | {shared_owner(g) for g, members in households.items() if user in members}
    return Visibility(user=user, admin=user in set(admins), owners=frozenset(owners))


_USER_KEYS = ("version", "now", "started_at", "uptime_seconds")
"""Top-level status fields every signed-in user gets as they are."""

_ADMIN_ONLY = ("pid", "config", "state_dir")
"""Top-level fields shown to admins only (present but null for everyone else)."""

_ERROR_SUBJECTS = ("upstream", "owner", "user")
"""Log event fields that say whom a recent error is about."""


def _error_visible(event: Mapping[str, Any], vis: Visibility, upstreams: set[str]) -> bool:
    if vis.admin:
        return True
    named = False
    for key in _ERROR_SUBJECTS:
        value = event.get(key)
        if value is None:
            continue
        named = True
        if key == "upstream" and value not in upstreams:
            return False
        if key != "upstream" and not vis.sees(value):
            return False
    return named


def _clients(section: Mapping[str, Any], vis: Visibility) -> dict[str, Any]:
    if vis.admin:
        return dict(section)
    by_user = {u: dict(s) for u, s in (section.get("by_user") or {}).items() if u == vis.user}
    by_state: dict[str, int] = dict.fromkeys(section.get("by_state") or {}, 0)
    for states in by_user.values():
        for state, n in states.items():
            by_state[state] = by_state.get(state, 0) + n
    return {"total": sum(by_state.values()), "by_state": by_state, "by_user": by_user}


def filter_status(status: Mapping[str, Any], vis: Visibility) -> dict[str, Any]:
    """The part of a status dict ``vis`` may see, in the same shape (every section the
    status has is still there; what the user may not see is empty or null)."""
    upstreams = [dict(u) for u in status.get("upstreams") or [] if vis.sees(u.get("owner"))]
    users = [dict(u) for u in status.get("users") or [] if vis.sees(u.get("owner"))]
    names = {u.get("name") for u in upstreams}
    errors = [dict(e) for e in status.get("recent_errors") or [] if _error_visible(e, vis, names)]
    if vis.admin:
        out = dict(status)
    else:
        out = {k: status[k] for k in _USER_KEYS if k in status}
        out.update({k: None for k in _ADMIN_ONLY if k in status})
        if "listeners" in status:
            listeners = status["listeners"] or {}
            out["listeners"] = {
                "imap": list(listeners.get("imap") or []),
                **{k: None for k in listeners if k != "imap"},
            }
        if "store" in status:
            out["store"] = {k: None for k in status["store"] or {}}
    if "clients" in status:
        out["clients"] = _clients(status["clients"] or {}, vis)
    out["upstreams"] = upstreams
    if "users" in status:
        out["users"] = users
    if "recent_errors" in status:
        out["recent_errors"] = errors
    return out


def filter_queue(queue: Mapping[str, Any], vis: Visibility) -> dict[str, Any]:
    """A submission-queue status (``{"items": [{"owner", ...}], ...}``): an admin sees it
    whole, anyone else only the items of owners they see, with ``count`` recomputed."""
    if vis.admin:
        return dict(queue)
    items = [dict(i) for i in queue.get("items") or [] if vis.sees(i.get("owner"))]
    return {"items": items, "count": len(items)}
