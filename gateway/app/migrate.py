"""Switching from fetchmail or getmail without refetching: import their lists of seen UIDLs.

``popgate import-uidls --upstream NAME FILE`` reads one state file and records every UIDL in
it in the ledger of upstream NAME with state "imported": known, so never fetched, and
never deleted upstream by popgate's policies. Those messages are therefore NOT in
popgate's store: they stay wherever the old fetcher delivered them (and on the server).
Run it before the gateway's first pass for that upstream; running it while the gateway is
up is safe (SQLite serialises the writes), but a pass already in flight may still fetch
some of them.

Formats, as written by the Debian packages (fetchmail 6.4, getmail6 6.18), observed:

- fetchmail ``.fetchids`` (or the ``-i FILE`` / ``idfile``): one line per UIDL,
  ``ACCOUNT SP UIDL`` where ACCOUNT is ``remote-user@server`` (the user part may itself
  contain "@"); one file can hold several accounts, hence ``--account``. The UIDL is the
  last space-separated token: RFC 1939 §7 forbids spaces in a unique-id.
- getmail ``oldmail-SERVER-PORT-USER`` (in the getmail directory): one line per UIDL,
  ``UIDL NUL TIMESTAMP``; one file per account.

Lines that are empty or malformed are counted and reported, never guessed at.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gateway.core.display import printable

MAX_STATE_FILE_SIZE = 256 * 1024 * 1024
"""Largest state file read (millions of UIDLs fit well within this)."""

MAX_IMPORT_UIDL_LENGTH = 512
"""Longest UIDL accepted; matches :data:`gateway.pop3.plan.MAX_UIDL_LENGTH`."""


class StateFileError(Exception):
    """The file cannot be imported as asked (unknown format, ambiguous account)."""


@dataclass(frozen=True)
class StateFile:
    """What a state file holds: ``kind`` is "fetchmail" or "getmail"."""

    kind: str
    uidls: tuple[str, ...]
    accounts: tuple[str, ...]  # fetchmail accounts seen (empty for getmail)
    malformed: int


def _uidl(token: bytes) -> str | None:
    if 0 < len(token) <= MAX_IMPORT_UIDL_LENGTH and all(0x21 <= b <= 0x7E for b in token):
        return token.decode("ascii")
    return None


def parse_getmail(data: bytes) -> StateFile:
    """getmail ``oldmail-*``: ``UIDL\\0TIMESTAMP`` per line."""
    uidls: list[str] = []
    malformed = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        token, nul, _stamp = line.partition(b"\0")
        uidl = _uidl(token) if nul else None
        if uidl is None:
            malformed += 1
        else:
            uidls.append(uidl)
    return StateFile("getmail", tuple(dict.fromkeys(uidls)), (), malformed)


def parse_fetchmail(data: bytes, account: str | None = None) -> StateFile:
    """fetchmail ``.fetchids``: ``user@server UIDL`` per line; only ``account``'s lines when
    given, and it must be given when the file holds several accounts."""
    by_account: dict[str, list[str]] = {}
    malformed = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        head, _, last = line.strip().rpartition(b" ")
        uidl = _uidl(last)
        name = head.strip().decode("utf-8", "replace")
        if uidl is None or not name:
            malformed += 1
            continue
        by_account.setdefault(name, []).append(uidl)
    accounts = tuple(sorted(by_account))
    if account is not None:
        chosen = by_account.get(account, [])
        if not chosen and accounts:
            raise StateFileError(
                f"no lines for account {account!r}; the file has: {', '.join(accounts)}"
            )
    elif len(accounts) > 1:
        raise StateFileError(
            f"the file holds several accounts ({', '.join(accounts)}): choose one with --account"
        )
    else:
        chosen = by_account[accounts[0]] if accounts else []
    return StateFile("fetchmail", tuple(dict.fromkeys(chosen)), accounts, malformed)


def parse_state_file(data: bytes, account: str | None = None) -> StateFile:
    """Recognise the format (a NUL byte means getmail) and parse it."""
    if b"\0" in data:
        if account is not None:
            raise StateFileError("--account applies to fetchmail files; this is a getmail file")
        return parse_getmail(data)
    return parse_fetchmail(data, account)


def run_import(
    config_path: str,
    upstream: str,
    file: str,
    *,
    account: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The ``popgate import-uidls`` command; returns the exit status."""
    from gateway.app import config as configmod
    from gateway.app.storage import open_store

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        cfg = configmod.load(config_path)
    except configmod.ConfigError as e:
        for problem in e.problems:
            print(printable(problem), file=err)
        return 1
    if upstream not in {u.name for u in cfg.upstreams}:
        known = ", ".join(u.name for u in cfg.upstreams) or "none"
        print(
            printable(f"popgate: no upstream named {upstream!r} in {cfg.path} (have: {known})"),
            file=err,
        )
        return 1
    path = Path(file)
    try:
        if path.stat().st_size > MAX_STATE_FILE_SIZE:
            print(
                printable(f"popgate: {path} is larger than {MAX_STATE_FILE_SIZE} bytes"), file=err
            )
            return 1
        data = path.read_bytes()
    except OSError as e:
        print(printable(f"popgate: cannot read {path}: {e.strerror}"), file=err)
        return 1
    try:
        state = parse_state_file(data, account)
    except StateFileError as e:
        print(printable(f"popgate: {path}: {e}"), file=err)
        return 1
    store = open_store(cfg)
    try:
        added = store.record_imported(upstream, state.uidls, f"imported from {state.kind} {path}")
    finally:
        store.close()
    print(
        f"{upstream}: {added} UIDLs recorded as already fetched from {state.kind} file {path}"
        f" ({len(state.uidls) - added} were already known"
        + (f", {state.malformed} malformed lines ignored" if state.malformed else "")
        + "). popgate will not fetch these messages: they are not in popgate's store.",
        file=out,
    )
    return 0
