"""The web resource over real HTTP without a browser (gateway/web/resource.py): what every
request must carry (a session, the CSRF token, our own Origin), cookie flags on plain and
TLS listeners, the JSON endpoint (session or HTTP Basic), and response headers. The
household is the one from gateway/testing/web.py (real scrypt hashes, real POP3 passes,
started once for the module: a few seconds)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.tlsca import CA, ServerTLSContext
from gateway.testing.web import PASSWORDS, Client, WebWorld, start_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebWorld]:
    built = start_world(tmp_path_factory.mktemp("web"), seed_history=False)
    yield built
    built.close()


def _signed_in(world: WebWorld, user: str) -> Client:
    client = Client(world.url)
    assert client.sign_in(user) == 303
    return client


def test_nothing_is_readable_without_a_session(world: WebWorld) -> None:
    client = Client(world.url)
    status, headers, _ = client.request("GET", "/")
    assert status == 303 and headers["location"] == "/signin"
    status, headers, body = client.request("GET", "/api/status")
    assert status == 401 and json.loads(body) == {"error": "sign in first"}
    assert client.request("POST", "/fetch", {"upstream": "home"})[0] == 403
    assert client.request("GET", "/static/style.css")[0] == 200  # the style sheet is public


def test_cookie_flags_on_a_plain_listener(world: WebWorld) -> None:
    client = Client(world.url)
    _, headers, _ = client.request("GET", "/signin")
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie


def test_cookie_is_secure_on_a_tls_listener(world: WebWorld, tls_ca: CA, tmp_path: Path) -> None:
    cert, key = tls_ca.issue(tmp_path, ["localhost", "127.0.0.1"])
    url = world.listen(context=ServerTLSContext(cert, key))
    client = Client(url, context=tls_ca.client_context())
    _, headers, _ = client.request("GET", "/signin")
    assert headers["set-cookie"].endswith("; Secure")
    assert client.sign_in("alice") == 303
    status, _, body = client.request("GET", "/")
    assert status == 200 and "Signed in as" in body


def _own_lan_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_no_password_in_clear_from_another_machine(world: WebWorld) -> None:
    """Reached over the LAN without TLS, the form says to use HTTPS, and neither the form
    nor Basic credentials get a password checked (IMAP's LOGINDISABLED rule)."""
    lan = _own_lan_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback address to connect from")
    client = Client(world.listen(interface=lan))
    status, _, body = client.request("GET", "/signin")
    assert status == 200 and "Signing in needs HTTPS" in body and " disabled" in body
    token = client.csrf("/signin")
    form = {"csrf": token, "user": "alice", "password": PASSWORDS["alice"]}
    status, _, body = client.request("POST", "/signin", form)
    assert status == 403 and "Signing in needs HTTPS" in body
    assert client.request("GET", "/")[0] == 303  # still not signed in
    basic = base64.b64encode(b"alice:" + PASSWORDS["alice"].encode()).decode()
    status, _, body = client.request("GET", "/api/status", Authorization=f"Basic {basic}")
    assert status == 403 and json.loads(body) == {"error": "use HTTPS"}


def test_security_headers(world: WebWorld) -> None:
    _, headers, _ = _signed_in(world, "alice").request("GET", "/")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert headers["server"] == "popgate"


def test_posts_need_the_token_and_our_origin(world: WebWorld) -> None:
    client = _signed_in(world, "alice")
    token = client.csrf("/")
    assert client.request("POST", "/fetch", {"upstream": "bobs", "csrf": token})[0] == 404
    assert client.request("POST", "/fetch", {"upstream": "home"})[0] == 403
    assert client.request("POST", "/fetch", {"upstream": "home", "csrf": "x" * 43})[0] == 403
    form = {"upstream": "home", "csrf": token}
    assert client.request("POST", "/fetch", form, Origin="https://evil.example")[0] == 403
    assert client.request("POST", "/fetch", form, Origin="null")[0] == 403
    assert client.request("POST", "/fetch", form, Sec_Fetch_Site="cross-site")[0] == 403
    own = world.url
    status, headers, _ = client.request("POST", "/fetch", form, Origin=own)
    assert status == 303 and headers["location"] == "/"
    # another user's token does not work in this session
    other = _signed_in(world, "bob").csrf("/")
    assert client.request("POST", "/fetch", {"upstream": "home", "csrf": other})[0] == 403


def test_sign_in_needs_the_form_token(world: WebWorld) -> None:
    client = Client(world.url)
    client.request("GET", "/signin")
    form = {"user": "alice", "password": PASSWORDS["alice"]}
    status, _, body = client.request("POST", "/signin", form)
    assert status == 403 and "The form had expired" in body


def test_signing_out_ends_the_session_on_the_server(world: WebWorld) -> None:
    client = _signed_in(world, "alice")
    old_cookie = client.cookie
    token = client.csrf("/")
    status, headers, _ = client.request("POST", "/signout", {"csrf": token})
    assert status == 303 and "Max-Age=0" in headers["set-cookie"]
    client.cookie = old_cookie  # a stolen copy of the cookie is worthless now
    assert client.request("GET", "/")[0] == 303


def test_json_by_session_and_by_basic_credentials(world: WebWorld) -> None:
    body = _signed_in(world, "bob").request("GET", "/api/status")[2]
    assert [u["name"] for u in json.loads(body)["upstreams"]] == ["bobs", "family"]
    client = Client(world.url)
    basic = base64.b64encode(b"carol:" + PASSWORDS["carol"].encode()).decode()
    status, headers, body = client.request("GET", "/api/status", Authorization=f"Basic {basic}")
    assert status == 200 and headers["content-type"] == "application/json"
    status_dict = json.loads(body)
    assert [u["name"] for u in status_dict["upstreams"]] == ["bobs", "club", "family", "home"]
    assert status_dict["config"] is not None  # carol is an admin
    wrong = base64.b64encode(b"carol:nope").decode()
    assert client.request("GET", "/api/status", Authorization=f"Basic {wrong}")[0] == 401


def test_unknown_paths_and_methods(world: WebWorld) -> None:
    client = Client(world.url)
    assert client.request("GET", "/nope")[0] == 404
    status, headers, _ = client.request("DELETE", "/")
    assert status == 405 and headers["allow"] == "GET"


def test_an_oversized_body_is_dropped(world: WebWorld) -> None:
    host, port = world.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-"
            b"urlencoded\r\nContent-Length: 10000000\r\n\r\n" + b"a" * 1000
        )
        assert sock.recv(100) == b""  # closed without an answer
