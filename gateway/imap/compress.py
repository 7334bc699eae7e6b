"""COMPRESS (RFC 4978 §3): the command's parsed form, its grammar and its handler.

Kept together in one module so that the shared tables (``grammar._COMMANDS``,
``states.COMMANDS``, the capability list) each gain one line. The stream codec itself is
:mod:`gateway.imap.deflate`; the server switches its transport to it right after the
tagged OK, when the session yields :class:`~gateway.imap.handler.StartCompress`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.imap.command import Command
from gateway.imap.handler import BadCommand, Handler, Refused, Session, ok
from gateway.imap.reader import Reader, show

MECHANISMS = frozenset({"DEFLATE"})
"""RFC 4978 §3 defines one (announced as ``COMPRESS=DEFLATE``, see capabilities.py)."""


@dataclass(frozen=True)
class Compress(Command):
    """``COMPRESS mechanism``; the mechanism upper-cased (RFC 4978 §5)."""

    mechanism: str = ""


def cmd_compress(r: Reader, tag: str, name: str, uid: bool) -> Command:
    """COMPRESS SP algorithm, RFC 4978 §5 (``algorithm = "DEFLATE"``, an atom)."""
    r.sp("a compression mechanism")
    mechanism = r.atom("a compression mechanism").decode("ascii").upper()
    r.finish()
    return Compress(tag=tag, name=name, mechanism=mechanism)


def compress(session: Session, cmd: Compress) -> Handler:
    """COMPRESS, RFC 4978 §3. State: authenticated or selected (``command-auth``).

    Only one COMPRESS per connection: a second one gets ``NO [COMPRESSIONACTIVE]``, which
    is also the answer when TLS compresses already (Python's ``ssl`` turns TLS compression
    off, CRIME, so that never happens here). The server compresses from the octet after
    the CRLF of the tagged OK, and reads compressed input from the next command on."""
    if session.compress_active:
        raise Refused("DEFLATE is already active", "COMPRESSIONACTIVE")
    if cmd.mechanism not in MECHANISMS:
        # RFC 4978 §3: "BAD - command unknown, invalid or unknown argument".
        raise BadCommand(f"unknown compression mechanism {show(cmd.mechanism.encode())}")
    session.begin_compress()
    yield from ()
    return ok("DEFLATE active")
