"""Pure rendering for the web page: escaping (gateway/web/text.py), SVG pictures
(gateway/web/svg.py, property-tested on odd series) and the HTML pages built from the
status dict (gateway/web/model.py, gateway/web/pages.py)."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from gateway.store.memory_timeseries import MemoryTimeSeries
from gateway.store.timeseries import Point
from gateway.web import pages, svg
from gateway.web.history import FETCHED_MESSAGES, STORE_BYTES
from gateway.web.model import page_view, state_text
from gateway.web.text import esc, visible

NOW = 1_750_000_000.0
SVG_NS = "{http://www.w3.org/2000/svg}"


# ---- escaping -------------------------------------------------------------------------------


def test_html_metacharacters_are_escaped() -> None:
    assert esc("<script>\"&'") == "&lt;script&gt;&quot;&amp;&#x27;"


def test_controls_separators_and_bidi_overrides_become_visible_text() -> None:
    assert visible("a\x00b\x1bc\x7f\x85") == "a\\x00b\\x1bc\\x7f\\x85"
    assert visible("line\nbreak\ttab\r") == "line break tab "
    assert visible("gnp\u202eexe.") == "gnp\\u202eexe."
    assert visible("a\u2028b") == "a\\u2028b"
    assert visible("\ud800") == "\ufffd"
    assert visible("Jürgen 👪 東京") == "Jürgen 👪 東京"


@given(st.text())
def test_escaped_text_is_well_formed_xml_without_markup(text: str) -> None:
    escaped = esc(text)
    assert "<" not in escaped and ">" not in escaped and '"' not in escaped
    ET.fromstring(f"<p>{escaped}</p>".encode())  # no control characters XML refuses


# ---- SVG --------------------------------------------------------------------------------------

ODD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**20), 10**20),
    st.just(0.0),
)


def _numbers(root: ET.Element) -> list[float]:
    out = []
    for el in root.iter():
        for name in ("x", "y", "x1", "y1", "x2", "y2", "width", "height"):
            if name in el.attrib:
                out.append(float(el.attrib[name]))
        if "points" in el.attrib:
            out += [float(n) for n in re.split(r"[ ,]", el.attrib["points"]) if n]
    return out


def _check(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == SVG_NS + "svg"
    assert root.find(SVG_NS + "title") is not None
    for n in _numbers(root):
        assert math.isfinite(n) and -1 <= n <= svg.WIDTH + 1
    assert "style=" not in text  # the CSP forbids inline styles
    return root


@given(st.lists(ODD, max_size=200), st.floats(0, 2e9), st.sampled_from([60.0, 3600.0]))
def test_bar_charts_draw_any_series(values: list[float], start: float, step: float) -> None:
    root = _check(svg.bar_chart(values, start=start, step=step, what="Odd <series>"))
    bars = root.findall(f"{SVG_NS}rect")
    assert len(bars) == sum(1 for v in values if svg.clean(v) > 0)


@given(
    st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True), ODD), max_size=100),
    st.floats(-1e10, 1e10),
    st.floats(-1e10, 1e10),
)
def test_line_charts_draw_any_points(points: list, start: float, end: float) -> None:
    _check(svg.line_chart(points, start=start, end=end, what="odd"))


def test_bar_chart_says_in_words_what_it_shows() -> None:
    values = [0.0] * 168
    values[30] = 7
    values[100] = 2
    text = svg.bar_chart(values, start=NOW - 168 * 3600, step=3600.0, what="Per hour")
    title = ET.fromstring(text).find(SVG_NS + "title").text
    assert title.startswith("Per hour: 9 messages in all, busiest hour ")
    assert title.endswith("with 7")


def test_empty_series_draw_a_frame_with_a_note() -> None:
    assert "no history yet" in svg.line_chart([], start=0, end=10, what="x")
    assert "nothing fetched" in svg.bar_chart([0] * 5, start=0, step=1, what="x")


def test_nice_axis_maxima() -> None:
    assert [svg.nice_max(v) for v in (0, 0.3, 1, 3, 7, 11, 999)] == [1, 0.5, 1, 5, 10, 20, 1000]


# ---- the page from a status dict -----------------------------------------------------------


def _upstream(**kw: object) -> dict:
    base = {
        "name": "home",
        "owner": "alice",
        "folder": "INBOX",
        "host": "pop.example.org",
        "state": "ok",
        "last_success": NOW - 60,
        "messages_fetched": 5,
        "next_poll_in": 240.0,
        "consecutive_failures": 0,
    }
    return {**base, **kw}


def test_failing_states_are_written_in_words() -> None:
    one = _upstream(state="failing", consecutive_failures=1, last_error_at=NOW - 30)
    assert state_text(one, NOW) == "Failing since 2025-06-15 15:06 UTC (1 failed pass in a row)"
    many = _upstream(state="failing", consecutive_failures=3, last_error_at=NOW - 30)
    assert state_text(many, NOW).startswith("Failing (3 failed passes in a row, the last 30s ago")
    since = _upstream(state="failing", consecutive_failures=3, failing_since=NOW - 3600)
    assert state_text(since, NOW).startswith("Failing since 2025-06-15 14:06 UTC")
    assert state_text(_upstream(state="waiting"), NOW) == "Waiting for the first pass"


def _page(status: dict, series: MemoryTimeSeries | None = None, **kw: object) -> str:
    view = page_view(
        status,
        user=kw.pop("user", "alice"),  # type: ignore[arg-type]
        admin=False,
        csrf="TOKEN",
        series=series,
        quota_limit=lambda owner: 1000 if owner == "alice" else None,
        queue=kw.pop("queue", None),  # type: ignore[arg-type]
    )
    return pages.status_page(view)


def test_the_page_escapes_every_user_controlled_string() -> None:
    evil = "<img src=x onerror=alert(1)>\x1b[31m\u202e"
    status = {
        "now": NOW,
        "upstreams": [
            _upstream(
                name=evil,
                owner=evil,
                folder=evil,
                host=evil,
                state="failing",
                consecutive_failures=1,
                last_error=evil,
                last_error_kind="auth",
            )
        ],
        "users": [
            {
                "owner": evil,
                "messages": 1,
                "size_bytes": 10,
                "mailboxes": [{"mailbox": evil, "messages": 1, "unseen": 0, "size_bytes": 10}],
            }
        ],
    }
    html = _page(status, MemoryTimeSeries(), user=evil)
    assert "<img" not in html and "\x1b" not in html and "\u202e" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;\\x1b[31m\\u202e" in html
    assert "wrong password" in html


def test_optional_fields_render_only_when_present() -> None:
    plain = _page({"now": NOW, "upstreams": [_upstream()], "users": []})
    assert "Node" not in plain and "OAuth2" not in plain and "Outgoing mail" not in plain
    rich = _page(
        {
            "now": NOW,
            "upstreams": [
                _upstream(
                    node="node-2",
                    oauth2={"expires_at": NOW + 3600, "login_command": "popgate oauth login home"},
                )
            ],
            "users": [],
        },
        queue={"count": 1, "items": [{"owner": "alice", "recipient": "x@example.org"}]},
    )
    assert "node-2" in rich
    assert "<code>popgate oauth login home</code>" in rich
    assert "Outgoing mail queue (1)" in rich and "x@example.org" in rich


def test_counts_and_pictures_come_from_the_history() -> None:
    series = MemoryTimeSeries()
    counts = [(10 * 86400, 10), (3 * 86400, 12), (3600, 14), (60, 20)]  # a counter
    series.record(FETCHED_MESSAGES + "home", [Point(NOW - ago, n) for ago, n in counts])
    series.record(STORE_BYTES + "alice", [Point(NOW - 86400, 400), Point(NOW - 60, 800)])
    status = {
        "now": NOW,
        "upstreams": [_upstream()],
        "users": [{"owner": "alice", "messages": 3, "size_bytes": 800, "mailboxes": []}],
    }
    html = _page(status, series)
    assert '<b class="count-day">8</b>' in html
    assert '<b class="count-week">10</b>' in html
    assert "Messages per hour from home, 7 days: 10 messages in all" in html
    assert "800 B of 1000 B used (80%) — nearly full" in html
    assert "Mail kept by alice, 30 days: 800 B now" in html
