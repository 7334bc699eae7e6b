"""Logging set-up: JSON lines off a terminal, readable lines on one, the configured level,
secrets masked, and quiet-but-capturable logging in tests."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from gateway.app import logs


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_test_logging() -> Iterator[None]:
    yield
    logs.configure_for_tests()


def test_auto_format_writes_json_lines_when_not_on_a_terminal():
    out = io.StringIO()
    logs.configure("info", "auto", stream=out, recent=None)
    structlog.get_logger("t").info("pop3.fetched", upstream="isp", count=3)
    (line,) = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "pop3.fetched" and event["upstream"] == "isp"
    assert event["count"] == 3 and event["level"] == "info" and event["timestamp"].endswith("Z")


def test_auto_format_is_human_readable_on_a_terminal():
    out = Terminal()
    logs.configure("info", "auto", stream=out, recent=None)
    structlog.get_logger("t").info("pop3.fetched", upstream="isp", count=3)
    line = out.getvalue().strip()
    assert "pop3.fetched" in line and "upstream=isp" in line and "count=3" in line
    with pytest.raises(ValueError):
        json.loads(line)


def test_events_below_the_configured_level_are_dropped():
    out = io.StringIO()
    logs.configure("warning", "json", stream=out, recent=None)
    log = structlog.get_logger("t")
    log.info("quiet")
    log.debug("quieter")
    log.warning("loud")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["loud"]


def test_a_field_named_like_a_secret_is_masked_whoever_logs_it():
    out = io.StringIO()
    logs.configure("debug", "json", stream=out, recent=None)
    structlog.get_logger("t").warning("oops", password="hunter2", secret="s3", user="bob")
    event = json.loads(out.getvalue())
    assert event["password"] == "***" and event["secret"] == "***" and event["user"] == "bob"
    assert "hunter2" not in out.getvalue()


def test_test_logging_prints_nothing_but_can_be_captured(capsys):
    logs.configure_for_tests()
    with structlog.testing.capture_logs() as events:
        structlog.get_logger("t").warning("imap.auth_failed", user="bob")
    structlog.get_logger("t").error("not.printed")
    assert events == [{"event": "imap.auth_failed", "user": "bob", "log_level": "warning"}]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
