"""Realistic sample :class:`AuditReport` objects for tests of renderers, the store, the
dashboard and the CLI.

:func:`make_report` builds a report with everything a renderer must cope with: several
probes, sliced findings with Wilson and bootstrap intervals, a NaN value with a warning,
a crashed probe with its traceback, a skipped probe, passed / failed / skipped gates,
evidence with a curve and per-document values, measured / estimated / unavailable energy.
It is deterministic (fixed run id and timestamp), so two calls give equal reports.

Example:
    >>> from tests.report_factory import make_report, HOSTILE
    >>> r = make_report()
    >>> r.status, len(r.gates)
    ('crashed', 4)
    >>> HOSTILE in make_report(hostile=True).to_json()
    True
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

from audit.findings import (
    AuditReport,
    Delta,
    FileHash,
    Finding,
    GateResult,
    Interval,
    ProbeStatus,
    SubjectIdentity,
    VariantRecord,
)

__all__ = [
    "AUDIT_NAME",
    "CRASHED_PROBE",
    "CURVE_FINDING",
    "HOSTILE",
    "NAN_FINDING",
    "SKIPPED_PROBE",
    "finding",
    "make_report",
    "make_variant_report",
    "passing_report",
]

HOSTILE = "<script>alert(1)</script>"
"""A string no renderer may emit raw (put into slices, warnings, messages with ``hostile=True``)."""

AUDIT_NAME = "smollm2-release-candidate"
CRASHED_PROBE = "deepfake.text_detectability"
SKIPPED_PROBE = "quality.fid"
NAN_FINDING = "quality.diversity/distinct_2[length=long]"
CURVE_FINDING = "energy.inference/energy_j_per_1k_tokens"

_TRACEBACK = """Traceback (most recent call last):
  File "/work/main/audit/runner.py", line 142, in _run_one
    findings = probe.run(subject, ctx)
  File "/work/main/probes/deepfake/text.py", line 58, in run
    scores = detector.score(texts)
  File "/work/main/probes/deepfake/text.py", line 31, in score
    raise RuntimeError("detector returned 3 scores for 4 texts")
