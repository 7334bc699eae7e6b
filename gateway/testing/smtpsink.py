"""Postfix's ``smtp-sink`` as a real upstream SMTP server for tests, behind a small
TLS + AUTH front.

``smtp-sink`` (Debian ``postfix``) runs unprivileged on a loopback port and dumps every
message it receives, with its envelope, to a file (``-d``); options make it refuse
commands with 4xx or 5xx. It has no STARTTLS and answers ``AUTH`` with 250 instead of
235 (PEERS-NOTES.md), so :class:`SmtpFront` stands before it: a threaded socket server
that speaks the greeting, EHLO, STARTTLS or implicit TLS (certificate from the test CA),
and AUTH PLAIN/LOGIN with real password checks, then, from the first MAIL on, splices
the connection to smtp-sink byte for byte. What the relay sends after AUTH is
therefore judged by Postfix's SMTP engine, not by test code.

:class:`SmtpSink` starts and stops the pair like :class:`gateway.testing.dovecot.Dovecot`;
ports stay the same across :meth:`SmtpSink.stop` / :meth:`SmtpSink.start`, so a test can
take the upstream down and bring it back.
"""

from __future__ import annotations

import base64
import os
import pwd
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.testing.ports import LOOPBACK, free_port
from gateway.testing.tlsca import CA

SMTP_SINK_PACKAGE = "postfix"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
UNPRIVILEGED_USER = "nobody"
"""smtp-sink refuses to run as root without ``-u``; it drops to this user."""


class SmtpSinkError(Exception):
    """The harness could not start or use smtp-sink."""


def find_smtp_sink() -> str:
    path = shutil.which("smtp-sink") or (
        "/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None
    )
    if path is None:
        raise SmtpSinkError(
            "smtp-sink not found: apt-get install postfix (debconf: No configuration)"
        )
    return path


@dataclass(frozen=True)
class SinkMessage:
    """One dumped transaction: the envelope as smtp-sink saw it, and the message."""

    mail_from: str
    mail_args: str
    recipients: tuple[str, ...]
    raw: bytes
    """The message as received (CRLF line ends), without smtp-sink's own headers."""


_ANGLE = re.compile(r"<([^>]*)>")


