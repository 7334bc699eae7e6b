"""The listen queue of every listener (IMAP, submission, ManageSieve, web): a backlog that
fits a herd of reconnecting devices, and the IMAP listeners' wiring.

Why (issue 19): Twisted's endpoints listen with a backlog of 50. After a restart 10,000
phones connect at once; while the reactor is busy the kernel holds finished handshakes
in the accept queue, and once 50 (+1) wait it drops the next SYNs (``ListenOverflows`` in
``/proc/net/netstat``): those phones see their SYN retried after 1, 3, 7... seconds, or a
socket that never greets. So every listener asks for :data:`DEFAULT_BACKLOG` unless its
endpoint string already says ``backlog=`` or its ``[[listeners]]`` table gives
``backlog``. The kernel silently caps the queue at ``net.core.somaxconn`` (4096 by
default since Linux 5.4, 128 before); a lower cap is logged at start-up with the
sysctl that raises it.

A queue only helps if the reactor empties it: Twisted's ``tcp.Port`` accepts at most
``numberAccepts`` connections per reactor turn and shrinks that to what the previous turn
found (down to 1), growing it by 20 per full turn. In a storm a turn is long (thousands of
LOGINs and SELECTs are ready at once), so the port took ~100 connections per second-long
turn while 10,000 arrived, the queue stayed full and the kernel dropped the handshakes'
last ACKs: those devices saw a connected socket that never greeted. So every listener
takes its whole queue (:data:`ACCEPT_BATCH`) each turn (:func:`accept_in_batches`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.python import log as twisted_log

from gateway.app.config.listeners import imap_listeners, split_endpoint

log = structlog.get_logger(__name__)

DEFAULT_BACKLOG = 4096
"""The listen queue asked for when the config does not say: connections the kernel
completes and holds while the reactor is busy (a few KB of kernel memory each, only while
queued). 4096 is also the kernel's default cap since Linux 5.4. In the storm bench a
queue of 1,024 overflowed when 10,000 devices reconnected while the reactor was still
closing their old connections (ListenOverflows +28,002, 2,910 devices never greeted)."""

SOMAXCONN = Path("/proc/sys/net/core/somaxconn")

BACKLOG_KINDS = frozenset({"tcp", "tcp6", "ssl", "unix"})
"""Endpoint types whose Twisted parser takes ``backlog=``; others (``systemd:``, whose
socket systemd opened with its own ``Backlog=``) are left as written."""


def somaxconn(path: Path = SOMAXCONN) -> int | None:
    """The kernel's cap on any listen queue, or None where it cannot be read."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def listen_on(description: str, backlog: int | None = None, *, limit: int | None = None) -> str:
    """``description`` with a listen queue: its own ``backlog=`` if it has one, else
    ``backlog`` (a ``[[listeners]]`` table's) or :data:`DEFAULT_BACKLOG`. ``limit`` is
    the kernel's cap (default: read from /proc); a queue above it is logged, since the
    kernel will quietly give less."""
    kind, _args, kwargs = split_endpoint(description)
    if kind not in BACKLOG_KINDS:
        return description
    if "backlog" in kwargs:
        wanted = int(kwargs["backlog"])
    else:
        wanted = DEFAULT_BACKLOG if backlog is None else backlog
        description = f"{description}:backlog={wanted}"
    cap = somaxconn() if limit is None else limit
    if cap is not None and cap < wanted:
        log.warning(
            "listen.backlog_capped",
            endpoint=description,
            backlog=wanted,
            somaxconn=cap,
            hint=f"sysctl -w net.core.somaxconn={wanted}",
        )
    return description


ACCEPT_BATCH = DEFAULT_BACKLOG
"""Connections a listening port accepts per reactor turn at least: a whole default queue."""


def accept_in_batches(port: Any) -> Any:
    """Have ``port`` (a ``twisted.internet.tcp.Port``, or a UNIX one) accept at least
    :data:`ACCEPT_BATCH` connections per reactor turn instead of Twisted's adaptive 1 to
    100-and-some (see the module docstring). Ports without that knob are left alone."""
    if not hasattr(port, "numberAccepts"):
        return port
    read = port.doRead

    def do_read() -> Any:
        port.numberAccepts = max(port.numberAccepts, ACCEPT_BATCH)
        return read()

    port.doRead = do_read
    return port


class HerdListener(service.Service):
    """A listening service whose port accepts in batches (:func:`accept_in_batches`).

    The life cycle is Twisted's ``StreamServerEndpointService``'s (listen at the
    privileged start; a failure raises there when ``_raiseSynchronously``, else it is
    logged; stopping cancels a listen in progress or stops the port), written here on
    ``service.Service`` because importing ``twisted.application.internet`` for it also
    builds ``ClientService``'s state machine (automat): ~25 ms of every start-up for a
    class popgate never uses (issue 19, start-up)."""

    _raiseSynchronously = False

    def __init__(self, endpoint: Any, factory: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self._waitingForPort: defer.Deferred[Any] | None = None

    def privilegedStartService(self) -> None:
        service.Service.privilegedStartService(self)
        self._waitingForPort = self.endpoint.listen(self.factory)
        raised_now = []

        def handle(failure: Any) -> None:
            if self._raiseSynchronously:
                raised_now.append(failure)
            elif not failure.check(defer.CancelledError):
                twisted_log.err(failure)

        self._waitingForPort.addErrback(handle)
        if raised_now:
            raised_now[0].raiseException()
        self._raiseSynchronously = False
        self._waitingForPort.addCallback(accept_in_batches)

    def startService(self) -> None:
        service.Service.startService(self)
        if self._waitingForPort is None:
            self.privilegedStartService()

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening (or cancel the listen still in progress); fires when stopped."""
        assert self._waitingForPort is not None
        self._waitingForPort.cancel()

        def stop_it(port: Any) -> Any:
            if port is not None:
                return port.stopListening()
            return None

        def stopped(passthrough: Any) -> Any:
            self.running = False
            return passthrough

        return self._waitingForPort.addCallback(stop_it).addBoth(stopped)


def listening_service(
    reactor: Any, description: str, factory: Any, backlog: int | None = None, *, strict: bool = True
) -> HerdListener:
    """The service listening on ``description`` (with its backlog, :func:`listen_on`) for
    ``factory``. ``strict``: a failure to listen raises at start-up, as
    ``strports.service`` does; otherwise it is logged."""
    listener = HerdListener(
        endpoints.serverFromString(reactor, listen_on(description, backlog)), factory
    )
    listener._raiseSynchronously = strict
    return listener


def add_imap_listeners(
    top: service.MultiService, cfg: Any, factory: Any, server_tls: Any, reactor: Any
) -> None:
    """One listening service per configured IMAP listener. IMAPS listeners wrap their
    endpoint in TLS with ``server_tls`` (so a SIGHUP reload reaches them); each listener
    carries its own plaintext-auth policy (LOGINDISABLED unless allowed) and its backlog."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from gateway.imap.factory import ListenerFactory
    from gateway.imap.policy import ListenerPolicy

    for listener in imap_listeners(cfg):
        implicit = listener.tls == "implicit"
        policy = ListenerPolicy(implicit_tls=implicit, plaintext_auth=listener.plaintext_auth)
        wrapped: Any = ListenerFactory(factory, policy)
        if implicit:
            wrapped = TLSMemoryBIOFactory(server_tls, False, wrapped)
        listening_service(
            reactor, listener.endpoint, wrapped, listener.backlog, strict=not implicit
        ).setServiceParent(top)
