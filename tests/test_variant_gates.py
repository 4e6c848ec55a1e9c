"""Gates on variants (``variant: NAME``): hand-made numbers with known answers."""

import pytest

from audit.findings import Delta, Finding, Interval, ProbeStatus, SubjectIdentity, VariantRecord
from audit.gates import evaluate_gate, evaluate_gates
from audit.spec import GateSpec

KEY = "quality.perplexity/perplexity"


def F(value, *, variant=None, hib=False, ci=None, delta=None, slice_=None, metric="perplexity"):
    return Finding(probe="quality.perplexity", metric=metric, value=value, higher_is_better=hib, variant=variant,
                   ci=Interval(*ci, "bootstrap-percentile-95") if ci else None, delta=delta, slice=slice_ or {})


def D(base, value, ci=None, ci_rel=None, paired=True):
    rel = (value - base) / abs(base)
    return Delta(base_value=base, value=value - base, relative=rel,
                 ci=Interval(*ci, "paired-bootstrap-95") if ci else None,
                 ci_relative=Interval(*ci_rel, "paired-bootstrap-95") if ci_rel else None, paired=paired,
                 n_pairs=20 if paired else None)


def G(**kw):
    return GateSpec(metric=kw.pop("metric", KEY), **kw)


# perplexity 10 -> 10.3 (+3 %), 10 -> 10.8 (+8 %): lower is better, so both are worse.
BASE = F(10.0)
INT8_SMALL = F(10.3, variant="int8", delta=D(10.0, 10.3, ci=(0.1, 0.5), ci_rel=(0.01, 0.05)))
INT8_BIG = F(10.8, variant="int8", delta=D(10.0, 10.8, ci=(0.5, 1.1), ci_rel=(0.05, 0.11)))
INT8_BIG_NOISY = F(10.8, variant="int8", delta=D(10.0, 10.8, ci=(-0.2, 1.8), ci_rel=(-0.02, 0.18)))
INT8_BIG_NO_CI = F(10.8, variant="int8", delta=D(10.0, 10.8))


@pytest.mark.parametrize(
    "gate, variant_finding, status, value",
    [
        (G(variant="int8", max_delta=0.05, relative=True), INT8_SMALL, "passed", 0.03),
        (G(variant="int8", max_delta=0.05, relative=True), INT8_BIG, "failed", 0.08),
        (G(variant="int8", max_delta=0.5), INT8_SMALL, "passed", 0.3),        # absolute: 0.3 <= 0.5
        (G(variant="int8", max_delta=0.5), INT8_BIG, "failed", 0.8),
        (G(variant="int8", max_delta=0.05, relative=True, significant_only=True), INT8_BIG, "failed", 0.08),
        (G(variant="int8", max_delta=0.05, relative=True, significant_only=True), INT8_BIG_NOISY, "passed", 0.08),
        # no interval: cannot tell, judged on the point delta (fails, and says so)
        (G(variant="int8", max_delta=0.05, relative=True, significant_only=True), INT8_BIG_NO_CI, "failed", 0.08),
    ],
)
def test_max_delta_lower_is_better(gate, variant_finding, status, value):
    (r,) = evaluate_gate(gate, [BASE, variant_finding])
    assert r.status == status
    assert r.value == pytest.approx(value)
    assert r.bound == gate.max_delta
    assert r.message.startswith("variant int8: quality.perplexity/perplexity: 10 -> ")


def test_significance_is_said_in_the_message():
    sig = G(variant="int8", max_delta=0.05, relative=True, significant_only=True)
    (r,) = evaluate_gate(sig, [BASE, INT8_BIG])
    assert "excludes 0 on the worse side (significant)" in r.message and "paired interval [+5%, +11%]" in r.message
    (r,) = evaluate_gate(sig, [BASE, INT8_BIG_NOISY])
    assert "includes 0 (not significant)" in r.message
    (r,) = evaluate_gate(sig, [BASE, INT8_BIG_NO_CI])
    assert "cannot be told" in r.message and "judged on the point delta" in r.message


