"""INTERNALDATE of fetched mail: when the provider received it (topmost Received:)."""

import datetime

from hypothesis import given
from hypothesis import strategies as st

from gateway.pop3.arrival import arrival_time

FETCHED = datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.UTC)


def test_topmost_received_header_gives_the_arrival_time():
    raw = (
        b"Received: from mx.example.net by pop.example.net with ESMTPS id 42\r\n"
        b"\tfor <alice@example.net>; Tue, 3 Mar 2020 10:15:00 +0100\r\n"
        b"Received: from sender by mx.example.net; Tue, 3 Mar 2020 10:14:00 +0100\r\n"
        b"Subject: hi\r\n\r\nReceived: not a header; Wed, 4 Mar 2020 00:00:00 +0000\r\n"
    )
    when = arrival_time(raw, FETCHED)
    assert when == datetime.datetime(
        2020, 3, 3, 10, 15, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )


def test_no_received_header_means_fetch_time():
    assert arrival_time(b"Subject: x\r\n\r\nbody", FETCHED) == FETCHED


def test_received_only_in_body_is_ignored():
    raw = b"Subject: x\r\n\r\nReceived: by x; Tue, 3 Mar 2020 10:15:00 +0100\r\n"
    assert arrival_time(raw, FETCHED) == FETCHED


def test_future_or_garbage_dates_fall_back_to_fetch_time():
    future = b"Received: by x; Tue, 3 Mar 2099 10:15:00 +0100\r\n\r\n"
    garbage = b"Received: by x; yesterday-ish\r\n\r\n"
    no_date = b"Received: by x with SMTP\r\n\r\n"
    for raw in (future, garbage, no_date):
        assert arrival_time(raw, FETCHED) == FETCHED


@given(st.binary(max_size=2000))
def test_never_raises_and_never_later_than_the_fetch(raw):
    when = arrival_time(raw, FETCHED)
    assert when <= FETCHED and when.tzinfo is not None
