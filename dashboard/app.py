"""The genai-audit dashboard: a Streamlit app over the audit store.

Run it with ``genai-audit dashboard [--store URL] [--port N]`` (or
``streamlit run dashboard/app.py`` with ``GENAI_AUDIT_STORE`` set). Views, chosen in the
sidebar and kept in the URL (``?view=Scorecard&run=<run id>`` links to one audit):

* **Audits**: the list of audits, filtered by model, status and date, a page at a time.
* **Scorecard**: one audit's gates, findings, per-probe charts, energy, failures, downloads.
* **Compare**: each finding's change between two audits, and whether it is beyond the intervals.
* **Trend**: one metric over the audits of one model.
* **Failures**: the probes that failed, with their errors, across audits.

Safety: report text reaches the page only through Streamlit elements that escape it
(tables, code blocks, charts) or through :func:`dashboard.data.md_escape` (the audit list is a
Markdown table whose every cell goes through it); no element is
given ``unsafe_allow_html``. Report files are read only through
:meth:`audit.store.ReportStore.report_file`, which never leaves the store's report folder.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from pathlib import Path

try:
    import dashboard  # noqa: F401
except ImportError:  # ``streamlit run dashboard/app.py`` from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

from audit.errors import AuditError
from audit.findings import AuditReport
from audit.render import format_emissions, format_energy, format_number, total_joules
from audit.store import ReportStore, StoredAudit
from dashboard import charts, data
from dashboard.data import md_escape

VIEWS = ("Audits", "Scorecard", "Compare", "Trend", "Failures")
ALL = "All"
_ROWS_TTL_S = 10  # new audits show up within this many seconds (or at once with "Reload")
_LIST_HEIGHT_PX = 460  # a long list scrolls inside this height, so that the picker below stays in view
_LIST_ROWS_IN_VIEW = 10  # rows that fit in it
_STATUS_ICON = {"passed": ":material/check_circle:", "failed": ":material/cancel:", "crashed": ":material/error:"}


# -- cached access to the store -------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _store(url: str) -> ReportStore:
    return ReportStore(url)


@st.cache_data(ttl=_ROWS_TTL_S, show_spinner=False)
def _rows(url: str) -> list[StoredAudit]:
    return data.all_audits(_store(url))


@st.cache_resource(show_spinner=False, max_entries=64)
def _report(url: str, run_id: str) -> AuditReport:
    # Stored reports never change (the store keeps the first copy of a run id), so one
    # parsed report can be shared by every session.
    return _store(url).get(run_id)


@st.cache_data(ttl=_ROWS_TTL_S, show_spinner=False)
def _metric_keys(url: str, model: str, n_rows: int) -> list[str]:
    return data.metric_keys(_store(url), _rows(url), model)


# -- navigation -----------------------------------------------------------------------------


def _open_audit(run_id: str) -> None:
    st.session_state["view"] = "Scorecard"
    st.session_state["run"] = run_id


def _open_compare(base: str | None, cand: str) -> None:
    st.session_state["view"] = "Compare"
    st.session_state["cand"] = cand
    if base is not None:
        st.session_state["base"] = base


def _open_picked(pick_key: str) -> None:
    _open_audit(st.session_state[pick_key])


def _compare_picked(pick_key: str, rows: list[StoredAudit]) -> None:
    cand = st.session_state[pick_key]
    _open_compare(data.default_baseline(rows, cand), cand)


def _candidate_changed(rows: list[StoredAudit]) -> None:
    # A new candidate is compared with its own predecessor, not with the last baseline.
    base = data.default_baseline(rows, st.session_state["cand"])
    if base is not None:
        st.session_state["base"] = base


def _reload() -> None:
    _rows.clear()
    _metric_keys.clear()


def _picker(
    label: str,
    rows: list[StoredAudit],
    *,
    key: str,
    default: str | None = None,
    in_url: bool = True,
    on_change=None,
    args: tuple = (),
) -> str:
    """A selectbox of audits (newest first) whose value is a run id.

    With ``in_url`` the run id is kept in the URL query parameter ``key`` (so that a link opens
    the same audit). Streamlit's own binding would put the option's label in the URL, hence
    the parameter is read and written here.
    """
    ids = [r.run_id for r in rows]
    labels = {r.run_id: data.audit_label(r) for r in rows}
    if key in st.session_state and st.session_state[key] not in labels:
        del st.session_state[key]  # e.g. a run filtered out of the list since it was picked
    if in_url and key not in st.session_state and st.query_params.get(key) in labels:
        default = st.query_params[key]
    index = 0
    # A default given while the widget already has a value would make Streamlit warn.
    if default in labels and key not in st.session_state:
        index = ids.index(default)
    value = st.selectbox(
        label,
        ids,
        index=index,
        format_func=labels.__getitem__,
        key=key,
        persist_state="session",
        on_change=on_change,
        args=args,
    )
    if in_url and st.query_params.get(key) != value:
        st.query_params[key] = value
    return value


# -- pages ----------------------------------------------------------------------------------


def start_page(url: str) -> None:
    st.title("No audits yet")
    st.markdown(
        "This dashboard shows the audits kept in the audit store, and the store is empty. "
        "Run a first audit and it appears here (press **Reload** in the sidebar):"
    )
    st.markdown("**The demo** (offline, a few minutes on a CPU):")
    st.code(f"genai-audit demo --store {shlex.quote(url)}", language="bash")
    st.markdown("**Your own model**, from a spec (see the README's quick start):")
    st.code(f"genai-audit run audit.yaml --store {shlex.quote(url)}", language="bash")
    st.caption("Every `genai-audit run` stores its report; `genai-audit store list` lists them.")


def audits_page(url: str, rows: list[StoredAudit]) -> None:
    st.title("Audits")
    c_model, c_status, c_since, c_until = st.columns(4)
    model = c_model.selectbox(
        "Model", [ALL, *data.models_of(rows)], key="model", bind="query-params", persist_state="session"
    )
    status = c_status.selectbox(
        "Status", [ALL, *data.STATUSES], key="status", bind="query-params", persist_state="session"
    )
    since = c_since.date_input("From", value=None, key="since", persist_state="session")
    until = c_until.date_input("To", value=None, key="until", persist_state="session")
    try:
        shown = data.filter_audits(
            rows,
            model=None if model == ALL else model,
            status=None if status == ALL else status,
            since=since,
            until=until,
        )
    except AuditError as exc:
        st.warning(md_escape(exc))
        shown = []

    # Counts and list as Markdown, which the page draws with the script it already has; an
    # st.metric or st.dataframe is drawn only once its own script has loaded (the data grid's
    # is ~1.5 MB), which kept the list of 500 audits ~3 s from the screen (bench/bench_dashboard.py).
    with st.container(key="audit_counts"):
        st.markdown(data.counts_markdown(shown))

    if not shown:
        st.info("No audit matches these filters.")
        return
    # Widgets keyed by the filters: a page or a pick made in another list means nothing here.
    filters = hashlib.sha1(repr((model, status, since, until)).encode()).hexdigest()[:10]
    size = data.LIST_PAGE_ROWS
    n_pages = -(-len(shown) // size)
    page = 0
    if n_pages > 1:
        page = st.columns([1, 3])[0].selectbox(
            "Rows",
            range(n_pages),
            format_func=lambda i: f"{i * size + 1}–{min((i + 1) * size, len(shown))} of {len(shown)}",
            key=f"list_page_{filters}",
        )
    on_page = shown[page * size : (page + 1) * size]
    with st.container(height=_LIST_HEIGHT_PX if len(on_page) > _LIST_ROWS_IN_VIEW else "content", key="audit_list"):
        st.markdown(data.audits_markdown(on_page))

    st.subheader("Open an audit")
    st.caption("Pick one of the audits listed above (type to search).")
    # Picked among the filtered audits; not kept in the URL (the scorecard's own picker is).
    _picker("Audit", shown, key=f"pick_{filters}", in_url=False)
    b1, b2, _ = st.columns([1, 1, 3])
    # The callbacks read the pick when the button is pressed, not the one of the last run.
    b1.button("Open scorecard", on_click=_open_picked, args=(f"pick_{filters}",), type="primary", key="open")
    b2.button("Compare with previous", on_click=_compare_picked, args=(f"pick_{filters}", rows), key="cmp")


def scorecard_page(url: str, rows: list[StoredAudit]) -> None:
    store = _store(url)
    run_id = _picker("Audit", rows, key="run")
    report = _report(url, run_id)
    row = next(r for r in rows if r.run_id == run_id)

    st.title(md_escape(report.name))
    subject = report.subject
    st.caption(
        md_escape(
            f"{subject.name} · {subject.kind} · {subject.source}"
            + (f" · revision {subject.revision}" if subject.revision else "")
            + f" · {row.created_at:%Y-%m-%d %H:%M} UTC · run {report.run_id}"
        )
    )
    banner = {"passed": st.success, "failed": st.error, "crashed": st.warning}[report.status]
    reasons = {
        "passed": "every gate passed",
        "failed": f"{row.n_gates_failed} gate(s) failed",
        "crashed": f"{row.n_probes_failed} probe(s) failed",
    }
    banner(f"**{report.status.upper()}**: {reasons[report.status]}", icon=_STATUS_ICON[report.status])

    gates = report.gates
    energy, n_measured, n_estimated = total_joules([p.energy for p in report.probes.values()])
    cols = st.columns(5)
    cols[0].metric("Findings", len(report.findings))
    cols[1].metric("Gates passed", sum(g.status == "passed" for g in gates))
    cols[2].metric("Gates failed", sum(g.status == "failed" for g in gates))
    cols[3].metric("Probes failed", sum(p.status == "failed" for p in report.probes.values()))
    cols[4].metric(
        "Energy of the probes",
        "—" if energy is None else f"{'≈ ' if n_estimated else ''}{format_number(energy)} J",
        help=f"{n_measured} measured, {n_estimated} estimated; unavailable ones left out",
    )

    _downloads(store, report)

    st.header("Gates")
    if gates:
        st.dataframe(data.gates_frame(report), hide_index=True, key="gates_table")
    else:
        st.info("This audit has no gates.")

    st.header("Findings")
    if report.findings:
        st.dataframe(data.findings_frame(report.findings), hide_index=True, key="findings_table")
    else:
        st.info("This audit has no findings.")

    failures = data.failures_of(report)
    skipped = data.skipped_of(report)
    if failures or skipped:
        st.header("Probe failures")
        _failures(failures)
        for probe, reason in skipped:
            st.info(f"**{md_escape(probe)}** skipped: {md_escape(reason)}")

    st.header("Probes")
    for i, section in enumerate(data.probe_sections(report)):
        _probe_section(section, i)

    frame = data.energy_frame(report)
    if not frame.empty:
        st.header("Energy by probe")
        if frame["joules"].notna().any():
            n_bars = int(frame["joules"].notna().sum())
            height = charts.bars_height(n_bars) + charts.DECORATION_PX
            st.altair_chart(charts.energy_bars(frame), width="stretch", height=height)
        st.dataframe(frame, hide_index=True, key="energy_table")
        st.caption(md_escape(f"Whole audit: {format_energy(report.energy)}"))
        emissions = format_emissions(report.energy)
        if emissions:
            st.caption(md_escape(f"Emissions: {emissions}"))


def _failures(failures: list[data.ProbeFailure]) -> None:
    for f in failures:
        what = "invalid input" if f.kind == "input" else "crashed"
        st.error(f"**{md_escape(f.probe)}** {what}: {md_escape(f.error)}", icon=":material/error:")
        if f.traceback:
            with st.expander(f"Traceback of {md_escape(f.probe)}"):
                st.code(f.traceback, language=None)


def _probe_section(section: data.ProbeSection, index: int) -> None:
    status = section.status.status if section.status is not None else "no status"
    with st.container(border=True):
        st.subheader(f"{md_escape(section.probe)} · {status}")
        if not section.findings:
            st.caption("No findings.")
            return
        drawn = 0
        for curve in section.curves:
            height = charts.CURVE_HEIGHT + charts.DECORATION_PX
            st.altair_chart(charts.curve_chart(curve), width="stretch", height=height)
            drawn += 1
        for group in section.groups:
            frame = group.frame()
            height = charts.bars_height(len(frame)) + charts.DECORATION_PX
            st.altair_chart(charts.group_bars(frame, group.metric), width="stretch", height=height)
            drawn += 1
        if section.values:
            frame = data.values_frame(section.values)
            st.altair_chart(charts.value_intervals(frame), width="stretch", height=charts.facet_height(len(frame)))
            drawn += 1
        if not drawn:
            st.caption("No chart for these findings; they are listed below.")
        st.dataframe(data.findings_frame(section.findings), hide_index=True, key=f"probe_table_{index}")


def _downloads(store: ReportStore, report: AuditReport) -> None:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", report.name).strip("-.")[:60] or "audit"
    cols = st.columns(len(data.DOWNLOADS))
    for col, item in zip(cols, data.report_downloads(store, report.run_id)):
        # Rendered on click, not on every rerun (a stored HTML report can be large).
        col.download_button(
            f"{item.label}",
            data=lambda name=item.name, run_id=report.run_id: data.report_bytes(store, run_id, name),
            file_name=f"{stem}-{report.run_id[:8]}-{item.name}",
            mime=item.mime,
            key=f"download_{item.name}",
            icon=":material/download:",
            help=None if item.stored else "rendered from the stored report (no stored copy of this file)",
            on_click="ignore",
        )
    # The evaluation section of a Hugging Face model card, rendered from the report on click.
    from audit.render.card import render_card

    st.download_button("Model card", data=lambda: render_card(report).encode("utf-8"),
                       file_name=f"{stem}-{report.run_id[:8]}-MODEL_CARD.md", mime="text/markdown",
                       key="download_model_card", icon=":material/download:", on_click="ignore",
                       help="MODEL_CARD.md with model-index metadata (genai-audit card)")


def compare_page(url: str, rows: list[StoredAudit]) -> None:
    st.title("Compare two audits")
    c_base, c_cand = st.columns(2)
    with c_cand:
        cand = _picker("Candidate", rows, key="cand", on_change=_candidate_changed, args=(rows,))
    with c_base:
        base = _picker("Baseline", rows, key="base", default=data.default_baseline(rows, cand))
    if base == cand:
        st.info("Pick two different audits to compare.")
        return
    before, after = _report(url, base), _report(url, cand)
    if before.subject.name != after.subject.name:
        st.warning(
            md_escape(f"These audits are of different models ({before.subject.name} and {after.subject.name}).")
        )
    changes = data.compare_reports(before, after)
    counts = data.change_counts(changes)
    cols = st.columns(6)
    cols[0].metric("Worse, beyond CIs", counts["worse_beyond"])
    cols[1].metric("Better, beyond CIs", counts["better_beyond"])
    cols[2].metric("Worse", counts["worse"])
    cols[3].metric("Better", counts["better"])
    cols[4].metric("Added", counts["added"])
    cols[5].metric("Removed", counts["removed"])
    st.caption(
        f"Baseline {before.status}, candidate {after.status}. A change is *beyond the intervals* when the two "
        "confidence intervals do not overlap: a conservative sign that it is not noise."
    )
    only_beyond = st.toggle("Only changes beyond the intervals", key="only_beyond")
    shown = [c for c in changes if c.beyond_intervals] if only_beyond else changes
    if not shown:
        st.info("No finding changed beyond its intervals." if only_beyond else "Neither audit has findings.")
        return
    st.dataframe(
        data.changes_frame(shown),
        hide_index=True,
        key="changes_table",
        column_config={
            "delta": st.column_config.NumberColumn(format="%+.4g"),
            "change %": st.column_config.NumberColumn(format="%+.3g%%"),
        },
    )


def trend_page(url: str, rows: list[StoredAudit]) -> None:
    st.title("Trend of a metric")
    models = data.models_of(rows)
    c_model, c_metric = st.columns([1, 2])
    model = c_model.selectbox("Model", models, key="trend_model", bind="query-params", persist_state="session")
    keys = _metric_keys(url, model, len(rows))
    if not keys:
        st.info(md_escape(f"The audits of {model} have no findings."))
        return
    metric = c_metric.selectbox("Metric", keys, key="metric", bind="query-params", persist_state="session")
    frame = data.trend_frame(_store(url).metric_history(model, metric))
    if frame.empty:
        st.info("No audit of this model has this metric.")
        return
    missing = int(frame["value"].isna().sum())
    st.altair_chart(charts.trend_chart(frame, metric), width="stretch", height=360)
    st.caption(
        f"{len(frame)} audit(s)" + (f"; {missing} without a finite value (not drawn)" if missing else "")
        + ". Bars are the confidence intervals."
    )
    st.dataframe(
        frame, hide_index=True, key="trend_table",
        column_config={"created": st.column_config.DatetimeColumn("created (UTC)", format="YYYY-MM-DD HH:mm")},
    )


def failures_page(url: str, rows: list[StoredAudit]) -> None:
    st.title("Probe failures")
    found = data.store_failures(_store(url), rows)
    if not found:
        st.success("No probe failed in the stored audits.")
        return
    st.caption(f"{len(found)} failure(s) in {len({r.run_id for r, _ in found})} audit(s), newest first.")
    import pandas as pd

    st.dataframe(
        pd.DataFrame(
            [
                (r.created_at.replace(tzinfo=None), r.name, r.subject_name, f.probe, f.kind, f.error, r.run_id)
                for r, f in found
            ],
            columns=["created (UTC)", "audit", "model", "probe", "kind", "error", "run id"],
        ),
        hide_index=True,
        key="failures_table",
        column_config={"created (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")},
    )
    for i, (row, f) in enumerate(found):
        with st.expander(md_escape(f"{f.probe} in {row.name} ({row.created_at:%Y-%m-%d %H:%M})")):
            st.code(f.traceback or f.error, language=None)
            st.button("Open scorecard", key=f"fail_open_{i}", on_click=_open_audit, args=(row.run_id,))


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    st.set_page_config(page_title="genai-audit dashboard", page_icon=":material/fact_check:", layout="wide")
    url = data.store_url()
    with st.sidebar:
        st.title("genai-audit")
        view = st.radio("View", VIEWS, key="view", bind="query-params")
        st.button("Reload", on_click=_reload, icon=":material/refresh:", key="reload")
    try:
        store = _store(url)
        rows = _rows(url)
    except AuditError as exc:
        st.error(md_escape(f"Cannot read the audit store: {exc}"))
        st.stop()
    st.sidebar.caption(md_escape(f"Store: {store.url} · {len(rows)} audit(s)"))
    if not rows:
        start_page(url)
        return
    pages = {
        "Audits": audits_page,
        "Scorecard": scorecard_page,
        "Compare": compare_page,
        "Trend": trend_page,
        "Failures": failures_page,
    }
    try:
        pages[view](url, rows)
    except AuditError as exc:  # a stored report that cannot be read: say which, keep the app up
        st.error(md_escape(exc))


main()
