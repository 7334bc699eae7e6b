"""The three kinds of Sieve error, so callers map each to one response in one place.

A script that does not parse or validate is refused at upload with its position (issue 16,
RFC 5804 §2.6 wants a human-readable reason); a runtime error never loses mail: the
interpreter turns it into an implicit keep plus a description (RFC 5228 §2.10.6).
"""

from __future__ import annotations


class SieveError(Exception):
    """Base class of every error raised by `gateway.sieve`."""


class SieveSyntaxError(SieveError):
    """The script is not valid Sieve: a grammar error (RFC 5228 §8) or a validation error.

    `line` and `column` are 1-based and count characters, so an editor can point at them.
    """

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.message = message


class SieveValidationError(SieveSyntaxError):
    """The script parses but breaks a rule of RFC 5228 §3.2/§8.2 or an extension's rules."""


class SieveRuntimeError(SieveError):
    """A failure while running a valid script (RFC 5228 §2.10.6); it ends in implicit keep."""
