"""Small charts as inline SVG, drawn on the server: no chart library, nothing to load, readable without
JavaScript. Pages that grow a chart (a fine-tune's loss) fetch a new SVG from their poll endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 52, 12, 12, 28


@dataclass(frozen=True)
class Series:
    """One line: (x, y) points, a CSS class for its colour, dots for sparse series (eval loss)."""

    name: str
    points: list[tuple[float, float]]
    css: str
    dots: bool = False


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


def _frame(x_lo: float, x_hi: float, y_lo: float, y_hi: float, x_label: str) -> list[str]:
    """Axes with the extreme values written at their ends."""
    bottom, right = HEIGHT - PAD_BOTTOM, WIDTH - PAD_RIGHT
    return [
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{bottom}"/>',
        f'<line class="axis" x1="{PAD_LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}"/>',
        f'<text class="tick" x="{PAD_LEFT - 6}" y="{PAD_TOP + 8}" text-anchor="end">{_fmt(y_hi)}</text>',
        f'<text class="tick" x="{PAD_LEFT - 6}" y="{bottom}" text-anchor="end">{_fmt(y_lo)}</text>',
        f'<text class="tick" x="{PAD_LEFT}" y="{HEIGHT - 8}">{_fmt(x_lo)}</text>',
        f'<text class="tick" x="{right}" y="{HEIGHT - 8}" text-anchor="end">{_fmt(x_hi)}</text>',
        f'<text class="tick" x="{(PAD_LEFT + right) / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
    ]


def _svg(parts: list[str], label: str, css: str) -> Markup:
    head = f'<svg class="chart {css}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}">'
    return Markup(head + "".join(parts) + "</svg>")


def line_chart(series: list[Series], label: str, x_label: str, y_floor: float | None = None) -> Markup:
    """Lines (and dots) over a shared x axis; an empty chart says there is nothing yet."""
    points = [p for s in series for p in s.points]
    if not points:
        return _svg([f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data yet</text>'],
                    label, "line")  # fmt: skip
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    y_lo = min(ys) if y_floor is None else min(y_floor, min(ys))
    sx = _scale(min(xs), max(xs), PAD_LEFT, WIDTH - PAD_RIGHT)
    sy = _scale(y_lo, max(ys), HEIGHT - PAD_BOTTOM, PAD_TOP)
    parts = _frame(min(xs), max(xs), y_lo, max(ys), x_label)
    for s in series:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        parts.append(f'<polyline class="series {s.css}" data-series="{escape(s.name)}" points="{coords}"/>')
        if s.dots:
            parts += [f'<circle class="dot {s.css}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3"/>' for x, y in s.points]
    right = WIDTH - PAD_RIGHT  # the legend sits top right, where a falling curve leaves room
    legend = [f'<text class="legend {s.css}" x="{right - 100 * (len(series) - 1 - i)}" y="{PAD_TOP + 10}" '
              f'text-anchor="end">{escape(s.name)}</text>' for i, s in enumerate(series)]  # fmt: skip
    return _svg(parts + legend, label, "line")


def bar_chart(values: list[float], label: str, x_label: str, css: str = "bars", floor_top: float = 1.0) -> Markup:
    """One bar per value (e.g. per minute, oldest first), scaled to the largest (at least `floor_top`)."""
    top = max([*values, floor_top])
    sy = _scale(0, top, HEIGHT - PAD_BOTTOM, PAD_TOP)
    step = (WIDTH - PAD_LEFT - PAD_RIGHT) / max(len(values), 1)
    parts = _frame(-len(values), 0, 0, top, x_label)
    for i, value in enumerate(values):
        y = sy(value)
        parts.append(
            f'<rect class="bar" x="{PAD_LEFT + i * step + 1:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{HEIGHT - PAD_BOTTOM - y:.1f}"><title>{_fmt(value)}</title></rect>'
        )
    return _svg(parts, label, css)
