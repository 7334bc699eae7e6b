"""What SORT and THREAD need of one message, computed once at ingest (RFC 5256, RFC 5957).

Keys are stored already mapped by ``i;ascii-casemap`` (RFC 4790 §9.2: ASCII a-z to A-Z,
every other octet as is), the collation RFC 5256 §3 names for every string key, so a store
orders them by plain octet comparison (SQLite ``BINARY`` over UTF-8 is octet order).

* base subject: RFC 5256 §2.1 steps 1-7 exactly, with the "reply or forward" bit THREAD
  REFERENCES step 5 needs (a subj-refwd, "(fwd)" trailer or "[fwd: ...]" wrapper removed);
* FROM/TO/CC: the addr-mailbox (local part) of the first address (RFC 5256 §3);
* DISPLAYFROM/DISPLAYTO: the decoded display name of the first address, or else its
  ``mailbox@host`` (RFC 5957 §3);
* Message-ID and the parent chain (References, else the first msg-id of In-Reply-To),
  msg-ids without their angle brackets (RFC 5256 §3 REFERENCES step 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.message.envelope import parse_addresses
from gateway.message.text import decoded_header, text_of_value

_WSP_RUN = re.compile(r"[ \t\r\n]+")
_MSG_ID = re.compile(r"<([^<>\s]*@[^<>\s]*)>")


_ASCII_UPPER = str.maketrans({c: c - 32 for c in range(0x61, 0x7B)})
"""``i;ascii-casemap``'s table: a-z to A-Z, nothing else."""


def ascii_casemap(text: str) -> str:
    """``i;ascii-casemap`` (RFC 4790 §9.2): only ASCII letters change case."""
    return text.translate(_ASCII_UPPER)


@dataclass(frozen=True)
class SortKeys:
    """One message's SORT/THREAD facts; string keys are already ``i;ascii-casemap``ped."""

    subject: str = ""  # base subject (RFC 5256 §2.1)
    reply_or_forward: bool = False  # RFC 5256 §2.1/§3 step 5: the subject said Re:/Fwd:
    from_: str = ""
    to: str = ""
    cc: str = ""
    display_from: str = ""
    display_to: str = ""
    message_id: str | None = None  # without < >; None when absent or invalid
    references: tuple[str, ...] = ()  # parents, oldest first (the last is the parent)


def _take_blob(s: str, i: int) -> int:
    """End of the subj-blob ``"[" *BLOBCHAR "]" *WSP`` starting at ``i``, or -1."""
    j = s.find("]", i + 1)
    if j < 0 or "[" in s[i + 1 : j]:
        return -1
    j += 1
    if j < len(s) and s[j] == " ":
        j += 1
    return j


def _leader(s: str, i: int) -> tuple[int, bool]:
    """Step 3: skip one subj-leader ``(*subj-blob subj-refwd) / WSP`` at ``i``.
    Returns the new start and whether a subj-refwd was removed."""
    if i < len(s) and s[i] == " ":
        return i + 1, False
    j = i
    while j < len(s) and s[j] == "[":
        j = _take_blob(s, j)
        if j < 0:
            return i, False
    word = s[j : j + 3].upper()
    if word.startswith("RE"):
        j += 2
    elif word == "FWD":
        j += 3
    elif word.startswith("FW"):
        j += 2
    else:
        return i, False
    if j < len(s) and s[j] == " ":
        j += 1
    if j < len(s) and s[j] == "[":
        j = _take_blob(s, j)
        if j < 0:
            return i, False
    if j < len(s) and s[j] == ":":
        return j + 1, True
    return i, False


def base_subject(raw: bytes | None) -> tuple[str, bool]:
    """RFC 5256 §2.1: the base subject of a raw Subject value, and whether it was a reply
    or forward. Not case-mapped (see :func:`ascii_casemap`)."""
    if raw is None:
        return "", False
    # (1) decode encoded words; tabs, continuations and runs of white space to one space
    s = _WSP_RUN.sub(" ", decoded_header(raw))
    refwd = False
    start = 0
    while True:
        # (2) remove trailing "(fwd)" and WSP, repeatedly
        end = len(s)
        while end > start:
            if s[end - 1] == " ":
                end -= 1
            elif end - 5 >= start and s[end - 5 : end].upper() == "(FWD)":
                end -= 5
                refwd = True
            else:
                break
        s = s[:end]
        while True:
            # (3) remove subj-leader prefixes
            new, removed = _leader(s, start)
            found = new != start
            refwd = refwd or removed
            start = new
            # (4) a leading subj-blob goes if something non-empty is left after it
            if start < len(s) and s[start] == "[":
                after = _take_blob(s, start)
                if after > 0 and after < len(s):
                    start = after
                    found = True
            # (5) repeat (3) and (4) until nothing matches
            if not found:
                break
        # (6) "[fwd:" subject "]": unwrap and repeat from (2)
        if s[start : start + 5].upper() == "[FWD:" and s.endswith("]") and len(s) - start >= 6:
            s = s[:-1]
            start += 5
            refwd = True
            continue
        return s[start:], refwd


def _first_address(raw: bytes | None) -> tuple[str, str, str]:
    """(decoded display name, mailbox, host) of the first address in a header value."""
    if raw is None:
        return "", "", ""
    for name, _adl, mailbox, host in parse_addresses(raw):
        if mailbox is None or host is None:
            continue  # a group start (no host) or end (all NIL)
        return (
            decoded_header(name).strip() if name else "",
            text_of_value(mailbox),
            text_of_value(host or b""),
        )
    return "", "", ""


def _display(raw: bytes | None) -> str:
    """RFC 5957 §3: the display name, or else the addr-spec, of the first address."""
    name, mailbox, host = _first_address(raw)
    if name:
        return name
    if not mailbox:
        return ""
    return f"{mailbox}@{host}" if host else mailbox


def msg_ids(raw: bytes | None) -> list[str]:
    """The msg-ids (``id-left@id-right``, brackets dropped) in a header value, in order."""
    if raw is None:
        return []
    text = text_of_value(raw)
    text = re.sub(r"\([^()]*\)", " ", text)  # comments between ids
    return _MSG_ID.findall(text)


def sort_keys(values: dict[str, bytes]) -> SortKeys:
    """The SORT/THREAD facts from the unfolded, still-encoded first field values."""
    subject, refwd = base_subject(values.get("subject"))
    ids = msg_ids(values.get("message-id"))
    refs = msg_ids(values.get("references"))
    if not refs:
        refs = msg_ids(values.get("in-reply-to"))[:1]
    return SortKeys(
        subject=ascii_casemap(subject),
        reply_or_forward=refwd,
        from_=ascii_casemap(_first_address(values.get("from"))[1]),
        to=ascii_casemap(_first_address(values.get("to"))[1]),
        cc=ascii_casemap(_first_address(values.get("cc"))[1]),
        display_from=ascii_casemap(_display(values.get("from"))),
        display_to=ascii_casemap(_display(values.get("to"))),
        message_id=ids[0] if ids else None,
        references=tuple(refs),
    )
