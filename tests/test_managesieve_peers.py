"""popgate's ManageSieve server with real peers: the real client ``sieve-connect``
(STARTTLS against the test CA, password from a file descriptor) runs upload,
checkscript, setactive, list, download, rename and delete; and Pigeonhole's own
managesieved answers the same command sequence with the same status codes.

In CI (CI=true) a missing binary fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.security.tls import ServerTLS, TLSFiles
from gateway.store.scripts import ScriptLimits
from gateway.testing.dovecot import DovecotNotInstalled
from gateway.testing.managesieved import (
    MAX_SCRIPT_SIZE,
    MAX_SCRIPTS,
    PASSWORD,
    USER,
    ManageSieved,
    SieveClient,
    popgate_managesieve,
    sieve_connect_binary,
)
from gateway.testing.tlsca import CA

pytestmark = [pytest.mark.slow]

IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is not installed (Makefile DEB_PACKAGES)", pytrace=False)
    pytest.skip(f"{what} is not installed")


@pytest.fixture
def sieve_connect() -> str:
    binary = sieve_connect_binary()
    if binary is None:
        _missing("sieve-connect")
    assert binary is not None
    return binary


@pytest.fixture
def tls(tmp_path: Path, tls_ca: CA) -> ServerTLS:
    cert, key = tls_ca.issue(tmp_path / "certs")
    return ServerTLS(TLSFiles(str(cert), str(key)))


def run_client(binary: str, port: int, ca: CA, *args: str, cwd: Path) -> str:
    """One non-interactive sieve-connect run; the password goes through a pipe fd."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, PASSWORD.encode() + b"\n")
    os.close(write_fd)
    try:
        result = subprocess.run(
            [
                binary,
                "--server",
                "localhost",
                "--port",
                str(port),
                "--user",
                USER,
                "--passwordfd",
                str(read_fd),
                "--tlscafile",
                str(ca.cert_path),
                *args,
            ],
            pass_fds=(read_fd,),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd,
            check=False,
        )
    finally:
        os.close(read_fd)
    assert result.returncode == 0, f"sieve-connect {args}: {result.stdout}{result.stderr}"
    return result.stdout


