"""Benchmark: the time to write the reports of an audit with a few hundred findings.

Builds one report of ``--findings`` findings over 12 probes (sliced findings with intervals,
curves, per-document values, a failed gate and a crashed probe: what a real audit carries), then
times the four writers (``render_html``, ``render_markdown``, ``render_junit`` and the JSON of
``AuditReport.save``) and the whole ``write_reports`` into a temporary folder, ``--repeats``
times each after a warm-up, and prints min and median with the load.

The report uses only the public API and the older single ``evidence["curve"]`` shape, so the same
script times another checkout: run it once here and once with ``--repo`` pointing at another
checkout (for example ``/work/main``) for a before/after in one process-free comparison:

    python bench/bench_report_writing.py --findings 300
    python bench/bench_report_writing.py --findings 300 --repo /work/main

The first import of the renderers (jinja2, and matplotlib where a checkout draws with it) is
timed apart as ``import_s``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _report(n_findings: int):
    from audit.findings import AuditReport, Finding, GateResult, Interval, ProbeStatus, SubjectIdentity

    probes = [f"probe.p{i:02d}" for i in range(12)]
    findings = []
    for i in range(n_findings):
        pid = probes[i % len(probes)]
        v = 0.5 + 0.4 * math.sin(i)
        ev: dict = {}
        if i % 25 == 0:
            ev["curve"] = {"x": [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255], "y": [0.9, 0.7, 0.5, 0.3, 0.1],
                           "x_label": "eps", "y_label": "robust accuracy"}
        if i % 40 == 3:
            ev["per_document"] = [10 + math.sin(j) * 3 for j in range(200)]
        findings.append(Finding(probe=pid, metric=f"metric_{i % 5}", value=v, higher_is_better=i % 2 == 0,
                                ci=Interval(v - 0.05, v + 0.05, "wilson-95"), n=200,
                                slice={"group": f"g{i // len(probes)}", "attack": "pgd"} if i % 3 else {},
                                warnings=("n is small",) if i % 17 == 0 else (), evidence=ev))
    status = {p: ProbeStatus(status="ok", wall_s=1.0, n_findings=n_findings // len(probes)) for p in probes}
    status["probe.crash"] = ProbeStatus(status="failed", error="RuntimeError: boom", traceback="Traceback ...")
    gates = tuple(GateResult(metric=f"{probes[i]}/metric_0", passed=i != 3, status="passed" if i != 3 else "failed",
                             message=f"value {0.5:.3f} vs bound", value=0.5, bound=0.4) for i in range(8))
    return AuditReport(name="bench", subject=SubjectIdentity(name="m", kind="classifier", source="python"),
                       findings=tuple(findings), probes=status, gates=gates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--findings", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                    help="the checkout whose renderers are timed (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.repo))
    t0 = time.perf_counter()
    from audit.render import render_html, render_junit, render_markdown

    render_html.__module__  # noqa: B018 - resolves the lazy import, timed with it
    import_s = time.perf_counter() - t0
    report = _report(args.findings)
    out = {"repo": args.repo, "findings": len(report.findings), "import_s": round(import_s, 3),
           "load": os.getloadavg()[0]}
    total_med = 0.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))

    def as_json(r):
        return r.save(tmp / "report.json").read_text()

    writers = [("html", render_html), ("markdown", render_markdown), ("junit", render_junit), ("json", as_json)]
    for name, fn in writers:
        fn(report)  # warm-up: templates compiled, fonts and caches loaded
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            text = fn(report)
            times.append(time.perf_counter() - t)
        out[name] = {"min_s": round(min(times), 4), "median_s": round(statistics.median(times), 4),
                     "bytes": len(text.encode())}
        total_med += statistics.median(times)
    out["total_median_s"] = round(total_med, 4)
    try:
        from audit.render import write_reports
    except ImportError:  # an older checkout
        write_reports = None
    if write_reports is not None:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            write_reports(report, tmp / "out")
            times.append(time.perf_counter() - t)
        out["write_reports"] = {"min_s": round(min(times), 4), "median_s": round(statistics.median(times), 4)}
    shutil.rmtree(tmp, ignore_errors=True)
    out["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
