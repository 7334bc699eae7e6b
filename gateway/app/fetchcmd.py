"""The "fetch" command of the control socket: run a pass now on the running gateway.

Request ``{"command": "fetch"}`` fetches from every upstream at once, ``{"command": "fetch",
"upstream": NAME}`` from one. Each upstream's pass goes through its
:class:`~gateway.pop3.poller.UpstreamPoller` (so it is never a second fetcher: at most one
pass per upstream is in flight), progress dicts are streamed as they come (each names its
upstream), and the result is ``{"ok": all passes succeeded, "upstreams": [...]}`` with
one entry per upstream: ``{"upstream", "ok", "result"}`` plus ``"error"``/``"kind"``
when that pass failed (``result`` then says what it achieved before failing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from gateway.app.control import ControlError

if TYPE_CHECKING:
    from gateway.pop3.poller import UpstreamPoller


def _outcome(name: str, value: Any) -> dict[str, Any]:
    # Imported here: the command is registered on every gateway, the POP3 side is only
    # loaded by one with upstreams (issue 19, start-up).
    from gateway.pop3.errors import FetchError
    from gateway.pop3.fetcher import FetchResult

    if isinstance(value, FetchResult):
        return {"upstream": name, "ok": True, "result": value.as_dict()}
    error = value.value if hasattr(value, "value") else value
    partial = getattr(error, "result", None)
    if isinstance(error, defer.CancelledError):
        text, kind = "cancelled (the gateway is stopping)", "cancelled"
    elif isinstance(error, FetchError):
        text, kind = str(error), error.kind
    else:
        text, kind = f"internal error: {type(error).__name__}", "internal"
    return {
        "upstream": name,
        "ok": False,
        "error": text,
        "kind": kind,
        "result": partial.as_dict() if isinstance(partial, FetchResult) else None,
    }


def fetch_handler(
    pollers: Mapping[str, UpstreamPoller],
) -> Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], defer.Deferred[dict[str, Any]]]:
    """The handler to register as "fetch" on the :class:`~gateway.app.control.ControlService`."""

    def handle(
        request: dict[str, Any], progress: Callable[[dict[str, Any]], None]
    ) -> defer.Deferred[dict[str, Any]]:
        name = request.get("upstream")
        if name is not None and not isinstance(name, str):
            raise ControlError('"upstream" must be a name')
        if name:
            if name not in pollers:
                known = ", ".join(sorted(pollers)) or "none"
                raise ControlError(f"no upstream named {name!r} (configured: {known})")
            targets = {name: pollers[name]}
        else:
            targets = dict(pollers)
        if not targets:
            raise ControlError("no upstreams are configured")

        def one(upstream: str, poller: UpstreamPoller) -> defer.Deferred[dict[str, Any]]:
            d = poller.fetch_now(progress=progress)
            d.addBoth(lambda value: _outcome(upstream, value))
            return d

        gathered = defer.gatherResults([one(n, p) for n, p in targets.items()])

        def summary(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
            return {"ok": all(o["ok"] for o in outcomes), "upstreams": outcomes}

        return gathered.addCallback(summary)

    return handle
