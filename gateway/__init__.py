"""popgate: a POP3-to-IMAP gateway. The package tree is the architecture map.

Each package owns one concern and may import only the packages listed after it (and the
standard library and third-party libraries); ``tests/test_architecture.py`` fails when an
import breaks this map, when modules import each other in a cycle, or when anything in
``gateway/`` or ``bench/`` imports ``tests/``. Imports only run down the list.

- ``core``: the shared vocabulary (search criteria, sequence sets, flags, host rules). Imports nothing.
- ``message``: reading RFC 5322/MIME messages (ENVELOPE, BODYSTRUCTURE, search text). core.
- ``store``: the storage contract and its backends (SQLite, PostgreSQL, memory). core, message.
- ``sieve``: the Sieve language (RFC 5228 and extensions): parser, validator, interpreter. Pure;
  imports nothing else from ``gateway``.
- ``access``: per-user views of the store: households (shared trees, private \\Seen), quotas,
  Sieve at ingest (the owner's script routing each fetched message). core, store, sieve.
- ``security``: passwords, the authenticator, login penalties, TLS contexts. core.
- ``serving``: what the servers' Twisted protocols share: the command driver (a session's
  generator handlers stepped one at a time with backpressure, resumed after blocking calls
  under the login limits, the per-source cap, the inactivity timer) and command steps on a
  store thread for a store that does not run inline. security.
- ``imap``: the IMAP server: sans-I/O parser, session and handlers, one Twisted protocol.
  core, message, store, access, security, serving.
- ``oauth``: OAuth 2.0 for upstreams: provider presets, token file, device login (RFC 8628),
  refresh (RFC 6749 §6) over treq. core, security.
- ``pop3``: the POP3 side: sync planning (pure), client, SASL, fetcher, poller, failure
  notices. core, message, store, access, security, oauth. ``imap`` and ``pop3`` never import
  each other.
- ``submission``: the SMTP submission relay (RFC 6409/8314): sans-I/O parser and session,
  sender policy, Twisted server, relay client and queue service, bounces, Sent copies.
  core, message, store, access, security, serving.
- ``managesieve``: the ManageSieve server (RFC 5804): sans-I/O parser, session, Twisted protocol.
  core, store, security, serving (and the Sieve language, injected as a checker).
- ``web``: the household's status page (twisted.web): sessions, sign-in, visibility, SVG
  pictures, the history recorder. core, store, access, security; the gateway's status,
  "fetch now" and the rest are injected.
- ``app``: running a gateway: config, storage selection, service wiring, reload, logs,
  metrics, the control socket, status, backup, user admin, UIDL import. Everything above.
- ``testing``: fakes, drivers and real-peer harnesses (fake POP3 server, the IMAP drivers over
  a socket and sans-I/O, the cheap test authenticator, sample mail, Dovecot, test CA), used
  by tests, bench and the demo. Everything above.
- ``cli``: the ``popgate`` command, one module per command group. Everything above.
"""

_FOUNDATION = frozenset({"core", "message", "store", "access", "security"})
_SERVERS = frozenset({"serving", "imap", "pop3", "submission", "managesieve", "sieve", "web"})

ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "message": frozenset({"core"}),
    "store": frozenset({"core", "message"}),
    "access": frozenset({"core", "store", "sieve"}),
    "security": frozenset({"core"}),
    "sieve": frozenset(),
    "oauth": frozenset({"core", "security"}),
    "serving": frozenset({"security"}),
    "imap": _FOUNDATION | {"serving"},
    "pop3": _FOUNDATION | {"oauth"},
    "submission": _FOUNDATION | {"serving"},
    "managesieve": frozenset({"core", "store", "security", "serving"}),
    "web": frozenset({"core", "store", "access", "security"}),
    "app": _FOUNDATION | _SERVERS | {"oauth"},
    "testing": _FOUNDATION | _SERVERS | {"oauth", "app"},
    "cli": _FOUNDATION | _SERVERS | {"oauth", "app", "testing"},
}
"""Which ``gateway`` packages each package may import (see the map above)."""
