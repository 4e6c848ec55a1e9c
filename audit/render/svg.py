"""Small inline SVG charts for the HTML report, written directly (no plotting library).

Line charts with interval bands (one line per series), values with their intervals (one
panel per metric, a row per slice) and histograms. Every chart is a self-contained ``<svg>``
element with a ``viewBox``, so it scales to its container; it uses no ids, scripts, fonts or
links, so several on one page never collide and nothing is fetched. All text is XML-escaped.
Drawing a chart takes well under a millisecond, which keeps a report of a few hundred
findings quick to write (matplotlib took seconds for the same page).

Example:
    >>> svg = line_chart([{"x": [0, 1], "y": [0.9, 0.4], "series": "pgd"}], x_label="eps", y_label="acc")
    >>> svg.startswith("<svg") and svg.endswith("</svg>")
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import escape

__all__ = ["PALETTE", "histogram", "interval_panels", "line_chart", "nice_ticks", "wrap_label"]

PALETTE = ("#3867d6", "#e1701a", "#20a35a", "#c0392b", "#8e44ad", "#8c6d31", "#d6338a", "#607080")
_W = 640
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'
_CHAR_PX = 6.2  # average width of an 11 px sans-serif character
_WIDE_CHAR_PX = 7.0  # a generous width, for room that must not clip (labels right-aligned to the plot)


def _num(x: float) -> str:
    """Coordinates with 1 decimal: short files, no visible rounding."""
    return f"{x:.1f}".rstrip("0").rstrip(".") if math.isfinite(x) else "0"


def _fmt(v: float) -> str:
    from audit.render.format import format_number

    return format_number(v, digits=3)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 x 10^k).

    Example:
        >>> nice_ticks(0, 1)
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * 0.999)
    first = math.floor(lo / step + 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-6 and len(ticks) < 50:
        ticks.append(round(t, 12) + 0.0)
        t += step
    if ticks and ticks[-1] < hi - step * 1e-6:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def wrap_label(text: str, width: int = 34, max_lines: int = 3) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken at ``, `` / spaces where it can
    and inside a word where it must; the last line ends in ``…`` if more was left.

    Example:
        >>> wrap_label("attack=fgsm, eps=8/255, class=airplane", 20)
        ['attack=fgsm,', 'eps=8/255,', 'class=airplane']
    """
    words = " ".join(str(text).split()).split(" ")
    lines: list[str] = []
    cur = ""
    for w in words:
        while len(w) > width:  # a long token: cut it
            if cur:
                lines.append(cur)
                cur = ""
            lines.append(w[:width])
            w = w[width:]
        if not cur:
            cur = w
        elif len(cur) + 1 + len(w) <= width:
            cur += " " + w
        else:
            lines.append(cur)
            cur = w
    if cur:
        lines.append(cur)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return lines or [""]


def _text(x: float, y: float, s: str, *, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}"{extra}>{escape(s)}</text>'


def _svg(h: float, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_num(h)}" role="img" {_FONT}>'
            f"<title>{escape(title)}</title>" + "".join(body) + "</svg>")


class _Axis:
    """A linear or log10 mapping from data values to pixels."""

    def __init__(self, lo: float, hi: float, p0: float, p1: float, log: bool = False):
        self.log = log
        f = math.log10 if log else (lambda v: v)
        self.lo, self.hi = f(lo), f(hi)
        if self.hi == self.lo:
            self.lo, self.hi = self.lo - 0.5, self.hi + 0.5
        self.p0, self.p1 = p0, p1
        self._f = f

    def __call__(self, v: float) -> float:
        return self.p0 + (self._f(v) - self.lo) / (self.hi - self.lo) * (self.p1 - self.p0)


def _finite(xs: Sequence[float]) -> list[float]:
    return [v for v in xs if math.isfinite(v)]


