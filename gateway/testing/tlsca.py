"""A throw-away private certificate authority for TLS tests (server certificates, client contexts,
and :class:`ServerTLSContext` for test servers such as the fake POP3 upstream).

Tests need certificates a real client will verify (RFC 2595 §2.4 asks POP3/IMAP clients to
check the server identity; RFC 6125 §6 says how: DNS names against subjectAltName dNSName,
IP literals against iPAddress). The CA here signs server certificates naming whatever the
test asks for, including a deliberately wrong name for negative tests. Keys are ECDSA P-256:
generating them takes microseconds, unlike RSA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import interfaces
from zope.interface import implementer

DEFAULT_SERVER_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1")
"""What a loopback test server is reached by: the DNS name and the IPv4 literal."""

VALIDITY = datetime.timedelta(days=30)
"""Lifetime of issued certificates; long enough for any test run, short enough to be obviously fake."""

CLOCK_SKEW = datetime.timedelta(days=1)
"""notBefore is backdated by this much so a slightly wrong clock does not fail verification."""

_CA_NAME = "popgate test CA"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write a file created with `mode` from the start (keys must never be world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def _general_name(name: str) -> x509.GeneralName:
    """An IP literal becomes iPAddress, anything else dNSName (RFC 5280 §4.2.1.6)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _stem_for(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name) or "server"


class CA:
    """A private CA: its certificate on disk (`cert_path`) and its signing key in memory.

    Create one with `make_ca`; then `issue` server certificates from it and give clients
    `cert_path` (or `client_context()`) as their only trust anchor.
    """

    def __init__(
        self,
        directory: Path,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
    ) -> None:
        self.directory = directory
        self._key = key
        self.certificate = certificate
        self.cert_pem: bytes = certificate.public_bytes(serialization.Encoding.PEM)
        self.cert_path: Path = directory / "ca.crt"
        _write(self.cert_path, self.cert_pem, 0o644)

    def issue(
        self,
        directory: str | os.PathLike[str],
        names: Sequence[str] = DEFAULT_SERVER_NAMES,
        *,
        stem: str | None = None,
    ) -> tuple[Path, Path]:
        """Issue a server certificate for `names`; return (cert_path, key_path) as PEM files.

        The first name is also the subject CN (for humans; verifiers use subjectAltName only,
        RFC 6125 §6.4.4). The certificate file holds the leaf only; clients trust `cert_path`.
        Pass a name the client will not use (e.g. "wrong.example") to provoke a verification
        failure.
        """
        if not names:
            raise ValueError("a server certificate needs at least one name")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stem = stem or _stem_for(names[0])
        key = _new_key()
        now = _now()
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        cert_path = directory / f"{stem}.crt"
        key_path = directory / f"{stem}.key"
        _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(key_path, _key_pem(key), 0o600)
        return cert_path, key_path

    def client_context(self) -> ssl.SSLContext:
        """A client SSLContext that trusts only this CA and checks host names (RFC 6125)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cert_path))
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        return context


def make_ca(directory: str | os.PathLike[str]) -> CA:
    """Create a fresh CA whose certificate is written to `directory/ca.crt`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAME)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return CA(directory, key, certificate)


@implementer(interfaces.IOpenSSLContextFactory)
class ServerTLSContext:
    """A server TLS context factory read from PEM files (certificate chain, private key),
    for ``tls_context``: Twisted accepts any object with ``getContext()``."""

    def __init__(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        from OpenSSL import SSL

        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.use_certificate_chain_file(os.fspath(cert_path))
        context.use_privatekey_file(os.fspath(key_path))
        context.check_privatekey()
        self._context = context

    def getContext(self) -> Any:
        return self._context
