"""The server's side of an IDLE push, measured in-process (issue 19): N connections IDLE
on one INBOX (and M on another user's), then one message appended to that INBOX and its
fan-out timed on the reactor thread, without any client's scheduling in the figure.

``python -m bench.fanout [N] [M] [--profile] [--flags]`` (defaults 500 and 4,500: one
household of the storm's shape among 5,000 connections; ``--flags`` pushes a \\Seen
change, on then off, instead of a new message). Per push it reports the store call (its
commit), the fan-out turn (every woken session's catch-up and write:
``IMAPServerFactory._flush_changes``), the sends (what the reactor's next ``doWrite`` of
each woken connection's transport does, forced here right after the turn; nothing on
plain TCP, where the turn sends itself) and the process's CPU for the turn and the sends
(and for the turn alone); medians of 10 pushes after 2 untimed. ``--profile`` adds a
cProfile of the turns (tottime). The server is
:func:`~gateway.testing.imapclient.running_server` (SQLite store, cheap passwords); the
clients are plain sockets of this process that are read only between pushes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

from gateway.imap.policy import IMAPLimits
from gateway.testing.imapclient import PASSWORD, USER, running_server

PUSHES = 12
WARM_UP = 2


def _idle(port: int, user: str, password: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"a LOGIN {user} {password}\r\nb SELECT INBOX\r\nc IDLE\r\n".encode())
    data = b""
    while b"+ idling" not in data:
        chunk = sock.recv(65536)
        if not chunk or b"a NO" in data or b"b NO" in data:
            raise RuntimeError(f"no IDLE: {data[-300:]!r}")
        data += chunk
    sock.setblocking(False)
    return sock


def _drain(socks: list[socket.socket]) -> None:
    for sock in socks:
        try:
            while sock.recv(65536):
                pass
        except BlockingIOError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("idle", nargs="?", type=int, default=500)
    parser.add_argument("others", nargs="?", type=int, default=4_500)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--flags",
        action="store_true",
        help="push a flag change (\\Seen on, off) instead of a message",
    )
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limits = IMAPLimits(max_connections_per_user_ip=0, max_connections_per_ip=1_000_000)
    profile = cProfile.Profile()
    with (
        tempfile.TemporaryDirectory() as directory,
        running_server(Path(directory), users={"bob": "bob-pw"}, limits=limits) as server,
    ):
        socks = [_idle(server.port, USER, PASSWORD) for _ in range(args.idle)]
        socks += [_idle(server.port, "bob", "bob-pw") for _ in range(args.others)]
        factory = server.factory
        inbox = server.mailbox_id()
        first = server.append("INBOX") if args.flags else 0
        time.sleep(0.5)  # its push (and the \\Recent claim's group commit) are over
        _drain(socks)

        woken = list(factory._idle_on[inbox])  # whose transports the turn wrote to

        def push() -> tuple[float, float, float, float, float]:
            started = time.perf_counter()
            if args.flags:
                seen = ["\\Seen"]
                factory.store.store_flags(inbox, [first], "-" if len(results) % 2 else "+", seen)
            else:
                factory.store.append(inbox, b"From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n")
            appended = time.perf_counter()
            call, factory._flush_call = factory._flush_call, None
            assert call is not None
            call.cancel()
            cpu = time.process_time()
            if args.profile:
                profile.enable()
            factory._flush_changes()
            if args.profile:
                profile.disable()
            turned = time.perf_counter()
            turn_cpu = time.process_time() - cpu
            for protocol in woken:
                transport = protocol.transport
                if transport._tempDataBuffer or transport.dataBuffer:
                    transport.doWrite()
            sent = time.perf_counter()
            return (
                appended - started,
                turned - appended,
                sent - turned,
                time.process_time() - cpu,
                turn_cpu,
            )

        results = []
        for _ in range(PUSHES):
            results.append(server.call(push))
            time.sleep(0.2)
            _drain(socks)
        kept = results[WARM_UP:]

        def median_ms(i: int) -> float:
            return statistics.median(r[i] for r in kept) * 1000

        print(
            f"{args.idle} IDLE on the INBOX, {args.others} elsewhere; medians of {len(kept)}:"
            f" {'flag change' if args.flags else 'append'} {median_ms(0):.1f} ms,"
            f" fan-out turn {median_ms(1):.1f} ms"
            f" ({median_ms(1) * 1000 / max(args.idle, 1):.0f} µs per woken session),"
            f" sends {median_ms(2):.1f} ms, CPU of turn + sends {median_ms(3):.1f} ms"
            f" (of the turn alone {median_ms(4):.1f} ms)"
        )
        for sock in socks:
            sock.close()
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
