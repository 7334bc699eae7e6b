"""The administrator's user commands: ``popgate adduser``, ``passwd``, ``deluser`` and ``users``.

They edit the config file with tomlkit, a TOML library that keeps comments and layout:
only the user concerned changes (its ``password`` value replaced, a table or inline table
added in the style the file uses, or the user removed), whether users are written as
``[users.NAME]`` tables or as ``NAME = { password = ... }`` under ``[users]``. The new text is validated with the same loader the
server uses before anything is written, and written atomically (temporary file in the
same directory, fsync, rename) with the old file's mode, so a crash leaves the old or
the new config, never half of one. A running gateway applies user changes on SIGHUP
(``systemctl reload popgate``); the commands say so. Mail stays in the state dir when a
user is removed unless ``--purge`` is given.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import tomlkit
from tomlkit.items import AoT, Comment, InlineTable, Item, Table, Whitespace
from tomlkit.toml_document import TOMLDocument

from gateway.app import config as configmod
from gateway.app.config.sections import NAME_RULE
from gateway.core.display import printable, printable_lines
from gateway.security.passwords import hash_password

RELOAD_HINT = "A running gateway applies this on SIGHUP: systemctl reload popgate"


class AdminError(Exception):
    """A user command that cannot be done; the message is for the operator."""


# ---- editing the users of a config document ----------------------------------------------
#
# TOML lets a user be written as a ``[users.NAME]`` table, as ``NAME = { password = ... }``
# under one ``[users]`` header, or as dotted keys; tomlkit reads all of them into one
# document model that renders back byte for byte. The one thing its model gets wrong for
# a config file is trivia: blank lines and comments after a table's last key belong to the
# table in tomlkit, but in the file they sit above the next header and introduce it
# ("# Households" before ``[shared.family]``). Removing a table, or adding one after it,
# first detaches that trailing trivia so it stays in front of what it introduces.


def _user_holders(doc: TOMLDocument) -> list[Table]:
    """The tables that hold users, in file order: the ``[users]`` table or the super table
    above ``[users.NAME]`` tables (several when other tables come between them)."""
    return [
        item
        for key, item in doc.body
        if key is not None and key.key == "users" and isinstance(item, Table)
    ]


def _holder_of(doc: TOMLDocument, name: str) -> Table | None:
    return next((table for table in _user_holders(doc) if name in table), None)


def _detach_trailing_trivia(table: Table) -> list[tuple[None, Item]]:
    """Remove and return the blank lines and comments that end ``table``'s body."""
    body = table.value.body
    cut = len(body)
    while cut and body[cut - 1][0] is None and isinstance(body[cut - 1][1], Whitespace | Comment):
        cut -= 1
    tail = body[cut:]
    del body[cut:]  # keyless entries: the container's key index does not change
    return tail  # type: ignore[return-value]


def _last_table_rendered(item: Item | None) -> Table | None:
    """The table whose body is the last text ``item`` renders (its last sub-table, the
    last table of an array of tables), or None when that is not a table."""
    while True:
        if isinstance(item, AoT):
            item = item.body[-1] if item.body else None
        elif isinstance(item, Table):
            keyed = [v for k, v in item.value.body if k is not None]
            if keyed and isinstance(keyed[-1], Table | AoT):
                item = keyed[-1]
            else:
                return item
        else:
            return None


def _table_before(doc: TOMLDocument, holder: Table, index: int) -> Table | None:
    """The table rendered just before entry ``index`` of ``holder``."""
    body = holder.value.body
    for _key, item in reversed(body[:index]):
        if isinstance(item, Table | AoT):
            return _last_table_rendered(item)
        if not isinstance(item, Whitespace | Comment):
            return None  # key/value pairs of the holder itself come first
    position = next(i for i, (_k, item) in enumerate(doc.body) if item is holder)
    return _last_table_rendered(doc.body[position - 1][1]) if position else None


def _user_table(password_hash: str) -> Table:
    table = tomlkit.table()
    table.add("password", password_hash)
    return table


