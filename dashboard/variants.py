"""The variants of an audit on the run page: the side-by-side tables and the
quality-versus-cost chart with its Pareto front (Altair).

The layout comes from :mod:`audit.variant_view` (pure functions over the report's findings,
no probes imported); this module turns it into frames, charts and Streamlit elements. A report
without variants shows nothing from here.

Example:
    >>> from tests.report_factory import make_variant_report       # doctest: +SKIP
    >>> qc = report_quality_cost(make_variant_report())           # doctest: +SKIP
    >>> pareto_frame(qc)["front"].tolist()                        # doctest: +SKIP
    [False, True, True]
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from audit.findings import AuditReport
from audit.render.variants import FLAG, delta_text, value_text
from audit.variant_view import QualityCost, SideBySide, has_variants, report_quality_cost, side_by_side

__all__ = ["pareto_chart", "pareto_frame", "show_probe_variants", "show_variants", "side_by_side_frame"]


def side_by_side_frame(view: SideBySide, probe: str | None = None) -> pd.DataFrame:
    """One row per finding (of ``probe``, or every probe): ``finding``, the base's value and
    interval, then per variant its value and interval and ``Δ <variant>`` (delta and its
    interval), and ``flagged``: the variants worse than the base beyond the delta's interval."""
    columns = ["finding", view.base_label]
    for c in view.columns:
        columns += [c, f"Δ {c}"]
    columns.append("flagged")
    rows = []
    for t in view.tables:
        if probe is not None and t.probe != probe:
            continue
        for r in t.rows:
            rec: list[object] = [r.key, value_text(r.base)]
            for cell in r.cells:
                rec += [value_text(cell.finding), delta_text(r, cell.delta).removeprefix("Δ ")]
            rec.append(", ".join(c for c, cell in zip(view.columns, r.cells) if cell.flagged))
            rows.append(rec)
    return pd.DataFrame(rows, columns=columns)


def pareto_frame(qc: QualityCost) -> pd.DataFrame:
    """The chart's points: ``variant``, ``quality``, ``cost``, ``low``, ``high`` (the quality's
    interval, NaN without one) and ``front`` (on the Pareto front)."""
    return pd.DataFrame(
        [(p.label, p.quality, p.cost, p.quality_ci.low if p.quality_ci else math.nan,
          p.quality_ci.high if p.quality_ci else math.nan, p.on_front) for p in qc.points],
        columns=["variant", "quality", "cost", "low", "high", "front"],
    )


def pareto_chart(qc: QualityCost) -> alt.Chart:
    """Quality (y) against cost (x): a labelled point per variant, filled on the Pareto front,
    hollow when dominated; the front joined by a dashed line; the quality's interval as a rule."""
    frame = pareto_frame(qc)
    better = "higher" if qc.quality_higher_is_better else "lower"
    x = alt.X("cost:Q", title=f"{qc.cost_key}" + (f" ({qc.cost_unit})" if qc.cost_unit else ""),
              scale=alt.Scale(zero=False))
    y = alt.Y("quality:Q", title=f"{qc.quality_key} ({better} is better)", scale=alt.Scale(zero=False))
    base = alt.Chart(frame).encode(x=x)
    front = alt.Chart(frame[frame["front"]].sort_values(["cost", "quality"])).mark_line(
        strokeDash=[5, 3], color="#e1701a").encode(x="cost:Q", y="quality:Q", order="cost:Q")
    rules = base.mark_rule(color="#3867d6", opacity=0.4, strokeWidth=3).encode(y="low:Q", y2="high:Q")
    points = base.mark_point(size=110, color="#e1701a", strokeWidth=2).encode(
        y=y, fill=alt.condition("datum.front", alt.value("#e1701a"), alt.value("white")),
        tooltip=["variant:N", "quality:Q", "cost:Q", "low:Q", "high:Q", "front:N"])
    labels = base.mark_text(align="left", dx=9, dy=-9).encode(y="quality:Q", text="variant:N")
    return alt.layer(front, rules, points, labels).properties(
        title=f"{qc.title} (filled: Pareto front)", height=320, width="container")


def show_variants(report: AuditReport) -> None:
    """The run page's Variants part (summary tab): the variants, the chart, the flagged cells."""
    import streamlit as st

    from dashboard.text import md_escape

    view = side_by_side(report)
    if view is None:
        return
    st.header("Variants")
    st.dataframe(pd.DataFrame(
        [(v.name, ", ".join(f"{k}={v.overrides[k]}" for k in v.overrides),
          " ".join(f"{fh.path}:{fh.sha256[:12]}" for fh in v.subject.files),
          sum(p.status == "ok" for p in v.probes.values()), sum(p.status == "failed" for p in v.probes.values()))
         for v in report.variants],
        columns=["variant", "overrides", "weights (sha256)", "probes ok", "probes failed"]),
        hide_index=True, key="variants_table")
    qc = report_quality_cost(report)
    if qc is not None:
        st.altair_chart(pareto_chart(qc), width="stretch", height=420)
        st.caption(md_escape("Pareto front: " + ", ".join(p.label for p in qc.points if p.on_front)))
    else:
        st.caption("No quality-versus-cost chart: it needs an unsliced quality finding and a cost finding "
                   "(energy.footprint) on every variant.")
    n = view.n_flagged
    (st.warning if n else st.caption)(md_escape(f"{n} finding(s) of the variants {FLAG}: worse than the base and "
                                                "the delta's interval excludes 0."))
    st.dataframe(side_by_side_frame(view), hide_index=True, key="variants_side_by_side")


def show_probe_variants(report: AuditReport, probe: str, index: int) -> None:
    """One probe tab's side-by-side table (a report with variants only)."""
    import streamlit as st

    if not has_variants(report):
        return
    view = side_by_side(report)
    if view is None or not any(t.probe == probe for t in view.tables):
        return
    st.subheader("Variants side by side")
    st.dataframe(side_by_side_frame(view, probe), hide_index=True, key=f"variants_probe_{index}")
