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

A gate that names a variant (``variant: NAME``, ``spec.variants``) reads that variant's
finding; gates without one read only the subject's findings (``variant`` None), so a
variant's finding never stands in for the subject's:
  * ``max_delta``: the variant may be worse than the subject by at most this much in the
    metric's bad direction (``higher_is_better``); with ``relative: true`` as a fraction of
    the subject's value (``Delta.relative`` / ``ci_relative``). Being better never fails.
    With ``significant_only: true`` a delta beyond the limit fails only when its interval
    also lies wholly on the bad side of 0; a delta without an interval is judged on its
    point value, and the message says that significance could not be told.
  * ``min`` / ``max``: bound the variant's own finding.
  * ``max_drop`` / ``max_rise``: against the baseline report's finding of the same variant.
  A missing variant finding fails the gate, as a missing finding of the subject does.

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
from dataclasses import replace

from audit.findings import Delta, Finding, GateResult, Interval, ProbeStatus, VariantRecord, format_slice
from audit.probe import did_you_mean
from audit.spec import GateSpec, parse_metric_ref
from audit.stats import intervals_overlap
from audit.variant_view import delta_badness, point_delta, significantly_worse

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


# -- gates on a variant --------------------------------------------------------------------


def _fmt_ci(ci: Interval | None, relative: bool) -> str:
    if ci is None:
        return "no interval"
    if relative:
        return f"[{100 * ci.low:+.3g}%, {100 * ci.high:+.3g}%]"
    return f"[{ci.low:+.4g}, {ci.high:+.4g}]"


def _prefixed(r: GateResult, variant: str) -> GateResult:
    return replace(r, message=f"variant {variant}: {r.message}")


def _missing_variant(gate: GateSpec, key: str, variant: str, findings: Sequence[Finding],
                     statuses: Mapping[str, ProbeStatus] | None) -> GateResult:
    probe_id = parse_metric_ref(gate.metric)[0]
    st = (statuses or {}).get(probe_id)
    names = sorted({f.variant for f in findings if f.variant is not None})
    if st is not None and st.status == "failed":
        why = f"probe {probe_id} failed: {(st.error or 'no error recorded').splitlines()[0]}"
    elif st is not None and st.status == "skipped":
        why = f"probe {probe_id} was skipped: {st.reason}"
    elif variant not in names and statuses is None:
        why = f"the report has no findings of variant '{variant}' (variants: {', '.join(names) or 'none'})"
    else:
        keys = [f.key for f in findings if f.variant == variant]
        why = f"no such finding of this variant in the report.{did_you_mean(key, keys)}"
    return _result(gate, "failed", f"variant {variant}: {key}: {why}")


def _max_delta(gate: GateSpec, f: Finding, base: Finding | None) -> GateResult:
    """The result's value is how much worse the variant is (negative: better), its bound max_delta."""
    key, v = f.key, gate.variant
    delta: Delta | None = f.delta
    if delta is None:
        if base is None:
            return _result(gate, "failed", f"variant {v}: {key}: the subject has no such finding, so there is no "
                                           "delta to bound", f.value)
        delta = point_delta(base, f)
    rel = gate.relative
    bad = delta_badness(delta, f.higher_is_better, relative=rel)
    shown = (lambda x: f"{100 * x:.3g}%") if rel else _fmt
    head = f"variant {v}: {key}: {_fmt(delta.base_value)} -> {_fmt(f.value)}"
    if bad is None:
        why = ("the base is 0 or not finite, a relative delta is undefined" if rel and delta.relative is None
               else "the delta is NaN")
        return _result(gate, "failed", f"{head}: {why}; the gate cannot be checked", bad, gate.max_delta)
    word = "worse" if bad > 0 else "better"
    where = "higher" if f.higher_is_better else "lower"
    change = f"{word} by {shown(abs(bad))} ({where} is better)"
    ci = delta.ci_relative if rel and delta.ci_relative is not None else delta.ci
    ci_rel = rel and delta.ci_relative is not None
    ci_text = _fmt_ci(ci, ci_rel)
    if bad <= gate.max_delta:  # type: ignore[operator]
        return _result(gate, "passed", f"{head}: {change}, within max_delta {shown(gate.max_delta)}", bad,
                       gate.max_delta)
    beyond = f"{change} > max_delta {shown(gate.max_delta)}"
    if gate.significant_only:
        sig = significantly_worse(delta, f.higher_is_better, relative=rel)
        if sig is None:
            return _result(gate, "failed", f"{head}: {beyond}; the delta has no interval, so whether it is "
                                           "significant cannot be told: judged on the point delta", bad, gate.max_delta)
        if not sig:
            return _result(gate, "passed", f"{head}: {beyond}, but its interval {ci_text} includes 0 "
                                           "(not significant)", bad, gate.max_delta)
        kind = "paired" if delta.paired else "unpaired"
        beyond += f"; its {kind} interval {ci_text} excludes 0 on the worse side (significant)"
    return _result(gate, "failed", f"{head}: {beyond}", bad, gate.max_delta)


