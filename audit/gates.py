"""Gates: bounds and regression limits on findings -> pass / fail / skip with reasons.

A gate names a metric (``probe/metric[key=value]``) and either
  * an absolute bound, ``min`` and/or ``max``, compared with the value or with one side of
    its confidence interval (``use: ci_low`` / ``ci_high``), or
  * a regression limit against a baseline report, ``max_drop`` and/or ``max_rise``
    (absolute, or a fraction of the baseline with ``relative: true``). With
    ``significant_only: true`` a regression fails only when it is beyond the limit *and*
    the two confidence intervals do not overlap, so CI does not fail on noise.

A regression gate without a baseline, or whose metric the baseline lacks, is skipped (it
does not fail CI). A missing metric or a NaN value fails the gate: a gate that cannot be
checked must not pass silently.

Example:
    >>> from audit.findings import Finding
    >>> from audit.spec import GateSpec
    >>> f = Finding(probe="quality.perplexity", metric="perplexity", value=12.0, higher_is_better=False)
    >>> [r.status for r in evaluate_gates([GateSpec(metric="quality.perplexity/perplexity", max=30)], [f])]
    ['passed']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from audit.findings import Finding, GateResult, ProbeStatus, format_slice
from audit.probe import did_you_mean
from audit.spec import GateSpec, parse_metric_ref
from audit.stats import intervals_overlap

__all__ = ["canonical_key", "evaluate_gate", "evaluate_gates"]


def canonical_key(ref: str) -> str:
    """The ``Finding.key`` form of a gate's metric reference (slice keys sorted)."""
    probe, metric, slice_ = parse_metric_ref(ref)
    return f"{probe}/{metric}{format_slice(slice_)}"


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isnan(x):
        return "NaN"
    return f"{x:.4g}"


def _result(gate: GateSpec, status: str, message: str, value: float | None = None,
            bound: float | None = None) -> GateResult:
    return GateResult(
        metric=canonical_key(gate.metric), passed=status != "failed", message=message,
        status=status, value=value, bound=bound,  # type: ignore[arg-type]
        gate=gate.model_dump(exclude_none=True),
    )


def _side(f: Finding, use: str) -> tuple[float, str]:
    if use == "value":
        return f.value, "value"
    if f.ci is None:
        return f.value, f"value (no interval to take {use} from)"
    return (f.ci.low if use == "ci_low" else f.ci.high), use


def _absolute(gate: GateSpec, f: Finding) -> GateResult:
    x, used = _side(f, gate.use)
    name = canonical_key(gate.metric)
    if math.isnan(x):
        why = "; ".join(f.warnings) or "not computed"
        return _result(gate, "failed", f"{name} is NaN ({why})", x)
    problems = []
    if gate.min is not None and x < gate.min:
        problems.append(f"{used} {_fmt(x)} < min {_fmt(gate.min)}")
    if gate.max is not None and x > gate.max:
        problems.append(f"{used} {_fmt(x)} > max {_fmt(gate.max)}")
    bound = gate.max if gate.max is not None and (gate.min is None or x > gate.min) else gate.min
    if problems:
        return _result(gate, "failed", f"{name}: " + "; ".join(problems), x, bound)
    limits = " and ".join(
        s for s in (f">= min {_fmt(gate.min)}" if gate.min is not None else "",
                    f"<= max {_fmt(gate.max)}" if gate.max is not None else "") if s
    )
    return _result(gate, "passed", f"{name}: {used} {_fmt(x)} {limits}", x, bound)


def _regression(gate: GateSpec, f: Finding, base: Finding) -> GateResult:
    name = canonical_key(gate.metric)
    cur, ref = f.value, base.value
    if math.isnan(cur) or math.isnan(ref):
        side = "current" if math.isnan(cur) else "baseline"
        return _result(gate, "failed", f"{name}: the {side} value is NaN; the regression cannot be checked", cur)
    scale = abs(ref) if gate.relative else 1.0
    if gate.relative and scale == 0:
        return _result(gate, "failed", f"{name}: baseline is 0, a relative change is undefined", cur)
    unit = " (relative)" if gate.relative else ""
    overlap = intervals_overlap(f.ci, base.ci)
    problems = []
    for limit, change, word in (
        (gate.max_drop, (ref - cur) / scale, "drop"),
        (gate.max_rise, (cur - ref) / scale, "rise"),
    ):
        if limit is None or change <= limit:
            continue
        problems.append(f"{word} of {_fmt(change)}{unit} > max_{word} {_fmt(limit)}")
    head = f"{name}: {_fmt(ref)} -> {_fmt(cur)}"
    if problems and gate.significant_only:
        if overlap is None:
            problems.append("intervals missing on one side, so the change is judged without them")
        elif overlap:
            return _result(gate, "passed",
                           f"{head}: {'; '.join(problems)}, but the intervals overlap (not significant)",
                           cur, ref)
        else:
            problems.append("intervals do not overlap (significant)")
    if problems:
        return _result(gate, "failed", f"{head}: " + "; ".join(problems), cur, ref)
    return _result(gate, "passed", f"{head}: within the limits", cur, ref)


def evaluate_gate(gate: GateSpec, findings: Sequence[Finding],
                  baseline: Sequence[Finding] | None = None,
                  probes: Mapping[str, ProbeStatus] | None = None) -> list[GateResult]:
    """Evaluate one gate; returns one result for the bound and one for the regression
    limit when the gate has both. ``probes`` (the report's probe statuses) lets the
    message of a gate without its finding say why: the probe failed or was skipped."""
    key = canonical_key(gate.metric)
    by_key = {f.key: f for f in findings}
    f = by_key.get(key)
    out: list[GateResult] = []
    has_bound = gate.min is not None or gate.max is not None
    if f is None:
        probe_id = parse_metric_ref(gate.metric)[0]
        st = (probes or {}).get(probe_id)
        if st is not None and st.status == "failed":
            why = f"probe {probe_id} failed: {(st.error or '').splitlines()[0] if st.error else 'no error recorded'}"
        elif st is not None and st.status == "skipped":
            why = f"probe {probe_id} was skipped: {st.reason}"
        else:
            why = f"no such finding in the report.{did_you_mean(key, by_key)}"
        return [_result(gate, "failed", f"{key}: {why}")]
    if has_bound:
        out.append(_absolute(gate, f))
    if gate.is_regression:
        if baseline is None:
            out.append(_result(gate, "skipped", f"{key}: regression gate skipped: no --baseline report given"))
        else:
            base = {b.key: b for b in baseline}.get(key)
            if base is None:
                out.append(_result(gate, "skipped", f"{key}: regression gate skipped: the baseline has no such finding"))
            else:
                out.append(_regression(gate, f, base))
    return out


def evaluate_gates(gates: Iterable[GateSpec], findings: Sequence[Finding],
                   baseline: Sequence[Finding] | None = None,
                   probes: Mapping[str, ProbeStatus] | None = None) -> tuple[GateResult, ...]:
    """Evaluate every gate against ``findings`` (and ``baseline`` findings for regressions)."""
    out: list[GateResult] = []
    for g in gates:
        out.extend(evaluate_gate(g, findings, baseline, probes))
    return tuple(out)
