"""Server-side SVG charts for the dashboard: pure functions from numbers to standalone, accessible markup.

Each chart is one `<svg role="img">` with a visible title, axis labels, a legend, and a `<title>`/`<desc>`
pair that screen readers announce (the text alternative). Right-to-left charts mirror the plot: the first
category sits at the right and the value axis on the right, as a Persian reader reads a time line. Every
label is escaped here, so names an admin or a customer typed can never become markup. Output is
well-formed XML, so tests (and anyone) can parse it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from html import escape
from typing import NamedTuple

#: Colour-blind-safe series colours (Okabe-Ito), in order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

WIDTH, HEIGHT = 720, 300
_TOP = 68  # room for the title and the legend
_BOTTOM = 56  # category labels and the axis label
_VALUE_AXIS = 64  # the value axis's tick labels and its label
_FAR_SIDE = 16
_MAX_CATEGORY_LABELS = 12

Number = Callable[[float], str]


class Series(NamedTuple):
    name: str
    values: Sequence[float]


class Scale(NamedTuple):
    """The value axis: 0..top, with a tick every `step`."""

    top: float
    step: float

    def ticks(self) -> list[float]:
        count = round(self.top / self.step)
        return [self.step * i for i in range(count + 1)]


def nice_scale(largest: float, *, integer: bool = True, ticks: int = 4) -> Scale:
    """A value axis from 0 that holds `largest` with about `ticks` round steps (1, 2, 2.5 or 5 times a
    power of ten; for counts whole steps of 1, 2 or 5 times a power of ten)."""
    if not largest > 0 or not math.isfinite(largest):
        return Scale(1.0, 1.0)
    raw = largest / ticks
    power = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)  # 2.5 would make counts' ticks fractional
    step = next(m * power for m in steps if m * power >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    return Scale(step * math.ceil(largest / step - 1e-9), step)


class _Frame:
    """Where things go on the canvas; mirrors left and right for right-to-left charts."""

    def __init__(self, categories: int, rtl: bool) -> None:
        self.rtl = rtl
        self.count = max(categories, 1)
        self.left = _FAR_SIDE if rtl else _VALUE_AXIS
        self.right = WIDTH - (_VALUE_AXIS if rtl else _FAR_SIDE)
        self.top, self.bottom = _TOP, HEIGHT - _BOTTOM
        self.band = (self.right - self.left) / self.count

    @property
    def height(self) -> float:
        return self.bottom - self.top

    def band_start(self, index: int) -> float:
        """The left edge of category `index`'s band (counted from the right in right-to-left charts)."""
        return self.right - (index + 1) * self.band if self.rtl else self.left + index * self.band

    def centre(self, index: int) -> float:
        return self.band_start(index) + self.band / 2

    def y(self, value: float, scale: Scale, low: float = 0.0) -> float:
        return self.bottom - (value - low) / (scale.top - low) * self.height

    @property
    def axis_x(self) -> float:
        """Where the value axis's line is drawn."""
        return self.right if self.rtl else self.left

    def anchor(self, side: str) -> str:
        """text-anchor that pins text to its physical `side` ("left"/"right") under the chart's direction."""
        if side == "middle":
            return "middle"
        return "start" if (side == "left") != self.rtl else "end"


