"""The web page's config contract (issue 18): ``[server] web`` listeners under the IMAP
listeners' rule (no passwords in clear off loopback; ``ssl:`` listeners on the ``[tls]``
certificate, the way IMAPS is) and ``[server] admins`` naming defined users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.app import config
from gateway.security.passwords import hash_password
from gateway.testing.tlsca import CA

HASH = hash_password("pw", salt=b"0123456789abcdef")


def parse(server: dict[str, Any], *, tls: dict[str, str] | None = None) -> config.Config:
    data: dict[str, Any] = {
        "server": {"state_dir": "/tmp/popgate-state", **server},
        "users": {"alice": {"password": HASH}, "bob": {"password": HASH}},
    }
    if tls is not None:
        data["tls"] = tls
    return config.parse(data, "popgate.toml")


def problems(server: dict[str, Any], **kw: Any) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        parse(server, **kw)
    return e.value.problems


@pytest.fixture
def tls(tmp_path: Path, tls_ca: CA) -> dict[str, str]:
    cert, key = tls_ca.issue(tmp_path / "certs")
    return {"cert_file": str(cert), "key_file": str(key)}


def test_no_web_page_and_no_admins_by_default() -> None:
    cfg = parse({})
    assert cfg.web == () and cfg.admins == () and cfg.allow_insecure_listener is False


def test_a_loopback_listener_serves_plain_http() -> None:
    cfg = parse({"web": ["tcp:8025:interface=127.0.0.1"], "admins": ["alice"]})
    (web,) = cfg.web
    assert (web.endpoint, web.listen, web.tls, web.local) == (
        "tcp:8025:interface=127.0.0.1",
        "tcp:8025:interface=127.0.0.1",
        "none",
        True,
    )
    assert cfg.admins == ("alice",)


def test_plain_http_off_loopback_is_refused_like_imap_without_tls(tls) -> None:
    """HTTP has no STARTTLS: even with [tls] set, a tcp: listener on the network would
    take passwords in clear."""
    for kw in ({}, {"tls": tls}):
        (problem,) = problems({"web": ["tcp:8025"]}, **kw)
        assert problem.startswith("popgate.toml: server.web[0]: 'tcp:8025' is reachable")
        assert "allow_insecure_listener" in problem and "ssl:" in problem


def test_allow_insecure_listener_lets_plain_http_off_loopback() -> None:
    cfg = parse({"web": ["tcp:8025"], "allow_insecure_listener": True})
    assert cfg.web[0].local is False and cfg.web[0].tls == "none"
    assert cfg.allow_insecure_listener is True


def test_an_ssl_listener_without_a_certificate_uses_tls_like_imaps(tls) -> None:
    cfg = parse({"web": ["ssl:8443:interface=0.0.0.0"]}, tls=tls)
    (web,) = cfg.web
    assert (web.endpoint, web.listen, web.tls, web.local) == (
        "ssl:8443:interface=0.0.0.0",
        "tcp:8443:interface=0.0.0.0",
        "implicit",
        False,
    )


def test_an_ssl_listener_needs_tls_when_it_brings_no_certificate() -> None:
    (problem,) = problems({"web": ["ssl:8443"]})
    assert "uses the [tls] certificate; set [tls] cert_file and key_file" in problem


def test_an_ssl_listener_with_its_own_certificate_does_its_own_tls(tls) -> None:
    own = f"ssl:8443:privateKey={tls['key_file']}:certKey={tls['cert_file']}"
    (web,) = parse({"web": [own]}).web
    assert (web.listen, web.tls) == (own, "endpoint")


def test_ssl_only_arguments_need_a_certificate_of_their_own(tls) -> None:
    (problem,) = problems({"web": ["ssl:8443:sslmethod=TLSv1_2_METHOD"]}, tls=tls)
    assert "sslmethod need privateKey= and certKey=" in problem


def test_bad_web_listeners_are_reported_each() -> None:
    found = problems({"web": ["nonsense:1", 8025]})
    assert found[0].startswith("popgate.toml: server.web[0]: 'nonsense:1' is not a valid")
    assert found[1] == "popgate.toml: server.web[1]: expected an endpoint string, got 8025"


def test_admins_must_be_defined_users_listed_once() -> None:
    found = problems({"admins": ["alice", "carol", "alice", 3]})
    assert found == [
        "popgate.toml: server.admins[1]: no such user 'carol' (define [users.carol])",
        "popgate.toml: server.admins[2]: 'alice' is listed twice",
        "popgate.toml: server.admins[3]: expected a user name, got 3",
    ]


def test_check_config_lists_the_web_listeners(tmp_path: Path, capsys) -> None:
    from gateway.cli import main as cli

    path = tmp_path / "popgate.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path}/state"\nweb = ["tcp:8025:interface=127.0.0.1"]\n'
        f'admins = ["alice"]\n[users.alice]\npassword = "{HASH}"\n'
    )
    assert cli.main(["check-config", str(path)]) == 0
    assert "web tcp:8025:interface=127.0.0.1" in capsys.readouterr().out
