"""The verifier cache (gateway/security/authcache.py): successes only, bounded, dropped on
reload, tags from a key holder whose key never enters this process, identical checks
under way shared; and over a real socket, the login penalty still counts every failure
of a user whose password is cached."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from twisted.internet import task

from gateway.app import config
from gateway.app.service import build_service, reload
from gateway.security.auth import PasswordTable
from gateway.security.authcache import (
    _HOLDER_CODE,
    KeyHolder,
    KeyHolderError,
    VerifierCache,
    frame,
)
from gateway.security.passwords import hash_password
from gateway.security.penalty import PenaltySettings
from gateway.testing.imapclient import PASSWORD, USER, ensure_reactor, running_server
from gateway.testing.ports import free_port

TEST_KEY = b"k" * 32
HASH = "scrypt$16384$8$1$c2FsdA$ZGlnZXN0ZGlnZXN0ZGlnZXN0"
"""A stored-hash string: the cache only uses it as part of the tag."""


def tagger(message: bytes) -> bytes:
    return hmac.new(TEST_KEY, message, hashlib.sha256).digest()


class Verifier:
    """Counts scrypt stand-in calls; the right password is ``good``."""

    def __init__(self, good: bytes = b"good") -> None:
        self.good = good
        self.calls = 0

    def __call__(self, password: bytes):
        def verify() -> bool:
            self.calls += 1
            return password == self.good

        return verify


def check(cache: VerifierCache, verifier: Verifier, password: bytes, user: str = "alice") -> bool:
    return cache.check(user, HASH, password, verifier(password))


def test_a_success_is_remembered_and_the_next_check_skips_scrypt() -> None:
    cache, verifier = VerifierCache(tagger), Verifier()
    assert check(cache, verifier, b"good") and verifier.calls == 1
    assert check(cache, verifier, b"good") and verifier.calls == 1
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_wrong_password_for_a_cached_user_runs_scrypt_and_fails() -> None:
    cache, verifier = VerifierCache(tagger), Verifier()
    check(cache, verifier, b"good")
    assert not check(cache, verifier, b"bad") and verifier.calls == 2
    assert check(cache, verifier, b"good") and verifier.calls == 2  # the entry stays


def test_a_failure_is_never_cached() -> None:
    """Every wrong password costs a full check, however often it is repeated."""
    cache, verifier = VerifierCache(tagger), Verifier()
    for n in range(1, 4):
        assert not check(cache, verifier, b"bad")
        assert verifier.calls == n
    assert len(cache) == 0


def test_a_changed_stored_hash_misses() -> None:
    """The tag covers the stored hash: a new password (hash) never matches an old entry."""
    cache, verifier = VerifierCache(tagger), Verifier()
    check(cache, verifier, b"good")
    cache.check("alice", HASH + "x", b"good", verifier(b"good"))
    assert verifier.calls == 2


def test_entries_are_bounded_least_recently_verified_first_out() -> None:
    cache, verifier = VerifierCache(tagger, max_entries=2), Verifier()
    for user in ("a", "b", "c"):
        check(cache, verifier, b"good", user)
    assert len(cache) == 2 and verifier.calls == 3
    check(cache, verifier, b"good", "c")
    check(cache, verifier, b"good", "b")
    assert verifier.calls == 3
    check(cache, verifier, b"good", "a")  # evicted: checked again
    assert verifier.calls == 4


def test_an_entry_is_trusted_for_ttl_seconds_only() -> None:
    clock = task.Clock()
    cache, verifier = VerifierCache(tagger, ttl=60.0, clock=clock.seconds), Verifier()
    check(cache, verifier, b"good")
    clock.advance(60)
    check(cache, verifier, b"good")
    assert verifier.calls == 1
    clock.advance(1)
    check(cache, verifier, b"good")
    assert verifier.calls == 2


def test_reloading_the_user_table_drops_the_cache() -> None:
    """SIGHUP and `popgate passwd` swap the table (PasswordTable.replace): every entry
    goes, even for users whose hash did not change."""
    cache = VerifierCache(tagger)
    table = PasswordTable({"alice": hash_password("pw")}, cache=cache)
    assert table.authenticate("alice", b"pw") == "alice"
    assert len(cache) == 1
    table.replace({"alice": hash_password("new")})
    assert len(cache) == 0
    assert table.authenticate("alice", b"pw") is None
    assert table.authenticate("alice", b"new") == "alice"
    assert table.authenticate("nobody", b"new") is None  # unknown users: no entry
    assert len(cache) == 1


def test_a_check_that_began_before_a_clear_stores_nothing() -> None:
    cache = VerifierCache(tagger)

    def verify_then_reload() -> bool:
        cache.clear()  # a reload lands while scrypt runs
        return True

    assert cache.check("alice", HASH, b"old", verify_then_reload)
    assert len(cache) == 0


def _concurrent(cache: VerifierCache, password: bytes, threads: int) -> tuple[list[bool], int]:
    """``threads`` checks of the same password at once; the first holds scrypt until all
    others are waiting. Returns (answers, scrypt runs)."""
    release = threading.Event()
    runs = 0

    def verify() -> bool:
        nonlocal runs
        runs += 1
        assert release.wait(10)
        return password == b"good"

    answers: list[bool] = []
    workers = [
        threading.Thread(
            target=lambda: answers.append(cache.check("alice", HASH, password, verify))
        )
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    while len(cache._flights) != 1 or runs != 1:
        threading.Event().wait(0.001)
    threading.Event().wait(0.05)  # the others reach the flight and wait on it
    release.set()
    for worker in workers:
        worker.join(10)
    return answers, runs


def test_identical_checks_under_way_share_one_scrypt_run() -> None:
    """A household's phones reconnecting at once cost one check."""
    cache = VerifierCache(tagger)
    answers, runs = _concurrent(cache, b"good", 5)
    assert answers == [True] * 5 and runs == 1
    assert cache.shared == 4


