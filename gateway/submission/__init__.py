"""The SMTP submission relay (issue 15): one account per person, the message sent once,
the Sent copy filed by the server, and mail queued safely while a provider is down.

Layers (as for IMAP and ManageSieve, STYLE.md):

- :mod:`.parser` sans-I/O command lines and DATA bodies; :mod:`.session` the state
  machine and every reply (enhanced status codes); :mod:`.server` the one Twisted
  protocol for incoming connections (``submission`` with STARTTLS, RFC 6409;
  ``submissions`` with implicit TLS, RFC 8314).
- :mod:`.policy` (pure): routes, who may send as which address, limits, retry schedule.
- :mod:`.headers`, :mod:`.sent`, :mod:`.bounce` (pure): Bcc removal, Message-ID/Date,
  the Sent copy and its dedup rule, RFC 3464 bounces.
- :mod:`.accept` commits an accepted message (queue contract:
  :mod:`gateway.store.queue`), :mod:`.client` relays one message upstream, :mod:`.relay`
  is the service that drains the queue with retries, expiry and bounces.

Audit of ``twisted.mail.smtp`` (Twisted 26.10), the way TWISTED-NOTES.md audits the
POP3 client; each point was read in the source, and the ones marked "run" were driven
with a ``StringTransport``. The server side (:class:`ESMTP`) breaks too much of what the issue requires,
so, as for IMAP, popgate keeps Twisted's reactor, endpoints, TLS and ``startTLS`` and
writes the SMTP layer itself; the client side likewise (see :mod:`.client`).

Server (``SMTP``/``ESMTP``):

- Line limit: :class:`LineOnlyReceiver` with ``MAX_LENGTH`` 16384 on every line,
  DATA included. In DATA, ``lineLengthExceeded`` drops the message and switches back
  to COMMAND mode *while the client is still sending the body*, so the rest of the body
  is executed as SMTP commands (run: a body packet ``MAIL FROM:<x>`` /
  ``RCPT TO:<victim>`` after a 20,000-octet line got two ``250``): an injection. Here the parser reads DATA as octets up to ``CRLF.CRLF`` with no per-line
  limit, bounds the total (SIZE), and never leaves data mode early.
- End of data: only ``CRLF.CRLF`` (fine), but the body goes to ``IMessage.lineReceived``
  one line at a time and once *per recipient* (``validateTo`` returns one message
  object per RCPT): a relay wants one copy with N recipients. No size bound at all
  unless each ``IMessage`` counts. It also inserts a ``Received:`` header joined with
  bare LF and adds a blank line when the first body line has no colon (the message
  is altered).
- Timeouts: ``TimeoutMixin``, 600 s for everything; no distinct pre-login / DATA
  timeouts (RFC 5321 §4.5.3.2). Reset per line. Kept in spirit, on an injected clock.
- TLS: ``ext_STARTTLS`` starts TLS but keeps processing the lines already buffered
  from the plaintext packet (CVE-2011-0411 command injection), and does not reset
  the EHLO state (RFC 3207 §4.2). Here the parser is replaced at STARTTLS and the
  session forgets EHLO, AUTH and the transaction.
- AUTH: ``challengers`` is a dict of :class:`twisted.cred` ``IChallengeResponse``
  classes and login goes through ``portal.login`` with ``IMessageDelivery`` avatars:
  AUTH is advertised on every connection (no "only after TLS"), a failure answers 535
  at once (no penalty, no delay), AUTH is accepted in the middle of a transaction, and
  ``AUTH PLAIN =`` (the empty initial response, RFC 4954 §4) is mis-decoded. popgate
  needs the shared :class:`~gateway.security.auth.Authenticator` on ``run_blocking``
  and the shared :class:`~gateway.security.penalty.AuthPenalty` instead.
- SIZE, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES, SMTPUTF8: none advertised (run:
  the EHLO reply is the greeting line alone); MAIL
  parameters (``SIZE=``, ``BODY=``) are parsed into ``opts`` and ignored. No reply
  carries an enhanced status code.
- PIPELINING: commands are handled as lines arrive; when ``validateFrom`` answers with
  a Deferred, the pipelined RCPT is processed before MAIL finished and refused with
  "503 Must have sender before recipient" (run; the same flaw as IMAP4Server's SELECT).
  Here one command runs at a time and later input waits in the parser.
- A non-ASCII command verb raises in ``nativeString`` (connection dropped with a
  logged traceback).

Client (``SMTPClient``/``ESMTPClient``):

- ``transformChunk`` turns every LF into CRLF (run: ``a\\r\\n`` becomes ``a\\r\\r\\n``) and
  dot-stuffs per 16 KiB chunk, missing a "." at the start of a chunk and on the first
  line: the upstream would end the message early.
- ``MAIL FROM`` never carries ``SIZE=`` or ``BODY=8BITMIME``; RCPT one at a time.
- ``timeout`` None by default; ``requireTransportSecurity`` False by default (logs in
  in clear when STARTTLS is missing); STARTTLS verification depends on the context
  passed. The PLAIN authenticator sends an authzid equal to the user (harmless).
- Good and reused in spirit: multi-line reply assembly, re-EHLO after STARTTLS.

What popgate does not offer, and why: SMTPUTF8 (RFC 6531) is advertised only when it
can be relayed faithfully, which needs every upstream to offer it at accept time; it
is not offered, so a non-ASCII envelope address is refused with 553 and the client
falls back. DSN (RFC 3461) and CHUNKING are not offered. 8BITMIME is offered: an 8-bit
message whose upstream lacks 8BITMIME bounces (5.6.3) rather than being rewritten.
"""