def line_chart(curves: Sequence[Mapping[str, Any]], *, title: str = "", x_label: str = "", y_label: str = "") -> str:
    """Lines (with bands where ``y_low``/``y_high`` are given), one per curve, in one chart.

    Args:
        curves: validated curves (:func:`audit.curves.validate_curve`); their ``series`` name
            the legend, the first curve's ``x_scale``, ``x_ticks`` and ``y_range`` set the axes.
        title, x_label, y_label: texts drawn on the chart.
    """
    first = curves[0]
    log = first.get("x_scale") == "log" and all(v > 0 for c in curves for v in c["x"])
    xs = [v for c in curves for v in c["x"]]
    ys = [v for c in curves for k in ("y", "y_low", "y_high") for v in _finite(c.get(k) or [])]
    y_lo, y_hi = (first["y_range"] if first.get("y_range") else (min(ys, default=0.0), max(ys, default=1.0)))
    yt = nice_ticks(y_lo, y_hi)
    if not first.get("y_range") and yt:
        y_lo, y_hi = min(y_lo, yt[0]), max(y_hi, yt[-1])
    names = [str(c.get("series") or f"series {i + 1}") for i, c in enumerate(curves)]
    legend_rows = _legend_rows(names) if len(curves) > 1 or curves[0].get("series") else []
    left, right, top = 58.0, 26.0, 22.0
    plot_h = 190.0
    bottom = top + plot_h
    h = bottom + 42 + 16 * len(legend_rows)
    ax = _Axis(min(xs), max(xs), left, _W - right, log)
    ay = _Axis(y_lo, y_hi, bottom, top)
    body = [_text(left, 13, title, extra=' font-weight="600"')] if title else []
    body += _y_grid(yt, ay, left, _W - right)
    # x ticks: the curve's own labels at its x values when it has them, else round numbers.
    if first.get("x_ticks") and len(curves[0]["x"]) <= 16:
        xt = list(zip(first["x"], first["x_ticks"]))
    elif log:
        lo_e, hi_e = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
        xt = [(10.0 ** e, _fmt(10.0 ** e)) for e in range(lo_e, hi_e + 1) if min(xs) <= 10.0 ** e <= max(xs)]
        xt = xt or [(v, _fmt(v)) for v in (min(xs), max(xs))]
    else:
        xt = [(v, _fmt(v)) for v in nice_ticks(min(xs), max(xs)) if min(xs) - 1e-12 <= v <= max(xs) + 1e-12]
    for v, lab in xt:
        px = ax(v)
        body.append(f'<line x1="{_num(px)}" y1="{_num(bottom)}" x2="{_num(px)}" y2="{_num(bottom + 4)}" stroke="#888"/>')
        # A tick label near the right edge ends there instead of running off the chart.
        room = _W - px - _CHAR_PX * len(lab) / 2
        body.append(_text(px if room > 2 else _W - 2, bottom + 15, lab, anchor="middle" if room > 2 else "end"))
    body.append(f'<line x1="{_num(left)}" y1="{_num(bottom)}" x2="{_num(_W - right)}" y2="{_num(bottom)}" stroke="#888"/>')
    body.append(_text((left + _W - right) / 2, bottom + 31, x_label, anchor="middle", extra=' fill="#555"'))
    body.append(_text(14, (top + bottom) / 2, y_label, anchor="middle",
                      extra=f' fill="#555" transform="rotate(-90 14 {_num((top + bottom) / 2)})"'))
    for i, c in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        body += _band(c, ax, ay, color)
        body += _line(c, ax, ay, color, names[i])
    body += _legend(legend_rows, names, bottom + 44, left)
    return _svg(h, body, title or y_label)


def _y_grid(ticks: Sequence[float], ay: _Axis, x0: float, x1: float) -> list[str]:
    out = []
    for t in ticks:
        py = ay(t)
        if py < ay.p1 - 1 or py > ay.p0 + 1:
            continue
        out.append(f'<line x1="{_num(x0)}" y1="{_num(py)}" x2="{_num(x1)}" y2="{_num(py)}" stroke="#e3e3e3"/>')
        out.append(_text(x0 - 5, py + 4, _fmt(t), anchor="end"))
    return out