def _inline_user(password_hash: str) -> InlineTable:
    """``{ password = "..." }``, spaced as people write it (tomlkit's own is ``{password =``)."""
    snippet = tomlkit.parse(f"x = {{ password = {tomlkit.string(password_hash).as_string()} }}")
    return snippet["x"]  # type: ignore[return-value]


def set_password(text: str, name: str, password_hash: str) -> str:
    """The config text with the user's password set, or the user added in the style the
    file already uses (a ``[users.NAME]`` table, or an inline table under ``[users]``)."""
    doc = tomlkit.parse(text)
    holder = _holder_of(doc, name)
    if holder is not None:
        holder[name]["password"] = password_hash  # type: ignore[index]
        return doc.as_string()
    holders = _user_holders(doc)
    if not holders:
        users = tomlkit.table(is_super_table=True)
        users.add(name, _user_table(password_hash))
        doc.add("users", users)
        return doc.as_string()
    last = holders[-1]
    if last.is_super_table():
        previous = _last_table_rendered(last)
        tail = _detach_trailing_trivia(previous) if previous is not None else []
        table = _user_table(password_hash)
        last.add(name, table)
        table.value.body.extend(tail)
    else:
        keyed = [v for k, v in last.value.body if k is not None]
        has_sub_tables = any(isinstance(v, Table | AoT) for v in keyed)
        tail = [] if has_sub_tables else _detach_trailing_trivia(last)
        last.add(name, _inline_user(password_hash))
        last.value.body.extend(tail)
    return doc.as_string()


def remove_user(text: str, name: str) -> str:
    """The config text without the user's table or inline table."""
    doc = tomlkit.parse(text)
    holder = _holder_of(doc, name)
    if holder is None:
        raise AdminError(f"no user {name!r} in the config")
    entry = holder[name]
    tail: list[tuple[None, Item]] = []
    before: Table | None = None
    if isinstance(entry, Table):
        tail = _detach_trailing_trivia(_last_table_rendered(entry) or entry)
        index = next(i for i, (k, _v) in enumerate(holder.value.body) if k and k.key == name)
        before = _table_before(doc, holder, index)
    holder.remove(name)
    if tail:
        # what introduced the next header moves to the table now rendered before it
        (before or holder).value.body.extend(tail)
    return doc.as_string()


def validate(text: str, path: str) -> configmod.Config:
    """Parse ``text`` as the server would; raises AdminError listing the problems."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AdminError(f"{path}: the edit would not be valid TOML: {e}") from None
    try:
        return configmod.parse(data, path)
    except configmod.ConfigError as e:
        raise AdminError("\n".join(e.problems)) from None


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: same mode (and owner when permitted), never half
    written (temporary file, fsync, rename, fsync of the directory)."""
    info = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), info.st_mode & 0o7777)
            try:
                os.fchown(f.fileno(), info.st_uid, info.st_gid)
            except PermissionError:
                pass  # not root: the file stays ours, as the old one was
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_password(
    stdin: TextIO,
    prompt: Callable[[str], str] = getpass.getpass,
    *,
    first_prompt: str = "New password: ",
) -> str:
    """Twice without echo on a terminal; one line from stdin when piped."""
    if stdin.isatty():
        first = prompt(first_prompt)
        if first != prompt("Again: "):
            raise AdminError("passwords differ")
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise AdminError("empty password refused")
    return password


def _load_text(path: str) -> tuple[Path, str, configmod.Config]:
    cfg_path = Path(path)
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except OSError as e:
        raise AdminError(f"{path}: cannot read: {e.strerror}") from None
    return cfg_path, text, validate(text, path)


def _check_name(name: str) -> None:
    if not configmod.USER_NAME_RE.match(name):
        raise AdminError(f"{name!r}: user names {NAME_RULE}")


def adduser(path: str, name: str, stdin: TextIO = sys.stdin) -> str:
    _check_name(name)
    cfg_path, text, cfg = _load_text(path)
    if name in cfg.users:
        raise AdminError(f"user {name!r} already exists (use popgate passwd {name})")
    new = set_password(text, name, hash_password(read_password(stdin)))
    validate(new, path)
    write_atomic(cfg_path, new)
    return f"added user {name} to {path}"


