"""Fakes, drivers and real-peer harnesses shipped with the product, used by tests, bench and
demo alike: the fake POP3 server, the IMAP drivers (a socket client and server in
``imapclient``, the sans-I/O session and wired protocol in ``imapsession``), the cheap test
authenticator (``auth``), message builders, LIST work counting (``listwork``), Dovecot and
the test CA."""
