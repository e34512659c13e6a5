"""Inline SVG charts rendered on the server (no scripts, no CDN): estimates with their 95% intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape


@dataclass(frozen=True)
class Point:
    label: str
    value: float | None  # None: nothing measured for this label
    low: float | None = None
    high: float | None = None
    note: str = ""


def _pct(v: float) -> str:
    return f"{v * 100:.1f}%"


def trend_chart(points: Sequence[Point], *, title: str, width: int = 640, height: int = 220,
                floor: float | None = None) -> Markup:
    """Estimates over time as dots joined by a line, each with a vertical 95% interval whisker; the y axis
    spans [floor, 1] (floor chosen from the data when not given) so small changes stay visible."""
    pad_l, pad_r, pad_t, pad_b = 48, 12, 24, 36
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    values = [v for p in points for v in (p.value, p.low) if v is not None]
    lo = floor if floor is not None else max(0.0, (min(values) if values else 0.0) - 0.05)
    lo = min(lo, 0.95)
    span = 1.0 - lo

    def y(v: float) -> float:
        return pad_t + plot_h * (1 - (min(max(v, lo), 1.0) - lo) / span)

    step = plot_w / max(len(points), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}"><title>{escape(title)}</title>']
    for i in range(5):
        v = lo + span * i / 4
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                     f'<text x="{pad_l - 6}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{_pct(v)}</text>')
    line = []
    for i, p in enumerate(points):
        x = pad_l + step * (i + 0.5)
        parts.append(f'<text x="{x:.1f}" y="{height - 12}" class="axis" text-anchor="middle">'
                     f'{escape(p.label)}</text>')
        if p.value is None:
            parts.append(f'<text x="{x:.1f}" y="{pad_t + plot_h / 2:.1f}" class="axis" text-anchor="middle">'
                         'no audits</text>')
            continue
        if p.low is not None and p.high is not None:
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y(p.low):.1f}" y2="{y(p.high):.1f}" class="ci"/>')
        parts.append(f'<circle cx="{x:.1f}" cy="{y(p.value):.1f}" r="4" class="dot"><title>'
                     f'{escape(p.label)}: {_pct(p.value)}'
                     + (f" (95% CI {_pct(p.low)}-{_pct(p.high)})" if p.low is not None and p.high is not None
                        else "") + f'{escape(p.note)}</title></circle>')
        line.append(f"{x:.1f},{y(p.value):.1f}")
    if len(line) > 1:
        parts.append(f'<polyline points="{" ".join(line)}" class="line"/>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every label and title above goes through escape()


def bar_chart(points: Sequence[Point], *, title: str, width: int = 640, row: int = 22,
              scale_max: float | None = None) -> Markup:
    """Horizontal bars of shares (0..1) with 95% interval whiskers, one row per label."""
    pad_l, pad_r, pad_t = 170, 60, 8
    height = pad_t * 2 + row * max(len(points), 1)
    plot_w = width - pad_l - pad_r
    top = scale_max or max([p.high or p.value or 0.0 for p in points] + [0.05])

    def x(v: float) -> float:
        return pad_l + plot_w * min(max(v, 0.0), top) / top

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}"><title>{escape(title)}</title>']
    if not points:
        parts.append(f'<text x="{pad_l}" y="{pad_t + 14}" class="axis">nothing to show</text>')
    for i, p in enumerate(points):
        top_y = pad_t + i * row
        mid = top_y + row / 2
        parts.append(f'<text x="{pad_l - 6}" y="{mid + 4:.1f}" class="axis" text-anchor="end">'
                     f'{escape(p.label)}</text>')
        value = p.value or 0.0
        parts.append(f'<rect x="{pad_l}" y="{top_y + 4:.1f}" width="{x(value) - pad_l:.1f}" height="{row - 8}" '
                     f'class="bar"><title>{escape(p.label)}: {_pct(value)}{escape(p.note)}</title></rect>')
        if p.low is not None and p.high is not None:
            parts.append(f'<line x1="{x(p.low):.1f}" x2="{x(p.high):.1f}" y1="{mid:.1f}" y2="{mid:.1f}" '
                         'class="ci"/>')
        parts.append(f'<text x="{x(max(value, p.high or 0.0)) + 4:.1f}" y="{mid + 4:.1f}" class="axis">'
                     f'{_pct(value)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every label and title above goes through escape()
