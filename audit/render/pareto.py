"""The quality-versus-cost chart as inline SVG: one labelled point per variant (with the
quality's interval as a vertical bar), the Pareto front joined by a line and its points
filled, the others hollow. Drawn with the helpers of :mod:`audit.render.svg` (same look,
same guarantees: no ids, scripts or fonts; every text escaped).

Example:
    >>> from audit.variant_view import QualityCost, QualityPoint
    >>> qc = QualityCost("q/ppl", "energy.footprint/weight_bytes_memory", False, "", "B",
    ...                  (QualityPoint("base", 10.0, 4e8, None, True), QualityPoint("int8", 10.4, 1e8, None, True)))
    >>> svg = pareto_chart(qc)
    >>> svg.startswith("<svg") and "int8" in svg
    True
"""

from __future__ import annotations

import math

from markupsafe import escape

from audit.render.svg import _CHAR_PX, _W, PALETTE, _Axis, _num, _svg, _text, _y_grid, nice_ticks
from audit.variant_view import QualityCost

__all__ = ["pareto_chart"]


def _fmt(v: float) -> str:
    from audit.render.format import format_number

    return format_number(v, digits=3)


def _padded(lo: float, hi: float) -> tuple[float, float]:
    pad = (hi - lo) * 0.08 or (abs(lo) * 0.1 or 0.5)
    return lo - pad, hi + pad


def pareto_chart(qc: QualityCost) -> str:
    """The SVG of ``qc`` (:func:`audit.variant_view.quality_cost`): cost on x, quality on y."""
    pts = [p for p in qc.points if math.isfinite(p.quality) and math.isfinite(p.cost)]
    if not pts:
        raise ValueError("pareto_chart: no point with a finite quality and cost")
    ys = [p.quality for p in pts] + [v for p in pts if p.quality_ci for v in (p.quality_ci.low, p.quality_ci.high)
                                     if math.isfinite(v)]
    x_lo, x_hi = _padded(min(p.cost for p in pts), max(p.cost for p in pts))
    y_lo, y_hi = _padded(min(ys), max(ys))
    yt = nice_ticks(y_lo, y_hi, 5)
    xt = [t for t in nice_ticks(x_lo, x_hi, 5) if x_lo <= t <= x_hi]
    left, right, top, plot_h = 64.0, 24.0, 26.0, 230.0
    bottom = top + plot_h
    ax = _Axis(x_lo, x_hi, left, _W - right)
    ay = _Axis(y_lo, y_hi, bottom, top)
    better = "higher" if qc.quality_higher_is_better else "lower"
    cost_unit = f" ({qc.cost_unit})" if qc.cost_unit else ""
    title = f"{qc.quality_key.split('/', 1)[-1]} ({better} is better) against {qc.cost_key.split('/', 1)[-1]}"
    body = [_text(left, 15, title if len(title) <= 90 else title[:89] + "…", extra=' font-weight="600"')]
    body += _y_grid(yt, ay, left, _W - right)
    for t in xt:
        px = ax(t)
        body.append(f'<line x1="{_num(px)}" y1="{_num(bottom)}" x2="{_num(px)}" y2="{_num(bottom + 4)}" stroke="#888"/>')
        body.append(_text(px, bottom + 15, _fmt(t), anchor="middle"))
    body.append(f'<line x1="{_num(left)}" y1="{_num(bottom)}" x2="{_num(_W - right)}" y2="{_num(bottom)}" stroke="#888"/>')
    body.append(_text((left + _W - right) / 2, bottom + 31, f"{qc.cost_key}{cost_unit} (lower is cheaper)",
                      anchor="middle", extra=' fill="#555"'))
    mid = (top + bottom) / 2
    body.append(_text(14, mid, qc.quality_key.split("/", 1)[-1] + (f" ({qc.quality_unit})" if qc.quality_unit else ""),
                      anchor="middle", extra=f' fill="#555" transform="rotate(-90 14 {_num(mid)})"'))
    front = sorted((p for p in pts if p.on_front), key=lambda p: (p.cost, p.quality))
    if len(front) > 1:
        d = " ".join(f"{_num(ax(p.cost))},{_num(ay(p.quality))}" for p in front)
        body.append(f'<polyline points="{d}" fill="none" stroke="{PALETTE[1]}" stroke-width="2" '
                    'stroke-dasharray="5 3"/>')
    placed: list[tuple[float, float, float]] = []  # label boxes drawn so far: (x0, x1, baseline y)
    for p in pts:
        px, py = ax(p.cost), ay(p.quality)
        if p.quality_ci and math.isfinite(p.quality_ci.low) and math.isfinite(p.quality_ci.high):
            body.append(f'<line x1="{_num(px)}" y1="{_num(ay(p.quality_ci.low))}" x2="{_num(px)}" '
                        f'y2="{_num(ay(p.quality_ci.high))}" stroke="{PALETTE[0]}" stroke-width="3" '
                        'stroke-opacity="0.35"/>')
        fill = PALETTE[1] if p.on_front else "#fff"
        tip = f"{p.label}: {_fmt(p.quality)} at {_fmt(p.cost)}" + (" (Pareto front)" if p.on_front else "")
        body.append(f'<circle cx="{_num(px)}" cy="{_num(py)}" r="5" fill="{fill}" stroke="{PALETTE[1]}" '
                    f'stroke-width="2"><title>{escape(tip)}</title></circle>')
        anchor = "end" if px > _W - right - 80 else "start"
        lx = px + (-8 if anchor == "end" else 8)
        width = _CHAR_PX * len(p.label)
        x0, x1 = (lx - width, lx) if anchor == "end" else (lx, lx + width)
        ly = py - 7
        for _ in range(8):  # points close together: move the label down until it is clear of the others
            if not any(a < x1 and x0 < b and abs(ly - y) < 12 for a, b, y in placed):
                break
            ly += 12
        placed.append((x0, x1, ly))
        body.append(_text(lx, ly, p.label, anchor=anchor))
    legend_y = bottom + 50
    body.append(f'<circle cx="{_num(left + 5)}" cy="{_num(legend_y - 4)}" r="5" fill="{PALETTE[1]}"/>')
    body.append(_text(left + 16, legend_y, "on the Pareto front (no variant is better on both)"))
    body.append(f'<circle cx="{_num(left + 345)}" cy="{_num(legend_y - 4)}" r="5" fill="#fff" '
                f'stroke="{PALETTE[1]}" stroke-width="2"/>')
    body.append(_text(left + 356, legend_y, "dominated"))
    return _svg(legend_y + 12, body, qc.title)
