"""Tests for gateway.imap.mutf7, the RFC 3501 §5.1.3 modified UTF-7 mailbox-name codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.mutf7 import decode, encode

VECTORS = [
    ("INBOX", b"INBOX"),
    ("", b""),
    ("&", b"&-"),
    ("a&b&&", b"a&-b&-&-"),
    # RFC 3501 §5.1.3 example
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("Entw\u00fcrfe", b"Entw&APw-rfe"),
    ("\u00e9t\u00e9", b"&AOk-t&AOk-"),
    ("Gel\u00f6schte Objekte", b"Gel&APY-schte Objekte"),
    ("\U0001f600", b"&2D3eAA-"),  # outside the BMP: a UTF-16 surrogate pair
    ("tab\there", b"tab&AAk-here"),  # control characters are not printable ASCII
    ("\x7f", b"&AH8-"),
    ("\u00e9&", b"&AOk-&-"),  # an encoded run next to "&-" is still canonical
]


@pytest.mark.parametrize("text,wire", VECTORS)
def test_known_names_encode_and_decode_both_ways(text, wire):
    assert encode(text) == wire
    assert decode(wire) == text


INVALID = [
    (b"caf\xc3\xa9", "8-bit octets are not modified UTF-7"),
    (b"a\x01b", "control octets"),
    (b"&", "unterminated shift"),
    (b"&AOk", "shift without its '-'"),
    (b"&AO*-", "a character outside modified base64"),
    (b"&A-", "base64 of a length that holds no whole octet"),
    (b"&AA-", "one octet: not a UTF-16 code unit"),
    (b"&AGE-", "printable ASCII 'a' encoded in base64"),
    (b"&ACY-", "'&' encoded in base64 instead of &-"),
    (b"&AOk-&AOk-", "two shifted runs back to back"),
    (b"&AOl-", "non-zero padding bits"),
    (b"&2D0-", "an unpaired high surrogate"),
    (b"&3gA-", "an unpaired low surrogate"),
    (b"&AOk/-", "'/' instead of ','"),
    (b"&AOk=-", "base64 padding"),
]


@pytest.mark.parametrize("wire,why", INVALID, ids=[w for _, w in INVALID])
def test_invalid_or_non_canonical_input_raises_value_error(wire, why):
    with pytest.raises(ValueError):
        decode(wire)


def test_encoding_a_lone_surrogate_raises_value_error():
    with pytest.raises(ValueError):
        encode("bad\ud800")


no_surrogates = st.text(st.characters(blacklist_categories=("Cs",)))


@settings(max_examples=500)
@given(no_surrogates)
def test_decode_inverts_encode_and_the_wire_form_is_printable_ascii(name):
    wire = encode(name)
    assert all(0x20 <= b <= 0x7E for b in wire)
    assert decode(wire) == name


@settings(max_examples=500)
@given(st.binary(max_size=24) | st.from_regex(rb"[A-Za-z&,+\-]{0,16}", fullmatch=True))
def test_any_bytes_decode_only_if_they_are_the_one_canonical_spelling(wire):
    """decode never fails in any other way than ValueError, and whatever it accepts is
    exactly what encode produces for the result: one spelling per name."""
    try:
        name = decode(wire)
    except ValueError:
        return
    assert encode(name) == wire
