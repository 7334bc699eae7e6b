"""Runs the real ``popgate serve`` as a child process for end-to-end tests.

The gateway gets its own config file, state dir and free loopback port; its JSON log
lines are kept in a file the test can search (and tests assert no secret ever appears).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.security.passwords import hash_password
from gateway.testing.ports import free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 40.0


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, e.g. an upstream's smtp = {...}
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


class GatewayProcess:
    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str],
        upstreams: list[dict[str, Any]] = (),
        extra_server: dict[str, Any] | None = None,
        tables: dict[str, dict[str, Any]] | None = None,
        managesieve: bool = False,
    ) -> None:
        """``tables``: extra TOML tables by name, e.g. ``{"shared.family": {"members": [...]}}``;
        ``managesieve``: also listen for ManageSieve on loopback (``managesieve_port``)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.managesieve_port = free_port() if managesieve else None
        self.state_dir = self.workdir / "state"
        self.config_path = self.workdir / "popgate.toml"
        self.log_path = self.workdir / "gateway.log"
        lines = [
            "[server]",
            f"state_dir = {toml_value(self.state_dir)}",
            f"imap = [{toml_value(f'tcp:{self.port}:interface=127.0.0.1')}]",
            'log_format = "json"',
            'log_level = "debug"',
        ]
        if self.managesieve_port is not None:
            endpoint = f"tcp:{self.managesieve_port}:interface=127.0.0.1"
            lines.append(f"managesieve = [{toml_value(endpoint)}]")
        for k, v in (extra_server or {}).items():
            lines.append(f"{k} = {toml_value(v)}")
        for name, password in users.items():
            lines += ["", f"[users.{name}]", f"password = {toml_value(hash_password(password))}"]
        for table, values in (tables or {}).items():
            lines += ["", f"[{table}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
        for up in upstreams:
            lines += ["", "[[upstreams]]"] + [f"{k} = {toml_value(v)}" for k, v in up.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        os.chmod(self.config_path, 0o600)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        log = open(self.log_path, "ab")  # handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"popgate exited {self.process.returncode}:\n{self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"popgate did not listen on {self.port}:\n{self.log_text()}")

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_for_event(self, name: str, *, after: int = 0, timeout: float = 60.0) -> dict[str, Any]:
        """The first log event called ``name`` beyond the first ``after`` such events."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == name]
            if len(found) > after:
                return found[after]
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {name!r} event within {timeout}s:\n{self.log_text()[-4000:]}")

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
