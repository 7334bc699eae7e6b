"""Instructions (or CPU seconds) per IMAP command of a running server, one command type at a time.

``python -m bench.cmdcost --port PORT --pid PID --ops noop fetch_headers fetch_body flag``
logs one client in (the concurrent scenario's ``load01``), selects INBOX and, for each
operation, sends 50 commands to warm up and then ``--count`` more, each as the 50-client
mix sends it (:func:`bench.load._operation`'s command lines, a fixed random seed), one at
a time over a real socket. With ``--callgrind`` the server runs under ``valgrind
--tool=callgrind --instr-atstart=no``: the counters are switched on, zeroed before the
counted commands and dumped after them, and the figure is the dump's instructions (every
thread of the process, user space) per command, which the machine's load does not move
(timers that fire by wall clock, such as the bench worker's lag probe, add a little).
Without it the figure is the server's CPU seconds per command (``/proc``), load-sensitive.
``--ops pair`` is a write and its readers: per iteration ``load01`` STOREs a flag change,
a second ``load01`` session sends NOOP, ``load02`` STOREs a change in its own INBOX, and
the first session sends NOOP (the catch-ups after one's own, a sibling's and another
account's write; bench/README.md "The fixed cost per command, session 5").
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import socket
import subprocess
import time
from pathlib import Path

from bench.load import _small_message

PASSWORD = "load-bench-pw"
"""The scenario's load accounts' password (:data:`bench.opcpu.ACCOUNTS`)."""


class Client:
    """One blocking IMAP connection that waits for each tagged reply."""

    def __init__(self, port: int, user: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = b""
        self.n = 0
        self._until(b"\r\n")
        self.command(f"LOGIN {user} {PASSWORD}".encode())
        self.command(b"SELECT INBOX")

    def _until(self, end: bytes) -> bytes:
        while end not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.buf += data
        i = self.buf.index(end) + len(end)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def command(self, line: bytes) -> bytes:
        self.n += 1
        tag = b"c%d" % self.n
        self.sock.sendall(tag + b" " + line + b"\r\n")
        self.buf = b"\r\n" + self.buf  # a tagged line right at the start is found too
        return self._until(b"\r\n" + tag + b" ") + self._until(b"\r\n")


def command_line(op: str, rng: random.Random, exists: int = 200) -> bytes:
    """The mix's command for ``op`` (bench/load.py ``_operation``)."""
    if op == "noop":
        return b"NOOP"
    if op == "fetch_headers":
        first = rng.randint(1, exists)
        last = min(exists, first + 24)
        return (
            b"FETCH %d:%d (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"
            % (first, last)
        )
    if op == "fetch_body":
        return b"FETCH %d BODY.PEEK[]" % rng.randint(1, exists)
    if op == "flag":
        sign = rng.choice((b"+", b"-"))
        flag = rng.choice((b"\\Seen", b"\\Flagged", b"$Label1"))
        return b"STORE %d %sFLAGS (%s)" % (rng.randint(1, exists), sign, flag)
    if op == "search":
        return rng.choice((b"SEARCH UNSEEN", b"SEARCH FLAGGED", b"SEARCH FROM x"))
    if op == "select":
        return b"SELECT INBOX"
    if op == "append":  # LITERAL+ (RFC 7888), as bench/load.py sends it
        raw = _small_message(rng, rng.randint(0, 1 << 30))
        return b"APPEND INBOX {%d+}\r\n%s" % (len(raw), raw)
    raise ValueError(f"unknown operation {op!r}")


def cpu_seconds(pid: int) -> float:
    total = 0
    for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Meter:
    """Instructions (callgrind) or CPU seconds of the server around a block of commands."""

    def __init__(self, pid: int, dumps: Path | None) -> None:
        self.pid = pid
        self.dumps = dumps
        if dumps is not None:
            self._control("-i", "on")

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.pid)], check=True, capture_output=True)

    def start(self) -> None:
        if self.dumps is None:
            self._cpu = cpu_seconds(self.pid)
        else:
            self._control("-z")

    def stop(self) -> float:
        if self.dumps is None:
            return cpu_seconds(self.pid) - self._cpu
        before = set(self.dumps.glob("callgrind.out.*"))
        self._control("-d")
        time.sleep(0.5)
        new = max(set(self.dumps.glob("callgrind.out.*")) - before, key=os.path.getmtime)
        totals = [
            int(line.split()[1])
            for line in new.read_text().splitlines()
            if line.startswith(("summary:", "totals:"))
        ]
        return float(totals[-1])


def _pair(port: int, meter: Meter, count: int) -> float:
    a, b, c = Client(port, "load01"), Client(port, "load01"), Client(port, "load02")

    def iteration(i: int) -> None:
        # Each message's \Flagged goes on, then off: every STORE changes something.
        sign = b"+" if (i // 50) % 2 == 0 else b"-"
        store = b"STORE %d %sFLAGS (\\Flagged)" % (i % 50 + 1, sign)
        a.command(store)
        b.command(b"NOOP")
        c.command(store)
        a.command(b"NOOP")

    for i in range(50):
        iteration(i)
    meter.start()
    for i in range(50, 50 + count):
        iteration(i)
    return meter.stop() / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--ops", nargs="+", default=["noop", "fetch_headers", "fetch_body", "flag"])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument(
        "--callgrind",
        type=Path,
        metavar="DIR",
        help="the server runs under callgrind with --callgrind-out-file=DIR/callgrind.out.%%p",
    )
    args = parser.parse_args(argv)
    meter = Meter(args.pid, args.callgrind)
    unit = "instructions" if args.callgrind else "ms of CPU"
    scale = 1.0 if args.callgrind else 1000.0
    client: Client | None = None
    for op in args.ops:
        if op == "pair":
            print(
                f"pair           {_pair(args.port, meter, args.count):14,.6g} {unit} per iteration"
            )
            continue
        client = client or Client(args.port, "load01")
        rng = random.Random(7)
        for _ in range(50):
            client.command(command_line(op, rng))
        rng = random.Random(11)
        meter.start()
        for _ in range(args.count):
            client.command(command_line(op, rng))
        figure = meter.stop() / args.count * scale
        print(f"{op:14} {figure:14,.3f} {unit} per command", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
