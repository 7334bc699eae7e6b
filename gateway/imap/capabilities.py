"""The CAPABILITY list popgate announces, computed from the connection's situation.

RFC 3501 §6.1.1 and §7.2.1: the list may differ before and after login and before and
after STARTTLS, so it is a function of those facts rather than a constant. Only what
the session core and the command handlers really implement is listed here.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVER_NAME = "popgate"
"""How the server names itself in the greeting and the ID response (RFC 2971)."""

BASE = "IMAP4rev1"

EXTENSIONS: tuple[str, ...] = (
    "LITERAL+",  # RFC 7888: non-synchronizing literals (the parser accepts {n+})
    "SASL-IR",  # RFC 4959: AUTHENTICATE with an initial response
    "ID",  # RFC 2971
    "ENABLE",  # RFC 5161
    "IDLE",  # RFC 2177
    "NAMESPACE",  # RFC 2342
    "UNSELECT",  # RFC 3691
    "UIDPLUS",  # RFC 4315: APPENDUID, COPYUID, UID EXPUNGE
    "MOVE",  # RFC 6851
    "MULTIAPPEND",  # RFC 3502
    "CHILDREN",  # RFC 3348: \HasChildren / \HasNoChildren
    "SPECIAL-USE",  # RFC 6154
    "CREATE-SPECIAL-USE",  # RFC 6154 §3
    "LIST-EXTENDED",  # RFC 5258
    "LIST-STATUS",  # RFC 5819
    "CONDSTORE",  # RFC 7162 §3.1
    "QRESYNC",  # RFC 7162 §3.2
    "ESEARCH",  # RFC 4731
    "STATUS=SIZE",  # RFC 8438
    "QUOTA",  # RFC 9208: GETQUOTA, GETQUOTAROOT, NO [OVERQUOTA] (limits come from the config)
    "QUOTA=RES-STORAGE",  # RFC 9208 §5.1
    "ACL",  # RFC 4314, read side: see gateway/imap/acl.py
    "RIGHTS=texk",  # RFC 4314 §2.1
    "LIST-MYRIGHTS",  # RFC 8440
    "NOTIFY",  # RFC 5465: see gateway/imap/notify.py
    "BINARY",  # RFC 3516: FETCH BINARY[...], BINARY.SIZE, literal8 in APPEND
    "SEARCHRES",  # RFC 5182: SEARCH RETURN (SAVE) and "$"
    "CATENATE",  # RFC 4469: APPEND ... CATENATE (TEXT/URL ...)
    "WITHIN",  # RFC 5032: SEARCH OLDER / YOUNGER
    "SAVEDATE",  # RFC 8514: FETCH SAVEDATE, SEARCH SAVED*
    "PREVIEW",  # RFC 8970: FETCH PREVIEW
    "OBJECTID",  # RFC 8474: MAILBOXID, EMAILID, THREADID (gateway/store/objectid.py)
    "SORT",  # RFC 5256 (gateway/imap/sorting.py)
    "SORT=DISPLAY",  # RFC 5957
    "ESORT",  # RFC 5267 §3
    "CONTEXT=SEARCH",  # RFC 5267 §4: UPDATE, CANCELUPDATE, PARTIAL (gateway/imap/contexts.py)
    "CONTEXT=SORT",  # RFC 5267 §4, for SORT too
    "THREAD=ORDEREDSUBJECT",  # RFC 5256 §3
    "THREAD=REFERENCES",  # RFC 5256 §3
)
"""Extensions available in every state (clients may look before logging in)."""

UTF8_ACCEPT = "UTF8=ACCEPT"  # RFC 6855, announced only if the parser can honour it
IMAP4REV2 = "IMAP4rev2"  # RFC 9051, next to IMAP4rev1; also an ENABLE argument (§6.3.1)
REV2_NEEDS: tuple[str, ...] = ("BINARY", "SEARCHRES", UTF8_ACCEPT)
"""What RFC 9051 makes part of IMAP4rev2 and other modules add (BINARY §6.4.5, SEARCHRES
§6.4.4.1, UTF-8 mailbox names §5.1): IMAP4rev2 is announced only when all of them are, so
it lights up the day the last one lands; what popgate changes itself once a client has
enabled it is in :mod:`gateway.imap.rev2`."""
CONDSTORE = "CONDSTORE"  # RFC 7162 §3.1, also as an ENABLE argument
QRESYNC = "QRESYNC"  # RFC 7162 §3.2, also as an ENABLE argument
COMPRESS_DEFLATE = "COMPRESS=DEFLATE"  # RFC 4978 §3, once logged in and not yet compressed

AUTH_MECHANISMS: tuple[str, ...] = ("PLAIN",)
"""SASL mechanisms (RFC 4616 PLAIN); the only ones ``session`` implements."""


@dataclass(frozen=True)
class Situation:
    """The facts the list depends on."""

    authenticated: bool
    tls_active: bool
    tls_available: bool  # the listener has a TLS context, so STARTTLS can work
    plaintext_auth_allowed: bool  # the operator permits passwords over this connection
    utf8_accept: bool = False
    compress_active: bool = False  # RFC 4978: COMPRESS=DEFLATE is on already


def login_permitted(situation: Situation) -> bool:
    """RFC 3501 §6.2.3 / §11.1: passwords may be sent only over TLS or where the
    operator explicitly allows plaintext (e.g. a loopback listener)."""
    return situation.tls_active or situation.plaintext_auth_allowed


def capabilities(situation: Situation) -> list[str]:
    """The capability names, in announcement order.

    Before login: STARTTLS when it can still be done (RFC 3501 §6.2.1), LOGINDISABLED
    and no AUTH= mechanism when passwords are refused on this connection (§6.2.3,
    RFC 9051 §7.2.2), AUTH=PLAIN otherwise. After login neither is useful any more;
    COMPRESS=DEFLATE appears then (RFC 4978 §3: COMPRESS is a ``command-auth``), until
    compression is on.
    """
    caps = [BASE]
    if not situation.authenticated:
        if situation.tls_available and not situation.tls_active:
            caps.append("STARTTLS")
        if login_permitted(situation):
            caps.extend(f"AUTH={m}" for m in AUTH_MECHANISMS)
        else:
            caps.append("LOGINDISABLED")
    caps.extend(EXTENSIONS)
    if situation.utf8_accept:
        caps.append(UTF8_ACCEPT)
    if situation.authenticated and not situation.compress_active:
        caps.append(COMPRESS_DEFLATE)  # RFC 4978, for command-auth (after login)
    if all(need in caps for need in REV2_NEEDS):
        caps.insert(1, IMAP4REV2)
    return caps


def capability_text(situation: Situation) -> str:
    """The space-separated list as it follows ``CAPABILITY`` on the wire."""
    return " ".join(capabilities(situation))
