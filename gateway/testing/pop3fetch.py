"""A fetch from a fake POP3 upstream into a real store, driven from a blocking test thread.

:class:`FetchHarness` pairs one :class:`gateway.testing.fakepop3.FakePOP3Server` on
127.0.0.1:0 with one :class:`SQLiteStore` (or a store the test gives), and runs
:func:`gateway.pop3.fetcher.fetch_once` against them on the reactor thread
(:class:`ReactorThread`), waiting for the server to go idle after each pass so the test
reads a settled state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.pop3.errors import FetchError
from gateway.pop3.fetcher import FetchResult, fetch_once
from gateway.pop3.upstream import Upstream
from gateway.store.interfaces import Ledger, LedgerEntry, MailboxNotFound
from gateway.store.runner import StoreRunner
from gateway.store.sqlite import SQLiteStore
from gateway.testing.fakepop3 import FakePOP3Server
from gateway.testing.reactor_thread import ReactorThread

USER, PASSWORD = "carol@isp.example.net", "s3cret pass"
"""The upstream account the fake server accepts."""
OWNER = "alice"
"""The local user the upstream delivers to."""


class FetchHarness:
    """One FakePOP3Server on 127.0.0.1:0 and one SQLiteStore, driven from the test thread."""

    def __init__(
        self,
        rt: ReactorThread,
        directory: Path,
        *,
        store: Any = None,
        runner: StoreRunner | None = None,
        **server_kw: Any,
    ) -> None:
        self.rt = rt
        self.runner = runner
        """Where the fetcher's store calls run (``None``: the fetcher's default, inline)."""
        self.reactor = rt.reactor
        self.server = FakePOP3Server(USER, PASSWORD, **server_kw)
        self.own_store = store is None
        self.store = store if store is not None else rt.call(SQLiteStore, directory / "store.db")
        self.port: Any = None

    def listen(self, *, implicit_tls: bool = False) -> FetchHarness:
        self.port = self.rt.call(self.server.listen, self.reactor, implicit_tls=implicit_tls)
        return self

    def upstream(self, **overrides: Any) -> Upstream:
        settings: dict[str, Any] = dict(
            name="isp",
            owner=OWNER,
            host="127.0.0.1",
            port=self.port.getHost().port,
            tls="none",
            username=USER,
            password=PASSWORD,
            timeout=10.0,
        )
        settings.update(overrides)
        return Upstream(**settings)

    def fetch(
        self, progress: Any = None, *, ledger: Ledger | None = None, **overrides: Any
    ) -> FetchResult:
        """One pass into the store (or into ``ledger``, a wrapper around it)."""
        try:
            return self.rt.call(
                fetch_once,
                self.upstream(**overrides),
                ledger if ledger is not None else self.store,
                reactor=self.reactor,
                progress=progress,
                runner=self.runner,
            )
        finally:
            self.rt.call(self.server.when_idle)

    def fetch_error(self, **overrides: Any) -> FetchError:
        """The FetchError a pass fails with; a pass that succeeds fails the test."""
        try:
            result = self.fetch(**overrides)
        except FetchError as error:
            return error
        raise AssertionError(f"the fetch was expected to fail but gave {result!r}")

    def inbox(self) -> list[bytes]:
        def read() -> list[bytes]:
            try:
                box = self.store.get_mailbox(OWNER, "INBOX")
            except MailboxNotFound:
                return []
            return [
                self.store.message_bytes(box.id, r.uid) for r in self.store.message_rows(box.id)
            ]

        return self.rt.call(read)

    def ledger(self, name: str = "isp") -> dict[str, LedgerEntry]:
        return {e.uidl: e for e in self.rt.call(self.store.ledger_entries, name)}

    def verbs(self, session: int | None = None) -> list[str]:
        return [c.verb for c in self.server.commands if session is None or c.session == session]

    def close(self) -> None:
        if self.port is not None:
            self.rt.call(self.port.stopListening)
        if self.own_store:
            self.rt.call(self.store.close)
