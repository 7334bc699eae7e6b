"""The service's password-check thread pool: bounded to the CPU count, started and
stopped with the service, and the one the IMAP factory runs LOGIN's scrypt on."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from gateway.app import config
from gateway.app.service import build_service, password_threads
from gateway.security.passwords import hash_password
from gateway.testing.imapclient import ensure_reactor
from gateway.testing.ports import free_port


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "popgate.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path}/state"\n'
        f'imap = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
        f'[users.alice]\npassword = "{hash_password("pw", salt=b"0123456789abcdef")}"\n'
    )
    os.chmod(path, 0o600)
    return path


def test_password_threads_is_one_per_cpu() -> None:
    """scrypt is CPU-bound: as many threads as CPUs, never zero."""
    assert password_threads() == max(1, os.cpu_count() or 1)


def test_password_checks_run_on_a_private_pool_started_and_stopped_with_the_service(
    tmp_path: Path,
) -> None:
    """run_blocking (what LOGIN's password check uses) runs on the service's own pool of
    password_threads() threads, not on the reactor's default pool; the pool runs while
    the service does and is stopped with it."""
    cfg = config.load(_config(tmp_path))
    thread = ensure_reactor()
    top = thread.call(lambda: build_service(cfg, thread.reactor))
    pool = top.password_pool
    assert pool.max == password_threads()
    assert pool is not thread.reactor.getThreadPool()
    thread.call(top.startService)
    try:
        assert pool.started
        seen: list[str] = []

        def check() -> str | None:
            seen.append(threading.current_thread().name)
            return top.imap_factory.authenticator.authenticate("alice", b"pw")

        result = thread.call(lambda: top.imap_factory.run_blocking(check))
        assert result == "alice"
        assert seen and "passwords" in seen[0]
    finally:
        thread.call(top.stopService)
    assert not pool.started
