"""POP3 errors say what happened (issue 20 item 13), against the fake upstream: a greeting
with no line end is a line-too-long error, not a closed connection; a listing over its line
bound says so, not "sent b''"."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import reactor as global_reactor

from gateway.pop3 import client as client_module
from gateway.pop3.errors import FetchError, UpstreamLineTooLong, UpstreamProtocolError
from gateway.pop3.fetcher import fetch_once
from gateway.pop3.framing import MAX_LINE_LENGTH
from gateway.pop3.upstream import Upstream
from gateway.store.sqlite import SQLiteStore
from gateway.testing import samplemail
from gateway.testing.fakepop3 import FakePOP3Server, Faults
from gateway.testing.reactor_thread import ReactorThread


def fetch_error(server: FakePOP3Server, tmp_path: Path) -> FetchError:
    rt = ReactorThread.shared(global_reactor)
    port = rt.call(server.listen, global_reactor)
    store = rt.call(SQLiteStore, tmp_path / "store.db")
    upstream = Upstream(
        name="isp",
        owner="alice",
        host="127.0.0.1",
        port=port.getHost().port,
        tls="none",
        username="u",
        password="p",
        timeout=10.0,
    )
    try:
        with pytest.raises(FetchError) as info:
            rt.call(fetch_once, upstream, store, reactor=global_reactor)
    finally:
        rt.call(port.stopListening)
        rt.call(store.close)
    return info.value


def test_a_greeting_without_a_line_end_is_a_line_too_long_error(tmp_path: Path) -> None:
    server = FakePOP3Server("u", "p", faults=Faults(endless_greeting=True))
    error = fetch_error(server, tmp_path)
    assert isinstance(error, UpstreamLineTooLong), error
    assert str(error) == (
        f"127.0.0.1 sent a line longer than {MAX_LINE_LENGTH} octets during greeting"
    )


def test_a_listing_over_its_line_bound_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(client_module, "MAX_LISTING_LINES", 3)
    server = FakePOP3Server("u", "p", messages=samplemail.generate(5, seed=2))
    error = fetch_error(server, tmp_path)
    assert isinstance(error, UpstreamProtocolError), error
    assert str(error) == "127.0.0.1 sent more than 3 lines in a UIDL listing"
