"""The benchmark table: figures for popgate and its peer, their ratio, and the target verdict.

Every figure is a list of samples (one per repeat) reduced to its median, because this
machine is noisy (identical runs differ by up to 50%, see DOVECOT-NOTES.md). Ratios are
always popgate / peer, whatever the unit, and each target says which way is better.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


def median(samples: Sequence[float]) -> float | None:
    """The median of the samples, or None when a figure could not be taken."""
    return statistics.median(samples) if samples else None


def percentile(samples: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (fraction in 0..1); None for no samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Target:
    """A bound on the ratio popgate/peer (or on popgate's value when there is no peer).

    ``at_least`` True means the measured value must be >= ``bound``; False means <=.
    """

    bound: float
    at_least: bool
    on_ratio: bool = True

    def text(self) -> str:
        sign = ">=" if self.at_least else "<="
        return f"ratio {sign} {self.bound:g}" if self.on_ratio else f"{sign} {self.bound:g}"

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.bound if self.at_least else value <= self.bound


@dataclass
class Row:
    """One line of the table: a figure, its unit, popgate's and the peer's samples."""

    figure: str
    unit: str
    peer: str
    popgate: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)
    target: Target | None = None
    note: str = ""
    digits: int = 1

    @property
    def popgate_value(self) -> float | None:
        return median(self.popgate)

    @property
    def peer_value(self) -> float | None:
        return median(self.other)

    @property
    def ratio(self) -> float | None:
        mine, theirs = self.popgate_value, self.peer_value
        if mine is None or theirs is None or theirs == 0:
            return None
        return mine / theirs

    def verdict(self) -> bool | None:
        if self.target is None:
            return None
        value = self.ratio if self.target.on_ratio else self.popgate_value
        return self.target.met(value)


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _verdict_text(row: Row) -> str:
    verdict = row.verdict()
    if row.target is None:
        return "-"
    if verdict is None:
        return "not measured"
    return "met" if verdict else "MISSED"


COLUMNS = ("figure", "unit", "popgate", "peer", "peer value", "ratio", "target", "verdict")


def table(rows: Sequence[Row]) -> str:
    """A Markdown table (readable as plain text too) of every row, in order."""
    lines = [
        [
            row.figure,
            row.unit,
            _number(row.popgate_value, row.digits),
            row.peer or "-",
            _number(row.peer_value, row.digits) if row.peer else "-",
            (f"{row.ratio:.2f}" if row.ratio is not None else "n/a") if row.peer else "-",
            row.target.text() if row.target else "-",
            _verdict_text(row),
        ]
        for row in rows
    ]
    widths = [max([len(c), *(len(line[i]) for line in lines)]) for i, c in enumerate(COLUMNS)]

    def render(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [render(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(render(line) for line in lines)
    return "\n".join(out)


def notes(rows: Sequence[Row]) -> str:
    """The per-row notes (samples and caveats) that do not fit in the table."""
    out = []
    for row in rows:
        samples = ", ".join(_number(v, row.digits) for v in row.popgate)
        text = f"- {row.figure}: popgate samples [{samples}]"
        if row.peer:
            peer_samples = ", ".join(_number(v, row.digits) for v in row.other)
            text += f"; {row.peer} samples [{peer_samples}]"
        if row.note:
            text += f". {row.note}"
        out.append(text)
    return "\n".join(out)


def as_json(rows: Sequence[Row]) -> list[dict[str, object]]:
    """The rows as plain data, for --json."""
    return [
        {
            "figure": row.figure,
            "unit": row.unit,
            "peer": row.peer,
            "popgate_samples": row.popgate,
            "peer_samples": row.other,
            "popgate": row.popgate_value,
            "peer_value": row.peer_value,
            "ratio": row.ratio,
            "target": row.target.text() if row.target else None,
            "met": row.verdict(),
            "note": row.note,
        }
        for row in rows
    ]
