"""One audit's scorecard: status, gates, findings, a tab per probe with its charts, its slices
worst first and a drill-down to each finding's evidence and samples; downloads (Streamlit)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

from audit.errors import AuditError
from audit.findings import AuditReport, Finding
from audit.render import format_emissions, format_energy, format_interval, format_number, format_value, total_joules
from audit.store import ReportStore, StoredAudit
from dashboard import charts, common, data, variants
from dashboard import report_view as rv
from dashboard.text import clean_text, md_escape

__all__ = ["scorecard_page"]

_EVIDENCE_ITEMS = 50  # a long list in the evidence shows its first items only


def scorecard_page(url: str, rows: list[StoredAudit]) -> None:
    store = common.store(url)
    run_id = common.picker("Audit", rows, key="run")
    report = common.report(url, run_id)
    row = next(r for r in rows if r.run_id == run_id)

    st.title(md_escape(report.name))
    subject = report.subject
    st.caption(md_escape(
        f"{subject.name} · {subject.kind} · {subject.source}"
        + (f" · revision {subject.revision}" if subject.revision else "")
        + f" · {row.created_at:%Y-%m-%d %H:%M} UTC · run {report.run_id}"
    ))  # fmt: skip
    # The store's status: the one the list shows and filters on (a newer genai-audit may know more).
    common.status_banner(row.status, rv.status_reason(row.status, report))

    g = rv.gate_counts(report)
    energy, n_measured, n_estimated = total_joules([p.energy for p in report.probes.values()])
    cols = st.columns(6)
    cols[0].metric("Findings", len(report.findings))
    cols[1].metric("Gates passed", g.passed)
    cols[2].metric("Gates failed", g.failed)
    cols[3].metric("Gates skipped", g.skipped, help="not checked (e.g. a regression gate without a baseline)")
    cols[4].metric("Probes failed", sum(p.status == "failed" for p in report.probes.values()))
    cols[5].metric(
        "Energy of the probes",
        "—" if energy is None else f"{'≈ ' if n_estimated else ''}{format_number(energy)} J",
        help=f"{n_measured} measured, {n_estimated} estimated; unavailable ones left out",
    )
    _downloads(store, url, report)

    sections = rv.probe_sections(report)
    labels = ["Summary", *(f"{s.probe} · {s.status.status if s.status else 'no status'}" for s in sections)]
    tabs = st.tabs([md_escape(x) for x in labels])
    with tabs[0]:
        _summary(report)
    for i, (tab, section) in enumerate(zip(tabs[1:], sections)):
        with tab:
            _probe_section(store, report, section, i)


def _summary(report: AuditReport) -> None:
    st.header("Gates")
    if report.gates:
        st.dataframe(rv.gates_frame(report), hide_index=True, key="gates_table")
    else:
        st.info("This audit has no gates.")
    st.header("Findings")
    if report.findings:
        # the subject's findings; a variant's are in the Variants part, beside the subject's
        own = [f for f in report.findings if f.variant is None]
        st.dataframe(rv.findings_frame(own), hide_index=True, key="findings_table")
    else:
        st.info("This audit has no findings.")
    variants.show_variants(report)
    failures, skipped = rv.failures_of(report), rv.skipped_of(report)
    if failures or skipped:
        st.header("Probe failures")
        for f in failures:
            what = "invalid input" if f.kind == "input" else "crashed"
            st.error(f"**{md_escape(f.probe)}** {what}: {md_escape(f.error)}", icon=":material/error:")
            if f.traceback:
                with st.expander(f"Traceback of {md_escape(f.probe)}"):
                    st.code(f.traceback, language=None)
        for probe, reason in skipped:
            st.info(f"**{md_escape(probe)}** skipped: {md_escape(reason)}")
    frame = rv.energy_frame(report)
    if not frame.empty:
        st.header("Energy by probe")
        if frame["joules"].notna().any():
            height = charts.bars_height(int(frame["joules"].notna().sum())) + charts.DECORATION_PX
            st.altair_chart(charts.energy_bars(frame), width="stretch", height=height)
        st.dataframe(frame, hide_index=True, key="energy_table")
        st.caption(md_escape(f"Whole audit: {format_energy(report.energy)}"))
        emissions = format_emissions(report.energy)
        if emissions:
            st.caption(md_escape(f"Emissions: {emissions}"))


def _probe_section(store: ReportStore, report: AuditReport, section: rv.ProbeSection, index: int) -> None:
    status = section.status
    if status is not None and status.status == "failed":
        st.error(md_escape(f"{section.probe} failed: {clean_text(status.error or 'no error recorded')}"))
    elif status is not None and status.status == "skipped":
        st.info(md_escape(f"{section.probe} skipped: {clean_text(status.reason or 'no reason recorded')}"))
    if not section.findings:
        st.caption("No findings.")
        return
    drawn = 0
    for curves in section.curves:
        st.altair_chart(charts.curve_chart(curves), width="stretch", height=charts.CURVE_HEIGHT + 140)
        drawn += 1
    for matrix in section.matrices:
        side = max(160, 36 * len(matrix.labels))
        st.altair_chart(charts.confusion_chart(matrix), width="stretch", height=side + charts.DECORATION_PX)
        drawn += 1
    for group in section.groups:
        frame = group.frame()
        height = charts.bars_height(len(frame)) + charts.DECORATION_PX
        st.altair_chart(charts.group_bars(frame, group.metric), width="stretch", height=height)
        drawn += 1
    for f in section.values:
        st.altair_chart(charts.value_interval(rv.values_frame([f])), width="stretch", height=100)
        drawn += 1
    if not drawn:
        st.caption("No chart for these findings; they are listed below.")
    st.caption("Slices worst first within each metric.")
    st.dataframe(rv.findings_frame(rv.worst_first(section.findings)), hide_index=True, key=f"probe_table_{index}")
    variants.show_probe_variants(report, section.probe, index)
    _drill_down(store, report, section.findings, index)


def _drill_down(store: ReportStore, report: AuditReport, findings: Sequence[Finding], index: int) -> None:
    """One finding's evidence and the per-sample records behind it."""
    st.subheader("Drill down")
    ordered = rv.worst_first(findings)
    pick = st.selectbox(
        "Finding", range(len(ordered)), key=f"drill_{index}",
        format_func=lambda i: f"{ordered[i].key} = {format_value(ordered[i])} {format_interval(ordered[i].ci)}",
    )  # fmt: skip
    f = ordered[pick]
    st.markdown(md_escape(
        f"{f.key}: {format_value(f)} {format_interval(f.ci)}" + (f" · n = {f.n}" if f.n is not None else "")
        + (f" · interval {f.ci.method}" if f.ci else "")
    ))  # fmt: skip
    for w in f.warnings:
        st.warning(md_escape(w))
    if f.evidence:
        with st.expander("Evidence (as recorded by the probe)"):
            st.json(_bounded(f.evidence), expanded=2)
    try:
        samples = data.samples_frame(store, report.run_id, f)
    except AuditError as exc:
        st.warning(md_escape(exc))
        return
    if samples is None:
        st.caption("No per-sample records stored for this run (samples.parquet).")
    elif samples.empty:
        st.caption("samples.parquet has no records for this finding.")
    else:
        st.caption(f"Per-sample records behind this finding (first {len(samples)}, from samples.parquet).")
        st.dataframe(samples, hide_index=True, key=f"samples_{index}")


