"""``[shared.NAME]`` config: members must be users, names follow the user-name rules, and
an upstream may deliver into ``owner = "shared:NAME"``; mistakes are FILE: key: problem."""

from __future__ import annotations

from pathlib import Path

from gateway.app import config
from tests.test_config import HASH, problems, secret_file, write


def household(tmp_path: Path, shared: str, owner: str = "shared:family") -> Path:
    pw = secret_file(tmp_path)
    return write(
        tmp_path,
        f"""
[server]
state_dir = "{tmp_path}/state"

[users.alice]
password = "{HASH}"

[users.bob]
password = "{HASH}"

{shared}

[[upstreams]]
name = "family-isp"
owner = "{owner}"
host = "pop.example.net"
username = "family@example.net"
password_file = "{pw}"
""",
    )


def test_shared_mailbox_with_members_and_a_shared_upstream_loads(tmp_path: Path) -> None:
    cfg = config.load(household(tmp_path, '[shared.family]\nmembers = ["alice", "bob"]'))
    assert cfg.shared == {"family": config.Shared("family", ("alice", "bob"))}
    assert cfg.upstreams[0].owner == "shared:family"


def test_member_must_be_a_defined_user(tmp_path: Path) -> None:
    path = household(tmp_path, '[shared.family]\nmembers = ["alice", "mallory"]')
    assert problems(path) == [
        f"{path}: shared.family.members[1]: no such user 'mallory' (define [users.mallory])"
    ]


def test_members_are_required_and_not_empty_or_repeated(tmp_path: Path) -> None:
    path = household(tmp_path, "[shared.family]\nmembers = []")
    assert problems(path) == [
        f"{path}: shared.family.members: a shared mailbox needs at least one member"
    ]
    path = household(tmp_path, '[shared.family]\nmembers = ["bob", "bob"]')
    assert problems(path) == [f"{path}: shared.family.members[1]: 'bob' is listed twice"]
    path = household(tmp_path, "[shared.family]\nmember = ['bob']")
    assert problems(path) == [
        f"{path}: shared.family.members: is required",
        f"{path}: shared.family.member: unknown key",
    ]


def test_shared_name_follows_the_user_name_rules(tmp_path: Path) -> None:
    path = household(tmp_path, '[shared."Fam/ily"]\nmembers = ["alice"]', owner="alice")
    (problem,) = problems(path)
    assert problem.startswith(f"{path}: shared.Fam/ily: shared mailbox names are 1-64 of")


def test_upstream_owner_must_name_a_defined_shared_mailbox(tmp_path: Path) -> None:
    path = household(tmp_path, '[shared.family]\nmembers = ["alice"]', owner="shared:office")
    assert problems(path) == [
        f"{path}: upstreams.family-isp.owner: no such shared mailbox 'office'"
        " (define [shared.office])"
    ]


def test_quota_per_user_and_per_shared_mailbox(tmp_path: Path) -> None:
    path = household(tmp_path, '[shared.family]\nmembers = ["alice"]\nquota = "5G"')
    text = path.read_text().replace(
        f'[users.bob]\npassword = "{HASH}"', f'[users.bob]\npassword = "{HASH}"\nquota = "2M"'
    )
    cfg = config.load(write(tmp_path, text))
    assert cfg.users["bob"].quota == 2 * 1024 * 1024 and cfg.users["alice"].quota is None
    assert cfg.shared["family"].quota == 5 * 1024**3
    bad = household(tmp_path, '[shared.family]\nmembers = ["alice"]\nquota = "lots"')
    (problem,) = problems(bad)
    assert problem.startswith(f"{bad}: shared.family.quota:")