def _f(value: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _safe_id(chart_id: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", chart_id)
    return cleaned if cleaned[:1].isalpha() else f"chart-{cleaned}"


def _open(chart_id: str, title: str, desc: str, frame: _Frame, kind: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{kind}" id="{chart_id}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" preserveAspectRatio="xMidYMid meet" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" direction="{"rtl" if frame.rtl else "ltr"}" '
        f'font-size="12">',
        f'<title id="{chart_id}-title">{_e(title)}</title>',
        f'<desc id="{chart_id}-desc">{_e(desc)}</desc>',
        f'<text class="chart-title" x="{WIDTH - _FAR_SIDE if frame.rtl else _FAR_SIDE}" y="20" '
        f'text-anchor="start" font-size="15" font-weight="bold">{_e(title)}</text>',
    ]


def _legend(frame: _Frame, entries: Sequence[tuple[str, str]], kind: str = "box") -> list[str]:
    """Swatches and names in a row under the title, flowing from the reading side."""
    out = ['<g class="legend">']
    x, y = (WIDTH - _FAR_SIDE if frame.rtl else _FAR_SIDE), 46
    for name, colour in entries:
        width = 14 + 7 * len(name) + 20  # a rough measure: enough for the swatch, the name and a gap
        swatch_x = x - 12 if frame.rtl else x
        if kind == "line":
            out.append(f'<line x1="{_f(swatch_x)}" y1="{y - 4}" x2="{_f(swatch_x + 12)}" y2="{y - 4}" '
                       f'stroke="{colour}" stroke-width="3"/>')
        else:
            out.append(f'<rect class="swatch" x="{_f(swatch_x)}" y="{y - 10}" width="12" height="12" fill="{colour}"/>')
        text_x = x - 16 if frame.rtl else x + 16
        out.append(f'<text x="{_f(text_x)}" y="{y}" text-anchor="start">{_e(name)}</text>')
        x = x - width if frame.rtl else x + width
    out.append("</g>")
    return out


def _axes(frame: _Frame, scale: Scale, categories: Sequence[str], x_label: str, y_label: str,
          number: Number, low: float = 0.0) -> list[str]:
    """Grid lines with the value ticks, the category labels (thinned to fit), and both axis labels."""
    out = ['<g class="axes">']
    tick_side = "left" if frame.rtl else "right"  # tick labels sit just outside the plot
    tick_x = frame.axis_x + (6 if frame.rtl else -6)
    value = low
    while value <= scale.top + 1e-9:
        y = frame.y(value, scale, low)
        out.append(f'<line class="grid" x1="{_f(frame.left)}" y1="{_f(y)}" x2="{_f(frame.right)}" y2="{_f(y)}" '
                   f'stroke="#d0d7de" stroke-width="1"/>')
        out.append(f'<text class="tick" x="{_f(tick_x)}" y="{_f(y + 4)}" text-anchor="{frame.anchor(tick_side)}">'
                   f'{_e(number(value))}</text>')
        value += scale.step
    out.append(f'<line class="axis" x1="{_f(frame.axis_x)}" y1="{_f(frame.top)}" x2="{_f(frame.axis_x)}" '
               f'y2="{_f(frame.bottom)}" stroke="#57606a" stroke-width="1"/>')
    out.append(f'<line class="axis" x1="{_f(frame.left)}" y1="{_f(frame.bottom)}" x2="{_f(frame.right)}" '
               f'y2="{_f(frame.bottom)}" stroke="#57606a" stroke-width="1"/>')
    every = max(1, math.ceil(len(categories) / _MAX_CATEGORY_LABELS))
    for index, name in enumerate(categories):
        if index % every == 0:
            out.append(f'<text class="category" x="{_f(frame.centre(index))}" y="{_f(frame.bottom + 16)}" '
                       f'text-anchor="middle">{_e(name)}</text>')
    out.append(f'<text class="axis-label" x="{_f((frame.left + frame.right) / 2)}" y="{HEIGHT - 10}" '
               f'text-anchor="middle">{_e(x_label)}</text>')
    label_x = WIDTH - 14 if frame.rtl else 14
    middle = (frame.top + frame.bottom) / 2
    out.append(f'<text class="axis-label" x="{label_x}" y="{_f(middle)}" text-anchor="middle" '
               f'transform="rotate(-90 {label_x} {_f(middle)})">{_e(y_label)}</text>')
    out.append("</g>")
    return out


def _check(categories: Sequence[str], series: Sequence[Series]) -> None:
    for one in series:
        if len(one.values) != len(categories):
            raise ValueError(f"series {one.name!r} has {len(one.values)} values for {len(categories)} categories")
        if any(v is not None and (v < 0 or not math.isfinite(v)) for v in one.values):
            raise ValueError(f"series {one.name!r} has a negative or non-finite value")


def stacked_bars(chart_id: str, *, title: str, desc: str, categories: Sequence[str], series: Sequence[Series],
                 x_label: str, y_label: str, rtl: bool = False, number: Number = lambda v: f"{v:g}") -> str:
    """One bar per category, made of one segment per series stacked in series order from the axis; a
    segment's height is its value on a scale from 0 that holds the tallest stack. Zero segments are not
    drawn. Each segment carries its figure as a tooltip (`<title>`) and in `data-value`."""
    _check(categories, series)
    chart_id = _safe_id(chart_id)
    frame = _Frame(len(categories), rtl)
    totals = [sum(one.values[i] for one in series) for i in range(len(categories))]
    scale = nice_scale(max(totals, default=0))
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(series))]
    out = _open(chart_id, title, desc, frame, "bars")
    out += _legend(frame, [(one.name, colour) for one, colour in zip(series, colours)])
    out += _axes(frame, scale, categories, x_label, y_label, number)
    width = max(1.0, frame.band * 0.7)
    out.append('<g class="bars">')
    for index, category in enumerate(categories):
        x = frame.band_start(index) + (frame.band - width) / 2
        base = 0.0
        for one, colour in zip(series, colours):
            value = one.values[index]
            if value <= 0:
                continue
            top, bottom = frame.y(base + value, scale), frame.y(base, scale)
            label = f"{category}: {one.name} {number(value)}" if len(series) > 1 else f"{category}: {number(value)}"
            out.append(f'<rect class="bar" x="{_f(x)}" y="{_f(top)}" width="{_f(width)}" height="{_f(bottom - top)}" '
                       f'fill="{colour}" data-series="{_e(one.name)}" data-value="{value:g}">'
                       f'<title>{_e(label)}</title></rect>')
            base += value
    out.append("</g></svg>")
    return "\n".join(out)


