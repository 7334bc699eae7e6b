"""Server-rendered SVG pictures: hourly bars, a line over time, nothing else.

Pure functions from numbers to SVG text, so they are tested without a browser and the
page needs no JavaScript and no network (it works offline on the LAN). Every picture
carries a ``<title>`` that says in words what it shows (totals, peak, latest), so it
reads without colour and without sight; colours come from CSS classes, never inline
styles, so the page's Content-Security-Policy can forbid inline styles. Odd input is
drawn, never raised: NaN, infinities and negative values count as zero, points outside
the window are dropped, and an empty series draws an empty frame with a note.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Sequence

from gateway.web.text import esc

WIDTH = 480
HEIGHT = 150
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 6, 10, 22
PLOT_W = WIDTH - _LEFT - _RIGHT
PLOT_H = HEIGHT - _TOP - _BOTTOM
DAY = 86400.0


MAX_VALUE = 1e18
"""Largest value drawn as itself (an exabyte, 10^18 messages); larger is drawn at this
height, so that axis arithmetic (rounding to 1-2-5 steps) never overflows a float."""


def clean(value: float) -> float:
    """A drawable value: finite, not negative (anything else is 0), at most MAX_VALUE."""
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return min(v, MAX_VALUE) if math.isfinite(v) and v > 0 else 0.0


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at or above ``value`` (1 for nothing), so that
    axis labels are round numbers."""
    if not value > 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for mantissa in (1.0, 2.0, 5.0, 10.0):
        try:
            candidate = mantissa * 10.0**exponent
        except OverflowError:
            return value
        if candidate >= value and math.isfinite(candidate):
            return candidate
    return value


def nice_max_bytes(value: float) -> float:
    """:func:`nice_max` in binary units, so a byte axis reads ``50 KiB``, not ``48.8 KiB``."""
    if not value > 0 or not math.isfinite(value):
        return nice_max(value)
    unit = 1024.0 ** max(0, min(4, math.floor(math.log(value, 1024))))
    return nice_max(value / unit) * unit


def _n(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _count(value: float) -> str:
    if value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value >= 1 else f"{value:.2g}"


def _frame(title: str, body: list[str], y_max: float, y_label: Callable[[float], str]) -> str:
    axis = []
    for fraction in (0.0, 0.5, 1.0):
        y = _TOP + PLOT_H * (1 - fraction)
        axis.append(
            f'<line class="grid" x1="{_LEFT}" y1="{_n(y)}" x2="{WIDTH - _RIGHT}" ' f'y2="{_n(y)}"/>'
        )
        axis.append(
            f'<text class="axis" x="{_LEFT - 4}" y="{_n(y + 4)}" text-anchor="end">'
            f"{esc(y_label(y_max * fraction))}</text>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'class="chart" role="img" aria-label="{esc(title)}">'
        f"<title>{esc(title)}</title>" + "".join(axis) + "".join(body) + "</svg>"
    )


def _day_ticks(start: float, end: float) -> list[str]:
    """A dashed line at each UTC midnight (each Monday, for windows over 10 days) inside
    the window, labelled with the weekday (or the date); none for windows over 60 days."""
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start or end - start > 60 * DAY:
        return []
    out = []
    weekly = end - start > 10 * DAY
    every = 7 * DAY if weekly else DAY
    offset = 4 * DAY if weekly else 0.0  # the epoch began on a Thursday; weeks on Monday
    tick = math.ceil((start - offset) / every) * every + offset
    while tick < end:
        x = _LEFT + PLOT_W * (tick - start) / (end - start)
        when = datetime.datetime.fromtimestamp(tick, datetime.UTC)
        out.append(
            f'<line class="tick" x1="{_n(x)}" y1="{_TOP}" x2="{_n(x)}" y2="{HEIGHT - _BOTTOM}"/>'
        )
        if x < WIDTH - _RIGHT - 28:  # a label cut by the right edge helps no one
            label = when.strftime("%b %d" if weekly else "%a")
            out.append(f'<text class="axis" x="{_n(x + 3)}" y="{HEIGHT - 6}">{label}</text>')
        tick += every
    return out


def bar_chart(
    values: Sequence[float], *, start: float, step: float, what: str, unit: str = "messages"
) -> str:
    """One bar per ``step`` seconds from ``start`` (e.g. 168 hourly counts for a week).
    The title gives the total and the busiest bucket in words."""
    cleaned = [clean(v) for v in values]
    total = sum(cleaned)
    peak = max(cleaned, default=0.0)
    y_max = nice_max(peak)
    end = start + step * len(cleaned) if math.isfinite(step) else start
    title = f"{what}: {_count(total)} {unit} in all"
    if peak > 0:
        busiest = cleaned.index(peak)
        when = datetime.datetime.fromtimestamp(start + busiest * step, datetime.UTC)
        title += f", busiest hour {when:%a %H}:00 UTC with {_count(peak)}"
    body = _day_ticks(start, end)
    if cleaned:
        width = PLOT_W / len(cleaned)
        for i, v in enumerate(cleaned):
            if v <= 0:
                continue
            h = max(1.0, PLOT_H * v / y_max)
            x = _LEFT + i * width
            body.append(
                f'<rect class="bar" x="{_n(x)}" y="{_n(_TOP + PLOT_H - h)}" '
                f'width="{_n(max(width - 0.5, 0.5))}" height="{_n(h)}"/>'
            )
    if total == 0:
        body.append(_note("nothing fetched in this time"))
    return _frame(title, body, y_max, _count)


def line_chart(
    points: Sequence[tuple[float, float]],
    *,
    start: float,
    end: float,
    what: str,
    y_label: Callable[[float], str] = _count,
    y_nice: Callable[[float], float] = nice_max,
) -> str:
    """A step line of ``(time, value)`` points between ``start`` and ``end``, with the area
    under it shaded; the title gives the latest value."""
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        start, end = 0.0, 1.0
    inside = sorted(
        (float(t), clean(v))
        for t, v in points
        if isinstance(t, int | float) and math.isfinite(t) and start <= t <= end
    )
    y_max = y_nice(max((v for _, v in inside), default=0.0))
    if inside:
        title = f"{what}: {y_label(inside[-1][1])} now"
    else:
        title = f"{what}: no history yet"
    body = _day_ticks(start, end)
    if inside:
        coords = []
        for t, v in inside:
            x = _LEFT + PLOT_W * (t - start) / (end - start)
            y = _TOP + PLOT_H * (1 - v / y_max)
            if coords:
                coords.append((x, coords[-1][1]))  # a step: the value held until now
            coords.append((x, y))
        line = " ".join(f"{_n(x)},{_n(y)}" for x, y in coords)
        base = _TOP + PLOT_H
        area = f"{_n(coords[0][0])},{_n(base)} {line} {_n(coords[-1][0])},{_n(base)}"
        body.append(f'<polygon class="area" points="{area}"/>')
        body.append(f'<polyline class="line" points="{line}"/>')
    else:
        body.append(_note("no history yet"))
    return _frame(title, body, y_max, y_label)


def _note(text: str) -> str:
    return (
        f'<text class="note" x="{_LEFT + PLOT_W / 2:.0f}" y="{_TOP + PLOT_H / 2:.0f}" '
        f'text-anchor="middle">{esc(text)}</text>'
    )