def _bounded(value: Any, depth: int = 0) -> Any:
    """``value`` with long lists cut to their first items (the evidence of a probe can hold
    one number per sample), for display only."""
    if isinstance(value, Mapping):
        return {str(k): _bounded(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_bounded(v, depth + 1) for v in value[:_EVIDENCE_ITEMS]]
        if len(value) > _EVIDENCE_ITEMS:
            items.append(f"… {len(value) - _EVIDENCE_ITEMS} more")
        return items
    if isinstance(value, float) and value != value:
        return "NaN"
    return value if isinstance(value, (int, float, bool, type(None))) else clean_text(value)


@st.cache_data(show_spinner=False, max_entries=16)
def _html_bytes(url: str, run_id: str) -> bytes:
    return data.report_bytes(common.store(url), run_id, "report.html")


def _html_link(url: str, report: AuditReport) -> str | None:
    """A URL on this server for the run's HTML report (the store's copy, else rendered from
    the stored report), registered like an image's; None outside a Streamlit server."""
    try:
        from streamlit.runtime import Runtime

        if not Runtime.exists():
            return None
        manager = Runtime.instance().media_file_mgr
        return manager.add(_html_bytes(url, report.run_id), "text/html", f"genai-audit-html-{report.run_id}")
    except Exception:  # noqa: BLE001 - no runtime (AppTest, bare mode): no link, the download stays
        return None


def _downloads(store: ReportStore, url: str, report: AuditReport) -> None:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", report.name).strip("-.")[:60] or "audit"
    cols = st.columns(len(data.DOWNLOADS) + 2)
    link = _html_link(url, report)
    if link is not None:
        cols[0].link_button("Open HTML report", link, icon=":material/open_in_new:", help="in a new tab")
    else:
        cols[0].caption("HTML report: download it")
    for col, item in zip(cols[1:], data.report_downloads(store, report.run_id)):
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

    cols[-1].download_button("Model card", data=lambda: render_card(report).encode("utf-8"),
                             file_name=f"{stem}-{report.run_id[:8]}-MODEL_CARD.md", mime="text/markdown",
                             key="download_model_card", icon=":material/download:", on_click="ignore",
                             help="MODEL_CARD.md with model-index metadata (genai-audit card)")  # fmt: skip


