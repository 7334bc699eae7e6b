"""Sieve mail filtering (RFC 5228 and extensions), pure and sans-I/O, for popgate's ingest.

The fetcher and the ManageSieve server use only what this module exports:

- `compile_script(source) -> Script`: parse and validate (raises SieveSyntaxError with line
  and column; SieveValidationError is the subclass for rule violations);
- `run(script, message, envelope, env) -> Result`: execute for one message; never raises
  for a runtime problem (Result.error is set and the action is the implicit keep);
- `SieveEnvironment`: the Protocol the caller implements (mailbox_exists, seen, now);
- `Envelope`, `Result`, `Keep`, `FileInto`, `Discard`, `Redirect`, `Vacation`,
  `DuplicateMark`;
- `EXTENSIONS`: the SIEVE capability string's extension list (RFC 5804 §1.7).

This package imports nothing outside the standard library, so it stays importable alone.
"""

from gateway.sieve.actions import (
    Action,
    Discard,
    DuplicateMark,
    FileInto,
    Keep,
    Redirect,
    Result,
    Vacation,
    is_sending,
)
from gateway.sieve.errors import (
    SieveError,
    SieveRuntimeError,
    SieveSyntaxError,
    SieveValidationError,
)
from gateway.sieve.interpreter import Envelope, SieveEnvironment, run
from gateway.sieve.validator import (
    EXTENSIONS,
    MAX_REDIRECTS,
    NEEDS_SUBMISSION,
    SENDING,
    Script,
    compile_script,
)

__all__ = [
    "EXTENSIONS",
    "MAX_REDIRECTS",
    "NEEDS_SUBMISSION",
    "SENDING",
    "Action",
    "Discard",
    "DuplicateMark",
    "Envelope",
    "FileInto",
    "Keep",
    "Redirect",
    "Result",
    "Script",
    "SieveEnvironment",
    "SieveError",
    "SieveRuntimeError",
    "SieveSyntaxError",
    "SieveValidationError",
    "Vacation",
    "compile_script",
    "is_sending",
    "run",
]
