"""The model card: an audit report as the evaluation section of a Hugging Face model card.

``genai-audit card REPORT --out MODEL_CARD.md`` (and the dashboard's download button) write
a Markdown file with YAML front matter: the ``model-index`` metadata that the Hub (and
``huggingface_hub.ModelCard``) read as evaluation results, then prose a reader can check:

* a summary in words (what was audited, how many probes ran, which gates passed);
* a table per probe: every finding with its value, interval (and method), n and direction;
* the gates and their outcome;
* the energy of the audit and its emissions (measured and estimated never added);
* what was *not* measured and why: skipped probes (reason), failed probes (error), and
  findings without a value (their warning);
* reproducibility: the spec's fingerprint, the run id, the subject's file hashes, and the
  tool and library versions from the report's environment.

Report text is untrusted: table cells are escaped (:func:`audit.render.markdown.escape_cell`)
and the metadata is written by ``yaml.safe_dump``. Only findings with a finite value go into
``model-index`` (its ``value`` must be a number); their interval, n and slice are in the
metric's ``args``.

Example:
    >>> from audit.findings import AuditReport, Finding, SubjectIdentity
    >>> r = AuditReport(name="demo", subject=SubjectIdentity(name="m", kind="text-generator", source="hf"),
    ...                 findings=(Finding(probe="quality.perplexity", metric="perplexity", value=12.5,
    ...                                   higher_is_better=False, n=40),))
    >>> card = render_card(r)
    >>> card.startswith("---\\nmodel-index:")
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import yaml

from audit.findings import AuditReport, Finding
from audit.render.format import (
    describe_bound,
    direction_arrow,
    findings_by_probe,
    first_line,
    format_emissions,
    format_energy,
    format_interval,
    format_number,
    format_value,
    gate_label,
    slice_label,
    total_joules,
)
from audit.render.markdown import code_span, escape_cell

__all__ = ["MAX_MODEL_INDEX_METRICS", "model_index", "render_card"]

MAX_MODEL_INDEX_METRICS = 300
"""Metrics written into ``model-index`` (the tables list every finding)."""

_FAMILIES = ("quality", "bias", "robustness", "deepfake", "privacy", "energy")
_TASKS = {"text-generator": "text-generation", "image-generator": "unconditional-image-generation",
          "classifier": "other", "encoder": "feature-extraction"}


def _task_type(report: AuditReport) -> str:
    details = report.subject.details if isinstance(report.subject.details, Mapping) else {}
    if report.subject.kind == "image-generator" and (details.get("text_to_image") or details.get("prompts")):
        return "text-to-image"
    return _TASKS.get(report.subject.kind, "other")


def _dataset_of(report: AuditReport, probe_id: str) -> dict[str, str]:
    """The data input a probe read (a parameter naming one of the spec's inputs), by name and
    file name only: the card is published, the paths of the audit machine are not."""
    data = report.spec.get("data") if isinstance(report.spec, Mapping) else None
    data = data if isinstance(data, Mapping) else {}
    status = report.probes.get(probe_id)
    params = status.params if status is not None else {}
    used = [v for v in params.values() if isinstance(v, str) and v in data]
    for name in used or (["prompts"] if "prompts" in data and "text" in _task_type(report) else []):
        return {"type": f"genai-audit/{name}", "name": PurePath(str(data[name])).name or str(name)}
    return {"type": "genai-audit/builtin", "name": f"{probe_id} (built-in inputs)"}


def _metric(f: Finding) -> dict[str, Any]:
    args: dict[str, Any] = {"higher_is_better": f.higher_is_better}
    if f.unit:
        args["unit"] = f.unit
    if f.n is not None:
        args["n"] = f.n
    if f.ci is not None and math.isfinite(f.ci.low) and math.isfinite(f.ci.high):
        args.update(ci_low=float(f.ci.low), ci_high=float(f.ci.high), ci_method=f.ci.method)
    if f.slice:
        args["slice"] = {str(k): str(v) for k, v in f.slice.items()}
    return {"type": f.metric, "value": float(f.value), "name": f"{f.probe}/{f.key.split('/', 1)[-1]}",
            "args": args, "verified": False}


def model_index(report: AuditReport) -> list[dict[str, Any]]:
    """The ``model-index`` metadata: one result per probe with its finite findings as metrics.

    Example:
        >>> model_index(report)[0]["results"][0]["metrics"][0]["type"]      # doctest: +SKIP
        'perplexity'
    """
    results, budget = [], MAX_MODEL_INDEX_METRICS
    for pid, findings in findings_by_probe(report).items():
        metrics = [_metric(f) for f in findings if math.isfinite(f.value)][: max(budget, 0)]
        budget -= len(metrics)
        if metrics:
            results.append({"task": {"type": _task_type(report), "name": pid},
                            "dataset": _dataset_of(report, pid), "metrics": metrics})
    return [{"name": report.subject.name or report.name, "results": results}] if results else []


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _summary(report: AuditReport) -> list[str]:
    s = report.subject
    probes = report.probes
    counts = {k: sum(p.status == k for p in probes.values()) for k in ("ok", "failed", "skipped")}
    gates = report.gates
    passed = sum(g.status == "passed" for g in gates)
    failed = [g for g in gates if g.status == "failed"]
    version = (report.environment.get("packages") or {}).get("genai-audit", "unknown") \
        if isinstance(report.environment, Mapping) else "unknown"
    text = (f"{escape_cell(s.name)} ({escape_cell(s.kind)}, source {escape_cell(s.source)}) was audited with "
            f"genai-audit {escape_cell(version)} on {escape_cell(report.created_at)}. "
            f"Of its {len(probes)} probe(s), {counts['ok']} measured, {counts['failed']} failed and "
            f"{counts['skipped']} did not apply; they gave {sum(f.variant is None for f in report.findings)} finding(s). ")
    if gates:
        text += f"{passed} of {len(gates)} gate(s) passed"
        text += (": failed " + ", ".join(code_span(gate_label(g)) for g in failed) + ". ") if failed else ". "
    else:
        text += "The audit set no gates. "
    text += f"Overall status: **{report.status.upper()}**."
    return [text, "", "Intervals are the probes' confidence intervals (method given per row); n is the number of "
            "samples a value rests on. Arrows say which direction is better.", ""]


def _results(report: AuditReport) -> list[str]:
    out = ["## Results", ""]
    for pid, findings in findings_by_probe(report).items():
        if not findings:
            continue
        out += [f"### {code_span(pid)}", "", _row("Metric", "Slice", "Value", "Interval", "Method", "n", "Warnings"),
                _row(*["---"] * 7)]
        for f in findings:
            out.append(_row(f"{direction_arrow(f.higher_is_better)} {escape_cell(f.metric)}",
                            escape_cell(slice_label(f)), escape_cell(format_value(f)),
                            escape_cell(format_interval(f.ci)), escape_cell(f.ci.method if f.ci else "—"),
                            "—" if f.n is None else f"{f.n:,}", escape_cell("; ".join(f.warnings)) or "—"))
        out.append("")
    if len(out) == 2:
        out += ["No findings.", ""]
    return out


def _gates(report: AuditReport) -> list[str]:
    out = ["## Gates", ""]
    if not report.gates:
        return out + ["The audit set no gates.", ""]
    out += [_row("Outcome", "Gate", "Value", "Bound", "Message"), _row(*["---"] * 5)]
    for g in report.gates:
        out.append(_row(g.status.upper(), code_span(gate_label(g)), escape_cell(format_number(g.value)),
                        escape_cell(describe_bound(g)), escape_cell(g.message)))
    return out + [""]


def _energy(report: AuditReport) -> list[str]:
    total, measured, estimated = total_joules([p.energy for p in report.probes.values()])
    out = ["## Energy and emissions", "",
           f"- The audit: {escape_cell(format_energy(report.energy))}.",
           f"- The probes together: {escape_cell(format_number(total)) + ' J' if total is not None else 'not measured'}"
           f" ({measured} measured, {estimated} estimated; estimates are marked ≈).",
           f"- Emissions: {escape_cell(format_emissions(report.energy) or 'not computed (the spec set no grid intensity: settings.emissions)')}."]
    rows = [(pid, p) for pid, p in report.probes.items() if p.status != "skipped"]
    if rows:
        out += ["", _row("Probe", "Wall time", "Energy"), _row("---", "---", "---")]
        out += [_row(code_span(pid), "—" if p.wall_s is None else f"{format_number(p.wall_s, digits=3)} s",
                     escape_cell(format_energy(p.energy))) for pid, p in rows]
    return out + [""]


def _not_measured(report: AuditReport) -> list[str]:
    out = ["## What was not measured, and why", ""]
    items = []
    for pid, p in report.probes.items():
        if p.status == "skipped":
            items.append(f"- {code_span(pid)}: did not apply: {escape_cell(p.reason or 'no reason recorded')}")
        elif p.status == "failed":
            items.append(f"- {code_span(pid)}: failed ({escape_cell(p.error_kind or 'error')}): "
                         f"{escape_cell(first_line(p.error) or 'no error recorded')}")
    for f in report.findings:
        if f.variant is None and not math.isfinite(f.value):  # the card is of the subject itself
            why = "; ".join(f.warnings) or "no reason recorded"
            items.append(f"- {code_span(f.key)}: no value: {escape_cell(why)}")
    out += items or ["Every probe of the spec ran and every finding has a value."]
    ran = {pid.split(".", 1)[0] for pid, p in report.probes.items() if p.status == "ok"}
    absent = [f for f in _FAMILIES if f not in ran]
    if absent:
        names = absent[0] if len(absent) == 1 else ", ".join(absent[:-1]) + " or " + absent[-1]
        out += ["", f"Only what the spec asked for was measured: no {names} probe measured anything in this "
                "audit, which says nothing about the model's behaviour there.", ""]
    return out


def _reproducibility(report: AuditReport) -> list[str]:
    from audit.spec import spec_fingerprint

    env = report.environment if isinstance(report.environment, Mapping) else {}
    s = report.subject
    out = ["## Reproducibility", "",
           f"- Spec fingerprint: {code_span(spec_fingerprint(dict(report.spec)) if report.spec else 'no spec recorded')}",
           f"- Run id: {code_span(report.run_id)}; report schema {escape_cell(report.schema_version)}",
           f"- Subject: {escape_cell(s.name)}, revision {escape_cell(s.revision or '—')}"]
    for key in ("python", "platform", "device", "gpu", "cuda_version", "git_commit"):
        if env.get(key):
            v = env[key]
            v = ", ".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, Mapping) else v
            out.append(f"- {key.replace('_', ' ').capitalize()}: {escape_cell(v)}")
    if s.files:
        out += ["", _row("Subject file", "SHA-256", "Bytes"), _row("---", "---", "---")]
        out += [_row(escape_cell(fh.path), code_span(fh.sha256), f"{fh.bytes:,}") for fh in s.files]
    packages = env.get("packages") if isinstance(env.get("packages"), Mapping) else {}
    if packages:
        out += ["", _row("Package", "Version"), _row("---", "---")]
        out += [_row(escape_cell(k), escape_cell(v if v is not None else "not installed"))
                for k, v in sorted(packages.items())]
    return out + [""]


def render_card(report: AuditReport) -> str:
    """The model card (YAML ``model-index`` front matter and the evaluation section) of a report.

    Args:
        report: the audit.

    Returns:
        The card as Markdown text; ``huggingface_hub.ModelCard(text).data.eval_results`` reads
        its metrics.
    """
    meta: dict[str, Any] = {}
    index = model_index(report)
    if index:
        meta["model-index"] = index
    meta["tags"] = ["genai-audit", "evaluation"]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    lines = ["---", front.rstrip("\n"), "---", "", f"# Evaluation: {escape_cell(report.name)}", ""]
    lines += _summary(report) + _results(report) + _gates(report) + _energy(report)
    lines += _not_measured(report) + _reproducibility(report)
    lines += ["*Generated by `genai-audit card` from the audit's report.json; edit the prose, not the numbers.*", ""]
    return "\n".join(lines)
