"""``popgate sieve``: an admin's Sieve commands (put, get, list, activate, delete, check,
test, run).

The script commands work on the store file directly, also while the gateway runs: the
store is SQLite in WAL mode, every write is one ``BEGIN IMMEDIATE`` transaction (waiting
for the gateway's lock, never interleaving with it), and the gateway reads the owner's
active script at every delivery batch, so a change applies from the next message on.
``run`` refiles existing mail and goes through the running gateway's control socket
instead, because it moves mail in mailboxes IMAP clients may be watching.

USER is a user of ``[users]`` or a household's ``shared:NAME``: a household's script is
managed here only (users manage their own scripts over ManageSieve). Exit status: 0 ok,
1 refused or failed, 3 (``run``) the gateway is not running.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import add_config_option, load_config

EXIT_OK, EXIT_FAILED, EXIT_NOT_RUNNING = 0, 1, 3


def _owner(cfg: Any, user: str) -> str | None:
    """The store owner USER names, or None after printing why it is not one."""
    from gateway.access.households import shared_owner

    if user in cfg.users:
        return str(user)
    if user.startswith("shared:") and user.split(":", 1)[1] in cfg.shared:
        return str(shared_owner(user.split(":", 1)[1]))
    known = ", ".join([*sorted(cfg.users), *(f"shared:{s}" for s in sorted(cfg.shared))])
    print(f"popgate: no user {user!r} (known: {known or 'none'})", file=sys.stderr)
    return None


def _read_script(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8") if path != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as e:
        print(f"popgate: cannot read {path}: {e}", file=sys.stderr)
        return None


def _sending(args: argparse.Namespace) -> bool:
    """Whether USER (``args.user``) may upload ``redirect``/``vacation``: one of their
    upstreams has ``[upstreams.smtp]`` (False without a user or a readable config)."""
    from gateway.app.sievecmd import owner_can_send

    if getattr(args, "user", None) is None:
        return False
    cfg = load_config(args.config)
    if cfg is None:
        return False
    owner = _owner(cfg, args.user)
    return owner is not None and owner_can_send(cfg)(owner)


def _checked(text: str, path: str, sending: bool = False) -> bool:
    """True if the script compiles; else prints ``FILE:LINE:COLUMN: message``."""
    from gateway.access.filtering import check_script
    from gateway.sieve import SieveSyntaxError

    try:
        check_script(text, sending=sending)
    except SieveSyntaxError as e:
        print(f"{path}:{e.line}:{e.column}: {e.message}", file=sys.stderr)
        return False
    return True


def _with_store(args: argparse.Namespace, work: Any) -> int:
    """Load the config, resolve USER, open the store and run ``work(store, owner)``."""
    from gateway.app.storage import open_store
    from gateway.store.interfaces import StoreError

    cfg = load_config(args.config)
    if cfg is None:
        return EXIT_FAILED
    owner = _owner(cfg, args.user)
    if owner is None:
        return EXIT_FAILED
    store = open_store(cfg)
    try:
        return int(work(store, owner))
    except StoreError as e:
        print(f"popgate: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()


def cmd_put(args: argparse.Namespace) -> int:
    """Upload (create or replace) a script after checking it; ``--activate`` too."""
    text = _read_script(args.file)
    if text is None or not _checked(text, args.file, _sending(args)):
        return EXIT_FAILED

    def work(store: Any, owner: str) -> int:
        store.put_script(owner, args.name, text)
        if args.activate:
            store.set_active(owner, args.name)
        print(f"{owner}: stored {args.name!r}{' (active)' if args.activate else ''}")
        return EXIT_OK

    return _with_store(args, work)


def cmd_get(args: argparse.Namespace) -> int:
    def work(store: Any, owner: str) -> int:
        sys.stdout.write(store.get_script(owner, args.name))
        return EXIT_OK

    return _with_store(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    def work(store: Any, owner: str) -> int:
        for info in store.list_scripts(owner):
            print(f"{info.name}{'  (active)' if info.active else ''}")
        return EXIT_OK

    return _with_store(args, work)


def cmd_activate(args: argparse.Namespace) -> int:
    """Make NAME the active script, or with ``--none`` leave the owner without one."""

    def work(store: Any, owner: str) -> int:
        if args.name is None:
            store.deactivate(owner)
            print(f"{owner}: no active script")
        else:
            store.set_active(owner, args.name)
            print(f"{owner}: {args.name!r} is active")
        return EXIT_OK

    if (args.name is None) == (not args.none):
        print("popgate: give a script NAME or --none", file=sys.stderr)
        return EXIT_FAILED
    return _with_store(args, work)


def cmd_delete(args: argparse.Namespace) -> int:
    def work(store: Any, owner: str) -> int:
        store.delete_script(owner, args.name)
        print(f"{owner}: deleted {args.name!r}")
        return EXIT_OK

    return _with_store(args, work)


def cmd_check(args: argparse.Namespace) -> int:
    """Compile a script file as an upload would (``FILE:LINE:COLUMN: message`` if not);
    ``--user`` checks it for that owner (``redirect``/``vacation`` need an upstream that
    can send)."""
    text = _read_script(args.file)
    if text is None or not _checked(text, args.file, _sending(args)):
        return EXIT_FAILED
    print(f"{args.file}: ok")
    return EXIT_OK


def cmd_test(args: argparse.Namespace) -> int:
    """Where a message would go, one line per action (like Pigeonhole's ``sieve-test``),
    with the owner's active script or ``--script FILE``; nothing is filed or recorded."""
    import time

    from gateway.access.filtering import StoreEnvironment, envelope_for
    from gateway.access.refile import describe
    from gateway.sieve import Envelope, compile_script, run

    try:
        raw = Path(args.message).read_bytes()
    except OSError as e:
        print(f"popgate: cannot read {args.message}: {e}", file=sys.stderr)
        return EXIT_FAILED
    override = None
    if args.script:
        override = _read_script(args.script)
        if override is None or not _checked(override, args.script, sending=True):
            return EXIT_FAILED

    def work(store: Any, owner: str) -> int:
        text = override
        if text is None:
            active = store.active_script(owner)
            if active is None:
                print(f"popgate: {owner} has no active script (use --script)", file=sys.stderr)
                return EXIT_FAILED
            text = active.text
            if not _checked(text, f"{owner}'s active script", sending=True):
                return EXIT_FAILED
        envelope = envelope_for(raw, None)
        if args.envelope_to or args.envelope_from is not None:
            envelope = Envelope(
                args.envelope_from if args.envelope_from is not None else envelope.mail_from,
                args.envelope_to or envelope.rcpt_to,
            )
        env = StoreEnvironment(store, store, owner, time.time)
        script = compile_script(text, sending=True)  # shows what would be sent
        for line in describe(run(script, raw, envelope, env)):
            print(line)
        return EXIT_OK

    return _with_store(args, work)


def cmd_run(args: argparse.Namespace) -> int:
    """Refile a mailbox's existing mail through the owner's active script, in the gateway."""
    from gateway.app import control

    cfg = load_config(args.config)
    if cfg is None:
        return EXIT_FAILED
    owner = _owner(cfg, args.user)
    if owner is None:
        return EXIT_FAILED

    def show(info: dict[str, Any]) -> None:
        print(f"{info.get('refiled', 0)} messages...", file=sys.stderr)

    try:
        result = control.request(
            cfg.state_dir,
            {"command": "sieve-run", "owner": owner, "mailbox": args.mailbox},
            on_progress=show,
        )
    except control.GatewayNotRunning as e:
        print(f"popgate: {e}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except (control.ControlError, TimeoutError, OSError) as e:
        print(f"popgate: sieve run failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"{owner} {args.mailbox}: {result.get('messages', 0)} messages, "
        f"{result.get('moved', 0)} moved, {result.get('copied', 0)} copied, "
        f"{result.get('kept', 0)} kept, {result.get('errors', 0)} runtime errors (kept)"
    )
    return EXIT_OK


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("sieve", help="manage and test Sieve filters (admin)")
    cmds = p.add_subparsers(dest="sieve_command", required=True)

    def command(name: str, func: Any, help: str, *, user: bool = True) -> argparse.ArgumentParser:
        c = cmds.add_parser(name, help=help)
        add_config_option(c)
        if user:
            c.add_argument("user", help="a [users] name or shared:NAME (a household)")
        c.set_defaults(func=func)
        return c

    c = command("put", cmd_put, "check and store a script (- reads stdin)")
    c.add_argument("name")
    c.add_argument("file")
    c.add_argument("--activate", action="store_true", help="and make it the active script")
    command("get", cmd_get, "print a script").add_argument("name")
    command("list", cmd_list, "list the scripts, marking the active one")
    c = command("activate", cmd_activate, "make a script the active one")
    c.add_argument("name", nargs="?")
    c.add_argument("--none", action="store_true", help="deactivate: no script runs")
    command("delete", cmd_delete, "delete a script (not the active one)").add_argument("name")
    c = command("check", cmd_check, "compile a script file", user=False)
    c.add_argument("file")
    c.add_argument("--user", help="check as an upload by this user (may they redirect?)")
    c = command("test", cmd_test, "print where a message would go, one line per action")
    c.add_argument("message", help="the message file (.eml)")
    c.add_argument("--script", help="this script instead of the active one")
    c.add_argument("--envelope-to", help="envelope recipient (default: Delivered-To)")
    c.add_argument("--envelope-from", help="envelope sender (default: Return-Path)")
    c = command("run", cmd_run, "refile existing mail now (on the running gateway)")
    c.add_argument("--mailbox", default="INBOX")