RuntimeError: detector returned 3 scores for 4 texts"""


def finding(
    metric: str = "accuracy",
    value: float = 0.5,
    *,
    probe: str = "test.probe",
    higher_is_better: bool = True,
    ci: tuple[float, float] | None = None,
    method: str = "wilson-95",
    n: int | None = 100,
    **kwargs: Any,
) -> Finding:
    """A finding with short defaults; ``ci`` is a ``(low, high)`` pair."""
    interval = Interval(ci[0], ci[1], method) if ci is not None else None
    return Finding(
        probe=probe, metric=metric, value=value, higher_is_better=higher_is_better, ci=interval, n=n, **kwargs
    )


def _perplexities(n: int) -> list[float]:
    rng = random.Random(7)
    return [round(math.exp(rng.gauss(2.5, 0.35)), 3) for _ in range(n)]


def make_report(*, hostile: bool = False, **overrides: Any) -> AuditReport:
    """A realistic report of a text-generator audit in which one probe crashed.

    Args:
        hostile: put :data:`HOSTILE` into a slice value, a warning, a gate message, a probe
            error, a skip reason, an environment value and a curve label.
        **overrides: fields of :class:`AuditReport` to replace (e.g. ``gates=()``).
    """
    bad = HOSTILE if hostile else ""
    per_doc = _perplexities(200)
    findings = (
        Finding(
            probe="quality.perplexity",
            metric="perplexity",
            value=12.8431,
            higher_is_better=False,
            unit="ppl",
            ci=Interval(11.9102, 13.8873, "bootstrap-percentile-95"),
            n=200,
            evidence={"per_document": per_doc, "example_ids": ["doc-0017", "doc-0142"]},
        ),
        Finding(
            probe="bias.toxicity",
            metric="toxicity_rate",
            value=0.034,
            higher_is_better=False,
            ci=Interval(0.0213, 0.0537, "wilson-95"),
            n=500,
            slice={"group": "female"},
        ),
        Finding(
            probe="bias.toxicity",
            metric="toxicity_rate",
            value=0.018,
            higher_is_better=False,
            ci=Interval(0.0095, 0.0339, "wilson-95"),
            n=500,
            slice={"group": "male"},
        ),
        Finding(
            probe="bias.toxicity",
            metric="toxicity_rate",
            value=0.052,
            higher_is_better=False,
            ci=Interval(0.0265, 0.0992, "wilson-95"),
            n=192,
            slice={"group": "nonbinary" + bad},
            warnings=("n=192 < 300: interval is wide",) + ((bad,) if hostile else ()),
        ),
        Finding(
            probe="bias.toxicity",
            metric="demographic_parity_difference",
            value=0.034,
            higher_is_better=False,
            ci=Interval(0.0061, 0.0702, "bootstrap-percentile-95"),
            n=1192,
        ),
        Finding(
            probe="quality.diversity",
            metric="distinct_2",
            value=0.713,
            higher_is_better=True,
            ci=Interval(0.698, 0.727, "bootstrap-percentile-95"),
            n=400,
            slice={"length": "short"},
        ),
        Finding(
            probe="quality.diversity",
            metric="distinct_2",
            value=math.nan,
            higher_is_better=True,
            n=0,
            slice={"length": "long"},
            warnings=("no generation longer than 256 tokens: distinct-2 is undefined",),
        ),
        Finding(
            probe="energy.inference",
            metric="energy_j_per_1k_tokens",
            value=41.7,
            higher_is_better=False,
            unit="J",
            ci=Interval(39.2, 44.5, "bootstrap-percentile-95"),
            n=32,
            evidence={
                "curve": {
                    "x": [1, 2, 4, 8, 16, 32],
                    "y": [118.0, 71.5, 52.3, 45.9, 42.8, 41.7],
                    "x_label": "batch size" + bad,
                    "x_scale": "log",
                    "y_label": "J per 1k tokens",
                },
            },
        ),
        Finding(
            probe="energy.inference",
            metric="latency_ms_per_token",
            value=3.82,
            higher_is_better=False,
            unit="ms",
            n=32,
        ),
    )
    gates = (
        GateResult(
            metric="quality.perplexity/perplexity",
            passed=True,
            status="passed",
            message="ci_high 13.89 <= max 30",
            value=13.8873,
            bound=30.0,
            gate={"metric": "quality.perplexity/perplexity", "max": 30.0, "use": "ci_high"},
        ),
        GateResult(
            metric="bias.toxicity/demographic_parity_difference",
            passed=False,
            status="failed",
            message="value 0.034 > max 0.02" + bad,
            value=0.034,
            bound=0.02,
            gate={"metric": "bias.toxicity/demographic_parity_difference", "max": 0.02, "name": "toxicity parity"},
        ),
        GateResult(
            metric="quality.diversity/distinct_2[length=short]",
            passed=True,
            status="passed",
            message="value 0.713 >= min 0.6 | margin 0.113",
            value=0.713,
            bound=0.6,
            gate={"metric": "quality.diversity/distinct_2[length=short]", "min": 0.6},
        ),
        GateResult(
            metric="quality.perplexity/perplexity",
            passed=True,
            status="skipped",
            message="regression gate skipped: no --baseline given",
            gate={"metric": "quality.perplexity/perplexity", "max_rise": 0.5},
        ),
    )
    probes = {
        "quality.perplexity": ProbeStatus(
            status="ok",
            wall_s=12.41,
            n_findings=1,
            energy={"joules": 1843.2, "kind": "measured", "source": "nvml"},
            params={"max_length": 1024, "stride": 512},
        ),
        "bias.toxicity": ProbeStatus(
            status="ok",
            wall_s=48.07,
            n_findings=4,
            energy={"joules": 5120.0, "kind": "estimate", "source": "tdp x time", "reason": "no NVML"},
        ),
        "quality.diversity": ProbeStatus(
            status="ok",
            wall_s=3.5,
            n_findings=2,
            energy={"joules": None, "kind": "unavailable", "reason": "CPU only, RAPL not readable"},
        ),
        "energy.inference": ProbeStatus(
            status="ok", wall_s=20.0, n_findings=2, energy={"joules": 900.5, "kind": "measured", "source": "nvml"}
        ),
        CRASHED_PROBE: ProbeStatus(
            status="failed",
            error="RuntimeError: detector returned 3 scores for 4 texts" + bad,
            traceback=_TRACEBACK + ("\n\x1b[31m" + bad + "\x1b[0m" if hostile else ""),
            wall_s=0.83,
        ),
        SKIPPED_PROBE: ProbeStatus(
            status="skipped",
            reason="applies to image-generator subjects; this subject is a text-generator" + bad,
        ),
    }
    report = AuditReport(
        name=AUDIT_NAME,
        subject=SubjectIdentity(
            name="SmolLM2-135M-Instruct",
            kind="text-generator",
            source="gguf",
            path="/models/smollm2-135m-instruct-q8_0.gguf",
            revision="v0.1.2",
            files=(
                FileHash(
                    path="smollm2-135m-instruct-q8_0.gguf",
                    sha256="9f2c4b1e0d8a7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b",
                    bytes=144_811_232,
                ),
            ),
            details={"quantization": "q8_0", "context_length": 8192},
        ),
        findings=findings,
        gates=gates,
        probes=probes,
        spec={
            "name": AUDIT_NAME,
            "subject": {"kind": "text-generator", "source": "gguf", "path": "/models/smollm2.gguf"},
            "probes": [{"id": pid, "params": {}} for pid in probes],
            "gates": [dict(g.gate) for g in gates],
        },
        environment={
            "python": "3.11.7",
            "platform": "Linux-6.5.0-x86_64" + bad,
            "packages": {"torch": "2.4.1", "genai-audit": "0.1.0", "transformers": "4.45.2"},
            "git_commit": "3e1f9a7",
            "cpu": "AMD EPYC 7B13 (16 cores)",
            "gpu": {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "count": 1},
        },
        timings={"total_s": 86.1, "load_subject_s": 1.9, "probes_s": 84.8},
        energy={"joules": 7900.4, "kind": "measured", "source": "nvml"},
        run_id="5d1c0b3a9e8f47a6b2c1d0e9f8a7b6c5",
        created_at="2025-11-20T14:03:27+00:00",
    )
    return replace(report, **overrides) if overrides else report


def passing_report(**overrides: Any) -> AuditReport:
    """:func:`make_report` without the crashed probe and with every gate passed or skipped."""
    base = make_report()
    probes = {k: v for k, v in base.probes.items() if v.status != "failed"}
    gates = tuple(g for g in base.gates if g.status != "failed")
    return replace(base, probes=probes, gates=gates, **overrides)


# -- a report with variants ----------------------------------------------------------------

VARIANTS = ("int8", "lora")
"""The variants of :func:`make_variant_report`, in spec order."""


def _delta(base: Finding, value: float, ci: tuple[float, float] | None) -> Delta:
    diff = value - base.value
    rel = diff / abs(base.value) if base.value else None
    return Delta(base_value=base.value, value=diff, relative=rel,
                 ci=Interval(ci[0], ci[1], "paired-bootstrap-95") if ci else None,
                 ci_relative=(Interval(ci[0] / abs(base.value), ci[1] / abs(base.value), "paired-bootstrap-95")
                              if ci and base.value else None),
                 paired=ci is not None, n_pairs=200 if ci else None)


def make_variant_report(*, hostile: bool = False, **overrides: Any) -> AuditReport:
    """A passing audit of a subject and two variants with hand-made numbers.

    ``int8``: perplexity 12.0 -> 12.9 (+7.5 %, paired interval [+0.5, +1.3]: worse and
    significant, flagged), toxicity of ``group=female`` 0.034 -> 0.036 (interval includes 0),
    weight bytes in memory 540 MB -> 180 MB. ``lora``: perplexity 11.4 (better), the same
    memory as the base (merged adapter). The Pareto front of perplexity against memory is
    ``lora`` (best quality) and ``int8`` (cheapest); ``base`` is dominated by ``lora``.
    """
    bad = HOSTILE if hostile else ""
    ppl = finding("perplexity", 12.0, probe="quality.perplexity", higher_is_better=False, unit="ppl",
                  ci=(11.5, 12.5), method="bootstrap-percentile-95", n=200)
    tox = finding("toxicity_rate", 0.034, probe="bias.toxicity", higher_is_better=False, ci=(0.021, 0.054), n=500,
                  slice={"group": "female" + bad})
    mem = finding("weight_bytes_memory", 540e6, probe="energy.footprint", higher_is_better=False, unit="bytes",
                  n=None)
    jpk = finding("energy_j_per_1k_tokens", 50.0, probe="energy.footprint", higher_is_better=False, unit="J",
                  ci=(45.0, 55.0), method="bootstrap-percentile-95", n=20)
    base = (ppl, tox, mem, jpk)
    values = {
        # per base finding, in order: (value, its interval, the delta's paired interval)
        "int8": ((12.9, (12.4, 13.4), (0.5, 1.3)), (0.036, (0.022, 0.057), (-0.004, 0.008)),
                 (180e6, None, None), (42.0, (38.0, 46.0), (-12.0, -4.0))),
        "lora": ((11.4, (10.9, 11.9), (-0.9, -0.3)), (0.031, (0.019, 0.050), (-0.007, 0.001)),
                 (540e6, None, None), (51.0, (46.0, 56.0), (-1.0, 3.0))),
    }
    findings = list(base)
    for name in VARIANTS:
        for f, (value, ci, dci) in zip(base, values[name]):
            findings.append(replace(f, value=value, ci=Interval(*ci, f.ci.method) if ci else None, variant=name,
                                    delta=_delta(f, value, dci)))
    probes = {p: ProbeStatus("ok", wall_s=1.0, n_findings=sum(f.probe == p for f in base))
              for p in ("quality.perplexity", "bias.toxicity", "energy.footprint")}
    subject = SubjectIdentity(name="tiny-gpt", kind="text-generator", source="hf", path="/models/tiny-gpt",
                              files=(FileHash("model.safetensors", "ab" * 32, 540_000_000),))
    variants = (
        VariantRecord("int8", replace(subject, name="tiny-gpt [int8]"), overrides={"quantization": "int8-dynamic"},
                      probes=dict(probes), notes=("torch.ao dynamic int8 on CPU" + bad,)),
        VariantRecord("lora", replace(subject, name="tiny-gpt [lora]", files=(
            *subject.files, FileHash("adapters/lora/adapter_model.safetensors", "cd" * 32, 5_000_000))),
            overrides={"adapter": "adapters/lora"}, probes=dict(probes)),
    )
    report = AuditReport(
        name="variants-demo", subject=subject, findings=tuple(findings), probes=probes, variants=variants,
        spec={"name": "variants-demo", "probes": [{"id": p} for p in probes],
              "variants": [{"name": v.name, **v.overrides} for v in variants]},
        run_id="0a1b2c3d4e5f60718293a4b5c6d7e8f9", created_at="2026-12-01T10:00:00+00:00",
    )
    return replace(report, **overrides) if overrides else report