def _variant_gate(gate: GateSpec, findings: Sequence[Finding], baseline: Sequence[Finding] | None = None,
                  statuses: Mapping[str, ProbeStatus] | None = None) -> list[GateResult]:
    """Evaluate a gate that names a variant (see the module doc).

    Args:
        gate: a gate with ``variant`` set.
        findings: the report's findings, the subject's and every variant's.
        baseline: the baseline report's findings (every variant's), for max_drop / max_rise.
        statuses: the variant's probe statuses (``VariantRecord.probes``), to say why a
            finding is missing; None when the report's variants are not known.
    """
    v = gate.variant
    if v is None:
        raise ValueError("_variant_gate: the gate names no variant")
    key = canonical_key(gate.metric)
    f = next((x for x in findings if x.key == key and x.variant == v), None)
    if f is None:
        return [_missing_variant(gate, key, v, findings, statuses)]
    out: list[GateResult] = []
    if gate.max_delta is not None:
        base = next((x for x in findings if x.key == key and x.variant is None), None)
        out.append(_max_delta(gate, f, base))
    if gate.min is not None or gate.max is not None:
        out.append(_prefixed(_absolute(gate, f), v))
    if gate.is_regression:
        if baseline is None:
            out.append(_result(gate, "skipped", f"variant {v}: {key}: regression gate skipped: no --baseline "
                                                "report given"))
        else:
            ref = next((x for x in baseline if x.key == key and x.variant == v), None)
            if ref is None:
                out.append(_result(gate, "skipped", f"variant {v}: {key}: regression gate skipped: the baseline "
                                                    "has no such finding of this variant"))
            else:
                out.append(_prefixed(_regression(gate, f, ref), v))
    return out


def evaluate_gate(gate: GateSpec, findings: Sequence[Finding],
                  baseline: Sequence[Finding] | None = None,
                  probes: Mapping[str, ProbeStatus] | None = None,
                  variants: Sequence[VariantRecord] | None = None) -> list[GateResult]:
    """Evaluate one gate; returns one result for the bound and one for the regression
    limit when the gate has both. ``probes`` (the report's probe statuses) lets the
    message of a gate without its finding say why: the probe failed or was skipped;
    ``variants`` (the report's variant records) does the same for a gate on a variant."""
    if gate.variant is not None:
        record = next((v for v in variants or () if v.name == gate.variant), None)
        return _variant_gate(gate, findings, baseline, record.probes if record is not None else None)
    key = canonical_key(gate.metric)
    findings = [f for f in findings if f.variant is None]
    baseline = None if baseline is None else [b for b in baseline if b.variant is None]
    by_key: dict[str, Finding] = {}
    for f in findings:
        by_key.setdefault(f.key, f)
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
            base = next((b for b in baseline if b.key == key), None)
            if base is None:
                out.append(_result(gate, "skipped", f"{key}: regression gate skipped: the baseline has no such finding"))
            else:
                out.append(_regression(gate, f, base))
    return out


def evaluate_gates(gates: Iterable[GateSpec], findings: Sequence[Finding],
                   baseline: Sequence[Finding] | None = None,
                   probes: Mapping[str, ProbeStatus] | None = None,
                   variants: Sequence[VariantRecord] | None = None) -> tuple[GateResult, ...]:
    """Evaluate every gate against ``findings`` (and ``baseline`` findings for regressions);
    ``variants`` are the report's variant records (for the messages of gates on a variant)."""
    out: list[GateResult] = []
    for g in gates:
        out.extend(evaluate_gate(g, findings, baseline, probes, variants))
    return tuple(out)
