"""Taking over from fetchmail/getmail (gateway.app.migrate): their state files parsed (formats as
written by Debian's fetchmail 6.4 and getmail6 6.18, observed against Dovecot), the UIDLs
recorded as "imported", and a following fetch pass leaving exactly those messages alone."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from twisted.internet import reactor as global_reactor

from gateway.app.config import Upstream
from gateway.app.migrate import StateFileError, parse_state_file, run_import
from gateway.cli import main as cli
from gateway.pop3.fetcher import fetch_once
from gateway.security.passwords import hash_password
from gateway.store.sqlite import SQLiteStore
from gateway.testing.fakepop3 import FakePOP3Server

# Exactly what fetchmail wrote for user alice on 127.0.0.1 (three messages, keep mode).
FETCHIDS = (
    b"alice@127.0.0.1 000000016b0231c8\n"
    b"alice@127.0.0.1 000000026b0231c8\n"
    b"alice@127.0.0.1 000000036b0231c8\n"
)
# Exactly what getmail wrote into oldmail-127.0.0.1-32849-alice.
OLDMAIL = (
    b"000000036b0231cd\x001795305933\n"
    b"000000016b0231cd\x001795305933\n"
    b"000000026b0231cd\x001795305933\n"
)


def test_fetchmail_fetchids_lines_are_account_then_uidl() -> None:
    state = parse_state_file(FETCHIDS)
    assert state.kind == "fetchmail"
    assert state.uidls == ("000000016b0231c8", "000000026b0231c8", "000000036b0231c8")
    assert state.accounts == ("alice@127.0.0.1",) and state.malformed == 0


def test_fetchmail_user_names_may_contain_at_signs() -> None:
    state = parse_state_file(b"carol@isp.example@pop.isp.example UID-1\n")
    assert state.accounts == ("carol@isp.example@pop.isp.example",)
    assert state.uidls == ("UID-1",)


def test_a_fetchmail_file_with_several_accounts_needs_account() -> None:
    data = FETCHIDS + b"bob@pop.example.net b-1\nbob@pop.example.net b-2\n"
    with pytest.raises(StateFileError, match="several accounts .* --account"):
        parse_state_file(data)
    assert parse_state_file(data, "bob@pop.example.net").uidls == ("b-1", "b-2")
    with pytest.raises(StateFileError, match="no lines for account 'x@y'"):
        parse_state_file(data, "x@y")


def test_getmail_oldmail_lines_are_uidl_nul_timestamp() -> None:
    state = parse_state_file(OLDMAIL)
    assert state.kind == "getmail"
    assert state.uidls == ("000000036b0231cd", "000000016b0231cd", "000000026b0231cd")


def test_malformed_lines_are_counted_not_guessed() -> None:
    fetchmail = parse_state_file(b"alice@h ok-1\nonlyonetoken\n\nalice@h bad\xff\n")
    assert fetchmail.uidls == ("ok-1",) and fetchmail.malformed == 2
    getmail = parse_state_file(b"u1\x001\nno-nul-here\n\x001\n")
    assert getmail.uidls == ("u1",) and getmail.malformed == 2


@pytest.fixture
def setup(tmp_path: Path):
    state = tmp_path / "state"
    config = tmp_path / "popgate.toml"
    config.write_text(
        f'[server]\nstate_dir = "{state}"\n\n'
        f'[users.alice]\npassword = "{hash_password("pw")}"\n\n'
        '[[upstreams]]\nname = "isp"\nowner = "alice"\nhost = "127.0.0.1"\ntls = "none"\n'
        'username = "u"\npassword = "p"\n'
    )
    os.chmod(config, 0o600)
    return config, state


def test_import_records_uidls_as_imported_and_says_they_are_not_in_the_store(
    setup, tmp_path
) -> None:
    config, state = setup
    (tmp_path / "fetchids").write_bytes(FETCHIDS)
    out, err = io.StringIO(), io.StringIO()
    assert run_import(str(config), "isp", str(tmp_path / "fetchids"), out=out, err=err) == 0
    assert "3 UIDLs recorded as already fetched from fetchmail" in out.getvalue()
    assert "not in popgate's store" in out.getvalue()
    store = SQLiteStore(state / "popgate.sqlite3")
    try:
        entries = store.ledger_entries("isp")
    finally:
        store.close()
    assert {e.uidl: e.state for e in entries} == {
        "000000016b0231c8": "imported",
        "000000026b0231c8": "imported",
        "000000036b0231c8": "imported",
    }
    again = io.StringIO()
    assert run_import(str(config), "isp", str(tmp_path / "fetchids"), out=again, err=err) == 0
    assert "0 UIDLs recorded" in again.getvalue() and "3 were already known" in again.getvalue()


def test_import_refuses_an_unknown_upstream_or_unreadable_file(setup, tmp_path, capsys) -> None:
    config, _state = setup
    (tmp_path / "f").write_bytes(FETCHIDS)
    assert cli.main(["import-uidls", "--config", str(config), "-u", "nope", str(tmp_path / "f")])
    assert "no upstream named 'nope'" in capsys.readouterr().err
    assert cli.main(["import-uidls", "--config", str(config), "-u", "isp", str(tmp_path / "x")])
    assert "cannot read" in capsys.readouterr().err


def test_after_import_a_fetch_takes_only_the_messages_the_old_fetcher_never_saw(
    rt, setup, tmp_path
) -> None:
    config, state = setup
    server = FakePOP3Server(
        "u",
        "p",
        messages=[("old-1", b"O1\r\n"), ("old-2", b"O2\r\n"), ("new-1", b"N1\r\n")],
    )
    (tmp_path / "oldmail-127.0.0.1-110-u").write_bytes(b"old-1\x001\nold-2\x001\n")
    assert run_import(str(config), "isp", str(tmp_path / "oldmail-127.0.0.1-110-u")) == 0
    port = rt.call(server.listen, global_reactor)
    store = rt.call(SQLiteStore, state / "popgate.sqlite3")
    try:
        up = Upstream(
            name="isp",
            owner="alice",
            host="127.0.0.1",
            port=port.getHost().port,
            tls="none",
            username="u",
            password="p",
            keep_on_server=False,
        )
        result = rt.call(fetch_once, up, store, reactor=global_reactor)
        rt.call(server.when_idle)
        assert result.fetched == 1 and result.deleted == 1
        retrieved = [c.args for c in server.commands if c.verb == "RETR"]
        assert retrieved == [("3",)]
        assert server.uidls() == ["old-1", "old-2"]  # imported mail is never deleted
    finally:
        rt.call(port.stopListening)
        rt.call(store.close)
