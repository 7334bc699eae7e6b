"""The pure parts of the submission relay: sender policy and limits, header work (Bcc,
Message-ID), the Sent copy and its dedup rule, RFC 3464 bounces. No reactor."""

from __future__ import annotations

import email
import email.policy

import pytest

from gateway.store.queue import EXPIRED, FAILED, QueueItem
from gateway.submission import headers
from gateway.submission.bounce import RecipientFailure, bounce_message
from gateway.submission.policy import (
    RateLimiter,
    Refusal,
    SenderPolicy,
    SmtpUpstream,
    SubmissionLimits,
    SubmissionRoute,
    check_recipient_count,
    check_size,
    retry_delay,
)
from gateway.submission.relay import bounce_for_item
from gateway.submission.sent import SentDedup, dedup_key, sent_copy

SMTP = SmtpUpstream(host="smtp.isp.example")
ROUTES = [
    SubmissionRoute("alice-isp", ("alice@isp.example",), frozenset({"alice"}), SMTP),
    SubmissionRoute("bob-isp", ("bob@isp.example",), frozenset({"bob"}), SMTP),
    SubmissionRoute(
        "family", ("family@home.example", "info@home.example"), frozenset({"alice", "bob"}), SMTP
    ),
    SubmissionRoute("alice-recv", ("alice@receive-only.example",), frozenset({"alice"}), None),
]


def refused(call: object) -> Refusal:
    with pytest.raises(Refusal) as info:
        call()  # type: ignore[operator]
    return info.value


def test_mail_from_picks_the_route_case_insensitively() -> None:
    policy = SenderPolicy(ROUTES)
    assert policy.route_for("alice", "Alice@ISP.example").name == "alice-isp"
    assert policy.route_for("alice", "info@home.example").name == "family"
    assert policy.route_for("bob", "family@home.example").name == "family"


def test_another_users_address_is_refused_naming_the_allowed_ones() -> None:
    policy = SenderPolicy(ROUTES)
    error = refused(lambda: policy.route_for("alice", "bob@isp.example"))
    assert (error.code, error.enhanced) == (550, "5.7.1")
    assert "alice@isp.example" in error.text and "family@home.example" in error.text
    assert "bob@isp.example" in error.text  # the refused one is named too


def test_no_upstream_address_null_sender_and_no_smtp_are_refused() -> None:
    policy = SenderPolicy(ROUTES)
    for address in ("stranger@else.example", ""):
        assert refused(lambda a=address: policy.route_for("alice", a)).enhanced == "5.7.1"
    error = refused(lambda: policy.route_for("alice", "alice@receive-only.example"))
    assert error.code == 550 and "no outgoing server" in error.text
    assert refused(lambda: policy.route_for("carol", "alice@isp.example")).text.endswith(
        "you have no sending address"
    )


def test_an_address_on_two_routes_is_a_config_error() -> None:
    with pytest.raises(
        ValueError, match="(?i)alice@isp.example belongs to upstreams alice-isp and dup"
    ):
        SenderPolicy([*ROUTES, SubmissionRoute("dup", ("ALICE@isp.example",), frozenset(), SMTP)])


def test_from_and_sender_headers_must_be_the_users() -> None:
    policy = SenderPolicy(ROUTES)
    policy.check_headers("alice", ["alice@isp.example", "info@home.example"], None)
    policy.check_headers("alice", ["family@home.example"], "alice@isp.example")
    error = refused(lambda: policy.check_headers("alice", ["bob@isp.example"], None))
    assert (error.code, error.enhanced) == (550, "5.7.1") and "allowed:" in error.text
    assert refused(
        lambda: policy.check_headers("alice", ["alice@isp.example"], "bob@isp.example")
    ).enhanced == ("5.7.1")
    assert refused(lambda: policy.check_headers("alice", [], None)).enhanced == "5.6.0"


def test_size_and_recipient_limits_at_their_edges() -> None:
    limits = SubmissionLimits(max_message_size=100, max_recipients=2)
    check_size(100, limits)
    error = refused(lambda: check_size(101, limits))
    assert (error.code, error.enhanced) == (552, "5.3.4")
    check_recipient_count(1, limits)  # the second recipient is fine
    error = refused(lambda: check_recipient_count(2, limits))
    assert (error.code, error.enhanced) == (452, "4.5.3")


def test_rate_limit_slides_over_the_hour() -> None:
    rate = RateLimiter(2, window=3600)
    rate.check("alice", 0)
    rate.record("alice", 0)
    rate.record("alice", 10)
    error = refused(lambda: rate.check("alice", 20))
    assert (error.code, error.enhanced) == (450, "4.7.0") and "3581 seconds" in error.text
    rate.check("bob", 20)
    rate.check("alice", 3600)  # the first one left the window
    RateLimiter(0).check("alice", 0)  # 0: no limit


