"""``popgate adduser / passwd / deluser / users``: config edited in place (comments kept,
mode kept, validated first), passwords never echoed, mail kept unless --purge."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.app import admin, config
from gateway.app.storage import STORE_FILE
from gateway.security.passwords import verify_password
from gateway.store.interfaces import INBOX
from gateway.store.sqlite import SQLiteStore
from tests.test_config import HASH, secret_file, write
from tests.test_store_contract import make_message


def config_text(tmp_path: Path, users: str | None = None) -> str:
    pw = secret_file(tmp_path)
    if users is None:
        users = f"""# Alice is the admin.
[users.alice]
# her hash:
password = "{HASH}"

[users.carol]
password = "{HASH}"
"""
    return f"""# popgate config, hand-written
[server]
state_dir = "{tmp_path}/state"  # where mail lives

{users}
# Households
[shared.family]
members = ["alice"]

# One upstream
[[upstreams]]
name = "alice-isp"
owner = "alice"
host = "pop.example.net"
username = "alice@example.net"
password_file = "{pw}"
"""


def inline_config_text(tmp_path: Path) -> str:
    """The same config with every user an inline table under one ``[users]`` header."""
    users = f"""# Users, one line each.
[users]
# Alice is the admin.
alice = {{ password = "{HASH}" }}  # her hash
carol = {{ password = "{HASH}" }}
"""
    return config_text(tmp_path, users)


STYLES = {"tables": config_text, "inline": inline_config_text}
"""Both ways to write users that TOML allows and popgate loads: ``[users.NAME]`` tables,
and ``NAME = { password = ... }`` inline tables under ``[users]``."""


class Piped(io.StringIO):
    """stdin that is not a terminal."""

    def isatty(self) -> bool:
        return False


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    return write(tmp_path, config_text(tmp_path), mode=0o640)


def test_adduser_appends_a_table_and_keeps_everything_else(cfg_path: Path) -> None:
    before = cfg_path.read_text()
    admin.adduser(str(cfg_path), "bob", stdin=Piped("bob's password\n"))
    after = cfg_path.read_text()
    cfg = config.load(cfg_path)
    assert verify_password("bob's password", cfg.users["bob"].password_hash)
    assert "bob's password" not in after
    # Only lines were added: every original line (comments included) is still there, in order.
    removed = [line for line in before.splitlines() if line not in after.splitlines()]
    assert removed == []
    assert after.index("[users.bob]") < after.index("# Households")
    assert stat.S_IMODE(cfg_path.stat().st_mode) == 0o640


def test_adduser_refuses_an_existing_or_invalid_name(cfg_path: Path) -> None:
    with pytest.raises(admin.AdminError, match="already exists"):
        admin.adduser(str(cfg_path), "alice", stdin=Piped("x\n"))
    with pytest.raises(admin.AdminError, match="user names are"):
        admin.adduser(str(cfg_path), "Bad/Name", stdin=Piped("x\n"))
    with pytest.raises(admin.AdminError, match="empty password"):
        admin.adduser(str(cfg_path), "dave", stdin=Piped("\n"))
    assert "dave" not in cfg_path.read_text()


def test_passwd_replaces_only_the_password_line(cfg_path: Path) -> None:
    before = cfg_path.read_text().splitlines()
    admin.passwd(str(cfg_path), "alice", stdin=Piped("new secret\n"))
    after = cfg_path.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith('password = "scrypt$')
    assert verify_password("new secret", config.load(cfg_path).users["alice"].password_hash)
    assert verify_password("pw", config.load(cfg_path).users["carol"].password_hash)


def test_passwd_prompts_twice_without_echo_on_a_terminal(cfg_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["one", "two"])
    with pytest.raises(admin.AdminError, match="differ"):
        admin.read_password(Tty(), prompt=lambda _p: next(answers))
    assert admin.read_password(Tty(), prompt=lambda _p: "same") == "same"


def test_deluser_removes_the_table_and_keeps_mail(cfg_path: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with SQLiteStore(state / STORE_FILE) as store:
        store.ensure_user("carol")
        store.append(store.get_mailbox("carol", INBOX).id, make_message())
    out = admin.deluser(str(cfg_path), "carol")
    assert "kept" in out
    assert "carol" not in config.load(cfg_path).users
    assert "# Households" in cfg_path.read_text()
    with SQLiteStore(state / STORE_FILE) as store:
        assert store.counts(store.get_mailbox("carol", INBOX).id).messages == 1


def test_deluser_purge_deletes_the_mail(cfg_path: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with SQLiteStore(state / STORE_FILE) as store:
        store.ensure_user("carol")
        store.append(store.get_mailbox("carol", INBOX).id, make_message())
        store.append(store.get_mailbox("carol", "Sent").id, make_message())
    out = admin.deluser(str(cfg_path), "carol", purge=True)
    assert "deleted 2 messages" in out
    with SQLiteStore(state / STORE_FILE) as store:
        assert [m.name for m in store.list_mailboxes("carol")] == [INBOX]
        assert store.counts(store.get_mailbox("carol", INBOX).id).messages == 0


def test_deluser_refuses_a_user_still_referenced(cfg_path: Path) -> None:
    with pytest.raises(admin.AdminError, match=r"upstreams\]\] alice-isp.*shared.family"):
        admin.deluser(str(cfg_path), "alice")
    with pytest.raises(admin.AdminError, match="no user"):
        admin.deluser(str(cfg_path), "zed")


def test_users_lists_folders_messages_and_households(cfg_path: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with SQLiteStore(state / STORE_FILE) as store:
        store.ensure_user("alice")
        store.append(store.get_mailbox("alice", INBOX).id, make_message())
    report = admin.users_report(str(cfg_path)).splitlines()
    alice = next(line for line in report if line.startswith("alice"))
    assert alice.split()[1:3] == ["6", "1"] and alice.endswith("family")
    assert next(line for line in report if line.startswith("carol")).split()[1:3] == ["0", "0"]


def test_cli_reads_the_password_from_stdin_and_says_how_to_reload(cfg_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "adduser", "bob", "--config", str(cfg_path)],
        input="piped secret\n",
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert result.returncode == 0, result.stderr
    assert "systemctl reload popgate" in result.stdout
    assert "piped secret" not in result.stdout + result.stderr
    assert verify_password("piped secret", config.load(cfg_path).users["bob"].password_hash)
    again = subprocess.run(
        [sys.executable, "-m", "gateway", "adduser", "bob", "--config", str(cfg_path)],
        input="x\n",
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and "already exists" in again.stderr


# ---- both table styles: [users.NAME] and inline NAME = { ... } -------------------------


@pytest.fixture(params=sorted(STYLES))
def styled_cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return write(tmp_path, STYLES[request.param](tmp_path), mode=0o640)


def comment_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "#" in line]


def test_passwd_changes_one_line_in_either_style_and_keeps_its_comment(styled_cfg: Path) -> None:
    before = styled_cfg.read_text().splitlines()
    admin.passwd(str(styled_cfg), "alice", stdin=Piped("new secret\n"))
    after = styled_cfg.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1
    old_line, new_line = changed[0]
    assert HASH in old_line and HASH not in new_line and "scrypt$" in new_line
    assert old_line.split("#")[1:] == new_line.split("#")[1:]  # a trailing comment stays
    cfg = config.load(styled_cfg)
    assert verify_password("new secret", cfg.users["alice"].password_hash)
    assert verify_password("pw", cfg.users["carol"].password_hash)


def test_adduser_in_either_style_only_adds_lines_among_the_users(styled_cfg: Path) -> None:
    before = styled_cfg.read_text()
    admin.adduser(str(styled_cfg), "bob", stdin=Piped("bob's password\n"))
    after = styled_cfg.read_text()
    assert verify_password("bob's password", config.load(styled_cfg).users["bob"].password_hash)
    removed = [line for line in before.splitlines() if line not in after.splitlines()]
    assert removed == []
    assert after.index("bob") < after.index("# Households")
    assert comment_lines(after) == comment_lines(before)


def test_deluser_in_either_style_removes_only_the_user(styled_cfg: Path) -> None:
    before = styled_cfg.read_text()
    out = admin.deluser(str(styled_cfg), "carol")
    assert "removed user carol" in out
    after = styled_cfg.read_text()
    assert set(config.load(styled_cfg).users) == {"alice"}
    removed = [line for line in before.splitlines() if line not in after.splitlines()]
    assert removed and all("carol" in line or not line.strip() for line in removed)
    assert comment_lines(after) == comment_lines(before)


def test_users_lists_users_of_either_style(styled_cfg: Path) -> None:
    report = admin.users_report(str(styled_cfg)).splitlines()
    assert [line.split()[0] for line in report[1:]] == ["alice", "carol"]


def test_the_last_user_table_keeps_the_comments_that_follow_it(tmp_path: Path) -> None:
    """A comment after the last ``[users.NAME]`` table introduces what follows it: adding
    a user goes before it, removing that user leaves it."""
    path = write(tmp_path, config_text(tmp_path), mode=0o600)
    admin.adduser(str(path), "bob", stdin=Piped("pw\n"))
    text = path.read_text()
    assert text.index("[users.carol]") < text.index("[users.bob]") < text.index("# Households")
    admin.deluser(str(path), "bob")
    admin.deluser(str(path), "carol")
    text = path.read_text()
    assert "# Households\n[shared.family]" in text and "# her hash:" in text
    assert set(config.load(path).users) == {"alice"}


def test_a_config_without_users_gets_its_first_user_table(tmp_path: Path) -> None:
    path = write(tmp_path, f'[server]\nstate_dir = "{tmp_path}/state"  # kept\n', mode=0o600)
    admin.adduser(str(path), "bob", stdin=Piped("pw\n"))
    text = path.read_text()
    assert text.startswith(f'[server]\nstate_dir = "{tmp_path}/state"  # kept\n')
    assert "[users.bob]" in text
    assert verify_password("pw", config.load(path).users["bob"].password_hash)