def passwd(path: str, name: str, stdin: TextIO = sys.stdin) -> str:
    cfg_path, text, cfg = _load_text(path)
    if name not in cfg.users:
        raise AdminError(f"no user {name!r} in {path} (use popgate adduser {name})")
    new = set_password(text, name, hash_password(read_password(stdin)))
    validate(new, path)
    write_atomic(cfg_path, new)
    return f"changed the password of {name} in {path}"


def deluser(path: str, name: str, *, purge: bool = False) -> str:
    cfg_path, text, cfg = _load_text(path)
    if name not in cfg.users:
        raise AdminError(f"no user {name!r} in {path}")
    uses = [f"[[upstreams]] {u.name} (owner)" for u in cfg.upstreams if u.owner == name]
    uses += [f"[shared.{s.name}] members" for s in cfg.shared.values() if name in s.members]
    if uses:
        raise AdminError(f"{name} is still named in: {', '.join(uses)}; edit those first")
    new = remove_user(text, name)
    validate(new, path)
    write_atomic(cfg_path, new)
    message = f"removed user {name} from {path}"
    if purge:
        removed = purge_mail(cfg, name)
        message += f"; deleted {removed} messages and their folders"
    else:
        message += f"; their mail is kept in {cfg.state_dir} (--purge deletes it)"
    return message


def _open_store(cfg: Any) -> Any:
    """The configured store for an offline command; None when a SQLite store was never
    created (nothing to report or purge)."""
    from gateway.app.storage import STORE_FILE, open_postgresql, uses_postgresql
    from gateway.store.sqlite import SQLiteStore

    if uses_postgresql(cfg):
        return open_postgresql(cfg, pool_size=1)
    store_path = Path(cfg.state_dir) / STORE_FILE
    if not store_path.exists():
        return None
    return SQLiteStore(store_path)


def purge_mail(cfg: Any, name: str) -> int:
    """Delete every folder of the user and empty their INBOX; returns messages removed."""
    from gateway.store.interfaces import INBOX

    store = _open_store(cfg)
    if store is None:
        return 0
    removed = 0
    try:
        for mailbox in sorted(store.list_mailboxes(name), key=lambda m: -len(m.name)):
            removed += store.counts(mailbox.id).messages
            if mailbox.name == INBOX:
                uids = [r.uid for r in store.message_rows(mailbox.id)]
                store.store_flags(mailbox.id, uids, "+", ["\\Deleted"])
                store.expunge(mailbox.id)
            else:
                store.delete_mailbox(name, mailbox.name)
        for subscribed in store.subscriptions(name):
            store.set_subscribed(name, subscribed, False)
    finally:
        store.close()
    return removed


def users_report(path: str) -> str:
    """One line per user: households, folders, messages and bytes stored."""
    from gateway.app.status import mailbox_usage

    _cfg_path, _text, cfg = _load_text(path)
    store = _open_store(cfg)
    lines = [f"{'USER':<20} {'FOLDERS':>7} {'MESSAGES':>8} {'SIZE':>12}  SHARED"]
    try:
        for name in sorted(cfg.users):
            usage = mailbox_usage(store, name) if store is not None else None
            folders = len(usage["mailboxes"]) if usage else 0
            messages = usage["messages"] if usage else 0
            size = usage["size_bytes"] if usage else 0
            shared = ", ".join(s.name for s in cfg.shared.values() if name in s.members) or "-"
            lines.append(f"{name:<20} {folders:>7} {messages:>8} {size:>12}  {shared}")
    finally:
        if store is not None:
            store.close()
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """The CLI entry of the four commands (``args.command`` says which)."""
    try:
        if args.command == "adduser":
            out = adduser(args.config, args.name)
        elif args.command == "passwd":
            out = passwd(args.config, args.name)
        elif args.command == "deluser":
            out = deluser(args.config, args.name, purge=args.purge)
        else:
            sys.stdout.write(printable_lines(users_report(args.config)))
            return 0
    except AdminError as e:
        print(printable(f"popgate: {e}"), file=sys.stderr)
        return 1
    print(printable_lines(out))
    print(RELOAD_HINT)
    return 0