def _segments(points: list[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive finite points (a NaN breaks the line)."""
    runs, cur = [], []
    for p in points:
        if p is None:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(p)
    if cur:
        runs.append(cur)
    return runs


def _band(c: Mapping[str, Any], ax: _Axis, ay: _Axis, color: str) -> list[str]:
    if not c.get("y_low"):
        return []
    pts = [((x, lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None)
           for x, lo, hi in zip(c["x"], c["y_low"], c["y_high"])]
    out = []
    for run in _segments(pts):  # type: ignore[arg-type]
        if len(run) == 1:
            x, lo, hi = run[0]  # type: ignore[misc]
            out.append(f'<line x1="{_num(ax(x))}" y1="{_num(ay(lo))}" x2="{_num(ax(x))}" y2="{_num(ay(hi))}" '
                       f'stroke="{color}" stroke-width="6" stroke-opacity="0.25"/>')
            continue
        upper = " ".join(f"{_num(ax(x))},{_num(ay(hi))}" for x, _, hi in run)  # type: ignore[misc]
        lower = " ".join(f"{_num(ax(x))},{_num(ay(lo))}" for x, lo, _ in reversed(run))  # type: ignore[misc]
        out.append(f'<polygon points="{upper} {lower}" fill="{color}" fill-opacity="0.18" stroke="none"/>')
    return out


def _line(c: Mapping[str, Any], ax: _Axis, ay: _Axis, color: str, name: str) -> list[str]:
    pts = [((ax(x), ay(y)) if math.isfinite(y) else None) for x, y in zip(c["x"], c["y"])]
    out = []
    for run in _segments(pts):
        if len(run) > 1:
            d = " ".join(f"{_num(px)},{_num(py)}" for px, py in run)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
    if len(c["x"]) <= 40:
        for (px, py), x, y in ((p, x, y) for p, x, y in zip(pts, c["x"], c["y"]) if p is not None):
            out.append(f'<circle cx="{_num(px)}" cy="{_num(py)}" r="3" fill="{color}">'
                       f"<title>{escape(f'{name}: {_fmt(x)} -> {_fmt(y)}')}</title></circle>")
    return out


def _legend_rows(names: Sequence[str]) -> list[list[int]]:
    rows: list[list[int]] = [[]]
    width = 0.0
    for i, n in enumerate(names):
        w = 22 + _CHAR_PX * min(len(n), 60)
        if rows[-1] and width + w > _W - 70:
            rows.append([])
            width = 0.0
        rows[-1].append(i)
        width += w
    return rows


def _legend(rows: list[list[int]], names: Sequence[str], y0: float, x0: float) -> list[str]:
    out = []
    for r, row in enumerate(rows):
        x = x0
        y = y0 + 16 * r
        for i in row:
            color = PALETTE[i % len(PALETTE)]
            label = names[i] if len(names[i]) <= 60 else names[i][:59] + "…"
            out.append(f'<rect x="{_num(x)}" y="{_num(y - 9)}" width="14" height="10" fill="{color}"/>')
            out.append(_text(x + 18, y, label))
            x += 22 + _CHAR_PX * len(label)
    return out


def interval_panels(panels: Sequence[tuple[str, Sequence[tuple[str, float, float | None, float | None]]]]) -> str:
    """One panel per metric: a dot per row (its value) and a bar for its interval.

    Args:
        panels: ``(title, rows)`` with rows ``(label, value, low, high)``; NaN values are
            written as ``n/a`` instead of drawn; labels wrap onto up to three lines.
    """
    wrapped = [[wrap_label(lab, 36, max_lines=5) for lab, *_ in rows] for _, rows in panels]
    longest = max((len(line) for panel in wrapped for lines in panel for line in lines), default=8)
    label_w = min(12 + _WIDE_CHAR_PX * longest, _W * 0.45)
    left, right = label_w + 8, 16.0
    body: list[str] = []
    y = 4.0
    for (title, rows), labels in zip(panels, wrapped):
        vals = [v for _, value, lo, hi in rows for v in (value, lo, hi) if v is not None and math.isfinite(v)]
        ticks = nice_ticks(min(vals, default=0.0), max(vals, default=1.0), 4)
        ax = _Axis(ticks[0], ticks[-1], left, _W - right) if ticks else _Axis(0, 1, left, _W - right)
        body.append(_text(4, y + 12, title, extra=' font-weight="600"'))
        y += 20
        top = y
        start = len(body)
        for (label, value, lo, hi), lines in zip(rows, labels):
            row_h = 6 + 13 * len(lines)
            cy = y + row_h / 2
            for j, line in enumerate(lines):
                body.append(_text(label_w, y + 13 * j + 12, line, anchor="end"))
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                body.append(f'<line x1="{_num(ax(lo))}" y1="{_num(cy)}" x2="{_num(ax(hi))}" y2="{_num(cy)}" '
                            f'stroke="{PALETTE[0]}" stroke-width="3" stroke-opacity="0.5"/>')
            if math.isfinite(value):
                tip = f"{label}: {_fmt(value)}" + (f" [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None else "")
                body.append(f'<circle cx="{_num(ax(value))}" cy="{_num(cy)}" r="4" fill="{PALETTE[0]}">'
                            f"<title>{escape(tip)}</title></circle>")
            else:
                body.append(_text(left + 4, cy + 4, _fmt(value), extra=' fill="#888" font-style="italic"'))
            y += row_h
        grid = []  # drawn under the marks: inserted before them once the panel's height is known
        for t in ticks:
            px = ax(t)
            grid.append(f'<line x1="{_num(px)}" y1="{_num(top)}" x2="{_num(px)}" y2="{_num(y)}" stroke="#e3e3e3"/>')
            grid.append(_text(px, y + 13, _fmt(t), anchor="middle", extra=' fill="#555"'))
        body[start:start] = grid
        y += 26
    return _svg(y, body, "values and intervals")


def histogram(values: Sequence[float], *, marker: float | None = None, title: str = "", x_label: str = "",
              marker_label: str = "") -> str:
    """A histogram of finite ``values`` (sqrt(n) bins, 5 to 40), with an optional vertical marker."""
    vals = _finite(values)
    if not vals:
        raise ValueError("histogram: no finite value to draw")
    lo, hi = min(vals), max(vals)
    bins = max(5, min(40, int(math.sqrt(len(vals)))))
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in vals:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    left, right, top, bottom = 50.0, 14.0, 22.0, 212.0
    span_hi = lo + width * bins
    ax = _Axis(lo, span_hi, left, _W - right)
    yt = nice_ticks(0, max(counts), 4)
    ay = _Axis(0, yt[-1] if yt else max(counts), bottom, top)
    body = [_text(left, 13, title, extra=' font-weight="600"')] if title else []
    body += _y_grid(yt, ay, left, _W - right)
    for i, c in enumerate(counts):
        if c:
            x0, x1 = ax(lo + i * width), ax(lo + (i + 1) * width)
            body.append(f'<rect x="{_num(x0)}" y="{_num(ay(c))}" width="{_num(max(x1 - x0 - 1, 1))}" '
                        f'height="{_num(bottom - ay(c))}" fill="{PALETTE[0]}" fill-opacity="0.75"/>')
    for t in nice_ticks(lo, span_hi):
        if lo - 1e-12 <= t <= span_hi + 1e-12:
            body.append(_text(ax(t), bottom + 15, _fmt(t), anchor="middle"))
    body.append(f'<line x1="{_num(left)}" y1="{_num(bottom)}" x2="{_num(_W - right)}" y2="{_num(bottom)}" stroke="#888"/>')
    body.append(_text((left + _W - right) / 2, bottom + 31, x_label, anchor="middle", extra=' fill="#555"'))
    if marker is not None and math.isfinite(marker) and lo <= marker <= span_hi:
        px = ax(marker)
        body.append(f'<line x1="{_num(px)}" y1="{_num(top)}" x2="{_num(px)}" y2="{_num(bottom)}" '
                    f'stroke="{PALETTE[3]}" stroke-width="2"/>')
        body.append(_text(_W - right, top + 4, marker_label, anchor="end", extra=f' fill="{PALETTE[3]}"'))
    return _svg(bottom + 40, body, title or x_label)
