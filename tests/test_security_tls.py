"""The TLS front end: LOGINDISABLED before STARTTLS on network listeners, STARTTLS then
LOGIN, IMAPS with imaplib against a private CA, the TLS policy, and certificate reload
(new connections get the new certificate, open ones keep theirs)."""

from __future__ import annotations

import base64
import imaplib
import os
import shutil
import ssl
from pathlib import Path

import pytest
from OpenSSL import SSL

from gateway.imap.policy import ListenerPolicy
from gateway.security.tls import TLS12_CIPHERS, ServerTLS, TLSConfigError, TLSFiles, build_context
from gateway.testing.imapclient import PASSWORD, USER, RawClient, running_server
from gateway.testing.tlsca import CA


@pytest.fixture
def certs(tmp_path: Path, tls_ca: CA) -> TLSFiles:
    cert, key = tls_ca.issue(tmp_path / "certs")
    return TLSFiles(str(cert), str(key))


def _peer_serial(sock: ssl.SSLSocket) -> int:
    from cryptography import x509

    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_login_refused_before_starttls_on_a_network_listener(
    tmp_path: Path, certs: TLSFiles
) -> None:
    """RFC 3501 §6.2.3 / §7.2.1: a listener not marked loopback announces STARTTLS and
    LOGINDISABLED, no AUTH=PLAIN, and refuses LOGIN and AUTHENTICATE PLAIN in clear."""
    policy = ListenerPolicy(plaintext_auth=False)
    with running_server(
        tmp_path, scrypt=True, fake_clock=True, policy=policy, tls_context_factory=ServerTLS(certs)
    ) as server:
        with server.connect() as client:
            greeting = client.greeting()
            assert b" STARTTLS LOGINDISABLED " in greeting and b"AUTH=PLAIN" not in greeting
            assert client.command("a", f"LOGIN {USER} {PASSWORD}") == (
                b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed on "
                b"non-secure connections\r\n"
            )
            ir = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            assert client.command("b", f"AUTHENTICATE PLAIN {ir}").startswith(
                b"b NO [PRIVACYREQUIRED]"
            )


def test_starttls_then_login_works(tmp_path: Path, certs: TLSFiles, tls_ca: CA) -> None:
    """After STARTTLS (RFC 3501 §6.2.1) the capabilities drop STARTTLS/LOGINDISABLED,
    offer AUTH=PLAIN, and LOGIN succeeds; TLS 1.2+ is negotiated."""
    policy = ListenerPolicy(plaintext_auth=False)
    with running_server(
        tmp_path, scrypt=True, fake_clock=True, policy=policy, tls_context_factory=ServerTLS(certs)
    ) as server:
        with server.connect() as client:
            client.greeting()
            assert client.command("a", "STARTTLS") == b"a OK Begin TLS negotiation now\r\n"
            client.start_tls(tls_ca.client_context())
            assert isinstance(client.sock, ssl.SSLSocket)
            assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
            caps = client.command("b", "CAPABILITY")
            assert b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps
            assert b"AUTH=PLAIN" in caps
            assert client.command("c", f"LOGIN {USER} {PASSWORD}").startswith(b"c OK")


