"""Human-facing output escapes control characters (issue 20 item 9, gateway/core/display.py):
`popgate status`, CLI messages that echo input and the console log renderer."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import structlog

from gateway.app import logs, status
from gateway.cli import main as cli
from gateway.core.display import printable, printable_lines, printable_tree

HOSTILE = "ev\x1b[2J\x1b]0;pwned\x07il\x00\r\u202egnp.exe\u2028x"
"""A user name as an attacker would send it: clear screen, set the title, NUL, CR, a
right-to-left override and a line separator."""

RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029]")
"""Characters that must never reach a terminal from data (line feed and tab excepted: the
output's own layout uses them)."""


def test_printable_escapes_controls_format_characters_and_separators() -> None:
    assert printable(HOSTILE) == ("ev\\x1b[2J\\x1b]0;pwned\\x07il\\x00\\x0d\\u202egnp.exe\\u2028x")
    assert printable("Zoë Ünïcode, 日本, tab\there") == "Zoë Ünïcode, 日本, tab\\x09here"
    assert printable("plain text") == "plain text"
    assert printable_lines("a\x1b\nb") == "a\\x1b\nb"
    assert printable_tree({"k\x00": ["v\x1b", 3, None]}) == {"k\\x00": ["v\\x1b", 3, None]}


def test_status_table_escapes_user_names_from_failed_logins_and_upstream_errors() -> None:
    report = {
        "version": "1",
        "now": 100.0,
        "uptime_seconds": 5,
        "listeners": {"imap": ["tcp:143"]},
        "clients": {"total": 1, "by_user": {HOSTILE: {"selected": 1}}},
        "upstreams": [
            {
                "name": "up",
                "owner": "alice",
                "folder": "INBOX",
                "state": "failing",
                "last_error": f"-ERR {HOSTILE}",
                "last_error_kind": "protocol",
            }
        ],
        "recent_errors": [
            {"event": "imap.login_failed", "level": "warning", "user": HOSTILE, "timestamp": "t"}
        ],
    }
    text = status.render(report)
    assert not RAW_CONTROL.search(text), repr(text)
    assert "ev\\x1b[2J" in text and "\\u202e" in text


def test_console_log_lines_escape_control_characters() -> None:
    stream = io.StringIO()
    logs.configure("info", "console", stream=stream, recent=None)
    try:
        # structlog quotes some values itself, but not all: this one it prints raw
        structlog.get_logger("test").warning("imap.login_failed", user="mallory\x1b[31m\x00")
    finally:
        logs.configure_for_tests()
    line = stream.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert not RAW_CONTROL.search(line), repr(line)
    assert "mallory\\x1b[31m\\x00" in line


def test_cli_messages_that_echo_a_name_escape_it(tmp_path: Path, capsys) -> None:
    config = tmp_path / "popgate.toml"
    config.write_text(f'[server]\nstate_dir = "{tmp_path}/state"\nimap = ["tcp:1143"]\n')
    os.chmod(config, 0o600)
    status_code = cli.main(["deluser", "--config", str(config), HOSTILE])
    err = capsys.readouterr().err
    assert status_code != 0 and "popgate:" in err
    assert not RAW_CONTROL.search(err), repr(err)