def test_higher_is_better_a_drop_is_worse_and_a_rise_never_fails():
    base = F(0.80, hib=True, metric="acc")
    worse = F(0.70, hib=True, metric="acc", variant="q4", delta=Delta(0.80, -0.10, -0.125,
                                                                        ci=Interval(-0.15, -0.05, "p-95")))
    better = F(0.95, hib=True, metric="acc", variant="q4", delta=Delta(0.80, 0.15, 0.1875))
    gate = G(metric="quality.perplexity/acc", variant="q4", max_delta=0.05)
    (r,) = evaluate_gate(gate, [base, worse])
    assert r.status == "failed" and r.value == pytest.approx(0.10) and "worse by 0.1 (higher is better)" in r.message
    (r,) = evaluate_gate(gate.model_copy(update={"significant_only": True}), [base, worse])
    assert r.status == "failed"  # interval [-0.15, -0.05] is wholly below 0: worse for sure
    (r,) = evaluate_gate(gate, [base, better])
    assert r.status == "passed" and r.value == pytest.approx(-0.15) and "better by 0.15" in r.message


def test_relative_interval_missing_falls_back_to_the_absolute_one():
    # ci_relative absent; ci (absolute) excludes 0 on the bad side: the same sign decides
    f = F(10.8, variant="int8", delta=Delta(10.0, 0.8, 0.08, ci=Interval(0.2, 1.4, "paired-95"), paired=True))
    (r,) = evaluate_gate(G(variant="int8", max_delta=0.05, relative=True, significant_only=True), [BASE, f])
    assert r.status == "failed" and "(significant)" in r.message


def test_no_attached_delta_uses_the_point_delta_to_the_base():
    (r,) = evaluate_gate(G(variant="int8", max_delta=0.05, relative=True), [BASE, F(10.8, variant="int8")])
    assert r.status == "failed" and r.value == pytest.approx(0.08)
    (r,) = evaluate_gate(G(variant="int8", max_delta=0.05, relative=True), [F(10.8, variant="int8")])
    assert r.status == "failed" and "the subject has no such finding" in r.message


def test_relative_delta_of_a_zero_base_cannot_be_checked():
    f = F(0.2, variant="int8", delta=Delta(0.0, 0.2, None))
    (r,) = evaluate_gate(G(variant="int8", max_delta=0.05, relative=True), [F(0.0), f])
    assert r.status == "failed" and "relative delta is undefined" in r.message


def test_missing_variant_finding_fails_and_says_why():
    gate = G(variant="int8", max_delta=0.05)
    (r,) = evaluate_gate(gate, [BASE])
    assert r.status == "failed" and "no findings of variant 'int8'" in r.message
    record = VariantRecord("int8", SubjectIdentity("m [int8]", "text-generator", "hf"),
                           probes={"quality.perplexity": ProbeStatus("failed", error="RuntimeError: boom\ntb")})
    (r,) = evaluate_gate(gate, [BASE], variants=[record])
    assert r.status == "failed" and "probe quality.perplexity failed: RuntimeError: boom" in r.message
    skipped = VariantRecord("int8", record.subject, probes={"quality.perplexity": ProbeStatus("skipped", reason="n/a")})
    (r,) = evaluate_gate(gate, [BASE], variants=[skipped])
    assert "was skipped: n/a" in r.message
    other = F(3.0, variant="int8", metric="perplexity_x")
    (r,) = evaluate_gate(gate, [BASE, other], variants=[VariantRecord("int8", record.subject)])
    assert "no such finding of this variant" in r.message and "Did you mean" in r.message


