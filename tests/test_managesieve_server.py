"""popgate's ManageSieve server over real loopback sockets: STARTTLS against the test
CA, plaintext passwords refused off-loopback, the login penalty, connection caps, the
inactivity timeout, and limits at their edges through the real Twisted protocol."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest

from gateway.managesieve.server import ManageSieveLimits
from gateway.security.tls import ServerTLS, TLSFiles
from gateway.store.scripts import ScriptLimits
from gateway.testing.managesieved import PASSWORD, USER, popgate_managesieve
from gateway.testing.tlsca import CA


@pytest.fixture
def tls(tmp_path: Path, tls_ca: CA) -> ServerTLS:
    cert, key = tls_ca.issue(tmp_path / "certs")
    return ServerTLS(TLSFiles(str(cert), str(key)))


def test_starttls_then_plain_login_off_loopback(tls: ServerTLS, tls_ca: CA) -> None:
    """Before TLS: SASL is empty and PLAIN is refused (ENCRYPT-NEEDED); STARTTLS with a
    verified certificate; the server re-issues its capabilities unasked (RFC 5804 §2.2)."""
    with popgate_managesieve(tls_context_factory=tls, plaintext_auth=False) as server:
        with server.connect() as client:
            greeting = client.response()
            assert b'"SASL" ""\r\n' in greeting and b'"STARTTLS"\r\n' in greeting
            assert client.login().startswith(b"NO (ENCRYPT-NEEDED)")
            capabilities = client.starttls(tls_ca.client_context())
            assert b'"SASL" "PLAIN"\r\n' in capabilities
            assert b'"STARTTLS"' not in b"".join(capabilities)
            assert isinstance(client.sock, ssl.SSLSocket)
            assert client.login() == b'OK "Logged in"\r\n'
            assert client.status('PUTSCRIPT "s" "keep;"') == b'OK "Putscript completed"\r\n'


def test_plaintext_pipelined_after_starttls_is_discarded(tls: ServerTLS, tls_ca: CA) -> None:
    """Commands sent in clear behind STARTTLS must never run under TLS (CVE-2011-0411)."""
    with popgate_managesieve(tls_context_factory=tls) as server:
        with server.connect() as client:
            client.response()
            ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            client.send(f'STARTTLS\r\nAUTHENTICATE "PLAIN" "{ir}"\r\n'.encode())
            assert client.response() == [b'OK "Begin TLS negotiation now"\r\n']
            client.buffer = b""
            client.sock = tls_ca.client_context().wrap_socket(
                client.sock, server_hostname="localhost"
            )
            client.response()  # capabilities after TLS
            assert client.status("LISTSCRIPTS").startswith(b"NO")  # not logged in


def test_failed_logins_are_delayed_and_budgeted() -> None:
    """The IMAP login penalty (gateway.security.penalty) applies: a failure is answered after the
    source's delay; once the budget is spent, NO (TRYLATER) without a password check."""
    with popgate_managesieve(penalty=True, fake_clock=True) as server:
        assert server.clock is not None
        penalty = server.factory.penalty
        assert penalty is not None
        with server.connect() as client:
            client.response()
            bad = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
            client.send(f'AUTHENTICATE "PLAIN" "{bad}"\r\n'.encode())
            client.sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                client.read_line()
            client.sock.settimeout(20)
            server.call(server.clock.advance, penalty.settings.initial_delay)
            assert client.response() == [b'NO "Authentication failed"\r\n']
            for _ in range(penalty.settings.ip_budget):
                server.call(penalty.failed, "127.0.0.1", "someone")
            client.send(b'AUTHENTICATE "PLAIN" "' + bad.encode() + b'"\r\n')
            server.call(server.clock.advance, penalty.settings.max_delay)
            assert client.response()[-1].startswith(b"NO (TRYLATER)")


def test_connection_cap_per_address() -> None:
    with popgate_managesieve(limits=ManageSieveLimits(max_connections_per_ip=2)) as server:
        first, second = server.connect(), server.connect()
        first.response(), second.response()
        with server.connect() as third:
            assert third.response() == [
                b'BYE (TRYLATER) "Too many connections from your address"\r\n'
            ]
        first.close()
        second.close()


def test_logins_per_user_and_address_are_capped() -> None:
    limits = ManageSieveLimits(max_connections_per_user_ip=1)
    with popgate_managesieve(limits=limits) as server:
        with server.connect() as one, server.connect() as two:
            one.response(), two.response()
            assert one.login().startswith(b"OK")
            assert two.login().startswith(b"NO (TRYLATER)")
            assert one.status("UNAUTHENTICATE").startswith(b"OK")
            assert two.login().startswith(b"OK")


def test_inactivity_timeout_says_bye() -> None:
    with popgate_managesieve(fake_clock=True) as server:
        assert server.clock is not None
        with server.connect() as client:
            client.response()
            server.call(server.clock.advance, ManageSieveLimits().prelogin_timeout + 1)
            assert client.response() == [b'BYE "Disconnected for inactivity"\r\n']


def test_script_size_limit_edge_over_the_wire() -> None:
    """The literal limit is the store's script size: exactly the limit is stored, one
    octet more is NO (QUOTA/MAXSIZE), the connection goes on; a flood is BYE."""
    limits = ScriptLimits(max_script_size=1000, max_scripts=2)
    with popgate_managesieve(
        script_limits=limits, limits=ManageSieveLimits(max_discard_size=5000)
    ) as server:
        with server.connect() as client:
            client.response()
            client.login()
            exact = b"#" * 999 + b"\n"
            assert client.status(b'PUTSCRIPT "a" {1000+}\r\n' + exact).startswith(b"OK")
            over = b'PUTSCRIPT "b" {1001+}\r\n' + b"#" * 1001
            assert client.status(over).startswith(b"NO (QUOTA/MAXSIZE)")
            assert client.status('PUTSCRIPT "b" "keep;"').startswith(b"OK")
            assert client.status('PUTSCRIPT "c" "keep;"').startswith(b"NO (QUOTA/MAXSCRIPTS)")
            client.send(b'PUTSCRIPT "c" {5001+}\r\n')
            assert client.response()[-1].startswith(b"BYE")


def test_line_length_limit_edge_over_the_wire() -> None:
    limits = ManageSieveLimits(max_line_length=100)
    with popgate_managesieve(limits=limits) as server:
        with server.connect() as client:
            client.response()
            line = b'NOOP "' + b"x" * 93 + b'"'
            assert len(line) == 100
            assert client.status(line).startswith(b"OK")
            assert client.status(line[:-1] + b'x"').startswith(b"BYE")


def test_pipelined_commands_answered_in_order() -> None:
    with popgate_managesieve() as server:
        with server.connect() as client:
            client.response()
            ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            client.send(
                f'AUTHENTICATE "PLAIN" "{ir}"\r\nPUTSCRIPT "a" {{5+}}\r\nkeep;\r\n'
                'SETACTIVE "a"\r\nLISTSCRIPTS\r\nNOOP "end"\r\n'.encode()
            )
            got = [client.response() for _ in range(5)]
            assert got[3] == [b'"a" ACTIVE\r\n', b'OK "Listscripts completed"\r\n']
            assert got[4] == [b'OK (TAG "end") "Done"\r\n']
