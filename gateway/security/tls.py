"""Server-side TLS for the IMAP listeners: one context built from the configured certificate
and key files, used for STARTTLS (RFC 3501 §6.2.1) and implicit-TLS IMAPS listeners
(RFC 8314 §3.3), and swapped atomically when the files are reloaded (SIGHUP); and the
client-side options that verify an upstream server (:func:`client_tls_options`).

Policy (RFC 8314 §4.1, RFC 9325 §4): TLS 1.2 or later, only AEAD cipher suites with
forward secrecy for TLS 1.2 (TLS 1.3's suites are all of that kind), no compression
(CRIME), no renegotiation, the server's cipher order. A reload builds a complete new
context first; if the files are broken the old context stays and the error is
reported, so a bad certificate never takes the listeners down. Connections already
open keep the context they were made with; new ones get the new certificate.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory, IOpenSSLServerConnectionCreator
from zope.interface import implementer

log = structlog.get_logger(__name__)

MIN_VERSIONS: dict[str, int] = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
"""Accepted values of ``[tls] min_version``; nothing older than TLS 1.2 (RFC 8996)."""

TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
"""TLS 1.2 suites: ephemeral ECDH key exchange and AEAD ciphers only (RFC 9325 §4.2)."""

_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_SINGLE_ECDH_USE
    | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
)


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message names the file and the cause."""


@dataclass(frozen=True)
class TLSFiles:
    """Where the certificate chain and its private key live (PEM)."""

    cert_file: str
    key_file: str
    min_version: str = "1.2"


def key_file_problem(path: str) -> str | None:
    """Why a private key file is unsafe to use, or None: it must not be readable by
    others (group-readable is allowed for the usual ``ssl-cert`` group set-up)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"{path}: cannot read: {e.strerror}"
    if mode & stat.S_IRWXO:
        return (
            f"{path} holds a private key and is mode {stat.S_IMODE(mode):04o}; "
            "make it 0600 or 0640 (chmod 600)"
        )
    return None


def build_context(files: TLSFiles) -> SSL.Context:
    """A server context from the files, or :class:`TLSConfigError` saying what is wrong."""
    if files.min_version not in MIN_VERSIONS:
        raise TLSConfigError(f"min_version must be one of {', '.join(MIN_VERSIONS)}")
    problem = key_file_problem(files.key_file)
    if problem is not None:
        raise TLSConfigError(problem)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(MIN_VERSIONS[files.min_version])
    context.set_options(_OPTIONS)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    try:
        context.use_certificate_chain_file(files.cert_file)
    except (SSL.Error, OSError) as e:
        raise TLSConfigError(
            f"{files.cert_file}: not a usable PEM certificate chain ({e})"
        ) from None
    mismatch = TLSConfigError(
        f"{files.key_file} is not the private key of the certificate in {files.cert_file}"
    )
    try:
        context.use_privatekey_file(files.key_file)
    except (SSL.Error, OSError) as e:
        if "mismatch" in str(e):
            raise mismatch from None
        raise TLSConfigError(f"{files.key_file}: not a usable PEM private key ({e})") from None
    try:
        context.check_privatekey()
    except SSL.Error:
        raise mismatch from None
    return context


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class ServerTLS:
    """The TLS connection creator handed to STARTTLS and to IMAPS listeners.

    Each new connection takes the context current at that moment
    (``serverConnectionForTLS``), so :meth:`reload` affects only connections made
    afterwards. ``getContext`` serves APIs that want an old-style context factory.
    """

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._context = build_context(files)
        self.generation = 1
        """Bumped by every successful reload (tests and logs tell contexts apart)."""

    def getContext(self) -> SSL.Context:
        return self._context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def reload(self) -> bool:
        """Re-read the files. True if the new certificate is in use; on failure the old
        context stays, the problem is logged, and False is returned."""
        try:
            context = build_context(self.files)
        except TLSConfigError as e:
            log.error("tls.reload_failed", cert_file=self.files.cert_file, error=str(e))
            return False
        self._context = context
        self.generation += 1
        log.info("tls.reloaded", cert_file=self.files.cert_file, generation=self.generation)
        return True


# ---- client side: verifying an upstream server ----------------------------------------

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


def client_trust_root(ca_file: str | None) -> Any:
    """Trust anchors for verifying an upstream: every PEM certificate in ``ca_file``,
    or the system store when None. :class:`TLSConfigError` names an unusable file."""
    if ca_file is None:
        return ssl.platformTrust()
    try:
        pem = Path(ca_file).read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read ca_file {ca_file}: {e.strerror}") from None
    blocks = _PEM_CERT.findall(pem)
    if not blocks:
        raise TLSConfigError(f"ca_file {ca_file} holds no PEM certificate")
    try:
        certificates = [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise TLSConfigError(f"ca_file {ca_file}: bad certificate: {e}") from None
    return ssl.trustRootFromCertificates(certificates)


def client_tls_options(host: str, ca_file: str | None) -> Any:
    """Client TLS options verifying the chain against :func:`client_trust_root` and the
    certificate against ``host`` (DNS name or IP literal, RFC 6125 §6)."""
    return ssl.optionsForClientTLS(host, trustRoot=client_trust_root(ca_file))