def test_rate_limiter_take_counts_up_to_the_limit_exactly_across_threads() -> None:
    """Submission (reactor) and Sieve at ingest (store threads) share one limiter: at
    the edge, exactly ``limit`` takers win however the threads interleave."""
    import threading

    rate = RateLimiter(50, window=3600)
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def taker() -> None:
        barrier.wait()
        wins.extend(rate.take("alice", 1.0) for _ in range(20))

    threads = [threading.Thread(target=taker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 50 and len(wins) == 160
    assert not rate.take("alice", 3600.0) and rate.take("alice", 3601.0)
    assert RateLimiter(0).take("alice", 0)


def test_retry_schedule_grows_then_repeats() -> None:
    assert [retry_delay(n, (1.0, 5.0, 60.0)) for n in (0, 1, 2, 3, 9)] == [1, 1, 5, 60, 60]


RAW = (
    b"From: Alice <alice@isp.example>\r\n"
    b"To: bob@x.example\r\n"
    b"Bcc: secret@y.example,\r\n\tother@z.example\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= \xc3\xa9\r\n"
    b"Resent-Bcc: r@y.example\r\n"
    b"\r\n"
    b"Bcc: this is the body, not a header\r\n"
)


def test_strip_bcc_removes_folded_fields_and_nothing_else() -> None:
    relayed = headers.strip_bcc(RAW)
    assert relayed == (
        b"From: Alice <alice@isp.example>\r\n"
        b"To: bob@x.example\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?= \xc3\xa9\r\n"
        b"\r\n"
        b"Bcc: this is the body, not a header\r\n"
    )
    assert headers.values(RAW, "bcc") == ["secret@y.example,\tother@z.example"]


def test_complete_header_adds_message_id_and_date_only_when_missing() -> None:
    done = headers.complete_header(RAW, "isp.example", now=0)
    assert done.endswith(RAW) and done.startswith(b"Date: Thu, 01 Jan 1970 00:00:00 -0000\r\n")
    assert (headers.message_id(done) or "").endswith("@isp.example>")
    assert headers.complete_header(done, "isp.example") == done


def test_sent_copy_keeps_bcc_and_is_seen() -> None:
    copy = sent_copy(RAW)
    assert copy.raw == RAW and copy.flags == ("\\Seen",)


def test_dedup_same_message_id_and_recipients_within_the_window() -> None:
    raw = headers.complete_header(RAW, "isp.example")
    dedup = SentDedup(window=600)
    assert dedup.recent("alice", raw, 0) is None
    dedup.remember("alice", raw, ("Sent", 7), 0)
    appended = raw.replace(b"To: bob@x.example", b"To: Bob <BOB@x.example>")
    assert dedup.recent("alice", appended, 599) == ("Sent", 7)  # the client's APPEND
    assert dedup.recent("bob", raw, 10) is None  # another user's copy is theirs
    other = raw.replace(b"To: bob@x.example", b"To: carol@x.example")
    assert dedup.recent("alice", other, 10) is None  # same id, other recipients
    assert dedup.recent("alice", raw, 601) is None  # window over
    assert dedup_key(RAW) is None  # no Message-ID: never deduplicated


def test_dedup_memory_is_bounded() -> None:
    dedup = SentDedup(max_entries=2)
    msgs = [headers.complete_header(RAW, "d.example") for _ in range(3)]
    for i, m in enumerate(msgs):
        dedup.remember("alice", m, i, 0)
    assert dedup.recent("alice", msgs[0], 1) is None
    assert dedup.recent("alice", msgs[2], 1) == 2


def _parse(report: bytes) -> email.message.Message:
    return email.message_from_bytes(report, policy=email.policy.compat32)


def test_bounce_is_an_rfc3464_report_with_the_original_header() -> None:
    report = bounce_message(
        sender="alice@isp.example",
        failures=[RecipientFailure("bob@x.example", "5.1.1", "550 5.1.1 <bob@x.example>: no\x00")],
        original=RAW,
        reporting_host="gw.example",
        remote_host="smtp.isp.example",
        arrival=0,
        now=60,
    )
    message = _parse(report)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["To"] == "<alice@isp.example>" and message["Auto-Submitted"] == "auto-replied"
    text, status, original = message.get_payload()
    assert "bob@x.example" in text.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; gw.example"
    assert blocks[1]["Final-Recipient"] == "rfc822; bob@x.example"
    assert blocks[1]["Status"] == "5.1.1" and blocks[1]["Action"] == "failed"
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@x.example>: no?"
    assert blocks[1]["Remote-MTA"] == "dns; smtp.isp.example"
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"Bcc: this is the body" not in report  # the body is not sent back
    assert headers.split_message(RAW)[0] in report


def _item(state: str, error: str | None) -> QueueItem:
    return QueueItem(
        id=3,
        user="alice",
        route="alice-isp",
        mail_from="alice@isp.example",
        recipients=("bob@x.example", "carol@y.example"),
        size=len(RAW),
        message_id=None,
        state=state,
        queued_at=0,
        expires_at=100,
        next_attempt=0,
        attempts=4,
        last_error=error,
        last_reply=None,
        finished_at=100,
        bounced=False,
    )


def test_bounce_for_failed_and_expired_rows() -> None:
    failed = _parse(
        bounce_for_item(_item(FAILED, "smtp.x refused MAIL FROM: 550 5.7.1 no"), RAW, "gw", 1)
    )
    blocks = failed.get_payload()[1].get_payload()
    assert [b["Status"] for b in blocks[1:]] == ["5.7.1", "5.7.1"]
    expired = _parse(bounce_for_item(_item(EXPIRED, "connection refused"), RAW, "gw", 1))
    blocks = expired.get_payload()[1].get_payload()
    assert [b["Status"] for b in blocks[1:]] == ["4.4.7", "4.4.7"]
    assert "time in the queue ran out" in expired.get_payload()[0].get_payload()
