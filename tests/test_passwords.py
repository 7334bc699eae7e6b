"""Password hashes: salted scrypt, verified in constant time, accepted by the config."""

import subprocess
import sys

from gateway.security.auth import PasswordTable
from gateway.security.passwords import hash_password, is_hash, verify_password


def test_hash_verifies_and_is_salted():
    a, b = hash_password("secret"), hash_password("secret")
    assert a != b  # fresh salt each time
    assert verify_password("secret", a) and verify_password(b"secret", b)
    assert not verify_password("Secret", a)


def test_malformed_hash_never_verifies():
    for bad in ["", "plain", "scrypt$1$8$1$aa$bb", "md5$x$y$z$a$b", "scrypt$16384$8$1$!!$!!"]:
        assert not is_hash(bad)
        assert not verify_password("x", bad)


def test_unknown_user_and_wrong_password_look_the_same():
    table = PasswordTable({"alice": hash_password("pw")})
    assert table.authenticate("alice", b"pw") == "alice"
    assert table.authenticate("alice", b"nope") is None
    assert table.authenticate("mallory", b"pw") is None


def test_hash_password_command_reads_stdin_and_prints_a_usable_hash():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-password"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        check=True,
    )
    printed = out.stdout.strip()
    assert is_hash(printed) and verify_password("s3cret", printed)
    assert "s3cret" not in printed


def test_hash_password_refuses_empty_input():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "hash-password"], input="", capture_output=True, text=True
    )
    assert out.returncode == 1 and "empty" in out.stderr


def test_scrypt_working_memory_goes_back_after_checks_on_threads() -> None:
    """Issue 19: each password-pool thread used to keep scrypt's 16 MiB resident for
    good (glibc's dynamic mmap threshold); now two threads' checks leave RSS as it was."""
    program = """
import threading
from gateway.security.passwords import DUMMY_HASH, verify_password
def anon():
    return int(next(l for l in open('/proc/self/status') if l.startswith('RssAnon')).split()[1])
before = anon()
for _ in range(2):
    threads = [threading.Thread(target=verify_password, args=(b"x", DUMMY_HASH)) for _ in "ab"]
    [t.start() for t in threads]
    [t.join() for t in threads]
print(anon() - before)
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert int(done.stdout) < 8 * 1024  # KiB; 32 MiB without return_scrypt_memory