def test_a_shared_failure_is_a_failure_for_each_and_is_not_cached() -> None:
    cache = VerifierCache(tagger)
    answers, runs = _concurrent(cache, b"bad", 3)
    assert answers == [False] * 3 and runs == 1
    assert len(cache) == 0


def test_the_key_holder_gives_stable_tags_from_a_key_this_process_never_sees() -> None:
    holder = KeyHolder()
    try:
        message = frame("alice", HASH, b"good")
        tag = holder.tag(message)
        assert len(tag) == 32 and holder.tag(message) == tag
        assert holder.tag(frame("alice", HASH, b"goof")) != tag
        assert holder.pid is not None and holder.pid != os.getpid()
    finally:
        holder.close()
    with pytest.raises(KeyHolderError):
        holder.tag(message)
    other = KeyHolder()  # a new holder (a restart) has a new key: old tags mean nothing
    try:
        assert other.tag(message) != tag
    finally:
        other.close()


def test_the_key_holder_computes_hmac_sha256_without_loading_openssl() -> None:
    """Its HMAC is written out over the built-in SHA-256 (no libcrypto in the child):
    with its key fixed, its tags are :func:`hmac.digest`'s, for short and long messages;
    and the child has not loaded OpenSSL."""
    key = bytes(range(32))
    messages = [b"", frame("alice", HASH, b"good"), os.urandom(200_000)]
    program = f"import os\nos.urandom = lambda n: {key!r}[:n]\n" + _HOLDER_CODE
    program += "\nimport sys\nsys.stderr.write(open('/proc/self/maps').read())\n"
    request = b"".join(len(m).to_bytes(4, "big") + m for m in messages)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", program], input=request, capture_output=True
    )
    assert done.returncode == 0, done.stderr[-500:]
    expected = b"".join(hmac.digest(key, m, "sha256") for m in messages)
    assert done.stdout == expected
    assert b"libcrypto" not in done.stderr