def bars(chart_id: str, *, title: str, desc: str, categories: Sequence[str], values: Sequence[float],
         series_name: str, x_label: str, y_label: str, rtl: bool = False,
         number: Number = lambda v: f"{v:g}") -> str:
    """Plain bars: one series, heights proportional to `values` on a scale from 0."""
    return stacked_bars(chart_id, title=title, desc=desc, categories=categories,
                        series=[Series(series_name, values)], x_label=x_label, y_label=y_label, rtl=rtl,
                        number=number)


def line(chart_id: str, *, title: str, desc: str, categories: Sequence[str], values: Sequence[float | None],
         series_name: str, x_label: str, y_label: str, low: float = 0.0, high: float | None = None,
         step: float | None = None, rtl: bool = False, number: Number = lambda v: f"{v:g}") -> str:
    """A line through the categories that have a value (None: no point that day; the line joins the
    neighbours on either side), with a marker per point, on a value axis from `low` to `high` (by
    default 0 to what holds the largest value)."""
    _check(categories, [Series(series_name, [0.0 if v is None else v for v in values])])
    chart_id = _safe_id(chart_id)
    frame = _Frame(len(categories), rtl)
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    if high is None:
        scale = nice_scale(max((v for _, v in present), default=0), integer=False)
    else:
        scale = Scale(high, step or (high - low) / 4)
    colour = PALETTE[0]
    out = _open(chart_id, title, desc, frame, "line")
    out += _legend(frame, [(series_name, colour)], kind="line")
    out += _axes(frame, scale, categories, x_label, y_label, number, low)
    points = [(frame.centre(i), frame.y(min(max(v, low), scale.top), scale, low), i, v) for i, v in present]
    out.append('<g class="series">')
    if len(points) > 1:
        path = " ".join(f"{_f(x)},{_f(y)}" for x, y, _, _ in points)
        out.append(f'<polyline class="line" points="{path}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
    for x, y, index, value in points:
        out.append(f'<circle class="point" cx="{_f(x)}" cy="{_f(y)}" r="4" fill="{colour}" data-value="{value:g}">'
                   f'<title>{_e(categories[index])}: {_e(number(value))}</title></circle>')
    out.append("</g></svg>")
    return "\n".join(out)
