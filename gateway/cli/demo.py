"""``popgate demo``: the whole gateway on one machine with nothing to set up.

An embedded POP3 upstream (gateway.testing.fakepop3.FakePOP3Server, a real POP3 server on a
loopback port in this process) is seeded with generated, realistic mail; the gateway
fetches from it exactly as from a provider and serves IMAP on 127.0.0.1. A new message
arrives upstream every ``interval`` seconds so the user can watch it come in. The web page
(issue 18) is served on 127.0.0.1 too, with the demo user as its admin.
"""

from __future__ import annotations

import datetime
import random
from pathlib import Path

import structlog

from gateway.app import config as configmod
from gateway.app import logs
from gateway.security.passwords import hash_password
from gateway.testing import samplemail

log = structlog.get_logger(__name__)

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
UPSTREAM_USER = "demo@pop.example.net"
UPSTREAM_PASSWORD = "upstream-demo-password"
SEED_MESSAGES = 25
DEMO_POLL = "15s"
DEMO_WEB_PORT = 8025


def banner(port: int, state_dir: Path, interval: float, web_port: int = DEMO_WEB_PORT) -> str:
    return f"""
popgate demo is running.

  IMAP server : 127.0.0.1:{port}  (plain, loopback only)
  web page    : http://127.0.0.1:{web_port}/  (sign in with the same login)
  login       : {DEMO_USER} / {DEMO_PASSWORD}
  state       : {state_dir}  (delete it to start over)

Look with curl:
  curl -s imap://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{port}/ --list-only
  curl -s 'imap://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{port}/INBOX' -X 'FETCH 1:* (FLAGS ENVELOPE)'
  curl -s 'imap://{DEMO_USER}:{DEMO_PASSWORD}@127.0.0.1:{port}/INBOX;UID=1'

Or point a mail client at it (Thunderbird, mutt, ...):
  server 127.0.0.1, port {port}, connection security: none, password (normal),
  user name {DEMO_USER}, password {DEMO_PASSWORD}

A new message arrives upstream every {interval:g}s; the gateway polls every {DEMO_POLL}.
Press Ctrl-C to stop.
"""


def demo_config(
    state_dir: Path, port: int, upstream_port: int, web_port: int = DEMO_WEB_PORT
) -> configmod.Config:
    """The demo's config, validated by the same code as a real file."""
    data = {
        "server": {
            "state_dir": str(state_dir),
            "imap": [f"tcp:{port}:interface=127.0.0.1"],
            "web": [f"tcp:{web_port}:interface=127.0.0.1"],
            "admins": [DEMO_USER],
            "log_format": "console",
        },
        "users": {DEMO_USER: {"password": hash_password(DEMO_PASSWORD)}},
        "upstreams": [
            {
                "name": "demo-isp",
                "owner": DEMO_USER,
                "host": "127.0.0.1",
                "port": upstream_port,
                "tls": "none",
                "username": UPSTREAM_USER,
                "password": UPSTREAM_PASSWORD,
                "poll_interval": DEMO_POLL,
                "keep_on_server": True,
            }
        ],
    }
    return configmod.parse(data, "<demo>")


def run(
    state_dir: str = "demo-state",
    port: int = 1143,
    interval: float = 60.0,
    web_port: int = DEMO_WEB_PORT,
) -> int:
    from twisted.internet.task import LoopingCall

    from gateway.app.runner import run_reactor_with
    from gateway.app.service import build_service
    from gateway.testing.fakepop3 import FakePOP3Server

    logs.configure("info", "console")
    state = Path(state_dir).resolve()
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=SEED_MESSAGES)
    messages = samplemail.generate(SEED_MESSAGES, seed=2026, start=start)
    rng = random.Random()

    def build(reactor):
        upstream = FakePOP3Server(user=UPSTREAM_USER, password=UPSTREAM_PASSWORD)
        for i, raw in enumerate(messages):
            # stable UIDLs: a restarted demo finds them in its ledger and fetches nothing twice
            upstream.add_message(raw, uidl=f"demo-seed-{i:04d}")
        listening = reactor.listenTCP(0, upstream, interface="127.0.0.1")
        cfg = demo_config(state, port, listening.getHost().port, web_port)
        svc = build_service(cfg, reactor)

        def new_mail() -> None:
            now = datetime.datetime.now(datetime.UTC)
            raw = samplemail.make_message(rng.randrange(1_000_000), rng, now)
            uidl = f"demo-live-{now.strftime('%Y%m%d%H%M%S%f')}"
            upstream.add_message(raw, uidl=uidl)
            log.info("demo.new_upstream_message", uidl=uidl, size=len(raw))

        ticker = LoopingCall(new_mail)
        ticker.clock = reactor
        ticker.start(interval, now=False)
        reactor.addSystemEventTrigger("before", "shutdown", ticker.stop)
        reactor.addSystemEventTrigger("before", "shutdown", listening.stopListening)
        reactor.callLater(0, print, banner(port, state, interval, web_port), flush=True)
        return svc

    return run_reactor_with(build)
