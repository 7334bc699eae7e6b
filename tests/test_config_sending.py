"""The sending side of the config (issue 15): ``[server] submission``/``submissions``,
``[submission]``, ``addresses`` and ``[upstreams.smtp]``, and the routes built from them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.app import config
from gateway.app.sending import routes_from_config

HASH = "scrypt$16384$8$1$c2FsdHNhbHRzYWx0c2FsdA$ZXhhbXBsZS1oYXNoLWV4YW1wbGUtaGFzaC0tLS0tLS0"


def upstream(name: str, owner: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "owner": owner,
        "host": "pop.isp.example",
        "username": f"{name}@isp.example",
        "password": "pw",
        **extra,
    }


def parse(server: dict[str, Any] | None = None, upstreams=(), **tables: Any) -> config.Config:
    data: dict[str, Any] = {
        "server": server or {},
        "users": {"alice": {"password": HASH}, "bob": {"password": HASH}},
        "upstreams": list(upstreams),
        **tables,
    }
    return config.parse(data)


def problems(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(config.ConfigError) as e:
        parse(*args, **kwargs)
    return str(e.value)


def test_defaults_send_as_the_pop3_username_with_the_pop3_password():
    cfg = parse(upstreams=[upstream("alice", "alice", smtp={"host": "smtp.isp.example"})])
    (sending,) = cfg.sending
    assert sending.addresses == ("alice@isp.example",)
    assert sending.smtp is not None
    assert (sending.smtp.port, sending.smtp.tls) == (587, "starttls")
    assert (sending.smtp.username, sending.smtp.password) == ("alice@isp.example", "pw")
    assert cfg.submission.queue_lifetime == 2 * 86400 and cfg.submission.listeners == ()


def test_implicit_tls_defaults_to_port_465_and_limits_are_read():
    cfg = parse(
        upstreams=[upstream("a", "alice", smtp={"host": "smtp.x", "tls": "implicit"})],
        submission={"max_recipients": 5, "queue_lifetime": "6h", "retry_intervals": ["10s"]},
    )
    assert cfg.sending[0].smtp.port == 465
    assert cfg.submission.max_recipients == 5
    assert cfg.submission.queue_lifetime == 6 * 3600
    assert cfg.submission.retry_intervals == (10.0,)


def test_tls_none_only_to_loopback():
    text = problems(upstreams=[upstream("a", "alice", smtp={"host": "smtp.x", "tls": "none"})])
    assert "upstreams.a.smtp.tls" in text and "in clear" in text
    cfg = parse(upstreams=[upstream("a", "alice", smtp={"host": "127.0.0.1", "tls": "none"})])
    assert cfg.sending[0].smtp.tls == "none"


def test_unknown_smtp_keys_and_bad_addresses_are_reported():
    text = problems(
        upstreams=[
            upstream("a", "alice", addresses=["not an address"], smtp={"host": "h", "prot": 1})
        ]
    )
    assert "upstreams.a.smtp.prot: unknown key" in text
    assert "upstreams.a.addresses[0]" in text


def test_an_address_belongs_to_one_upstream():
    text = problems(
        upstreams=[
            upstream("a", "alice", addresses=["x@isp.example"]),
            upstream("b", "bob", addresses=["X@isp.example"]),
        ]
    )
    assert "already sent for by upstream a" in text


def test_submission_listeners_follow_the_imap_rules():
    text = problems(server={"submission": ["tcp:1587"]})
    assert "server.submission[0]" in text and "reachable from the network" in text
    text = problems(server={"submissions": ["tcp:1465:interface=127.0.0.1"]})
    assert "a submissions listener needs [tls]" in text
    cfg = parse(server={"submission": ["tcp:1587:interface=127.0.0.1"]})
    (listener,) = cfg.submission.listeners
    assert listener.plaintext_auth and listener.local and listener.tls == "starttls"
    cfg = parse(server={"submission": ["tcp:1587"], "allow_insecure_listener": True})
    assert cfg.submission.listeners[0].plaintext_auth is True


def test_a_shared_upstream_sends_for_every_household_member():
    cfg = parse(
        upstreams=[
            upstream("alice", "alice", smtp={"host": "smtp.x"}),
            upstream("family", "shared:family", smtp={"host": "smtp.x"}),
        ],
        shared={"family": {"members": ["alice", "bob"]}},
    )
    routes = {r.name: r for r in routes_from_config(cfg)}
    assert routes["alice"].users == {"alice"}
    assert routes["family"].users == {"alice", "bob"}
    assert routes["family"].addresses == ("family@isp.example",)