def parse_dump(data: bytes) -> SinkMessage:
    """Read one ``-d`` dump file (see ``man smtp-sink``, DUMP FILE FORMAT)."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    mail_args = ""
    rcpts: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].decode("utf-8", "replace")
        i += 1
        if line.startswith("X-Mail-Args:"):
            mail_args = line.split(":", 1)[1].strip()
        elif line.startswith("X-Rcpt-Args:"):
            match = _ANGLE.search(line)
            rcpts.append(match.group(1) if match else line.split(":", 1)[1].strip())
        elif line.startswith("Received:"):
            while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
                i += 1
            break
    body = lines[i:]
    if body and body[-1] == b"":
        body = body[:-1]
    if body and body[-1] == b"":  # the empty line smtp-sink appends after each message
        body = body[:-1]
    raw = b"".join(line + b"\r\n" for line in body)
    match = _ANGLE.search(mail_args)
    return SinkMessage(
        mail_from=match.group(1) if match else "",
        mail_args=mail_args,
        recipients=tuple(rcpts),
        raw=raw,
    )


# ---- the TLS + AUTH front -------------------------------------------------------------


@dataclass
class FrontLog:
    """What the front saw, for assertions (thread-safe enough: appends only)."""

    connections: int = 0
    tls: list[bool] = field(default_factory=list)
    """For each login attempt: was TLS active."""
    logins: list[tuple[str, bool]] = field(default_factory=list)
    ehlo_after_tls: int = 0


class _FrontHandler(socketserver.StreamRequestHandler):
    server: _FrontServer

    def handle(self) -> None:
        front = self.server.front
        front.log.connections += 1
        sock: socket.socket = self.request
        sock.settimeout(30)
        tls = False
        if front.mode == "implicit":
            sock = front.context.wrap_socket(sock, server_side=True)
            tls = True
        reader = sock.makefile("rb")
        authed = False

        def send(text: str) -> None:
            sock.sendall(text.encode() + b"\r\n")

        send("220 front.test ESMTP smtp-sink front")
        while True:
            line = reader.readline(16384)
            if not line:
                return
            command = line.rstrip(b"\r\n")
            verb = command.split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"HELO"):
                if tls:
                    front.log.ehlo_after_tls += 1
                caps = [f"SIZE {front.size}", "8BITMIME", "ENHANCEDSTATUSCODES"]
                if front.mode == "starttls" and not tls:
                    caps.append("STARTTLS")
                if tls or front.mode == "none":
                    caps.append("AUTH PLAIN LOGIN")
                lines = ["front.test", *caps]
                for n, text in enumerate(lines):
                    send(f"250{'-' if n < len(lines) - 1 else ' '}{text}")
            elif verb == b"STARTTLS" and front.mode == "starttls" and not tls:
                send("220 2.0.0 Ready")
                sock = front.context.wrap_socket(sock, server_side=True)
                reader = sock.makefile("rb")
                tls, authed = True, False
            elif verb == b"AUTH":
                authed = self._auth(command, reader, send, tls) or authed
            elif verb == b"MAIL":
                if not authed:
                    send("530 5.7.0 Authentication required")
                    continue
                self._splice(sock, reader, line)
                return
            elif verb == b"QUIT":
                send("221 2.0.0 Bye")
                return
            else:
                send("502 5.5.1 Not here")

    def _auth(self, command: bytes, reader, send, tls: bool) -> bool:  # type: ignore[no-untyped-def]
        front = self.server.front
        parts = command.split()
        mech = parts[1].upper() if len(parts) > 1 else b""
        try:
            if mech == b"PLAIN":
                if len(parts) > 2:
                    token = parts[2]
                else:
                    send("334 ")
                    token = reader.readline().strip()
                _authz, user, password = base64.b64decode(token).split(b"\0")
            elif mech == b"LOGIN":
                send("334 VXNlcm5hbWU6")
                user = base64.b64decode(reader.readline().strip())
                send("334 UGFzc3dvcmQ6")
                password = base64.b64decode(reader.readline().strip())
            else:
                send("504 5.5.4 Unknown mechanism")
                return False
        except ValueError:
            send("501 5.5.2 Bad response")
            return False
        name = user.decode("utf-8", "replace")
        ok = front.users.get(name) == password.decode("utf-8", "replace")
        front.log.tls.append(tls)
        front.log.logins.append((name, ok))
        send("235 2.7.0 Authenticated" if ok else "535 5.7.8 Bad credentials")
        return ok

    def _splice(self, client: socket.socket, reader, first: bytes) -> None:  # type: ignore[no-untyped-def]
        front = self.server.front
        try:
            upstream = socket.create_connection((LOOPBACK, front.sink_port), timeout=10)
        except OSError:
            client.sendall(b"421 4.4.0 sink not reachable\r\n")
            return
        upstream.settimeout(30)
        up_reader = upstream.makefile("rb")

        def reply() -> bytes:
            out = b""
            while True:
                got = up_reader.readline()
                if not got:
                    return out
                out += got
                if got[3:4] != b"-":
                    return out

        reply()  # greeting
        upstream.sendall(b"EHLO front.test\r\n")
        reply()
        upstream.sendall(first)

        def pump_up() -> None:
            try:
                while chunk := reader.read1(65536):
                    upstream.sendall(chunk)
            except OSError:
                pass
            finally:
                try:
                    upstream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        thread = threading.Thread(target=pump_up, daemon=True)
        thread.start()
        try:
            while chunk := up_reader.read1(65536):
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            upstream.close()
            thread.join(5)


class _FrontServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, front: SmtpFront) -> None:
        self.front = front
        super().__init__((LOOPBACK, front.port), _FrontHandler)


class SmtpFront:
    """TLS (``mode``: starttls | implicit | none) and AUTH in front of smtp-sink."""

    def __init__(
        self,
        *,
        port: int,
        sink_port: int,
        cert: Path,
        key: Path,
        users: Mapping[str, str],
        mode: str = "starttls",
        size: int = 10 * 1024 * 1024,
    ) -> None:
        self.port = port
        self.sink_port = sink_port
        self.users = dict(users)
        self.mode = mode
        self.size = size
        self.log = FrontLog()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self._server: _FrontServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._server = _FrontServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            self._thread = None


# ---- smtp-sink itself -----------------------------------------------------------------


class SmtpSink:
    """smtp-sink on a loopback port (``sink_port``) and its :class:`SmtpFront` on
    ``port``; ``hard_reject``/``soft_reject`` name SMTP commands smtp-sink refuses with
    5xx/4xx (``-f``/``-r``, e.g. ``("RCPT",)`` or ``("DATA",)``)."""

    def __init__(
        self,
        directory: Path,
        ca: CA,
        *,
        users: Mapping[str, str],
        mode: str = "starttls",
        hard_reject: Sequence[str] = (),
        soft_reject: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.dump_dir = self.directory / "dump"
        if os.geteuid() == 0:
            # smtp-sink drops to an unprivileged user that cannot enter the test's 0700
            # temp dirs: give it a directory of its own under /tmp, removed with the harness.
            self.dump_dir = Path(tempfile.mkdtemp(prefix="popgate-smtp-sink-"))
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.dump_dir, user.pw_uid, user.pw_gid)
            weakref.finalize(self, shutil.rmtree, self.dump_dir, True)
        self.binary = find_smtp_sink()
        self.sink_port = free_port()
        self.port = free_port()
        cert, key = ca.issue(self.directory / "tls", ("localhost", "127.0.0.1"))
        self.front = SmtpFront(
            port=self.port, sink_port=self.sink_port, cert=cert, key=key, users=users, mode=mode
        )
        self.hard_reject = tuple(hard_reject)
        self.soft_reject = tuple(soft_reject)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> SmtpSink:
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "-d", f"{self.dump_dir}/msg."]
        if os.geteuid() == 0:
            args += ["-u", UNPRIVILEGED_USER]
        if self.hard_reject:
            args += ["-f", ",".join(self.hard_reject)]
        if self.soft_reject:
            args += ["-r", ",".join(self.soft_reject)]
        args += [f"{LOOPBACK}:{self.sink_port}", "16"]
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise SmtpSinkError(f"smtp-sink exited at start: {err.strip()}")
            try:
                socket.create_connection((LOOPBACK, self.sink_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SmtpSinkError("smtp-sink did not start listening") from None
                time.sleep(0.05)
        self.front.start()
        return self

    def stop(self) -> None:
        """Stop the front and smtp-sink (this harness's process only, by its pid)."""
        self.front.stop()
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()

    def messages(self) -> list[SinkMessage]:
        """Every transaction dumped so far, oldest first."""
        if not self.dump_dir.exists():
            return []
        files = sorted(self.dump_dir.glob("msg.*"), key=lambda p: (p.stat().st_mtime, p.name))
        return [parse_dump(p.read_bytes()) for p in files]

    def wait_for_messages(self, count: int, timeout: float = 20.0) -> list[SinkMessage]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)
