"""Altair charts of the dashboard, built from the frames of :mod:`dashboard.data`.

Each function returns an Altair chart (a Vega-Lite spec); Streamlit draws it in the browser,
where Vega renders labels as text (never as HTML), so names taken from reports are safe here.

Example:
    >>> import pandas as pd
    >>> chart = group_bars(pd.DataFrame({"group": ["a", "b"], "value": [0.1, 0.2],
    ...                                   "low": [0.05, 0.1], "high": [0.2, 0.3], "n": [10, 12]}), "rate")
    >>> chart.to_dict()["layer"][0]["mark"]["type"]
    'bar'
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from dashboard.data import Curve

__all__ = [
    "CURVE_HEIGHT",
    "bars_height",
    "curve_chart",
    "energy_bars",
    "facet_height",
    "group_bars",
    "trend_chart",
    "value_intervals",
]

_ACCENT = "#3867d6"
CURVE_HEIGHT = 240
"""Height in pixels of a curve's plot area."""
DECORATION_PX = 110
"""Room for a chart's title, axis labels and axis title: Streamlit fits the whole chart, not
its plot area, into the height it is given."""
_BAR_PX = 30
_FACET_PX = 40


def bars_height(n: int) -> int:
    """Plot height for ``n`` horizontal bars."""
    return max(2, n) * _BAR_PX


def facet_height(n: int) -> int:
    """Whole height of a chart of ``n`` findings with intervals, one row each."""
    return n * (_FACET_PX + 30) + 70


def _has_intervals(frame: pd.DataFrame) -> bool:
    return "low" in frame and "high" in frame and bool(frame[["low", "high"]].notna().all(axis=1).any())


def curve_chart(curve: Curve) -> alt.Chart:
    """A line with points (e.g. robust accuracy versus eps), with an interval band when the
    curve has pointwise bounds; log x axis when the evidence asks for it."""
    frame = curve.frame()
    x = alt.X("x:Q", title=curve.x_label, scale=alt.Scale(type=curve.x_scale))
    y = alt.Y("y:Q", title=curve.y_label)
    line = alt.Chart(frame).mark_line(point=True, color=_ACCENT).encode(
        x=x, y=y, tooltip=[alt.Tooltip("x:Q", title=curve.x_label), alt.Tooltip("y:Q", title=curve.y_label)]
    )
    layers = [line]
    if _has_intervals(frame):
        band = alt.Chart(frame).mark_area(opacity=0.2, color=_ACCENT).encode(x=x, y="low:Q", y2="high:Q")
        layers.insert(0, band)
    return alt.layer(*layers).properties(title=curve.key, height=CURVE_HEIGHT)


def group_bars(frame: pd.DataFrame, metric: str) -> alt.Chart:
    """Per-group bars with their intervals as error bars (``group``, ``value``, ``low``, ``high``)."""
    data = frame.copy()
    data["value"] = data["value"].where(data["value"].map(lambda v: math.isfinite(v)), None)
    base = alt.Chart(data).encode(y=alt.Y("group:N", title=None, sort=None))
    bars = base.mark_bar(color=_ACCENT, opacity=0.75).encode(
        x=alt.X("value:Q", title=metric),
        tooltip=["group:N", "value:Q", "low:Q", "high:Q", "n:Q"],
    )
    layers = [bars]
    if _has_intervals(data):
        layers.append(base.mark_rule(color="black").encode(x="low:Q", x2="high:Q"))
    return alt.layer(*layers).properties(title=f"{metric} by group", height=bars_height(len(data)))


def value_intervals(frame: pd.DataFrame) -> alt.Chart:
    """Each finding as a point with its interval, one row per finding, each with its own
    scale (FID and KID differ by orders of magnitude)."""
    base = alt.Chart().encode(x=alt.X("value:Q", title=None, scale=alt.Scale(zero=False)))
    point = base.mark_point(filled=True, size=80, color=_ACCENT).encode(
        tooltip=["finding:N", "value:Q", "low:Q", "high:Q", "unit:N"]
    )
    rule = base.mark_rule(color=_ACCENT, strokeWidth=2).encode(x="low:Q", x2="high:Q")
    return (
        alt.layer(rule, point, data=frame)
        .properties(height=_FACET_PX, width="container")
        .facet(row=alt.Row("finding:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")))
        .resolve_scale(x="independent")
        .properties(title="values with intervals")
    )


def energy_bars(frame: pd.DataFrame) -> alt.Chart:
    """Energy by probe (joules), coloured by how it was obtained (measured / estimate);
    probes without a number are left out of the chart (the table lists them)."""
    data = frame[frame["joules"].notna()]
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            y=alt.Y("probe:N", title=None, sort="-x"),
            x=alt.X("joules:Q", title="energy (J)"),
            color=alt.Color("kind:N", title="how", scale=alt.Scale(domain=["measured", "estimate"])),
            tooltip=["probe:N", "joules:Q", "kind:N", "detail:N"],
        )
        .properties(title="energy by probe", height=bars_height(len(data)))
    )


def trend_chart(frame: pd.DataFrame, metric: str) -> alt.Chart:
    """A metric over audits: points joined by a line, intervals as vertical rules."""
    base = alt.Chart(frame).encode(x=alt.X("created:T", title="audit (UTC)"))
    line = base.mark_line(point=True, color=_ACCENT).encode(
        y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
        tooltip=["created:T", "value:Q", "low:Q", "high:Q", "run id:N"],
    )
    layers = [line]
    if _has_intervals(frame):
        layers.insert(0, base.mark_rule(color=_ACCENT, opacity=0.5).encode(y="low:Q", y2="high:Q"))
    return alt.layer(*layers).properties(title=metric, height=300)
