"""What changes on the wire once a client has sent ``ENABLE IMAP4rev2`` (RFC 9051).

popgate speaks IMAP4rev1 (RFC 3501) to every client and announces IMAP4rev2 next to it
(when its prerequisites are there: :data:`gateway.imap.capabilities.REV2_NEEDS`). A
client that enables IMAP4rev2 (RFC 9051 §6.3.1) sees every response in the RFC 9051
form from then on. RFC 9051 Appendix E, item by item, as it applies to popgate:

* \\Recent is gone (E.6): never in FLAGS of FETCH, SELECT's FLAGS or PERMANENTFLAGS, no
  ``* n RECENT`` (SELECT, EXAMINE, the catch-up after commands, IDLE), and ``STATUS
  (RECENT)`` is not a rev2 status item, so it is BAD (§6.3.11 grammar); a SEARCH
  ``RECENT``/``NEW`` key still parses and finds nothing new for this client.
* SEARCH answers with ESEARCH (E.3, §7.3.4): ``* ESEARCH (TAG "t") [UID] ALL set``, the
  form of ``RETURN (ALL)``; ``* SEARCH`` is never sent.
* SELECT/EXAMINE (§6.3.2): no ``[UNSEEN n]`` response code (E.11), and a ``* LIST``
  response with the mailbox's name and attributes.
* LIST (§6.3.9, E.4): a name that does not exist but has children is ``\\NonExistent``
  (which implies ``\\Noselect``), also for the plain form of LIST.
* STATUS DELETED (§6.3.11): the number of messages with \\Deleted.
* Mailbox names are UTF-8 (E.1, §5.1) — as after ``ENABLE UTF8=ACCEPT``, so only where
  the parser can honour it (a prerequisite of the announcement).
* Parts that other modules provide and that the announcement waits for: FETCH BINARY
  (RFC 3516, E.9), SEARCHRES ``$`` (RFC 5182), LITERAL- (LITERAL+ is a superset, RFC 7888).
* Unchanged, because popgate already did it for rev1 clients: UIDPLUS, MOVE, NAMESPACE,
  UNSELECT, ENABLE, IDLE, SASL-IR, LIST-EXTENDED and LIST-STATUS with CHILDINFO,
  SPECIAL-USE, STATUS=SIZE, the RFC 5530 response codes, ``* OK [CLOSED]``; LSUB and
  CHECK (deprecated in rev2, E.7 and E.8) keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.imap.capabilities import IMAP4REV2

if TYPE_CHECKING:
    from gateway.imap.handler import Session

ENABLE_KEY = IMAP4REV2.upper()
"""How IMAP4rev2 is kept among the session's enabled capabilities (upper case)."""

REV1_ONLY_STATUS_ITEMS = frozenset(("RECENT",))
"""RFC 3501 status items RFC 9051 §6.3.11 dropped."""


def active(session: Session) -> bool:
    """Whether this client enabled IMAP4rev2 (RFC 9051 §6.3.1)."""
    return ENABLE_KEY in session.enabled
