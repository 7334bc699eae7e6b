"""The local control socket: how `popgate fetch`, `popgate status` and friends talk to a
running gateway without starting a second one.

One UNIX stream socket at ``{state_dir}/control.sock``, mode 0600 inside the 0700 state
directory, so only the gateway's own user can use it (there is no other authentication).

Protocol, one request per connection, every line one JSON object ending in LF:

- the client sends exactly one line ``{"command": "NAME", ...arguments}``;
- the server answers zero or more ``{"progress": {...}}`` lines while the command runs,
  then one final line, ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": "text"}``,
  and closes the connection.

A command is a handler registered with :meth:`ControlService.register`:
``handler(request, progress) -> dict | Deferred[dict]``; ``progress(dict)`` sends one progress
line (silently dropped once the client has gone). A handler raising :class:`ControlError`
answers its text; any other exception is logged with its traceback and answered as an
internal error, so a bug never kills the gateway.

:func:`request` is the blocking client the CLI uses (plain :mod:`socket`, no reactor).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

log = structlog.get_logger(__name__)

SOCKET_NAME = "control.sock"
"""File name of the control socket inside the state directory."""

SOCKET_MODE = 0o600
"""Only the gateway's user may connect: the socket is the only access check."""

MAX_REQUEST_LENGTH = 64 * 1024
"""Longest request line accepted by the server; longer ones are refused and closed."""

MAX_RESPONSE_LINE = 16 * 1024 * 1024
"""Longest response line the client reads (a status result for many upstreams is big)."""

REQUEST_TIMEOUT = 10.0
"""Seconds a client has, after connecting, to send its request line."""

DEFAULT_CLIENT_TIMEOUT = 300.0
"""Seconds the client waits for the next line (progress lines keep a long command alive)."""

MAX_OPEN_CONNECTIONS = 32
"""Control connections served at once; more are answered with an error and closed."""

Handler = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], Any]


class ControlError(Exception):
    """A command failed in a way its caller should be told verbatim."""


class GatewayNotRunning(ControlError):
    """No gateway listens on the control socket."""


def socket_path(state_dir_or_socket: str | os.PathLike[str]) -> Path:
    """The socket path for a state directory (or the path itself if it is not a directory)."""
    path = Path(state_dir_or_socket)
    return path / SOCKET_NAME if path.is_dir() else path


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode("utf-8") + b"\n"


class _ControlProtocol(LineOnlyReceiver, TimeoutMixin):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST_LENGTH

    def __init__(self, service: ControlService) -> None:
        self.service = service
        self.busy = False
        self.gone = False

    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        return self.service.reactor.callLater(period, func)

    def connectionMade(self) -> None:
        self.service._connections.add(self)
        if len(self.service._connections) > MAX_OPEN_CONNECTIONS:
            self._finish({"ok": False, "error": "too many control connections"})
            return
        self.setTimeout(REQUEST_TIMEOUT)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gone = True
        self.setTimeout(None)
        self.service._connections.discard(self)

    def timeoutConnection(self) -> None:
        self._finish({"ok": False, "error": "no request received in time"})

    def lineLengthExceeded(self, line: bytes) -> None:
        self._finish({"ok": False, "error": f"request longer than {MAX_REQUEST_LENGTH} octets"})

    def lineReceived(self, line: bytes) -> None:
        if self.busy or self.gone:
            return  # one request per connection: anything after it is ignored
        self.busy = True
        self.setTimeout(None)
        try:
            request = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self._finish({"ok": False, "error": "request is not a JSON line"})
            return
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            self._finish({"ok": False, "error": 'request must be an object with a "command"'})
            return
        command = request["command"]
        handler = self.service.handlers.get(command)
        if handler is None:
            known = ", ".join(sorted(self.service.handlers)) or "none"
            self._finish({"ok": False, "error": f"unknown command {command!r} (known: {known})"})
            return
        log.info("control.request", command=command)
        d = defer.maybeDeferred(handler, request, self.progress)
        d.addCallbacks(self._succeeded, self._failed, errbackArgs=(command,))

    def progress(self, info: dict[str, Any]) -> None:
        if not self.gone and self.transport is not None:
            self.transport.write(_encode({"progress": info}))

    def _succeeded(self, result: Any) -> None:
        if result is None:
            result = {}
        if not isinstance(result, dict):
            result = {"value": result}
        self._finish({"ok": True, "result": result})

    def _failed(self, failure: Failure, command: str) -> None:
        if failure.check(ControlError):
            text = str(failure.value)
        elif failure.check(defer.CancelledError):
            text = "cancelled (the gateway is stopping)"
        else:
            log.error(
                "control.handler_failed",
                command=command,
                error=type(failure.value).__name__,
                exc_info=(failure.type, failure.value, failure.getTracebackObject()),
            )
            text = f"internal error in {command}: {type(failure.value).__name__}"
        self._finish({"ok": False, "error": text})

    def _finish(self, answer: dict[str, Any]) -> None:
        self.setTimeout(None)
        if not self.gone and self.transport is not None:
            self.transport.write(_encode(answer))
            self.transport.loseConnection()


