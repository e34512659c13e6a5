"""The dashboard's charts: inline SVG written on the server (no scripts, no CDN, no fonts of their own).

Pure functions from numbers to markup. Colours and line styles come from classes the dashboard's
stylesheet defines (the pages' Content-Security-Policy allows no inline styles); every text that comes
from data (labels, series names, notes) goes through ``escape``. Each chart is an ``<svg role="img">``
with a ``<title>``, and each point carries a ``<title>`` with its exact value, so a hover (or a screen
reader) gives the number the position only suggests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

Fmt = Callable[[float], str]

WIDTH, HEIGHT = 560, 220
PAD_L, PAD_R, PAD_T, PAD_B = 64, 12, 28, 34


@dataclass(frozen=True)
class Series:
    """One line (or bar set) of a chart: a value per label, None where nothing was measured."""

    name: str
    values: Sequence[float | None]
    css: str = "s1"  # the stylesheet's colour class: s1 .. s4
    lows: Sequence[float | None] | None = None  # 95% interval per point, drawn as a whisker
    highs: Sequence[float | None] | None = None
    dashed: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, at most ``count``+1
    ticks, the first <= lo and the last >= hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("tick range must be finite")
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo < 1e-9 * max(1.0, abs(lo)):  # one value (or float noise): a range around it
        hi = lo + max(abs(lo), 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step)
    last = math.ceil(hi / step)
    ticks = [k * step for k in range(first, max(last, first + 1) + 1)]
    return ticks


def _open(title: str, width: int, height: int, css: str = "chart") -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="{css}" role="img" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}"><title>{escape(title)}</title>']


def _close(parts: list[str]) -> Markup:
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text from data above went through escape()


def _label_step(labels: Sequence[str], plot_w: float, min_gap: float = 56) -> int:
    return max(1, math.ceil(len(labels) / max(1.0, plot_w / min_gap)))


def _y_axis(parts: list[str], ticks: Sequence[float], y: Callable[[float], float], fmt: Fmt, width: int) -> None:
    for t in ticks:
        parts.append(f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{y(t):.1f}" y2="{y(t):.1f}" class="grid"/>'
                     f'<text x="{PAD_L - 6}" y="{y(t) + 4:.1f}" class="axis" text-anchor="end">'
                     f'{escape(fmt(t))}</text>')


def _x_labels(parts: list[str], labels: Sequence[str], x: Callable[[int], float], height: int,
              plot_w: float) -> None:
    step = _label_step(labels, plot_w)
    for i, label in enumerate(labels):
        if i % step == 0 or (i == len(labels) - 1 and (len(labels) - 1) % step >= step / 2):
            parts.append(f'<text x="{x(i):.1f}" y="{height - 12}" class="axis" text-anchor="middle">'
                         f'{escape(label)}</text>')


def _legend(parts: list[str], series: Sequence[Series], width: int) -> None:
    if len(series) < 2:
        return
    x = width - PAD_R
    for s in reversed(series):
        text_w = 7 * len(s.name) + 16
        x -= text_w
        parts.append(f'<rect x="{x:.0f}" y="8" width="10" height="10" class="swatch {escape(s.css)}"/>'
                     f'<text x="{x + 14:.0f}" y="17" class="axis">{escape(s.name)}</text>')


def _empty(parts: list[str], width: int, height: int, text: str) -> None:
    parts.append(f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" class="axis empty" text-anchor="middle">'
                 f'{escape(text)}</text>')


def line_chart(labels: Sequence[str], series: Sequence[Series], *, title: str, fmt: Fmt,
               y_min: float | None = None, y_max: float | None = None, width: int = WIDTH,
               height: int = HEIGHT, empty: str = "nothing measured") -> Markup:
    """Values over ordered labels as dots joined by lines (a gap where a value is None), with 95% interval
    whiskers where a series has them. ``y_min``/``y_max`` pin the axis (0 and 1 for shares)."""
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(labels)} labels")
    plot_w, plot_h = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    parts = _open(title, width, height)
    data = [v for s in series for seq in (s.values, s.lows or (), s.highs or ()) for v in seq if v is not None]
    if not data:
        _x_labels(parts, labels, lambda i: PAD_L + plot_w * (i + 0.5) / max(len(labels), 1), height, plot_w)
        _empty(parts, width, height, empty)
        return _close(parts)
    lo = min(data) if y_min is None else min(y_min, *data)
    hi = max(data) if y_max is None else max(y_max, *data)
    ticks = nice_ticks(lo, hi)
    t_lo, t_hi = ticks[0], ticks[-1]

    def y(v: float) -> float:
        return PAD_T + plot_h * (1 - (v - t_lo) / (t_hi - t_lo))

    def x(i: int) -> float:
        return PAD_L + plot_w * (i + 0.5) / max(len(labels), 1)

    _y_axis(parts, ticks, y, fmt, width)
    _x_labels(parts, labels, x, height, plot_w)
    for s in series:
        css = escape(s.css)
        run: list[str] = []
        runs: list[list[str]] = []
        for i, v in enumerate(s.values):
            if v is None:
                if run:
                    runs.append(run)
                run = []
                continue
            run.append(f"{x(i):.1f},{y(v):.1f}")
        if run:
            runs.append(run)
        for r in runs:
            if len(r) > 1:
                parts.append(f'<polyline points="{" ".join(r)}" class="line {css}'
                             f'{" dashed" if s.dashed else ""}"/>')
        for i, v in enumerate(s.values):
            if v is None:
                continue
            low = s.lows[i] if s.lows is not None else None
            high = s.highs[i] if s.highs is not None else None
            note = f" (95% CI {fmt(low)} to {fmt(high)})" if low is not None and high is not None else ""
            if low is not None and high is not None:
                parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(low):.1f}" y2="{y(high):.1f}" '
                             f'class="ci {css}"/>')
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3.5" class="dot {css}"><title>'
                         f'{escape(s.name)}, {escape(labels[i])}: {escape(fmt(v))}{escape(note)}</title></circle>')
    _legend(parts, series, width)
    return _close(parts)


def bar_chart(labels: Sequence[str], series: Sequence[Series], *, title: str, fmt: Fmt,
              marks: Mapping[int, str] | None = None, width: int = WIDTH, height: int = HEIGHT,
              empty: str = "nothing measured") -> Markup:
    """Bars per label from 0; a second series is drawn as a narrower bar inside the first (e.g. compensated
    tickets inside tickets). ``marks`` flags labels (index -> note) with a triangle above the bar: spikes."""
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(labels)} labels")
    marks = marks or {}
    plot_w, plot_h = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    parts = _open(title, width, height)
    data = [v for s in series for v in s.values if v is not None]
    if not data or not labels:
        _empty(parts, width, height, empty)
        return _close(parts)
    ticks = nice_ticks(min(0.0, *data), max(0.0, *data))
    t_lo, t_hi = ticks[0], ticks[-1]
    slot = plot_w / len(labels)

    def y(v: float) -> float:
        return PAD_T + plot_h * (1 - (v - t_lo) / (t_hi - t_lo))

    def x(i: int) -> float:
        return PAD_L + slot * (i + 0.5)

    _y_axis(parts, ticks, y, fmt, width)
    _x_labels(parts, labels, x, height, plot_w)
    for k, s in enumerate(series[:2]):
        bar_w = max(1.0, slot * (0.8 if k == 0 else 0.45))
        for i, v in enumerate(s.values):
            if v is None:
                continue
            top, base = y(max(v, 0.0)), y(min(v, 0.0))
            parts.append(f'<rect x="{x(i) - bar_w / 2:.1f}" y="{top:.1f}" width="{bar_w:.1f}" '
                         f'height="{max(base - top, 0.0):.1f}" class="bar {escape(s.css)}"><title>'
                         f'{escape(s.name)}, {escape(labels[i])}: {escape(fmt(v))}</title></rect>')
    for i, note in sorted(marks.items()):
        if not 0 <= i < len(labels):
            continue
        peak = max((s.values[i] or 0.0) for s in series) if series else 0.0
        tip = y(max(peak, 0.0)) - 3
        parts.append(f'<path d="M{x(i) - 5:.1f},{tip - 9:.1f} L{x(i) + 5:.1f},{tip - 9:.1f} L{x(i):.1f},{tip:.1f} Z" '
                     f'class="spike-mark"><title>{escape(labels[i])}: {escape(note)}</title></path>')
    _legend(parts, series, width)
    return _close(parts)


def burndown_chart(labels: Sequence[str], used: Sequence[int | None], *, pace: Sequence[int | None] | None,
                   limit: int | None, projected_end: int | None, title: str, fmt: Fmt, width: int = WIDTH,
                   height: int = 260) -> Markup:
    """A budget period by day: usage so far (solid; None for days still to come), the pace line (the limit
    spread evenly over the days, dashed), the limit (a level line) and the projection of the usage so far
    to the period's end (dotted, from the last day with usage to the last day)."""
    if len(used) != len(labels) or (pace is not None and len(pace) != len(labels)):
        raise ValueError("used and pace need one value per day")
    plot_w, plot_h = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    parts = _open(title, width, height)
    if not labels:
        _empty(parts, width, height, "no days")
        return _close(parts)
    data = [float(v) for v in used if v is not None] + [float(v) for v in pace or () if v is not None]
    data += [float(v) for v in (limit, projected_end) if v is not None]
    ticks = nice_ticks(min([0.0, *data]), max([0.0, *data]) or 1.0)
    t_lo, t_hi = ticks[0], ticks[-1]

    def y(v: float) -> float:
        return PAD_T + plot_h * (1 - (v - t_lo) / (t_hi - t_lo))

    def x(i: int) -> float:
        return PAD_L + plot_w * (i + 0.5) / len(labels)

    _y_axis(parts, ticks, y, fmt, width)
    _x_labels(parts, labels, x, height, plot_w)
    if limit is not None:
        parts.append(f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{y(limit):.1f}" y2="{y(limit):.1f}" '
                     f'class="limit"><title>limit {escape(fmt(limit))}</title></line>'
                     f'<text x="{width - PAD_R - 4}" y="{y(limit) - 4:.1f}" class="axis" text-anchor="end">'
                     f'limit {escape(fmt(limit))}</text>')
    if pace is not None:
        points = [f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(pace) if v is not None]
        if len(points) > 1:
            parts.append(f'<polyline points="{" ".join(points)}" class="line pace dashed"><title>pace: the limit '
                         'spread evenly over the days</title></polyline>')
    elapsed = [(i, v) for i, v in enumerate(used) if v is not None]
    if elapsed:
        points = [f"{x(i):.1f},{y(v):.1f}" for i, v in elapsed]
        if len(points) > 1:
            parts.append(f'<polyline points="{" ".join(points)}" class="line used"/>')
        for i, v in elapsed:
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" class="dot used"><title>'
                         f'{escape(labels[i])}: used {escape(fmt(v))}</title></circle>')
        last_i, last_v = elapsed[-1]
        if projected_end is not None and last_i < len(labels) - 1:
            parts.append(f'<line x1="{x(last_i):.1f}" y1="{y(last_v):.1f}" x2="{x(len(labels) - 1):.1f}" '
                         f'y2="{y(projected_end):.1f}" class="projection"><title>projected at the end: '
                         f'{escape(fmt(projected_end))}</title></line>')
    legend = [("line used", "used")] + ([("line pace dashed", "pace")] if pace is not None else [])
    legend += [("projection", "projection")] if projected_end is not None else []
    parts.append('<g class="legend">')
    for k, (css, name) in enumerate(legend):
        x0 = PAD_L + 80 * k
        parts.append(f'<line x1="{x0}" x2="{x0 + 18}" y1="13" y2="13" class="{css}"/>'
                     f'<text x="{x0 + 22}" y="17" class="axis">{name}</text>')
    parts.append("</g>")
    return _close(parts)