def test_min_max_bound_the_variants_own_value():
    gate = G(variant="int8", max=10.5)
    (r,) = evaluate_gate(gate, [BASE, INT8_BIG])
    assert r.status == "failed" and r.value == 10.8 and r.message.startswith("variant int8: ")
    (r,) = evaluate_gate(gate, [BASE, INT8_SMALL])
    assert r.status == "passed" and r.value == 10.3


def test_regression_per_variant_against_the_baselines_same_variant():
    gate = G(variant="int8", max_rise=0.2)
    baseline = [F(9.0), F(10.5, variant="int8"), F(99.0, variant="lora")]
    (r,) = evaluate_gate(gate, [BASE, INT8_BIG], baseline=baseline)
    assert r.status == "failed" and r.bound == 10.5 and "10.5 -> 10.8" in r.message  # not the base's 9.0
    (r,) = evaluate_gate(gate, [BASE, INT8_SMALL], baseline=baseline)
    assert r.status == "passed"
    (r,) = evaluate_gate(gate, [BASE, INT8_SMALL], baseline=[F(9.0)])
    assert r.status == "skipped" and "no such finding of this variant" in r.message
    (r,) = evaluate_gate(gate, [BASE, INT8_SMALL])
    assert r.status == "skipped" and "no --baseline" in r.message


def test_base_gates_ignore_variant_findings_wherever_they_are():
    # a variant finding listed before the base's must not stand in for it, nor shadow it after
    for findings in ([INT8_BIG, BASE], [BASE, INT8_BIG]):
        (r,) = evaluate_gate(G(max=10.5), findings)
        assert r.status == "passed" and r.value == 10.0
    # the base's regression gate compares with the baseline's base finding, not a variant's
    (r,) = evaluate_gate(G(max_rise=0.5), [BASE], baseline=[F(10.0, variant="int8"), F(9.8)])
    assert r.status == "passed" and r.bound == 9.8
    # only variant findings: the base's gate fails, as for any missing finding
    (r,) = evaluate_gate(G(max=30), [INT8_SMALL])
    assert r.status == "failed" and "no such finding" in r.message


def test_gate_with_delta_and_bound_gives_both_results():
    gate = G(variant="int8", max_delta=0.05, relative=True, max=10.5)
    results = evaluate_gates([gate], [BASE, INT8_BIG])
    assert [r.status for r in results] == ["failed", "failed"]
    assert results[0].gate["variant"] == "int8" and results[0].metric == KEY


def test_slice_keys_match_in_any_order():
    base = F(5.0, slice_={"b": "2", "a": "1"})
    var = F(6.0, slice_={"a": "1", "b": "2"}, variant="int8")
    (r,) = evaluate_gate(G(metric=f"{KEY}[b=2,a=1]", variant="int8", max_delta=0.5), [base, var])
    assert r.status == "failed" and r.value == pytest.approx(1.0)


def test_check_reevaluates_variant_gates_of_a_report(tmp_path):
    from click.testing import CliRunner

    from audit.cli import cli
    from tests.report_factory import make_variant_report

    gates = [{"metric": KEY, "variant": "int8", "max_delta": 0.05, "relative": True, "significant_only": True},
             {"metric": KEY, "variant": "lora", "max_delta": 0.05, "relative": True},
             {"metric": KEY, "max": 12.5}]
    report = make_variant_report()
    report = report.__class__.from_dict({**report.to_dict(), "spec": {**report.spec, "gates": gates}})
    path = tmp_path / "report.json"
    report.save(path)
    junit = tmp_path / "junit.xml"
    res = CliRunner().invoke(cli, ["check", str(path), "--junit", str(junit)])
    assert res.exit_code == 1, res.output  # int8: +7.5 % > 5 %, interval [+4.2 %, +10.8 %] excludes 0
    xml = junit.read_text()
    assert xml.count("<failure") == 1  # one testcase per gate (and per probe)
    for name in ("quality.perplexity/perplexity · variant int8", "quality.perplexity/perplexity · variant lora",
                 "quality.perplexity/perplexity"):
        assert f'name="{name}"' in xml
