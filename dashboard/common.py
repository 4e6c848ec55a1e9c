"""What the dashboard's pages share: cached access to the store, navigation, the audit picker
and the status banner (Streamlit)."""

from __future__ import annotations

import streamlit as st

from audit.findings import AuditReport
from audit.store import ReportStore, StoredAudit
from dashboard import data, history
from dashboard.text import md_escape, status_style

__all__ = [
    "ALL",
    "compare_picked",
    "open_audit",
    "open_compare",
    "picker",
    "reload",
    "report",
    "rows",
    "status_banner",
    "store",
]

ALL = "All"
_ROWS_TTL_S = 10  # new audits show up within this many seconds (or at once with "Reload")


@st.cache_resource(show_spinner=False)
def store(url: str) -> ReportStore:
    return ReportStore(url)


@st.cache_data(ttl=_ROWS_TTL_S, show_spinner=False)
def rows(url: str) -> list[StoredAudit]:
    return data.all_audits(store(url))


@st.cache_resource(show_spinner=False, max_entries=64)
def report(url: str, run_id: str) -> AuditReport:
    # Stored reports never change (the store keeps the first copy of a run id), so one
    # parsed report can be shared by every session.
    return store(url).get(run_id)


@st.cache_data(ttl=_ROWS_TTL_S, show_spinner=False)
def metric_keys(url: str, model: str | None, n_rows: int) -> list[str]:
    return history.metric_keys(store(url), rows(url), model)


@st.cache_data(ttl=_ROWS_TTL_S, show_spinner=False)
def metric_values(url: str, key: str, n_rows: int) -> dict[str, float]:
    return data.metric_values(store(url), rows(url), key)


def reload() -> None:
    rows.clear()
    metric_keys.clear()
    metric_values.clear()


# -- navigation -----------------------------------------------------------------------------


def open_audit(run_id: str) -> None:
    st.session_state["view"] = "Scorecard"
    st.session_state["run"] = run_id


def open_compare(base: str | None, cand: str) -> None:
    st.session_state["view"] = "Compare"
    st.session_state["cand"] = cand
    if base is not None:
        st.session_state["base"] = base


def compare_picked(pick_key: str, all_rows: list[StoredAudit]) -> None:
    cand = st.session_state[pick_key]
    open_compare(history.default_baseline(all_rows, cand), cand)


def picker(
    label: str,
    choices: list[StoredAudit],
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
    ids = [r.run_id for r in choices]
    labels = {r.run_id: data.audit_label(r) for r in choices}
    if key in st.session_state and st.session_state[key] not in labels:
        del st.session_state[key]  # e.g. a run filtered out of the list since it was picked
    if in_url and key not in st.session_state and st.query_params.get(key) in labels:
        default = st.query_params[key]
    index = 0
    # A default given while the widget already has a value would make Streamlit warn.
    if default in labels and key not in st.session_state:
        index = ids.index(default)
    value = st.selectbox(
        label, ids, index=index, format_func=labels.__getitem__, key=key, persist_state="session",
        on_change=on_change, args=args,
    )  # fmt: skip
    if in_url and st.query_params.get(key) != value:
        st.query_params[key] = value
    return value


def status_banner(status: str, reason: str) -> None:
    """The status in a coloured banner; a status unknown here gets a neutral one, never a crash."""
    style = status_style(status)
    show = {"success": st.success, "error": st.error, "warning": st.warning}.get(style.banner, st.info)
    # The reason is the dashboard's own words and numbers (status_reason), not report text.
    text = f"**{md_escape(status.upper())}**" + (f": {reason}" if reason else "")
    show(text, icon=style.icon)
