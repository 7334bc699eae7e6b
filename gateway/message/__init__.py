"""Reading RFC 5322/MIME messages: what IMAP FETCH and SEARCH need, computed once at ingest."""