def test_frames_are_unambiguous() -> None:
    assert frame("ab", "c", b"d") != frame("a", "bc", b"d")
    assert frame("a", "b", b"cd") != frame("a", "bc", b"d")


def test_without_its_key_holder_the_cache_turns_off_and_scrypt_runs() -> None:
    holder = KeyHolder()
    holder.close()
    cache, verifier = VerifierCache(holder.tag), Verifier()
    assert check(cache, verifier, b"good") and check(cache, verifier, b"good")
    assert verifier.calls == 2 and not cache.enabled


def test_the_penalty_counts_every_failure_of_a_cached_user(tmp_path: Path) -> None:
    """Over IMAP: alice's password is cached after one LOGIN; each wrong password after
    that is still a full check, delayed and counted by the penalty; the right one is
    then a cache hit (a success resets the source's delay as before)."""
    cache = VerifierCache(tagger)
    table = PasswordTable({USER: hash_password(PASSWORD)}, cache=cache)
    with running_server(
        tmp_path, authenticator=table, fake_clock=True, penalty=PenaltySettings(ip_budget=0)
    ) as server:
        penalty = server.factory.penalty
        assert penalty is not None
        with server.connect() as client:
            client.greeting()
            assert client.command("a", f"LOGIN {USER} {PASSWORD}").startswith(b"a OK")
        assert len(cache) == 1
        for n in range(1, 4):
            with server.connect() as client:
                client.greeting()
                client.send(f"b{n} LOGIN {USER} wrong\r\n".encode())
                server.wait_until(lambda n=n: penalty.failures("127.0.0.1") == n, "failure")
                server.advance(15.0)
                assert client.read_line().startswith(f"b{n} NO".encode())
        assert cache.misses == 4 and cache.hits == 0
        with server.connect() as client:
            client.greeting()
            assert client.command("c", f"LOGIN {USER} {PASSWORD}").startswith(b"c OK")
        assert cache.hits == 1 and penalty.failures("127.0.0.1") == 0


def test_the_service_builds_the_cache_from_security_and_a_reload_drops_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "popgate.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path}/state"\n'
        f'imap = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
        "[security]\nauth_cache_size = 7\nauth_cache_ttl = \"10m\"\n"
        f'[users.alice]\npassword = "{hash_password("pw")}"\n'
    )
    os.chmod(path, 0o600)
    cfg = config.load(path)
    assert (cfg.security.auth_cache_size, cfg.security.auth_cache_ttl) == (7, 600.0)
    thread = ensure_reactor()
    top = thread.call(lambda: build_service(cfg, thread.reactor))
    thread.call(top.startService)
    try:
        table = top.imap_factory.authenticator
        cache = table.cache
        assert cache is not None and cache.max_entries == 7 and cache.ttl == 600.0
        assert table.authenticate("alice", b"pw") == "alice" and len(cache) == 1
        assert thread.call(lambda: reload(top))
        assert len(cache) == 0
    finally:
        thread.call(top.stopService)
    with pytest.raises(KeyHolderError):  # the key holder stopped with the gateway
        cache.tagger(b"x")


def test_auth_cache_size_zero_turns_the_cache_off(tmp_path: Path) -> None:
    path = tmp_path / "popgate.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path}/state"\n'
        f'imap = ["tcp:{free_port()}:interface=127.0.0.1"]\n'
        "[security]\nauth_cache_size = 0\n"
        f'[users.alice]\npassword = "{hash_password("pw")}"\n'
    )
    os.chmod(path, 0o600)
    thread = ensure_reactor()
    top = thread.call(lambda: build_service(config.load(path), thread.reactor))
    assert top.imap_factory.authenticator.cache is None


def test_a_negative_auth_cache_size_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "popgate.toml"
    path.write_text(f'[server]\nstate_dir = "{tmp_path}/state"\n[security]\nauth_cache_size = -1\n')
    os.chmod(path, 0o600)
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    assert any(str(path) in p and "auth_cache_size" in p for p in caught.value.problems)
