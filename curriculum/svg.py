"""Tiny inline-SVG charts: no JavaScript, no CDN, renders offline in any browser."""

from __future__ import annotations

import math
from html import escape

PALETTE = ["#3b6ea8", "#e07b39", "#4c9a5f", "#b8474a", "#7a5fa8", "#8c6d46", "#c9669e", "#6b6b6b"]
TAIL_COLOR = "#a9b4c2"
HOT_COLOR = "#c0392b"


def fmt_tokens(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def hbar_chart(
    labels: list[str],
    values: list[float],
    *,
    title: str,
    value_fmt=lambda v: f"{v:.3g}",
    colors: list[str] | None = None,
    width: int = 640,
    bar_h: int = 18,
    chart_id: str = "",
) -> str:
    """Horizontal bar chart; one bar per label, length ∝ value."""
    label_w, pad, val_w = 150, 6, 90
    h = 30 + len(labels) * (bar_h + pad) + 10
    vmax = max(values) if values and max(values) > 0 else 1.0
    span = width - label_w - val_w
    out = [
        f'<svg class="chart" data-chart="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{h}" viewBox="0 0 {width} {h}" role="img" aria-label="{escape(title)}">',
        f'<text x="0" y="16" class="ct">{escape(title)}</text>',
    ]
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = 30 + i * (bar_h + pad)
        w = max(1.0, span * v / vmax) if v > 0 else 0.0
        color = (colors[i] if colors else PALETTE[0])
        out.append(f'<text x="{label_w - 6}" y="{y + bar_h - 5}" text-anchor="end" class="cl">{escape(lab)}</text>')
        out.append(
            f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}">'
            f"<title>{escape(lab)}: {escape(value_fmt(v))}</title></rect>"
        )
        out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 5}" class="cv">{escape(value_fmt(v))}</text>')
    out.append("</svg>")
    return "".join(out)


def _log_ticks(lo: float, hi: float) -> list[float]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    step = max(1, (b - a) // 6)
    return [10.0**e for e in range(a, b + 1, step)]


def log_scatter(
    xs: list[float],
    ys: list[float],
    *,
    title: str,
    x_label: str,
    y_label: str,
    hot: list[bool] | None = None,
    labels: list[str] | None = None,
    diagonal: bool = False,
    hline: float | None = None,
    width: int = 640,
    height: int = 360,
    chart_id: str = "",
) -> str:
    """Scatter plot on log-log axes; `hot` points drawn in red; optional y=x line or a y threshold."""
    pts = [(x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if x > 0 and y > 0]
    left, right, top, bottom = 70, 20, 30, 45
    out = [
        f'<svg class="chart" data-chart="{escape(chart_id)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="0" y="16" class="ct">{escape(title)}</text>',
    ]
    if not pts:
        out.append('<text x="70" y="60" class="cl">no data</text></svg>')
        return "".join(out)
    xlo, xhi = min(p[0] for p in pts), max(p[0] for p in pts)
    ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
    if hline is not None:
        ylo, yhi = min(ylo, hline), max(yhi, hline)
    if diagonal:
        xlo = ylo = min(xlo, ylo)
        xhi = yhi = max(xhi, yhi)
    xlo, ylo = xlo / 1.5, ylo / 1.5
    xhi, yhi = xhi * 1.5, yhi * 1.5
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + pw * (math.log(x) - math.log(xlo)) / (math.log(xhi) - math.log(xlo))

    def py(y: float) -> float:
        return top + ph * (1 - (math.log(y) - math.log(ylo)) / (math.log(yhi) - math.log(ylo)))

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>')
    for t in _log_ticks(xlo, xhi):
        if xlo <= t <= xhi:
            out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" stroke="#eee"/>')
            out.append(f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle" class="cl">{fmt_tokens(t)}</text>')
    for t in _log_ticks(ylo, yhi):
        if ylo <= t <= yhi:
            out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end" class="cl">{fmt_tokens(t)}</text>')
    if diagonal:
        out.append(
            f'<line x1="{px(xlo):.1f}" y1="{py(xlo):.1f}" x2="{px(xhi):.1f}" y2="{py(xhi):.1f}" stroke="#999" stroke-dasharray="4 3"/>'
        )
    if hline is not None:
        out.append(
            f'<line x1="{left}" y1="{py(hline):.1f}" x2="{left + pw}" y2="{py(hline):.1f}" stroke="{HOT_COLOR}" stroke-dasharray="4 3"/>'
        )
    for x, y, i in pts:
        color = HOT_COLOR if hot and hot[i] else PALETTE[0]
        tip = f"<title>{escape(labels[i])}: {x:.3g}, {y:.3g}</title>" if labels else ""
        out.append(f'<circle class="pt" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}" fill-opacity="0.7">{tip}</circle>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="cl">{escape(x_label)}</text>')
    out.append(
        f'<text x="14" y="{top + ph / 2}" text-anchor="middle" class="cl" transform="rotate(-90 14 {top + ph / 2})">{escape(y_label)}</text>'
    )
    out.append("</svg>")
    return "".join(out)
