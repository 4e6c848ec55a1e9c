"""Stores of demo-like audits for the dashboard's tests and benchmark.

:func:`demo_reports` gives a small history of audits like the demo's: a digits classifier
audited over three releases (robust accuracy versus eps, per-group accuracy with intervals,
energy; the third release regresses beyond the intervals), an image generator with FID and
KID (two releases), the text-generator report of :mod:`tests.report_factory` (a crashed
probe) and a passing one, and findings of a probe no part of genai-audit knows.
:func:`fill_store` ingests reports, with their report files when asked.

Example:
    >>> from audit.store import ReportStore
    >>> with ReportStore("sqlite://") as store:
    ...     _ = fill_store(store, demo_reports(), files_in=None)
    ...     store.count()
    7
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from audit.findings import AuditReport, Finding, GateResult, Interval, ProbeStatus, SubjectIdentity
from audit.stats import wilson_interval
from audit.store import ReportStore, StoredAudit
from tests.report_factory import HOSTILE, make_report, passing_report

__all__ = [
    "CLASSIFIER",
    "CONFUSION",
    "GENERATOR",
    "UNKNOWN_PROBE",
    "classifier_report",
    "demo_reports",
    "fill_store",
    "invalid_report",
    "many_reports",
    "set_stored_status",
    "write_samples",
]

CLASSIFIER = "digits-cnn"
GENERATOR = "tiny-dcgan"
UNKNOWN_PROBE = "acme.watermark"
EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
CONFUSION = {"labels": ["digit 0-4", "digit 5-9"], "counts": [[172, 8], [14, 166]], "rows": "true",
             "columns": "predicted"}
"""The confusion matrix the classifier audits record (rows: true class)."""


def _rate(probe: str, metric: str, k: int, n: int, *, slice_: dict[str, str] | None = None, **kw) -> Finding:
    return Finding(
        probe=probe, metric=metric, value=k / n, higher_is_better=True, ci=wilson_interval(k, n),
        n=n, slice=slice_ or {}, **kw,
    )


def classifier_report(release: int, *, hostile: bool = False) -> AuditReport:
    """A digits-classifier audit; ``release`` 1, 2 or 3 (3 loses robust accuracy beyond the intervals)."""
    n = 360
    drop = {1: 0, 2: 4, 3: 24}[release]
    correct = [max(0, c - drop * i // 2) for i, c in enumerate((350, 301, 240, 150, 41))]
    robust = [_rate("robustness.pgd", "robust_accuracy", k, n, slice_={"eps": f"{e * 255:g}/255"})
              for k, e in zip(correct, EPS)]
    curve = {
        "x": [round(e, 6) for e in EPS],
        "y": [f.value for f in robust],
        "y_low": [f.ci.low for f in robust],
        "y_high": [f.ci.high for f in robust],
        "x_label": "eps (L∞)" + (HOSTILE if hostile else ""),
        "y_label": "robust accuracy",
    }
    # The FGSM line of the same chart (a second attack), its Wilson bounds from the counts.
    fgsm_k = [max(0, c - 20 * i) for i, c in enumerate(correct)]
    fgsm = [wilson_interval(k, n) for k in fgsm_k]
    fgsm_curve = {
        "x": curve["x"], "y": [k / n for k in fgsm_k], "y_low": [ci.low for ci in fgsm],
        "y_high": [ci.high for ci in fgsm], "x_label": curve["x_label"], "y_label": "robust accuracy",
        "series": "fgsm",
    }
    curve["series"] = "pgd"
    auc = sum((EPS[i + 1] - EPS[i]) * (robust[i].value + robust[i + 1].value) / 2 for i in range(len(EPS) - 1))
    groups = {"digit 0-4": (172, 180), "digit 5-9": (166 - 2 * release, 180)}
    findings = (
        *robust,
        Finding("robustness.pgd", "robust_accuracy_auc", auc / EPS[-1], True, n=n,
                evidence={"curve": curve, "curves": [fgsm_curve]}),
        *[_rate("bias.classifier", "accuracy", k, m, slice_={"group": g}) for g, (k, m) in groups.items()],
        Finding("bias.classifier", "accuracy_gap", groups["digit 0-4"][0] / 180 - groups["digit 5-9"][0] / 180,
                False, ci=Interval(0.0, 0.09, "bootstrap-percentile-95"), n=360,
                evidence={"confusion_matrix": CONFUSION}),
        Finding("energy.inference", "energy_j_per_1k_samples", 3.1 + 0.2 * release, False, unit="J",
                ci=Interval(2.9 + 0.2 * release, 3.3 + 0.2 * release, "bootstrap-percentile-95"), n=32),
        Finding(UNKNOWN_PROBE, "watermark_recall", 0.91, True, n=64, slice={"codec": "jpeg-75"},
                warnings=(("watermark key from test fixture" + (HOSTILE if hostile else "")),)),
    )
    robust_8 = robust[-1]
    gate_ok = robust_8.ci.low >= 0.05
    gates = (
        GateResult("robustness.pgd/robust_accuracy[eps=8/255]", gate_ok, (
            f"ci_low {robust_8.ci.low:.3f} {'>=' if gate_ok else '<'} min 0.05" + (HOSTILE if hostile else "")),
            status="passed" if gate_ok else "failed", value=robust_8.ci.low, bound=0.05,
            gate={"metric": "robustness.pgd/robust_accuracy[eps=8/255]", "min": 0.05, "use": "ci_low"}),
        GateResult("bias.classifier/accuracy_gap", True, "value <= max 0.1", status="passed",
                   value=findings[-3].value, bound=0.1, gate={"metric": "bias.classifier/accuracy_gap", "max": 0.1}),
    )
    probes = {
        "robustness.pgd": ProbeStatus("ok", wall_s=14.2, n_findings=6,
                                      energy={"joules": 410.0 + release, "kind": "measured", "source": "rapl"}),
        "bias.classifier": ProbeStatus("ok", wall_s=1.3, n_findings=3,
                                       energy={"joules": 38.5, "kind": "estimate", "source": "tdp x time"}),
        "energy.inference": ProbeStatus("ok", wall_s=4.0, n_findings=1,
                                        energy={"joules": None, "kind": "unavailable", "reason": "RAPL not readable"}),
        UNKNOWN_PROBE: ProbeStatus("ok", wall_s=0.4, n_findings=1),
    }
    return AuditReport(
        name=(HOSTILE if hostile else "") + f"digits-cnn-v{release}",
        subject=SubjectIdentity(name=CLASSIFIER, kind="classifier", source="python", revision=f"v{release}"),
        findings=findings, gates=gates, probes=probes,
        environment={"python": "3.11", "cpu": "test"},
        timings={"total_s": 20.0},
        run_id=f"digits{release:02d}" + ("x" if hostile else "") + "0" * 20,
        created_at=f"2025-0{release + 2}-10T09:00:00+00:00",
    )


def generator_report(release: int) -> AuditReport:
    """An image-generator audit with FID and KID (and their intervals)."""
    fid = {1: 48.2, 2: 41.7}[release]
    findings = (
        Finding("quality.fid", "fid", fid, False, ci=Interval(fid - 2.1, fid + 2.3, "bootstrap-percentile-95"), n=2048,
                warnings=("n=2048: FID is biased upwards at this sample size",)),
        Finding("quality.kid", "kid", 0.031 - 0.004 * release, False,
                ci=Interval(0.025 - 0.004 * release, 0.037 - 0.004 * release, "subsets-std-95"), n=2048),
        Finding("quality.precision_recall", "precision", 0.62 + 0.03 * release, True, n=2048),
        Finding("quality.precision_recall", "recall", 0.41, True, n=2048),
    )
    return AuditReport(
        name=f"dcgan-r{release}",
        subject=SubjectIdentity(name=GENERATOR, kind="image-generator", source="python"),
        findings=findings,
        gates=(GateResult("quality.fid/fid", True, "ci_high <= max 60", value=fid + 2.3, bound=60.0,
                          gate={"metric": "quality.fid/fid", "max": 60, "use": "ci_high"}),),
        probes={
            "quality.fid": ProbeStatus("ok", wall_s=30.0, n_findings=1,
                                       energy={"joules": 2200.0, "kind": "measured", "source": "nvml"}),
            "quality.kid": ProbeStatus("ok", wall_s=2.0, n_findings=1),
            "quality.precision_recall": ProbeStatus("ok", wall_s=6.0, n_findings=2),
        },
        run_id=f"dcgan{release:02d}" + "0" * 21,
        created_at=f"2025-0{release + 3}-01T12:00:00+00:00",
    )


def demo_reports(*, hostile: bool = False) -> list[AuditReport]:
    """Seven audits of three models (oldest first); ``hostile`` puts
    :data:`~tests.report_factory.HOSTILE` into names, labels, messages and errors."""
    return [
        classifier_report(1),
        classifier_report(2),
        classifier_report(3, hostile=hostile),
        generator_report(1),
        generator_report(2),
        passing_report(run_id="smol" + "0" * 28, created_at="2025-10-01T08:00:00+00:00"),
        make_report(hostile=hostile),
    ]


def fill_store(
    store: ReportStore, reports: Sequence[AuditReport], *, files_in: Path | None, samples: bool = False
) -> list[StoredAudit]:
    """Ingest ``reports``; with ``files_in``, write each one's report files there first and
    ingest them too (the store copies them into its report folder), with ``samples`` a
    ``samples.parquet`` (:func:`write_samples`) as well."""
    out = []
    for report in reports:
        folder = None
        if files_in is not None:
            from audit.render import write_reports

            folder = files_in / report.run_id
            write_reports(report, folder)
            if samples:
                write_samples(folder, report)
        out.append(store.ingest(report, report_dir=folder))
    return out


def many_reports(n: int, *, models: int = 10, seed: int = 0) -> list[AuditReport]:
    """``n`` audits of ``models`` models, one a day, built from the realistic report of
    :mod:`tests.report_factory` with values drawn at random."""
    rng = random.Random(seed)
    base = make_report()
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    out = []
    for i in range(n):
        shift = rng.gauss(0, 0.5)
        findings = tuple(
            f if math.isnan(f.value) else replace(
                f, value=f.value + shift * 0.01 * abs(f.value),
                ci=None if f.ci is None else Interval(f.ci.low, f.ci.high + 0.01 * abs(shift), f.ci.method),
            )
            for f in base.findings
        )
        status_pick = rng.random()
        probes = dict(base.probes)
        if status_pick > 0.2:
            probes = {k: v for k, v in probes.items() if v.status != "failed"}
        gates = base.gates if status_pick < 0.5 else tuple(g for g in base.gates if g.status != "failed")
        out.append(replace(
            base,
            name=f"release-{i:04d}",
            subject=replace(base.subject, name=f"model-{i % models:02d}"),
            findings=findings, probes=probes, gates=gates,
            run_id=f"bench{i:06d}" + "0" * 21,
            created_at=(start + dt.timedelta(days=i)).isoformat(timespec="seconds"),
        ))
    return out


def invalid_report() -> AuditReport:
    """:func:`make_report` whose failed probe failed on invalid input: status ``invalid``."""
    base = make_report()
    probes = {k: (replace(v, error_kind="input", error="InputError: texts.txt holds no line")
                  if v.status == "failed" else v) for k, v in base.probes.items()}  # fmt: skip
    return replace(base, name="smollm2-bad-input", probes=probes, run_id="invalid" + "0" * 25,
                   created_at="2025-11-21T10:00:00+00:00")  # fmt: skip


def set_stored_status(db: Path, run_id: str, status: str) -> None:
    """Give a stored audit a status (as a newer genai-audit might write one), in the SQLite file."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        done = conn.execute("UPDATE audits SET status = ? WHERE run_id = ?", (status, run_id))
        if done.rowcount != 1:
            raise LookupError(f"no stored audit {run_id}")


def write_samples(folder: Path, report: AuditReport) -> Path:
    """A ``samples.parquet`` for a classifier audit: one record per sample and eps (correct or
    not, its label, score, seed and fold), as many as each robust-accuracy finding counted."""
    import json

    import pandas as pd

    rows = []
    for f in report.findings:
        if f.metric != "robust_accuracy" or f.n is None:
            continue
        k = round(f.value * f.n)
        for i in range(f.n):
            rows.append({"probe": f.probe, "metric": f.metric, "eps": f.slice["eps"], "slice": json.dumps(dict(f.slice)),
                         "sample_id": f"img-{i:04d}",
                         "label": i % 10, "correct": i < k, "score": round(1.0 - i / f.n, 4), "seed": 1234,
                         "fold": i % 5})  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "samples.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path
