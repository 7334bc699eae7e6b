"""The push delay measured from outside the herd (issue 19, "10,000 IDLE connections: push
delay p99"): a small process of its own that APPENDs and times its own IDLE connections.

Why a separate process: the storm's devices are 10,000 asyncio protocols on one loop in
the bench process. When one APPEND makes the gateway write ``* n EXISTS`` to 500 of them,
that loop wakes with 500 readable sockets and runs 500 ``data_received`` callbacks one
after another (plus whatever else it has queued), so the last device's timestamp
includes the client's own scheduling; the bench also used to start the clock before
connecting and logging in the APPEND's connection. Here the clock starts just before the
APPEND command is sent on a connection that is already logged in, and stops when each
probe socket becomes readable (``epoll``), stamped in a process that has nothing else to
do. ``time.perf_counter`` is ``CLOCK_MONOTONIC`` on Linux, shared by all processes, so
the bench process compares its herd's timestamps with the same start.

Run as ``python -m bench.pushprobe PORT`` with a JSON object on stdin's first line
(``{"users": [[user, password, source address], ...], "per_user": n}``); it connects
``per_user`` IDLE probes per user (LOGIN, SELECT INBOX, IDLE) and one APPEND connection
per user, prints ``{"ready": true, "login": [...]}`` (the seconds each APPEND connection
took to connect and log in, which the bench's clock used to include), then for each line ``push USER`` APPENDs one message to that
user's INBOX and prints one JSON line: ``sent`` (perf_counter at the send), ``ok`` (the
APPEND's tagged OK), ``seen`` (each probe's readiness time; NaN when none came within
:data:`PUSH_WAIT`).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

PUSH_WAIT = 10.0
"""Seconds a probe may take to see its push before it counts as missing."""

MESSAGE = b"From: a@example.org\r\nSubject: push\r\n\r\nhello\r\n"


def _connect(port: int, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _until(sock: socket.socket, ending: bytes, *, tagged: bool = True) -> bytes:
    """Read until a line starting with ``ending`` (a tag whose reply must be OK, or
    ``tagged=False`` for ``+`` and the greeting); the bytes read."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed waiting for {ending!r}: {data[-200:]!r}")
        data += chunk
        for line in data.split(b"\r\n")[:-1]:
            if line.startswith(ending):
                if tagged and not line.startswith(ending + b"OK"):
                    raise ConnectionError(f"{line[:200]!r}")
                return data


def _session(port: int, user: str, password: str, source: str, *, idle: bool) -> socket.socket:
    sock = _connect(port, source)
    _until(sock, b"* OK", tagged=False)
    sock.sendall(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
    _until(sock, b"a ")
    if idle:
        sock.sendall(b"b SELECT INBOX\r\nc IDLE\r\n")
        _until(sock, b"+", tagged=False)
        sock.setblocking(False)
    return sock


def _push(append: socket.socket, probes: list[socket.socket], number: int) -> dict[str, object]:
    poller = select.epoll()
    for sock in probes:
        poller.register(sock.fileno(), select.EPOLLIN)
    by_fd = {sock.fileno(): index for index, sock in enumerate(probes)}
    seen = [float("nan")] * len(probes)
    waiting = len(probes)
    append.setblocking(False)
    poller.register(append.fileno(), select.EPOLLIN)
    tag = b"p%d " % number
    reply = b""
    ok = float("nan")
    sent = time.perf_counter()
    append.sendall(tag + b"APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
    deadline = sent + PUSH_WAIT
    while (waiting or ok != ok) and (left := deadline - time.perf_counter()) > 0:
        for fd, _mask in poller.poll(left):
            now = time.perf_counter()
            if fd == append.fileno():
                reply += append.recv(65536)
                if tag + b"OK" in reply:
                    ok = now
                    poller.unregister(fd)
                continue
            index = by_fd[fd]
            try:
                data = probes[index].recv(65536)
            except BlockingIOError:
                continue
            if b" EXISTS" in data and seen[index] != seen[index]:
                seen[index] = now
                waiting -= 1
    poller.close()
    append.setblocking(True)
    return {"sent": sent, "ok": ok, "seen": seen}


def main() -> int:
    port = int(sys.argv[1])
    spec = json.loads(sys.stdin.readline())
    per_user = int(spec["per_user"])
    probes: dict[str, list[socket.socket]] = {}
    appenders: dict[str, socket.socket] = {}
    logins: list[float] = []
    for user, password, source in spec["users"]:
        probes[user] = [_session(port, user, password, source, idle=True) for _ in range(per_user)]
        started = time.perf_counter()
        appenders[user] = _session(port, user, password, source, idle=False)
        logins.append(time.perf_counter() - started)
    print(json.dumps({"ready": True, "login": logins}), flush=True)
    number = 0
    for line in sys.stdin:
        words = line.split()
        if words[:1] != ["push"]:
            break
        number += 1
        result = _push(appenders[words[1]], probes[words[1]], number)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
