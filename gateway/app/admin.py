"""The administrator's user commands: ``popgate adduser``, ``passwd``, ``deluser`` and ``users``.

They edit the config file as *text*, so comments and layout survive: only the
``[users.NAME]`` table concerned changes (its ``password`` line replaced, the table
appended, or the table removed). The new text is validated with the same loader the
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
import re
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from gateway.app import config as configmod
from gateway.security.passwords import hash_password

RELOAD_HINT = "A running gateway applies this on SIGHUP: systemctl reload popgate"

_HEADER = re.compile(r"^\s*\[")
_PASSWORD_LINE = re.compile(r"^\s*password\s*=")


class AdminError(Exception):
    """A user command that cannot be done; the message is for the operator."""


def _table_re(name: str) -> re.Pattern[str]:
    """``[users.NAME]`` or ``[users."NAME"]`` on its own line (a comment may follow)."""
    quoted = re.escape(name)
    return re.compile(rf'^\s*\[\s*users\s*\.\s*(?:{quoted}|"{quoted}")\s*\]\s*(?:#.*)?$')


def _find_table(lines: list[str], name: str) -> tuple[int, int] | None:
    """(header index, end index) of the user's table; ``end`` is the next table header
    (or the end of the file), with trailing blank and comment lines left to what follows."""
    pattern = _table_re(name)
    for start, line in enumerate(lines):
        if pattern.match(line):
            end = start + 1
            while end < len(lines) and not _HEADER.match(lines[end]):
                end += 1
            while end > start + 1 and (
                not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")
            ):
                end -= 1
            return start, end
    return None


def set_password(text: str, name: str, password_hash: str) -> str:
    """The config text with ``[users.NAME] password`` set (the table added if missing)."""
    lines = text.splitlines(keepends=True)
    new_line = f'password = "{password_hash}"\n'
    found = _find_table(lines, name)
    if found is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        last_user = _last_users_table_end(lines)
        block = [f"[users.{name}]\n", new_line]
        if last_user is None:
            lines += ["\n", *block]
        else:
            lines[last_user:last_user] = ["\n", *block]
        return "".join(lines)
    start, end = found
    for i in range(start + 1, end):
        if _PASSWORD_LINE.match(lines[i]):
            lines[i] = new_line
            return "".join(lines)
    lines.insert(start + 1, new_line)
    return "".join(lines)


def _last_users_table_end(lines: list[str]) -> int | None:
    ends = []
    for line in lines:
        m = re.match(r'^\s*\[\s*users\s*\.\s*"?([^"\]]+)"?\s*\]', line)
        if m:
            found = _find_table(lines, m.group(1))
            if found:
                ends.append(found[1])
    return max(ends) if ends else None


def remove_user(text: str, name: str) -> str:
    """The config text without the ``[users.NAME]`` table."""
    lines = text.splitlines(keepends=True)
    found = _find_table(lines, name)
    if found is None:
        raise AdminError(f"no user {name!r} in the config")
    start, end = found
    del lines[start:end]
    # Drop one blank line left doubled where the table was.
    if 0 < start < len(lines) and not lines[start - 1].strip() and not lines[start].strip():
        del lines[start]
    return "".join(lines)


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


def read_password(stdin: TextIO, prompt: Callable[[str], str] = getpass.getpass) -> str:
    """Twice without echo on a terminal; one line from stdin when piped."""
    if stdin.isatty():
        first = prompt("New password: ")
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
        raise AdminError(
            f"{name!r}: user names are 1-64 of a-z 0-9 . _ @ + - (lower case), "
            "starting with a letter or digit"
        )


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
        removed = purge_mail(cfg.state_dir, name)
        message += f"; deleted {removed} messages and their folders"
    else:
        message += f"; their mail is kept in {cfg.state_dir} (--purge deletes it)"
    return message


def _open_store(state_dir: str):  # type: ignore[no-untyped-def]
    from gateway.app.storage import STORE_FILE
    from gateway.store.sqlite import SQLiteStore

    store_path = Path(state_dir) / STORE_FILE
    if not store_path.exists():
        return None
    return SQLiteStore(store_path)


def purge_mail(state_dir: str, name: str) -> int:
    """Delete every folder of the user and empty their INBOX; returns messages removed."""
    from gateway.store.interfaces import INBOX

    store = _open_store(state_dir)
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
    store = _open_store(cfg.state_dir)
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
            sys.stdout.write(users_report(args.config))
            return 0
    except AdminError as e:
        print(f"popgate: {e}", file=sys.stderr)
        return 1
    print(out)
    print(RELOAD_HINT)
    return 0