def test_imaps_with_imaplib_ssl_against_the_test_ca(
    tmp_path: Path, certs: TLSFiles, tls_ca: CA
) -> None:
    """IMAPS (RFC 8314 §3.3): imaplib.IMAP4_SSL verifies the certificate against the
    private CA and logs in; no STARTTLS or LOGINDISABLED is offered on it."""
    policy = ListenerPolicy(implicit_tls=True, plaintext_auth=False)
    with running_server(
        tmp_path, scrypt=True, policy=policy, tls_context_factory=ServerTLS(certs)
    ) as server:
        imap = imaplib.IMAP4_SSL("localhost", server.port, ssl_context=tls_ca.client_context())
        try:
            assert "STARTTLS" not in imap.capabilities
            assert "LOGINDISABLED" not in imap.capabilities
            assert imap.login(USER, PASSWORD)[0] == "OK"
            typ, data = imap.select("INBOX")
            assert typ == "OK" and data == [b"0"]
        finally:
            imap.logout()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_policy_refuses_old_versions_and_weak_ciphers(
    tmp_path: Path, certs: TLSFiles, tls_ca: CA
) -> None:
    """RFC 8996 / RFC 9325: TLS 1.1 is refused; a TLS 1.2 client gets an ECDHE AEAD
    suite from our list and no compression."""
    policy = ListenerPolicy(implicit_tls=True)
    with running_server(
        tmp_path, scrypt=True, policy=policy, tls_context_factory=ServerTLS(certs)
    ) as server:
        old = tls_ca.client_context()
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            RawClient(server.port).start_tls(old)
        tls12 = tls_ca.client_context()
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        client = RawClient(server.port)
        try:
            client.start_tls(tls12)
            assert isinstance(client.sock, ssl.SSLSocket)
            assert client.sock.version() == "TLSv1.2"
            cipher_name = client.sock.cipher()[0]
            assert cipher_name in TLS12_CIPHERS.split(":")
            assert client.sock.compression() is None
            assert client.greeting().startswith(b"* OK")
        finally:
            client.close()


def test_context_options(certs: TLSFiles) -> None:
    """No compression (CRIME) and the server's cipher order (the TLS 1.2 minimum is
    proven over the wire above)."""
    context = build_context(certs)
    options = context.set_options(0)
    assert options & SSL.OP_NO_COMPRESSION
    assert options & SSL.OP_CIPHER_SERVER_PREFERENCE


def test_reload_serves_the_new_certificate_to_new_connections_only(
    tmp_path: Path, certs: TLSFiles, tls_ca: CA
) -> None:
    """SIGHUP's reload: connections made afterwards see the new certificate, an open
    one keeps working on the old; broken files leave the current certificate in use."""
    server_tls = ServerTLS(certs)
    policy = ListenerPolicy(implicit_tls=True)
    context = tls_ca.client_context()
    with running_server(
        tmp_path, scrypt=True, policy=policy, tls_context_factory=server_tls
    ) as server:
        old = RawClient(server.port)
        old.start_tls(context)
        old.greeting()
        assert isinstance(old.sock, ssl.SSLSocket)
        old_serial = _peer_serial(old.sock)

        new_cert, new_key = tls_ca.issue(tmp_path / "renewed")
        shutil.copy(new_cert, certs.cert_file)
        shutil.copy(new_key, certs.key_file)
        assert server.call(server_tls.reload) is True
        with RawClient(server.port) as fresh:
            fresh.start_tls(context)
            fresh.greeting()
            assert isinstance(fresh.sock, ssl.SSLSocket)
            new_serial = _peer_serial(fresh.sock)
        assert new_serial != old_serial
        assert old.command("a", "NOOP") == b"a OK NOOP completed\r\n"
        old.close()

        Path(certs.cert_file).write_text("not a certificate\n")
        assert server.call(server_tls.reload) is False
        with RawClient(server.port) as after_bad:
            after_bad.start_tls(context)
            assert isinstance(after_bad.sock, ssl.SSLSocket)
            assert _peer_serial(after_bad.sock) == new_serial


def test_key_file_readable_by_others_is_refused(certs: TLSFiles) -> None:
    """A world-readable private key is a leaked key: refused, naming the file."""
    os.chmod(certs.key_file, 0o644)
    with pytest.raises(TLSConfigError, match=f"{certs.key_file}.*0644"):
        build_context(certs)


def test_mismatched_key_is_refused(tmp_path: Path, certs: TLSFiles, tls_ca: CA) -> None:
    _, other_key = tls_ca.issue(tmp_path / "other", stem="other")
    with pytest.raises(TLSConfigError, match="is not the private key"):
        build_context(TLSFiles(certs.cert_file, str(other_key)))


# ---- config: listeners, secure by default --------------------------------------------


