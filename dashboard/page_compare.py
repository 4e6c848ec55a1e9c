"""Audits against each other: compare a baseline with one or more candidates, a metric's
trend over one model's audits, and the leaderboard of models (Streamlit)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.store import StoredAudit
from dashboard import charts, common, data, history
from dashboard.text import md_escape

__all__ = ["compare_page", "leaderboard_page", "trend_page"]

_CHART_FINDINGS = 30  # the most findings the chart of changes draws (the table lists all)


def _candidate_changed(rows: list[StoredAudit]) -> None:
    # A new candidate is compared with its own predecessor, not with the last baseline.
    base = history.default_baseline(rows, st.session_state["cand"])
    if base is not None:
        st.session_state["base"] = base


def compare_page(url: str, rows: list[StoredAudit]) -> None:
    st.title("Compare audits")
    c_base, c_cand = st.columns(2)
    with c_cand:
        cand = common.picker("Candidate", rows, key="cand", on_change=_candidate_changed, args=(rows,))
    with c_base:
        base = common.picker("Baseline", rows, key="base", default=history.default_baseline(rows, cand))
    labels = {r.run_id: data.audit_label(r) for r in rows}
    more = st.multiselect(
        "More candidates", [r.run_id for r in rows if r.run_id not in (base, cand)], key="more",
        format_func=labels.__getitem__, placeholder="add audits to compare with the baseline",
    )  # fmt: skip
    if base == cand:
        st.info("Pick two different audits to compare.")
        return
    before = common.report(url, base)
    runs = [cand, *more]
    reports = {r: common.report(url, r) for r in runs}
    after = reports[cand]
    models = {before.subject.name, *(r.subject.name for r in reports.values())}
    if len(models) > 1:
        st.warning(md_escape(f"These audits are of different models ({', '.join(sorted(models))})."))

    changes = {r: history.compare_reports(before, reports[r]) for r in runs}
    counts = history.change_counts(changes[cand])
    cols = st.columns(6)
    for col, (label, k) in zip(cols, (("Changed", "changed"), ("Unchanged", "unchanged"), ("Added", "added"),
                                      ("Removed", "removed"), ("Worse, beyond CIs", "worse_beyond"),
                                      ("Better, beyond CIs", "better_beyond"))):  # fmt: skip
        col.metric(label, counts[k])
    st.caption(
        f"Baseline {md_escape(before.status)}, candidate {md_escape(after.status)}. Changed: {counts['worse']} worse, "
        f"{counts['better']} better" + (f", {counts['n/a']} not comparable (NaN)" if counts["n/a"] else "")
        + ". A change is *beyond the intervals* when the two confidence intervals do not overlap: a "
        "conservative sign that it is not noise."
    )
    if more:
        per_run = pd.DataFrame(
            [(data.audit_label(next(x for x in rows if x.run_id == r)),
              *(history.change_counts(changes[r])[k] for k in ("changed", "unchanged", "added", "removed",
                                                                 "worse_beyond", "better_beyond")))
             for r in runs],
            columns=["candidate", "changed", "unchanged", "added", "removed", "worse beyond CIs", "better beyond CIs"],
        )  # fmt: skip
        st.dataframe(per_run, hide_index=True, key="counts_table")

    st.subheader("Gates that changed status")
    gate_rows = [(r[:8], g.gate, g.metric, g.before, g.after) for r in runs for g in history.gate_changes(before, reports[r])]
    if gate_rows:
        st.dataframe(pd.DataFrame(gate_rows, columns=["candidate", "gate", "metric", "baseline", "candidate status"]),
                     hide_index=True, key="gate_changes_table")  # fmt: skip
    else:
        st.caption("No gate changed status.")

    moved = [c.key for c in changes[cand] if c.direction in ("better", "worse") and c.variant is None]
    for r in more:
        moved += [c.key for c in changes[r]
                  if c.direction in ("better", "worse") and c.variant is None and c.key not in moved]
    if moved:
        frame = history.runs_values_frame(
            [(f"baseline {base[:8]}", before), *((f"{r[:8]}", reports[r]) for r in runs)], moved[:_CHART_FINDINGS]
        )
        if not frame.empty:
            st.altair_chart(charts.changes_chart(frame), width="stretch", height=charts.changes_height(frame))
    else:
        st.caption("No finding changed value: nothing to chart.")

    only_beyond = st.toggle("Only changes beyond the intervals", key="only_beyond")
    shown = [c for c in changes[cand] if c.beyond_intervals] if only_beyond else changes[cand]
    if not shown:
        st.info("No finding changed beyond its intervals." if only_beyond else "Neither audit has findings.")
        return
    st.dataframe(
        history.changes_frame(shown), hide_index=True, key="changes_table",
        column_config={
            "delta": st.column_config.NumberColumn(format="%+.4g"),
            "change %": st.column_config.NumberColumn(format="%+.3g%%"),
        },
    )  # fmt: skip


def trend_page(url: str, rows: list[StoredAudit]) -> None:
    st.title("Trend of a metric")
    models = data.models_of(rows)
    c_model, c_metric, c_x = st.columns([1, 2, 1])
    model = c_model.selectbox("Model", models, key="trend_model", bind="query-params", persist_state="session")
    keys = common.metric_keys(url, model, len(rows))
    if not keys:
        st.info(md_escape(f"The audits of {model} have no findings."))
        return
    metric = c_metric.selectbox("Metric", keys, key="metric", bind="query-params", persist_state="session")
    by_time = c_x.radio("Along", ["run", "time"], key="trend_x", horizontal=True, persist_state="session") == "time"
    frame = history.trend_frame(common.store(url).metric_history(model, metric))
    if frame.empty:
        st.info("No audit of this model has this metric.")
        return
    bounds = history.gate_bounds(common.report(url, frame["run id"].iloc[-1]), metric)
    missing = int(frame["value"].isna().sum())
    st.altair_chart(charts.trend_chart(frame, metric, by_time=by_time, bounds=bounds), width="stretch", height=420)
    st.caption(
        f"{len(frame)} audit(s)" + (f"; {missing} without a finite value (not drawn)" if missing else "")
        + ". The band is the confidence interval"
        + (f"; the dashed line is the gate's bound (latest audit's gates)." if bounds else ".")
    )
    st.dataframe(
        frame, hide_index=True, key="trend_table",
        column_config={"created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm")},
    )  # fmt: skip


def leaderboard_page(url: str, rows: list[StoredAudit]) -> None:
    st.title("Leaderboard")
    latest = history.latest_per_model(rows)
    reports = [(r, common.report(url, r.run_id)) for r in latest]
    keys_all = history.shared_keys([rep for _, rep in reports], limit=200)
    default = keys_all[:6]
    keys = st.multiselect("Metrics", keys_all, default=default, key="board_metrics", persist_state="session")
    st.caption(
        f"The latest audit of each of {len(latest)} model(s); click a column's name to sort, "
        "**open** to see the audit. Intervals as recorded by the probes."
    )
    frame = history.leaderboard_frame(reports, keys)
    config = {
        "open": st.column_config.LinkColumn("open", display_text="open"),
        "created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm"),
        **{k: st.column_config.NumberColumn(k, format="%.4g") for k in keys},
    }
    st.dataframe(frame, hide_index=True, key="leaderboard_table", column_config=config)
