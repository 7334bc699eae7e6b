"""popgate's side of the benchmarks: a loaded store, the real server process, the real fetcher.

* :func:`load_store` fills a SQLite store through :meth:`SQLiteStore.append`, the same code
  path IMAP APPEND takes (analysis at ingest included), so the IMAP benchmarks read what a
  user's store would hold.
* :class:`GatewayServer` runs ``python -m bench.worker serve``: the gateway exactly as
  ``popgate serve`` builds it (:func:`gateway.app.service.build_service` on the global reactor,
  log level info, JSON lines to a file) plus a reactor-lag probe that the parent resets and
  reads with signals, and whose RSS the parent reads from /proc.
* :func:`fetch_import` runs ``python -m bench.worker ingest``: one
  :func:`gateway.pop3.fetcher.fetch_once` pass into a fresh store, i.e. popgate's
  exactly-once fetcher committing every message durably.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.message.analysis import Analysis, analyze
from gateway.security.passwords import hash_password
from gateway.store.sqlite import SQLiteStore
from gateway.testing.dovecot_config import CONNECTION_LIMIT

START_TIMEOUT = 60.0
"""Seconds the server process may take to listen (it opens a multi-GB store)."""

STOP_TIMEOUT = 30.0

PROBE_WAIT = 10.0
"""Seconds to wait for the worker to write its probe report after SIGUSR2."""

BULK_BATCH = 500
"""Messages between progress checks while loading a store."""

_DATE = re.compile(rb"^Date:[ \t]*(.+?)\r?$", re.IGNORECASE | re.MULTILINE)
_REPO_ROOT = Path(__file__).resolve().parent.parent


def date_of(raw: bytes) -> dt.datetime | None:
    """The Date: header (for INTERNALDATE, as the Dovecot harness sets file mtimes)."""
    head = raw[: raw.find(b"\r\n\r\n")]
    match = _DATE.search(head)
    if match is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(match.group(1).decode("ascii", "replace"))
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


class MemoAnalyze:
    """``analyze`` that remembers results by message bytes: loading the 100,000-message
    store cycles a smaller corpus, and analysing each distinct message once is enough."""

    def __init__(self) -> None:
        self._seen: dict[bytes, Analysis] = {}

    def __call__(self, raw: bytes) -> Analysis:
        found = self._seen.get(raw)
        if found is None:
            found = self._seen[raw] = analyze(raw)
        return found


def load_store(
    path: Path,
    user: str,
    messages: Iterable[bytes],
    *,
    mailbox: str = "INBOX",
    memo: bool = False,
) -> int:
    """Append every message to the user's mailbox; returns the count.

    Setup only, so durability is relaxed for speed (``synchronous=OFF``: an OS crash
    during setup would only lose the benchmark's data); every message still goes through
    :meth:`SQLiteStore.append` with its analysis.
    """
    store = SQLiteStore(path, analyze=MemoAnalyze() if memo else analyze)
    try:
        store.db.execute("PRAGMA synchronous = OFF")
        store.ensure_user(user)
        box = store.get_mailbox(user, mailbox)
        count = 0
        for raw in messages:
            store.append(box.id, raw, internaldate=date_of(raw))
            count += 1
        return count
    finally:
        store.close()


def _has_security_section() -> bool:
    """Whether this popgate knows the ``[security]`` connection limits (added in wave 2)."""
    from gateway.app import config as configmod

    return hasattr(configmod, "Security")


def write_config(
    workdir: Path,
    users: dict[str, str],
    *,
    port: int,
    state_dir: Path,
    upstreams: Iterable[dict[str, Any]] = (),
    extra: Iterable[str] = (),
    hashes: dict[str, str] | None = None,
    security: dict[str, int] | None = None,
) -> Path:
    """A popgate.toml as an operator would write it: loopback listener, info logs.

    ``extra`` lines are appended (the PostgreSQL mode's ``[store]`` and ``[cluster]``);
    ``hashes`` (user → scrypt hash) are used instead of hashing ``users`` here (many
    users hash faster in parallel, see bench/storm.py); ``security`` adds or overrides
    ``[security]`` keys."""
    lines = [
        "[server]",
        f"state_dir = {json.dumps(str(state_dir))}",
        f'imap = ["tcp:{port}:interface=127.0.0.1"]',
        'log_level = "info"',
        'log_format = "json"',
    ]
    if _has_security_section():
        # The same per-user-and-address ceiling as the Dovecot peer's
        # mail_max_userip_connections (gateway/testing/dovecot_config.py CONNECTION_LIMIT).
        keys = {"max_connections_per_user_ip": CONNECTION_LIMIT, **(security or {})}
        lines += ["", "[security]", *(f"{key} = {value}" for key, value in keys.items())]
    for name, password in users.items():
        stored = hashes[name] if hashes is not None else hash_password(password)
        lines += ["", f"[users.{name}]", f"password = {json.dumps(stored)}"]
    for upstream in upstreams:
        lines += ["", "[[upstreams]]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in upstream.items()]
    lines += list(extra)
    path = workdir / "popgate.toml"
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


WORKER_PYCACHE = Path(tempfile.gettempdir()) / "popgate-bench-pycache"
"""Where the workers keep compiled bytecode (``PYTHONPYCACHEPREFIX``), even when the
environment says ``PYTHONDONTWRITEBYTECODE`` (as the development sessions here do):
an installed popgate runs from compiled bytecode, and compiling the ~120 modules a
worker imports costs ~0.2 s of CPU per process, which the ingest figure (the whole
process's wall clock) would otherwise count every run. Entries are checked against
their source's mtime, so a changed tree is compiled afresh."""


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(WORKER_PYCACHE))
    return env


class GatewayServer:
    """The popgate server as a child process, with its lag probe and its memory figures."""

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str],
        *,
        state_dir: Path,
        extra_config: Iterable[str] = (),
        hashes: dict[str, str] | None = None,
        security: dict[str, int] | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = write_config(
            workdir,
            users,
            port=self.port,
            state_dir=state_dir,
            extra=extra_config,
            hashes=hashes,
            security=security,
        )
        self.probe_path = workdir / "probe.json"
        self.log_path = workdir / "popgate.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayServer:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.worker",
                    "serve",
                    "--config",
                    str(self.config),
                    "--probe",
                    str(self.probe_path),
                ],
                cwd=_REPO_ROOT,
                env=_worker_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"popgate exited {self.process.returncode}: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"popgate did not listen within {START_TIMEOUT:g}s: {self.log_tail()}")

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the server process, in bytes (Linux /proc)."""
        figures: dict[str, int] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                figures[key] = int(value.split()[0]) * 1024
        return figures

    def reset_probe(self) -> None:
        """Forget the lag samples so far (SIGUSR1)."""
        os.kill(self.pid, signal.SIGUSR1)

    def read_probe(self) -> dict[str, float]:
        """Ask for the lag figures since the last reset (SIGUSR2 -> probe.json)."""
        if self.probe_path.exists():
            self.probe_path.unlink()
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + PROBE_WAIT
        while time.monotonic() < deadline:
            try:
                return json.loads(self.probe_path.read_text())
            except (OSError, ValueError):
                time.sleep(0.02)
        raise RuntimeError("the lag probe did not answer")


def fetch_import(
    workdir: Path,
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    sieve: Path | None = None,
    postgresql: tuple[str, Path] | None = None,
    timeout: float = 900.0,
) -> tuple[float, dict[str, Any]]:
    """One popgate fetch pass into a fresh store in a fresh process (``sieve``: with this
    script active for the owner, delivered through Sieve at ingest; ``postgresql``: (dsn,
    password file) of an empty database to fetch into instead of a fresh SQLite file).

    Returns (wall-clock seconds of the whole process, the worker's JSON report). The
    wall clock includes interpreter start-up and store creation, as for the peers.
    """
    workdir.mkdir(parents=True)
    log_path = workdir / "worker.log"
    argv = [
        sys.executable,
        "-m",
        "bench.worker",
        "ingest",
        "--host",
        host,
        "--port",
        str(port),
        "--user",
        user,
        "--password",
        password,
        "--store",
        str(workdir / "popgate.sqlite3"),
        *(["--sieve", str(sieve)] if sieve is not None else []),
        *(
            ["--dsn", postgresql[0], "--password-file", str(postgresql[1])]
            if postgresql is not None
            else []
        ),
    ]
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        result = subprocess.run(
            argv,
            cwd=_REPO_ROOT,
            env=_worker_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            check=False,
            timeout=timeout,
        )
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"popgate ingest worker exited {result.returncode}: "
            f"{log_path.read_text(errors='replace')[-2000:]}"
        )
    return seconds, json.loads(result.stdout)
