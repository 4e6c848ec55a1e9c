"""Altair charts of the dashboard, built from the frames of :mod:`dashboard.report_view` and
:mod:`dashboard.history`.

Each function returns an Altair chart (a Vega-Lite spec) that takes the container's width;
Streamlit draws it in the browser, where Vega renders labels as text (never as HTML), so
names taken from reports are safe here. Axis labels are never cut (``labelLimit=0``): a
slice such as ``attack=fgsm, eps=8/255`` shows whole.

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

from dashboard.report_view import ConfusionMatrix, CurveSet

__all__ = [
    "CURVE_HEIGHT",
    "DECORATION_PX",
    "bars_height",
    "changes_chart",
    "changes_height",
    "confusion_chart",
    "curve_chart",
    "energy_bars",
    "group_bars",
    "trend_chart",
    "value_interval",
]

_ACCENT = "#3867d6"
CURVE_HEIGHT = 260
"""Height in pixels of a curve's plot area."""
DECORATION_PX = 110
"""Room for a chart's title, axis labels and axis title: Streamlit fits the whole chart, not
its plot area, into the height it is given."""
_BAR_PX = 30
_WHOLE = {"labelLimit": 0}  # never cut a label


def bars_height(n: int) -> int:
    """Plot height for ``n`` horizontal bars."""
    return max(2, n) * _BAR_PX


def _has_intervals(frame: pd.DataFrame) -> bool:
    return "low" in frame and "high" in frame and bool(frame[["low", "high"]].notna().all(axis=1).any())


def curve_chart(curves: CurveSet) -> alt.Chart:
    """Lines with points (e.g. robust accuracy versus eps), one colour per series (attack),
    each with its interval band where the evidence has pointwise bounds; a log x axis when
    asked for, a categorical one when x holds names (post-processing steps)."""
    frame = curves.frame()
    if curves.x_kind == "names":
        x = alt.X("x:N", title=curves.x_label, sort=None, axis=alt.Axis(labelAngle=-30, **_WHOLE))
    else:
        x = alt.X("x:Q", title=curves.x_label, scale=alt.Scale(type=curves.x_scale))
    colour = alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom", **_WHOLE))
    y = alt.Y("y:Q", title=curves.y_label, scale=alt.Scale(zero=False))
    tooltip = ["series:N", alt.Tooltip("x", title=curves.x_label), alt.Tooltip("y:Q", title=curves.y_label),
               "low:Q", "high:Q"]  # fmt: skip
    base = alt.Chart(frame)
    layers = []
    if _has_intervals(frame):
        layers.append(base.mark_area(opacity=0.18).encode(x=x, y="low:Q", y2="high:Q", color=colour))
    layers.append(base.mark_line(point=True).encode(x=x, y=y, color=colour, tooltip=tooltip))
    return alt.layer(*layers).properties(title=curves.title, height=CURVE_HEIGHT, width="container")


def confusion_chart(m: ConfusionMatrix) -> alt.Chart:
    """A confusion matrix as a heat map: true class down, predicted across, the count in each
    cell, shaded by its share of the true class."""
    frame = m.frame()
    base = alt.Chart(frame).encode(
        x=alt.X("predicted:N", sort=list(m.labels), title="predicted", axis=alt.Axis(labelAngle=0, **_WHOLE)),
        y=alt.Y("true:N", sort=list(m.labels), title="true", axis=alt.Axis(**_WHOLE)),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("share:Q", title="share of row", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        tooltip=["true:N", "predicted:N", "count:Q", alt.Tooltip("share:Q", format=".1%")],
    )
    text = base.mark_text().encode(
        text=alt.Text("count:Q", format=",.0f"),
        color=alt.condition("datum.share > 0.5", alt.value("white"), alt.value("black")),
    )
    side = max(160, 36 * len(m.labels))
    return alt.layer(cells, text).properties(title=f"confusion matrix: {m.key}", height=side, width="container")


def group_bars(frame: pd.DataFrame, metric: str) -> alt.Chart:
    """Per-group bars, worst first, with their intervals as error bars (``group``, ``value``,
    ``low``, ``high``); the whole slice labels each bar."""
    data = frame.copy()
    data["value"] = data["value"].where(data["value"].map(lambda v: math.isfinite(v)), None)
    base = alt.Chart(data).encode(y=alt.Y("group:N", title=None, sort=None, axis=alt.Axis(**_WHOLE)))
    bars = base.mark_bar(color=_ACCENT, opacity=0.75).encode(
        x=alt.X("value:Q", title=metric),
        tooltip=["group:N", "value:Q", "low:Q", "high:Q", "n:Q"],
    )
    layers = [bars]
    if _has_intervals(data):
        layers.append(base.mark_rule(color="black").encode(x="low:Q", x2="high:Q"))
    return alt.layer(*layers).properties(
        title=f"{metric} by group (worst first)", height=bars_height(len(data)), width="container"
    )


def value_interval(frame: pd.DataFrame) -> alt.Chart:
    """One finding (a one-row frame of ``finding``, ``value``, ``low``, ``high``, ``unit``) as
    a point with its interval, across the container's width, on its own scale (FID and KID
    differ by orders of magnitude, so each finding gets its own chart)."""
    title = str(frame["finding"].iloc[0])
    base = alt.Chart(frame).encode(
        x=alt.X("value:Q", title=str(frame["unit"].iloc[0]) or None, scale=alt.Scale(zero=False))
    )
    point = base.mark_point(filled=True, size=90, color=_ACCENT).encode(
        tooltip=["finding:N", "value:Q", "low:Q", "high:Q", "unit:N"]
    )
    rule = base.mark_rule(color=_ACCENT, strokeWidth=3).encode(x="low:Q", x2="high:Q")
    return alt.layer(rule, point).properties(title=title, height=30, width="container")


def energy_bars(frame: pd.DataFrame) -> alt.Chart:
    """Energy by probe (joules), coloured by how it was obtained (measured / estimate);
    probes without a number are left out of the chart (the table lists them)."""
    data = frame[frame["joules"].notna()]
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            y=alt.Y("probe:N", title=None, sort="-x", axis=alt.Axis(**_WHOLE)),
            x=alt.X("joules:Q", title="energy (J)"),
            color=alt.Color("kind:N", title="how", scale=alt.Scale(domain=["measured", "estimate"])),
            tooltip=["probe:N", "joules:Q", "kind:N", "detail:N"],
        )
        .properties(title="energy by probe", height=bars_height(len(data)), width="container")
    )