class _ControlFactory(Factory):
    def __init__(self, service: ControlService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> _ControlProtocol:
        protocol = _ControlProtocol(self.service)
        protocol.factory = self
        return protocol


def _remove_stale(path: Path) -> None:
    """Remove a socket file left by a gateway that died (kill -9 leaves it behind), but
    refuse to steal the socket of a gateway that still answers on it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: stale
        log.info("control.stale_socket_removed", path=str(path))
        return
    finally:
        probe.close()
    raise ControlError(f"another popgate is already running (it answers on {path})")


class ControlService(Service):
    """Listens on the control socket while running; see the module docstring."""

    name = "control"

    def __init__(self, path: str | os.PathLike[str], *, reactor: Any) -> None:
        self.path = Path(path)
        self.reactor = reactor
        self.handlers: dict[str, Handler] = {}
        self._port: Any = None
        self._connections: set[_ControlProtocol] = set()

    def register(self, name: str, handler: Handler) -> None:
        """Make ``name`` a command; a later registration of the same name replaces it."""
        self.handlers[name] = handler

    def startService(self) -> None:
        _remove_stale(self.path)
        self._port = self.reactor.listenUNIX(
            str(self.path), _ControlFactory(self), mode=SOCKET_MODE, wantPID=False
        )
        # listenUNIX chmods after bind; the 0700 state dir covers the moment in between.
        os.chmod(self.path, SOCKET_MODE)
        super().startService()
        log.info("control.listening", path=str(self.path))

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        for protocol in list(self._connections):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        port, self._port = self._port, None
        if port is None:
            return None
        # Twisted unlinks the socket file when the port closes.
        return defer.maybeDeferred(port.stopListening)


# ---- the blocking client --------------------------------------------------------------


def request(
    state_dir_or_socket_path: str | os.PathLike[str],
    payload: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    timeout: float | None = DEFAULT_CLIENT_TIMEOUT,
) -> dict[str, Any]:
    """Send one command to the running gateway and return its ``result``.

    ``timeout`` bounds the wait for each line (not the whole command). Raises
    :class:`GatewayNotRunning` when nothing listens, :class:`ControlError` with the
    gateway's text when the command failed, ``TimeoutError`` when the gateway went quiet.
    """
    path = socket_path(state_dir_or_socket_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise GatewayNotRunning(
                f"popgate is not running (no control socket at {path})"
            ) from None
        except PermissionError:
            raise ControlError(f"no permission to use {path} (run as the popgate user)") from None
        sock.sendall(_encode(payload))
        with sock.makefile("rb") as stream:
            while True:
                try:
                    line = stream.readline(MAX_RESPONSE_LINE + 1)
                except TimeoutError:
                    raise TimeoutError(f"popgate did not answer within {timeout}s") from None
                if not line:
                    raise ControlError("popgate closed the control connection without answering")
                if len(line) > MAX_RESPONSE_LINE:
                    raise ControlError("answer line from popgate is too long")
                try:
                    message = json.loads(line)
                except ValueError:
                    raise ControlError(f"unreadable answer from popgate: {line[:80]!r}") from None
                if not isinstance(message, dict):
                    raise ControlError(f"unreadable answer from popgate: {line[:80]!r}")
                if "progress" in message:
                    if on_progress is not None:
                        on_progress(message["progress"])
                    continue
                if message.get("ok") is True:
                    result = message.get("result")
                    return result if isinstance(result, dict) else {}
                raise ControlError(str(message.get("error", "unknown error")))
    finally:
        with contextlib.suppress(OSError):
            sock.close()