def test_sieve_connect_full_cycle(
    sieve_connect: str, tls: ServerTLS, tls_ca: CA, tmp_path: Path
) -> None:
    """Upload, check, activate, list, download, rename (by re-upload), delete: all over
    STARTTLS off-loopback policy, where a password is only accepted after TLS."""
    script = tmp_path / "rules.sieve"
    script.write_text(
        'require "fileinto";\nif header :contains "subject" "x" {\n  fileinto "X";\n}\nkeep;\n'
    )
    bad = tmp_path / "bad.sieve"
    bad.write_text("keep;\nfrobnicate;\n")
    with popgate_managesieve(tls_context_factory=tls, plaintext_auth=False) as server:

        def client(*args: str) -> str:
            return run_client(sieve_connect, server.port, tls_ca, *args, cwd=tmp_path)

        client("--upload", "--localsieve", str(script), "--remotesieve", "rules")
        client("--checkscript", "--localsieve", str(script))
        client("--activate", "--remotesieve", "rules")
        listed = client("--list")
        assert re.search(r"^\"rules\" ACTIVE$", listed, re.M), listed
        client("--download", "--remotesieve", "rules", "--localsieve", str(tmp_path / "got"))
        assert (tmp_path / "got").read_text() == script.read_text()
        client("--upload", "--localsieve", str(script), "--remotesieve", "other")
        listing = client("--list")
        assert "other" in listing and "rules" in listing
        client("--deactivate")
        client("--delete", "--remotesieve", "rules")
        assert "rules" not in client("--list")
        assert [s.name for s in server.call(server.store.list_scripts, USER)] == ["other"]
        failed = subprocess.run(
            [
                sieve_connect,
                "--server",
                "localhost",
                "--port",
                str(server.port),
                "--user",
                USER,
                "--passwordfd",
                "0",
                "--tlscafile",
                str(tls_ca.cert_path),
                "--upload",
                "--localsieve",
                str(bad),
                "--remotesieve",
                "bad",
            ],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert failed.returncode != 0
        assert "line 2, column 1" in failed.stdout + failed.stderr


# ---- differential: popgate vs Pigeonhole on status codes ----------------------------------

SEQUENCE: list[bytes] = [
    b"CAPABILITY",
    b"LISTSCRIPTS",  # before login: NO
    b'AUTHENTICATE "PLAIN" "{ir}"',
    b"FROBNICATE",
    b"LISTSCRIPTS extra",
    b'PUTSCRIPT "a" {5+}\r\nkeep;',
    b'PUTSCRIPT "b" "stop;"',
    b'PUTSCRIPT "bad" {10+}\r\nfrobnicate',
    b'CHECKSCRIPT "keep;"',
    b'CHECKSCRIPT "if true {"',
    b'PUTSCRIPT "" "keep;"',
    b"LISTSCRIPTS",
    b'SETACTIVE "a"',
    b'SETACTIVE "nope"',
    b'GETSCRIPT "a"',
    b'GETSCRIPT "nope"',
    b'DELETESCRIPT "a"',
    b'DELETESCRIPT "nope"',
    b'RENAMESCRIPT "a" "b"',
    b'RENAMESCRIPT "nope" "x"',
    b'RENAMESCRIPT "a" "c"',
    b"LISTSCRIPTS",
    b'HAVESPACE "x" 10',
    b'HAVESPACE "x" %d' % (MAX_SCRIPT_SIZE + 1),
    b'PUTSCRIPT "big" {%d+}\r\n' % (MAX_SCRIPT_SIZE + 1) + b"#" * (MAX_SCRIPT_SIZE + 1),
    b'PUTSCRIPT "d" "keep;"',
    b'PUTSCRIPT "e" "keep;"',
    b'PUTSCRIPT "f" "keep;"',
    b'PUTSCRIPT "g" "keep;"',  # the sixth script: QUOTA/MAXSCRIPTS
    b'HAVESPACE "g" 1',
    b'SETACTIVE ""',
    b'DELETESCRIPT "c"',
    b'NOOP "tag-1"',
    b"LOGOUT",
]
"""The same commands for both servers; UNAUTHENTICATE is left out (Pigeonhole lacks it)."""

_SHAPE = re.compile(rb"^(OK|NO|BYE)(?: \(([^)\"]*)(?: [^)]*)?\))?")


def shapes(client: SieveClient) -> Iterator[tuple[str, str | None, int]]:
    """(status, response code, number of data lines) for each command of SEQUENCE."""
    ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    client.response()
    for command in SEQUENCE:
        lines = client.command(command.replace(b"{ir}", ir))
        m = _SHAPE.match(lines[-1])
        assert m is not None, lines
        data = 0 if command == b"CAPABILITY" else len(lines) - 1
        yield m.group(1).decode(), m.group(2).decode() if m.group(2) else None, data


@pytest.mark.dovecot
def test_status_codes_match_pigeonhole() -> None:
    """For the same sequence, popgate and Dovecot's managesieved agree on OK/NO/BYE, the
    response code and the number of data lines of every response (not on free text)."""
    try:
        reference = ManageSieved()
    except DovecotNotInstalled as error:
        _missing(str(error))
        return

    with reference:
        reference.add_user(USER, PASSWORD)
        with SieveClient(reference.port) as client:
            theirs = list(shapes(client))
    limits = ScriptLimits(max_script_size=MAX_SCRIPT_SIZE, max_scripts=MAX_SCRIPTS)
    with popgate_managesieve(script_limits=limits) as server, server.connect() as client:
        ours = list(shapes(client))
    mismatches = [
        (command, mine, other)
        for command, mine, other in zip(SEQUENCE, ours, theirs, strict=True)
        if mine != other
    ]
    assert not mismatches