def hbar_chart(rows: Sequence[tuple[str, float, float | None]], *, title: str, fmt: Fmt, width: int = WIDTH,
               row: int = 22) -> Markup:
    """Horizontal bars per key (this period) with a tick at the previous period's value."""
    pad_l, pad_r, pad_t = 150, 90, 6
    height = pad_t * 2 + row * max(len(rows), 1)
    plot_w = width - pad_l - pad_r
    parts = _open(title, width, height)
    if not rows:
        parts.append(f'<text x="{pad_l}" y="{pad_t + 14}" class="axis empty">nothing in this period</text>')
        return _close(parts)
    top = max([max(v, p or 0.0) for _, v, p in rows] + [0.0]) or 1.0

    def x(v: float) -> float:
        return pad_l + plot_w * max(v, 0.0) / top

    for i, (label, value, previous) in enumerate(rows):
        y0 = pad_t + i * row
        mid = y0 + row / 2
        shown = label if len(label) <= 22 else label[:21] + "\u2026"
        parts.append(f'<text x="{pad_l - 6}" y="{mid + 4:.1f}" class="axis" text-anchor="end">{escape(shown)}'
                     f'<title>{escape(label)}</title></text>'
                     f'<rect x="{pad_l}" y="{y0 + 4:.1f}" width="{x(value) - pad_l:.1f}" height="{row - 8}" '
                     f'class="bar s1"><title>{escape(label)}: {escape(fmt(value))}'
                     + (f", previous period {escape(fmt(previous))}" if previous is not None else "")
                     + "</title></rect>")
        if previous is not None:
            parts.append(f'<line x1="{x(previous):.1f}" x2="{x(previous):.1f}" y1="{y0 + 2:.1f}" '
                         f'y2="{y0 + row - 2:.1f}" class="previous"/>')
        parts.append(f'<text x="{max(x(value), x(previous or 0.0)) + 4:.1f}" y="{mid + 4:.1f}" class="axis">'
                     f'{escape(fmt(value))}</text>')
    return _close(parts)


def sparkline(values: Sequence[float | None], *, title: str, marks: Mapping[int, str] | None = None,
              width: int = 180, height: int = 34) -> Markup:
    """A small line of a key's daily counts; ``marks`` (index -> note) are spikes, drawn as red dots."""
    marks = marks or {}
    parts = _open(title, width, height, css="spark")
    data = [v for v in values if v is not None]
    if not data:
        return _close(parts)
    top = max(data) or 1.0
    n = len(values)

    def x(i: int) -> float:
        return 2 + (width - 4) * (i / max(n - 1, 1))

    def y(v: float) -> float:
        return height - 3 - (height - 8) * v / top

    points = [f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values) if v is not None]
    if len(points) > 1:
        parts.append(f'<polyline points="{" ".join(points)}" class="line s1"/>')
    for i, note in sorted(marks.items()):
        if 0 <= i < n and values[i] is not None:
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(values[i] or 0.0):.1f}" r="3.5" class="spike-mark">'
                         f'<title>{escape(note)}</title></circle>')
    return _close(parts)
