"""The control socket (gateway.app.control): the one-line JSON request, progress lines and the
final answer, socket hygiene (mode 0600, stale file replaced, removed at stop), and the
blocking client the CLI uses, against a real UNIX socket on the real reactor."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from gateway.app.control import (
    SOCKET_NAME,
    ControlError,
    ControlService,
    GatewayNotRunning,
    request,
    socket_path,
)
from gateway.testing.reactor_thread import ReactorThread


@pytest.fixture
def service(rt: ReactorThread, state_dir: Path) -> Iterator[ControlService]:
    svc = ControlService(state_dir / SOCKET_NAME, reactor=global_reactor)

    def echo(req: dict[str, Any], progress) -> dict[str, Any]:
        return {"echo": req}

    async def count(req: dict[str, Any], progress) -> dict[str, Any]:
        for i in range(int(req.get("n", 3))):
            progress({"done": i + 1})
            await deferLater(global_reactor, 0.001, lambda: None)
        return {"total": int(req.get("n", 3))}

    def fails(req, progress):
        raise ControlError("upstream 'x' is not configured")

    def bug(req, progress):
        raise ZeroDivisionError("secret detail")

    svc.register("echo", echo)
    svc.register("count", lambda r, p: defer.Deferred.fromCoroutine(count(r, p)))
    svc.register("fails", fails)
    svc.register("bug", bug)
    rt.call(svc.startService)
    yield svc
    if svc.running:
        rt.call(svc.stopService)


def test_a_command_answers_its_result(service, state_dir) -> None:
    assert request(state_dir, {"command": "echo", "a": 1}) == {"echo": {"command": "echo", "a": 1}}


def test_progress_lines_reach_the_callback_in_order_before_the_result(service, state_dir) -> None:
    seen: list[dict[str, Any]] = []
    result = request(state_dir, {"command": "count", "n": 5}, on_progress=seen.append)
    assert seen == [{"done": i} for i in range(1, 6)]
    assert result == {"total": 5}


def test_the_wire_format_is_progress_lines_then_one_final_line_then_close(
    service, state_dir
) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(state_dir / SOCKET_NAME))
        s.sendall(b'{"command": "count", "n": 2}\n')
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    lines = [json.loads(x) for x in data.splitlines()]
    assert lines == [
        {"progress": {"done": 1}},
        {"progress": {"done": 2}},
        {"ok": True, "result": {"total": 2}},
    ]


def test_a_handler_error_is_answered_with_its_text(service, state_dir) -> None:
    with pytest.raises(ControlError, match="upstream 'x' is not configured"):
        request(state_dir, {"command": "fails"})


def test_an_unexpected_exception_is_an_internal_error_and_the_service_survives(
    service, state_dir
) -> None:
    with pytest.raises(ControlError) as info:
        request(state_dir, {"command": "bug"})
    assert "internal error" in str(info.value) and "secret detail" not in str(info.value)
    assert request(state_dir, {"command": "echo"})["echo"] == {"command": "echo"}


def test_unknown_command_and_malformed_requests_are_refused(service, state_dir) -> None:
    with pytest.raises(ControlError, match="unknown command 'nope'"):
        request(state_dir, {"command": "nope"})
    with pytest.raises(ControlError, match='"command"'):
        request(state_dir, {"verb": "echo"})
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(state_dir / SOCKET_NAME))
        s.sendall(b"not json\n")
        answer = json.loads(s.makefile("rb").readline())
    assert answer == {"ok": False, "error": "request is not a JSON line"}


def test_socket_is_private_to_the_gateway_user(service, state_dir) -> None:
    mode = os.stat(state_dir / SOCKET_NAME).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_stopping_removes_the_socket_and_the_client_then_says_not_running(
    rt, service, state_dir
) -> None:
    rt.call(service.stopService)
    assert not (state_dir / SOCKET_NAME).exists()
    with pytest.raises(GatewayNotRunning, match="popgate is not running"):
        request(state_dir, {"command": "echo"})


def test_not_running_error_names_the_socket_path(state_dir) -> None:
    with pytest.raises(GatewayNotRunning) as info:
        request(state_dir, {"command": "status"})
    assert str(info.value) == (
        f"popgate is not running (no control socket at {state_dir / SOCKET_NAME})"
    )


def test_a_stale_socket_left_by_a_killed_gateway_is_replaced(rt, state_dir) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(state_dir / SOCKET_NAME))
    stale.close()  # the file stays, nobody listens: what kill -9 leaves behind
    svc = ControlService(state_dir / SOCKET_NAME, reactor=global_reactor)
    svc.register("echo", lambda r, p: {"fine": True})
    rt.call(svc.startService)
    try:
        assert request(state_dir, {"command": "echo"}) == {"fine": True}
    finally:
        rt.call(svc.stopService)


def test_a_live_gateways_socket_is_never_stolen(rt, service, state_dir) -> None:
    second = ControlService(state_dir / SOCKET_NAME, reactor=global_reactor)
    with pytest.raises(ControlError, match="already running"):
        rt.call(second.startService)
    assert request(state_dir, {"command": "echo"})["echo"] == {"command": "echo"}


def test_a_regular_file_in_the_way_is_not_deleted(rt, state_dir) -> None:
    (state_dir / SOCKET_NAME).write_text("precious")
    svc = ControlService(state_dir / SOCKET_NAME, reactor=global_reactor)
    with pytest.raises(ControlError, match="not a socket"):
        rt.call(svc.startService)
    assert (state_dir / SOCKET_NAME).read_text() == "precious"


def test_a_client_that_hangs_up_mid_command_does_not_disturb_the_gateway(
    service, state_dir
) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(state_dir / SOCKET_NAME))
        s.sendall(b'{"command": "count", "n": 50}\n')
    assert request(state_dir, {"command": "count", "n": 2}) == {"total": 2}


def test_socket_path_accepts_a_state_dir_or_the_socket_itself(state_dir) -> None:
    assert socket_path(state_dir) == state_dir / SOCKET_NAME
    assert socket_path(state_dir / SOCKET_NAME) == state_dir / SOCKET_NAME


def test_a_request_over_the_length_cap_is_refused_with_a_reason(service, state_dir) -> None:
    """MAX_REQUEST_LENGTH bounds what one client may make the gateway buffer."""
    from gateway.app.control import MAX_REQUEST_LENGTH

    padding = "x" * (MAX_REQUEST_LENGTH + 10)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(state_dir / SOCKET_NAME))
        s.sendall(json.dumps({"command": "echo", "pad": padding}).encode() + b"\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    reply = json.loads(data.splitlines()[-1])
    assert reply == {"ok": False, "error": f"request longer than {MAX_REQUEST_LENGTH} octets"}