def _config(tmp_path: Path, server: str, extra: str = "") -> Path:
    from gateway.security.passwords import hash_password

    path = tmp_path / "popgate.toml"
    path.write_text(
        f'[server]\nstate_dir = "{tmp_path}/state"\n{server}\n'
        f'[users.alice]\npassword = "{hash_password("pw", salt=b"0123456789abcdef")}"\n{extra}'
    )
    os.chmod(path, 0o600)
    return path


def test_network_plaintext_listener_without_tls_is_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    from gateway.app import config

    with pytest.raises(config.ConfigError) as e:
        config.load(_config(tmp_path, 'imap = ["tcp:143"]'))
    (problem,) = e.value.problems
    assert "server.imap[0]" in problem and "allow_insecure_listener" in problem
    cfg = config.load(_config(tmp_path, 'imap = ["tcp:143"]\nallow_insecure_listener = true'))
    assert cfg.listeners == (config.Listener("tcp:143", "starttls", True, False),)


def test_listener_policies_follow_from_the_config(tmp_path: Path, certs: TLSFiles) -> None:
    """Loopback listeners take passwords in clear, network ones only after STARTTLS,
    IMAPS needs [tls]; [[listeners]] can say otherwise per listener."""
    from gateway.app import config

    tls = f'[tls]\ncert_file = "{certs.cert_file}"\nkey_file = "{certs.key_file}"\n'
    server = (
        'imap = ["tcp:1143:interface=127.0.0.1", "tcp:143", "unix:/run/p.sock"]\n'
        'imaps = ["tcp:993"]'
    )
    listeners = '[[listeners]]\nendpoint = "tcp:2143:interface=127.0.0.1"\nplaintext_auth = false\n'
    cfg = config.load(_config(tmp_path, server, tls + listeners))
    assert [(x.endpoint, x.tls, x.plaintext_auth) for x in cfg.listeners] == [
        ("tcp:1143:interface=127.0.0.1", "starttls", True),
        ("tcp:143", "starttls", False),
        ("unix:/run/p.sock", "starttls", True),
        ("tcp:993", "implicit", False),
        ("tcp:2143:interface=127.0.0.1", "starttls", False),
    ]
    with pytest.raises(config.ConfigError) as e:
        config.load(_config(tmp_path, 'imaps = ["tcp:993"]'))
    assert any("server.imaps[0]" in p and "[tls]" in p for p in e.value.problems)


def test_service_wires_starttls_imaps_and_logindisabled(
    tmp_path: Path, certs: TLSFiles, tls_ca: CA
) -> None:
    """build_service from a config: a listener marked not-plaintext announces
    LOGINDISABLED and STARTTLS works on it; the IMAPS listener speaks TLS at once."""
    from gateway.app import config
    from gateway.app.service import build_service
    from gateway.testing.imapclient import ensure_reactor
    from gateway.testing.ports import free_port

    plain, implicit = free_port(), free_port()
    tls = f'[tls]\ncert_file = "{certs.cert_file}"\nkey_file = "{certs.key_file}"\n'
    listeners = (
        f'[[listeners]]\nendpoint = "tcp:{plain}:interface=127.0.0.1"\nplaintext_auth = false\n'
        f'[[listeners]]\nendpoint = "tcp:{implicit}:interface=127.0.0.1"\ntls = "implicit"\n'
    )
    cfg = config.load(_config(tmp_path, "imap = []", tls + listeners))
    thread = ensure_reactor()
    top = thread.call(lambda: build_service(cfg, thread.reactor))
    thread.call(top.startService)
    try:
        with RawClient(plain) as client:
            assert b" STARTTLS LOGINDISABLED " in client.greeting()
            assert client.command("a", "STARTTLS").startswith(b"a OK")
            client.start_tls(tls_ca.client_context())
            assert client.command("b", "LOGIN alice pw").startswith(b"b OK")
        with RawClient(implicit) as client:
            client.start_tls(tls_ca.client_context())
            greeting = client.greeting()
            assert b"STARTTLS" not in greeting and b"AUTH=PLAIN" in greeting
            assert client.command("c", "LOGIN alice pw").startswith(b"c OK")
    finally:
        thread.call(top.stopService)
