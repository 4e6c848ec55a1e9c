"""The genai-audit dashboard: a Streamlit app over the audit store.

Run it with ``genai-audit dashboard [--store URL] [--port N]`` (or
``streamlit run dashboard/app.py`` with ``GENAI_AUDIT_STORE`` set). Views, chosen in the
sidebar and kept in the URL (``?view=Scorecard&run=<run id>`` links to one audit):

* **Audits**: the run table, sortable, filtered by name, model, status, date and a metric's range.
* **Scorecard**: one audit's status, gates, findings, a tab per probe (charts, slices worst
  first, drill-down to evidence and samples), energy, failures, downloads, the HTML report.
* **Compare**: a baseline against one or more candidates: counts, changed gates, a chart of changes.
* **Trend**: one metric over the audits of one model, with intervals and the gate's bound.
* **Leaderboard**: models x metrics over the latest audit of each model.
* **Failures**: the probes that failed, with their errors, across audits.

Pages live in :mod:`dashboard.page_list`, :mod:`dashboard.page_scorecard` and
:mod:`dashboard.page_compare`; what they show is computed without Streamlit in
:mod:`dashboard.data`, :mod:`dashboard.report_view` and :mod:`dashboard.history`.

Safety: report text reaches the page only through Streamlit elements that escape it
(tables, code blocks, charts), through :func:`dashboard.text.md_escape`, or as ``textContent``
in the run table; no element is given ``unsafe_allow_html``. Report files are read only
through :meth:`audit.store.ReportStore.report_file`, which never leaves the store's report
folder. The page makes no request beyond this server: the page icon is an emoji (a
``:material/...:`` icon would be fetched from a font host).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import dashboard  # noqa: F401
except ImportError:  # ``streamlit run dashboard/app.py`` from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

from audit.errors import AuditError
from dashboard import common, data
from dashboard.page_compare import compare_page, leaderboard_page, trend_page
from dashboard.page_list import audits_page, failures_page, start_page
from dashboard.page_scorecard import scorecard_page
from dashboard.text import md_escape

PAGES = {
    "Audits": audits_page,
    "Scorecard": scorecard_page,
    "Compare": compare_page,
    "Trend": trend_page,
    "Leaderboard": leaderboard_page,
    "Failures": failures_page,
}
VIEWS = tuple(PAGES)
# An emoji: Streamlit draws it as an inline SVG; a ":material/...:" icon is fetched from fonts.gstatic.com.
PAGE_ICON = "🔍"


def main() -> None:
    st.set_page_config(page_title="genai-audit dashboard", page_icon=PAGE_ICON, layout="wide")
    url = data.store_url()
    with st.sidebar:
        st.title("genai-audit")
        view = st.radio("View", VIEWS, key="view", bind="query-params")
        st.button("Reload", on_click=common.reload, icon=":material/refresh:", key="reload")
    try:
        store = common.store(url)
        rows = common.rows(url)
    except AuditError as exc:
        st.error(md_escape(f"Cannot read the audit store: {exc}"))
        st.stop()
    st.sidebar.caption(md_escape(f"Store: {store.url} · {len(rows)} audit(s)"))
    if not rows:
        start_page(url)
        return
    try:
        PAGES[view](url, rows)
    except AuditError as exc:  # a stored report that cannot be read: say which, keep the app up
        st.error(md_escape(exc))


main()
