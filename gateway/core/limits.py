"""Limits that several layers must agree on, defined once."""

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Largest message accepted from an upstream or by APPEND unless configured otherwise."""
