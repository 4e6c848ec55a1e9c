"""The audit list as a run table (like MLflow's): sortable columns, a click on a row opens it.

A small Streamlit component (``st.components.v2``): the browser builds the table from JSON
records with ``textContent`` only (report text is never parsed as HTML), a click on a header
sorts by that column (the server sorts the whole filtered list and pages it), and a click or
Enter on a row opens its scorecard. It needs no script beyond a few lines of its own, so the
list is drawn as soon as the page is (a data grid first loads ~1.5 MB of JavaScript).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import streamlit as st

__all__ = ["runs_table"]

_JS = """
export default function (component) {
  const { data, setStateValue, setTriggerValue, parentElement } = component;
  let box = parentElement.querySelector("div.runs");
  if (!box) {
    box = document.createElement("div");
    box.className = "runs";
    parentElement.appendChild(box);
  }
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const col of data.columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.className = col.numeric ? "num" : "";
    const button = document.createElement("button");
    const sorted = data.sort && data.sort.column === col.name;
    button.textContent = col.name + (sorted ? (data.sort.descending ? " \\u25BC" : " \\u25B2") : "");
    button.title = "Sort by " + col.name;
    th.setAttribute("aria-sort", sorted ? (data.sort.descending ? "descending" : "ascending") : "none");
    button.onclick = () => setStateValue("sort", {
      column: col.name, descending: sorted ? !data.sort.descending : col.numeric || col.name === "created",
    });
    th.appendChild(button);
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const rec of data.rows) {
    const tr = body.insertRow();
    tr.tabIndex = 0;
    tr.dataset.run = rec.run;
    tr.title = "Open the scorecard of " + rec.audit;
    for (const col of data.columns) {
      const td = tr.insertCell();
      const v = rec[col.name];
      td.textContent = v === null || v === undefined ? "\\u2014" : String(v);
      if (col.numeric) td.className = "num";
      if (col.name === "status") td.className = "status " + rec.colour;
    }
    const open = () => setTriggerValue("open", rec.run);
    tr.onclick = open;
    tr.onkeydown = (e) => { if (e.key === "Enter") open(); };
  }
  box.replaceChildren(table);
}
"""

_CSS = """
.runs { max-height: 72vh; overflow: auto; border: 1px solid rgba(128,128,128,.3); border-radius: .5rem; }
table { border-collapse: collapse; width: 100%; font-family: var(--st-font, sans-serif); font-size: .9rem;
        color: var(--st-text-color); }
th { position: sticky; top: 0; background: var(--st-secondary-background-color); text-align: left; z-index: 1; }
th button { all: unset; cursor: pointer; padding: .45rem .6rem; display: block; font-weight: 600; width: 100%;
            box-sizing: border-box; }
th.num button { text-align: right; }
td { padding: .3rem .6rem; border-top: 1px solid rgba(128,128,128,.2); white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr { cursor: pointer; }
tbody tr:hover, tbody tr:focus { background: var(--st-secondary-background-color); outline: none; }
td.status.green { color: #21a366; } td.status.red { color: #e03131; } td.status.orange { color: #e8590c; }
td.status.violet { color: #7048e8; } td.status.gray { color: #868e96; }
td.status { font-weight: 600; }
"""

_TABLE = st.components.v2.component("genai_audit_runs_table", js=_JS, css=_CSS)


def runs_table(
    records: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, bool]],
    *,
    sort: tuple[str, bool],
    key: str,
    on_open: Callable[[], None],
    on_sort: Callable[[], None],
) -> Any:
    """Mount the table: ``records`` (:func:`dashboard.data.list_records`), ``columns`` as
    ``(name, numeric)``, the current ``sort`` as ``(column, descending)``. ``on_open`` and
    ``on_sort`` run before the rerun, with ``st.session_state[key]["open"]`` (a run id) or
    ``["sort"]`` (``{"column", "descending"}``) set."""
    payload = {
        "columns": [{"name": n, "numeric": num} for n, num in columns],
        "rows": list(records),
        "sort": {"column": sort[0], "descending": sort[1]},
    }
    return _TABLE(data=payload, key=key, on_open_change=on_open, on_sort_change=on_sort, height="content")
