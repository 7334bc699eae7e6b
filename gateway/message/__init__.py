"""Reading RFC 5322/MIME messages: what IMAP FETCH and SEARCH need, computed once at ingest.

Import each name from the module that owns it (there is no re-export here):

- ``analysis``: :class:`Analysis` and :func:`analyze`, the one entry point the store calls.
- ``sections``: :func:`section`, cutting ``BODY[section]`` out of the stored bytes by offset.
- ``structure``: the MIME entity tree, BODY/BODYSTRUCTURE and the JSON part map.
- ``envelope``: RFC 5322 address lists and the IMAP ENVELOPE.
- ``params``: Content-Type style values and RFC 2231 parameters.
- ``fields``: the header/body split and header fields on byte offsets.
- ``text``: decoding for SEARCH (RFC 2047 words, transfer encodings, charsets, Date:).
- ``wire``: the IMAP nstring form the precomputed wire values use.
"""
