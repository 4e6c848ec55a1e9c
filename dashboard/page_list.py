"""The list of audits (a sortable run table with filters), the start page of an empty
store, and the probe failures across audits (Streamlit)."""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

import pandas as pd
import streamlit as st

from audit.errors import AuditError
from audit.store import StoredAudit
from dashboard import common, data
from dashboard.runs_table import runs_table
from dashboard.text import OTHER, STATUSES, md_escape

__all__ = ["audits_page", "failures_page", "start_page"]

_NUMERIC = {"findings", "gates failed", "probes failed"}


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


def _state_of(key: str, name: str) -> Any:
    state = st.session_state.get(key)
    if state is None:
        return None
    return state.get(name) if hasattr(state, "get") else getattr(state, name, None)


def _opened() -> None:
    run = _state_of("audit_table", "open")
    if isinstance(run, str) and run:
        common.open_audit(run)


def _sorted() -> None:
    sort = _state_of("audit_table", "sort")
    if isinstance(sort, dict) and isinstance(sort.get("column"), str):
        st.session_state["list_sort"] = (sort["column"], bool(sort.get("descending")))


def _metric_filter(url: str, all_rows: list[StoredAudit]) -> tuple[str | None, dict[str, float] | None, Any, Any]:
    if not st.toggle("Filter by a metric's range", key="metric_filter", persist_state="session"):
        return None, None, None, None
    keys = common.metric_keys(url, None, len(all_rows))
    if not keys:
        st.caption("The audits have no findings to filter on.")
        return None, None, None, None
    c_key, c_low, c_high = st.columns([3, 1, 1])
    key = c_key.selectbox("Metric", keys, key="list_metric", persist_state="session")
    values = common.metric_values(url, key, len(all_rows))
    low = c_low.number_input("Min", value=None, key="list_min", format="%g", persist_state="session")
    high = c_high.number_input("Max", value=None, key="list_max", format="%g", persist_state="session")
    return key, values, low, high


def audits_page(url: str, rows: list[StoredAudit]) -> None:
    st.title("Audits")
    c_name, c_model, c_status, c_since, c_until = st.columns([2, 2, 1, 1, 1])
    name = c_name.text_input("Name contains", key="q", placeholder="audit name", persist_state="session")
    model = c_model.selectbox(
        "Model", [common.ALL, *data.models_of(rows)], key="model", bind="query-params", persist_state="session"
    )
    status = c_status.selectbox(
        "Status", [common.ALL, *STATUSES, OTHER], key="status", bind="query-params", persist_state="session"
    )
    since = c_since.date_input("From", value=None, key="since", persist_state="session")
    until = c_until.date_input("To", value=None, key="until", persist_state="session")
    metric, values, low, high = _metric_filter(url, rows)
    try:
        shown = data.filter_audits(
            rows, name=name, model=None if model == common.ALL else model,
            status=None if status == common.ALL else status, since=since, until=until,
            values=values, low=low, high=high,
        )  # fmt: skip
    except AuditError as exc:
        st.warning(md_escape(exc))
        shown = []

    # The counts as Markdown, drawn with the script the page already has (an st.metric waits
    # for its own script to load).
    with st.container(key="audit_counts"):
        st.markdown(data.counts_markdown(shown))
    if not shown:
        st.info("No audit matches these filters.")
        return

    columns = list(data.LIST_COLUMNS)
    if metric is not None:
        columns.insert(columns.index("status") + 1, metric)
    column, descending = st.session_state.get("list_sort", ("created", True))
    if column not in columns:
        column, descending = "created", True
    ordered = data.sort_audits(shown, column, descending=descending, values=values if column == metric else None)

    # Widgets keyed by the filters (and the page by the order too): a page or a pick made in
    # another list means nothing here.
    filters = hashlib.sha1(repr((name, model, status, since, until, metric, low, high)).encode()).hexdigest()[:10]
    order = hashlib.sha1(repr((filters, column, descending)).encode()).hexdigest()[:10]
    size = data.LIST_PAGE_ROWS
    n_pages = -(-len(ordered) // size)
    page = 0
    if n_pages > 1:
        page = st.columns([1, 3])[0].selectbox(
            "Rows", range(n_pages), key=f"list_page_{order}",
            format_func=lambda i: f"{i * size + 1}–{min((i + 1) * size, len(ordered))} of {len(ordered)}",
        )  # fmt: skip
    on_page = ordered[page * size : (page + 1) * size]
    st.caption("Click a column's name to sort by it, and a row to open its scorecard.")
    with st.container(key="audit_list"):
        runs_table(
            data.list_records(on_page, metric=metric, values=values),
            [(c, c in _NUMERIC or c == metric) for c in columns],
            sort=(column, descending), key="audit_table", on_open=_opened, on_sort=_sorted,
        )  # fmt: skip

    with st.expander("Open or compare by name"):
        # Picked among the filtered audits; not kept in the URL (the scorecard's own picker is).
        common.picker("Audit", shown, key=f"pick_{filters}", in_url=False)
        b1, b2, _ = st.columns([1, 1, 3])
        # The callbacks read the pick when the button is pressed, not the one of the last run.
        b1.button("Open scorecard", on_click=lambda k=f"pick_{filters}": common.open_audit(st.session_state[k]),
                  type="primary", key="open")  # fmt: skip
        b2.button("Compare with previous", on_click=common.compare_picked, args=(f"pick_{filters}", rows), key="cmp")


def failures_page(url: str, rows: list[StoredAudit]) -> None:
    st.title("Probe failures")
    found = data.store_failures(common.store(url), rows)
    if not found:
        st.success("No probe failed in the stored audits.")
        return
    st.caption(f"{len(found)} failure(s) in {len({r.run_id for r, _ in found})} audit(s), newest first.")
    st.dataframe(
        pd.DataFrame(
            [
                (r.created_at.replace(tzinfo=None), r.name, r.subject_name, r.status, f.probe, f.kind, f.error,
                 r.run_id)
                for r, f in found
            ],  # fmt: skip
            columns=["created (UTC)", "audit", "model", "status", "probe", "kind", "error", "run id"],
        ),
        hide_index=True,
        key="failures_table",
        column_config={"created (UTC)": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")},
    )
    for i, (row, f) in enumerate(found):
        with st.expander(md_escape(f"{f.probe} in {row.name} ({row.created_at:%Y-%m-%d %H:%M})")):
            st.code(f.traceback or f.error, language=None)
            st.button("Open scorecard", key=f"fail_open_{i}", on_click=common.open_audit, args=(row.run_id,))
