"""The Sieve script storage contract: each owner's scripts, at most one of them active.

ManageSieve (RFC 5804) and the delivery-time Sieve runner depend on this module only,
never on a backend. An *owner* is an opaque string chosen by the caller (a user name,
or whatever the integrator maps a household to); backends never interpret it.

Every backend enforces the same rules, so they live here as plain functions:
script names per RFC 5804 §1.6 (:func:`validate_script_name`) and the limits
(:class:`ScriptLimits`, checked by :func:`check_space`). Errors are
:class:`~gateway.store.interfaces.StoreError` subclasses; the ManageSieve session maps
each to one response code. Writes are atomic: when a method returns, its effect is
visible to every other caller, and a refused write changed nothing.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Protocol

from gateway.store.interfaces import StoreError

MAX_SCRIPT_SIZE = 64 * 1024
"""Largest script, in octets of its UTF-8 text (Pigeonhole's default is 1 MiB; filter
editors produce a few KiB, and every script is parsed at each delivery)."""

MAX_SCRIPTS = 32
"""Most scripts one owner may keep (RFC 5804 QUOTA/MAXSCRIPTS beyond)."""

MAX_SCRIPT_NAME_LENGTH = 128
"""Longest script name in characters (RFC 5804 §1.6 lets servers choose a limit)."""


@dataclass(frozen=True)
class ScriptLimits:
    """The bounds a store applies per owner."""

    max_script_size: int = MAX_SCRIPT_SIZE
    max_scripts: int = MAX_SCRIPTS


@dataclass(frozen=True)
class ScriptInfo:
    """One row of a listing."""

    name: str
    active: bool


@dataclass(frozen=True)
class ActiveScript:
    name: str
    text: str


class ScriptNotFound(StoreError):
    """No script of that name → ManageSieve NO (NONEXISTENT)."""


class ScriptExists(StoreError):
    """The target name of a rename is taken → NO (ALREADYEXISTS)."""


class ScriptIsActive(StoreError):
    """The active script cannot be deleted → NO (ACTIVE)."""


class BadScriptName(StoreError):
    """The name breaks RFC 5804 §1.6 or the length limit → NO."""


class ScriptQuotaExceeded(StoreError):
    """Base of the two limits → NO (QUOTA)."""


class TooManyScripts(ScriptQuotaExceeded):
    """One more script would exceed ``max_scripts`` → NO (QUOTA/MAXSCRIPTS)."""


class ScriptTooLarge(ScriptQuotaExceeded):
    """The script exceeds ``max_script_size`` → NO (QUOTA/MAXSIZE)."""


def validate_script_name(name: str) -> None:
    """RFC 5804 §1.6: a non-empty name in Unicode NFC, without control characters
    (U+0000-U+001F, U+007F-U+009F) or line/paragraph separators (U+2028, U+2029),
    and at most :data:`MAX_SCRIPT_NAME_LENGTH` characters. Raises BadScriptName."""
    if not name:
        raise BadScriptName("empty script name")
    if len(name) > MAX_SCRIPT_NAME_LENGTH:
        raise BadScriptName(f"script name longer than {MAX_SCRIPT_NAME_LENGTH} characters")
    for c in name:
        o = ord(c)
        if o < 0x20 or 0x7F <= o <= 0x9F or o in (0x2028, 0x2029):
            raise BadScriptName("control character in script name")
        if 0xD800 <= o <= 0xDFFF:
            raise BadScriptName("surrogate in script name")
    if not unicodedata.is_normalized("NFC", name):
        raise BadScriptName("script name is not in Unicode NFC")


def script_size(text: str) -> int:
    """A script's size as the limits count it: octets of its UTF-8 encoding."""
    return len(text.encode("utf-8"))


def check_space(limits: ScriptLimits, existing: int, replacing: bool, size: int) -> None:
    """Whether a script of ``size`` octets fits for an owner holding ``existing``
    scripts (``replacing``: one of them has the same name, so the count stays).
    Raises ScriptTooLarge or TooManyScripts; the size is checked first."""
    if size > limits.max_script_size:
        raise ScriptTooLarge(f"script larger than {limits.max_script_size} octets")
    if not replacing and existing >= limits.max_scripts:
        raise TooManyScripts(f"more than {limits.max_scripts} scripts")


class ScriptStore(Protocol):
    """Per-owner Sieve scripts. Names are validated with :func:`validate_script_name`
    on every write and every lookup (a bad name is BadScriptName, never
    ScriptNotFound), so all backends refuse the same names."""

    limits: ScriptLimits

    def list_scripts(self, owner: str) -> list[ScriptInfo]:
        """The owner's scripts sorted by name, with the active flag."""

    def get_script(self, owner: str, name: str) -> str:
        """The script's text; ScriptNotFound."""

    def have_space(self, owner: str, name: str, size: int) -> None:
        """Would ``put_script(owner, name, <size octets>)`` fit? ScriptTooLarge or
        TooManyScripts if not (RFC 5804 §2.5 HAVESPACE)."""

    def put_script(self, owner: str, name: str, text: str) -> None:
        """Create or replace a script (an active one stays active); ScriptTooLarge,
        TooManyScripts, BadScriptName."""

    def delete_script(self, owner: str, name: str) -> None:
        """ScriptNotFound; ScriptIsActive for the active script (RFC 5804 §2.10)."""

    def rename_script(self, owner: str, old: str, new: str) -> None:
        """Rename, keeping the active flag; ScriptNotFound, ScriptExists (also when
        ``new == old``), BadScriptName."""

    def set_active(self, owner: str, name: str) -> None:
        """Make this the owner's only active script; ScriptNotFound."""

    def deactivate(self, owner: str) -> None:
        """No active script afterwards (a no-op when there was none)."""

    def active_script(self, owner: str) -> ActiveScript | None:
        """The active script, or None: what delivery runs."""