def changes_chart(frame: pd.DataFrame) -> alt.Chart:
    """Per-finding changes of several runs against the baseline
    (:func:`dashboard.history.runs_values_frame`): one row per finding, for each run a point at
    its change in % of the baseline's value and a rule over its interval on the same scale."""
    offset = alt.YOffset("run:N", sort=alt.SortField("order"))
    base = alt.Chart(frame).encode(
        y=alt.Y("finding:N", title=None, sort=None, axis=alt.Axis(**_WHOLE)),
        yOffset=offset,
        color=alt.Color("run:N", title="run", sort=alt.SortField("order"),
                        legend=alt.Legend(orient="bottom", **_WHOLE)),
    )  # fmt: skip
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(color="gray").encode(x="x:Q")
    rule = base.mark_rule(strokeWidth=2).encode(x=alt.X("low:Q", title="change from the baseline (%)"), x2="high:Q")
    point = base.mark_point(filled=True, size=60).encode(
        x="change:Q", tooltip=["finding:N", "run:N", alt.Tooltip("change:Q", format="+.3g"), "low:Q", "high:Q"])
    return alt.layer(zero, rule, point).properties(
        title="change of each finding from the baseline, with intervals",
        height=changes_height(frame) - DECORATION_PX, width="container",
    )


def changes_height(frame: pd.DataFrame) -> int:
    """The whole height of :func:`changes_chart` for ``frame``: every finding's label shows."""
    n_findings = max(1, int(frame["finding"].nunique()))
    n_runs = max(1, int(frame["run"].nunique()))
    return n_findings * (14 * n_runs + 16) + DECORATION_PX + 40


def trend_chart(frame: pd.DataFrame, metric: str, *, by_time: bool, bounds: list[tuple[str, float]]) -> alt.Chart:
    """A metric over audits: points joined by a line by run index (or by time, one tick a
    day), the interval as a band, and each gate bound as a dashed line."""
    if by_time:
        x = alt.X("created:T", title="audit (UTC)", axis=alt.Axis(format="%Y-%m-%d", tickCount="day",
                                                                  labelAngle=-30))  # fmt: skip
    else:
        x = alt.X("run:O", title="run (oldest first)", axis=alt.Axis(labelAngle=0))
    base = alt.Chart(frame).encode(x=x)
    y = alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False))
    layers = []
    if _has_intervals(frame):
        layers.append(base.mark_area(opacity=0.2, color=_ACCENT).encode(y="low:Q", y2="high:Q"))
    layers.append(base.mark_line(point=True, color=_ACCENT).encode(
        y=y, tooltip=["run:O", "created:T", "value:Q", "low:Q", "high:Q", "run id:N"]))
    if bounds:
        rules = pd.DataFrame([{"bound": v, "gate": f"gate {side} {v:g}"} for side, v in bounds])
        layers.append(alt.Chart(rules).mark_rule(color="#c0392b", strokeDash=[6, 4], strokeWidth=2).encode(
            y="bound:Q", tooltip=["gate:N"]))
        layers.append(alt.Chart(rules).mark_text(align="left", dx=4, dy=-6, color="#c0392b").encode(
            y="bound:Q", text="gate:N", x=alt.value(0)))
    return alt.layer(*layers).properties(title=metric, height=320, width="container")
