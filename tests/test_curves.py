"""The curve and confusion-matrix evidence shapes, the inline SVG charts, and how the HTML report
shows them: one chart per chart id with a line per series, bands, heat-map tables, worst slices
first, the per-probe contents and the extra-section hook."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from audit.curves import (
    confusion_matrix_evidence,
    confusion_matrix_of,
    curve,
    curves_evidence,
    curves_of,
    proportion_curve,
    validate_curve,
)
from audit.findings import AuditReport, Finding, Interval, ProbeStatus, SubjectIdentity
from audit.render.html import Section, _SECTION_HOOKS, register_section, render_html
from audit.render.svg import interval_panels, line_chart, nice_ticks, wrap_label
from audit.stats import wilson_interval

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert(1)</script>&"


# -- the evidence shapes ------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    ({"x": [1, 2], "y": [1.0]}, "y has 1 values; expected 2"),
    ({"x": [], "y": []}, "x is empty"),
    ({"x": [1, "a"], "y": [1, 2]}, "x must hold numbers"),
    ({"x": [1, float("nan")], "y": [1, 2]}, "x must be finite"),
    ({"x": [0, 1], "y": [1, 2], "x_scale": "log"}, "log' needs positive x"),
    ({"x": [1, 2], "y": [1, 2], "y_low": [0, 1]}, "both y_low and y_high"),
    ({"x": [1, 2], "y": [1, 2], "x_ticks": ["a"]}, "x_ticks must be a list of 2"),
    ({"x": [1, 2], "y": [1, 2], "series": 3}, "series must be text"),
    ({"x": [1, 2], "y": [1, 2], "y_range": [1, 0]}, "low < high"),
    ("x", "expected a mapping"),
])
def test_malformed_curves_are_refused_by_name(data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_curve(data)


def test_proportion_curve_bands_are_wilson_intervals():
    c = proportion_curve([0, 1, 2], [45, 20, 0], [50, 50, 0], series="pgd", chart="ra")
    assert c["y"][:2] == [0.9, 0.4] and c["y"][2] != c["y"][2]  # NaN where there is no sample
    for k, lo, hi in zip((45, 20), c["y_low"], c["y_high"]):
        iv = wilson_interval(k, 50)
        assert (lo, hi) == (iv.low, iv.high)
    assert c["interval"] == "wilson-95" and c["y_range"] == [0.0, 1.0]


def test_curves_of_reads_both_keys_and_skips_bad_ones():
    good = curve([1, 2], [3, 4], series="a")
    ev = {**curves_evidence(good), "curve": {"x": [1], "y": [2], "y_low": ["NaN"], "y_high": ["NaN"]}}
    ev["curves"].append({"x": [1, 2], "y": [1]})  # malformed: left out
    found = curves_of(ev)
    assert [c["series"] for c in found] == ["a", ""] and len(found) == 2
    assert curves_of({"curve": [{"eps": 0.1}]}) == []  # the old list-of-points shape is not a curve


def test_confusion_matrix_equals_sklearn():
    from sklearn.metrics import confusion_matrix

    y = [0, 1, 2, 2, 1, 0, 0, 2]
    p = [0, 2, 2, 1, 1, 0, 1, 2]
    cm = confusion_matrix_evidence(y, p, ["a", "b", "c"])["confusion_matrix"]
    assert cm["counts"] == confusion_matrix(y, p).tolist()
    assert confusion_matrix_of({"confusion_matrix": cm}) == cm
    assert confusion_matrix_of({"confusion_matrix": {**cm, "counts": [[1, -1], [0, 0]]}}) is None
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix_evidence([3], [0], ["a"])


# -- the SVG -------------------------------------------------------------------------------------
def test_nice_ticks_and_wrapped_labels():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(3, 3)[0] < 3 < nice_ticks(3, 3)[-1]
    assert nice_ticks(0.013, 0.087, 4) == [0.0, 0.02, 0.04, 0.06, 0.08, 0.1]  # step 0.02 >= 0.074 / 4
    lines = wrap_label("detector=linear_probe, postprocess=jpeg:40, group=" + "x" * 50, 20)
    assert all(len(line) <= 20 for line in lines) and len(lines) == 3 and lines[-1].endswith("…")


def test_line_chart_is_well_formed_svg_with_a_band_and_a_line_per_series():
    curves = [proportion_curve([0, 1, 2, 4], [90, 60, 30, 5], [100] * 4, series=s, chart="ra",
                               x_ticks=["0", "1/255", "2/255", "4/255"]) for s in ("fgsm", HOSTILE)]
    svg = line_chart(curves, x_label="eps", y_label=HOSTILE)
    root = ET.fromstring(svg)  # parses: well-formed XML
    assert root.tag == f"{SVG}svg" and root.get("viewBox").startswith("0 0 640 ")
    assert len(root.findall(f"{SVG}polyline")) == 2 and len(root.findall(f"{SVG}polygon")) == 2
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert HOSTILE in texts and "fgsm" in texts and "2/255" in texts  # escaped in the file, text in the tree
    assert "<script>" not in svg
    # A NaN breaks the line instead of drawing a false point.
    gap = line_chart([curve([0, 1, 2, 3], [1.0, float("nan"), 0.5, 0.4])])
    assert len(ET.fromstring(gap).findall(f"{SVG}polyline")) == 1


def test_interval_panels_wrap_long_slice_labels():
    rows = [(f"attack=fgsm, eps=8/255, class=very-long-class-name-{i}", 0.5 + i / 10, 0.4, 0.9) for i in range(3)]
    rows.append(("attack=pgd", float("nan"), None, None))
    root = ET.fromstring(interval_panels([("robust_accuracy, higher is better", rows)]))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "very-long-class-name-2" in " ".join(texts) and "n/a" in texts
    assert len(root.findall(f"{SVG}circle")) == 3


# -- the page ------------------------------------------------------------------------------------
def _report() -> AuditReport:
    n = 100
    findings = [Finding("robustness.classifier", "clean_accuracy", 0.9, True, n=n,
                        evidence=confusion_matrix_evidence([0] * 50 + [1] * 50, [0] * 45 + [1] * 55, ["cat", HOSTILE]))]
    for attack, ks in (("fgsm", [90, 50, 20]), ("pgd", [90, 30, 5])):
        for eps, k in zip(("1/255", "4/255"), ks[1:]):
            findings.append(Finding("robustness.classifier", "robust_accuracy", k / n, True, n=n,
                                    ci=wilson_interval(k, n), slice={"attack": attack, "eps": eps}))
        findings.append(Finding("robustness.classifier", "robust_accuracy_area", 0.4, True, n=n,
                                slice={"attack": attack},
                                evidence=curves_evidence(proportion_curve(
                                    [0, 1 / 255, 4 / 255], ks, [n] * 3, series=attack, chart="robust_accuracy_vs_eps",
                                    x_label="eps (linf)", y_label="robust accuracy"))))
    findings += [Finding("bias.toxicity", "rate", v, False, n=20, ci=Interval(v - 0.05, v + 0.05, "m"),
                         slice={"group": g}) for g, v in (("a", 0.1), ("b", 0.4), ("c", float("nan")), ("d", 0.2))]
    probes = {"robustness.classifier": ProbeStatus(status="ok"), "bias.toxicity": ProbeStatus(status="ok"),
              "quality.perplexity": ProbeStatus(status="skipped", reason="no texts")}
    return AuditReport(name="curves", subject=SubjectIdentity(name="m", kind="classifier", source="python"),
                       findings=tuple(findings), probes=probes)


def test_the_page_draws_one_robustness_chart_with_a_line_per_attack():
    page = render_html(_report())
    svgs = re.findall(r"<svg\b.*?</svg>", page, re.S)
    for s in svgs:
        ET.fromstring(s)
    curve_svgs = [s for s in svgs if "<polyline" in s]
    assert len(curve_svgs) == 1  # the two attacks' curves share the chart "robust_accuracy_vs_eps"
    assert ">fgsm<" in curve_svgs[0] and ">pgd<" in curve_svgs[0] and curve_svgs[0].count("<polygon") == 2
    assert "robust accuracy against eps (linf)" in page


def test_the_page_shows_the_confusion_matrix_worst_slices_and_contents():
    page = render_html(_report())
    table = re.search(r'<table class="cm">.*?</table>', page, re.S).group(0)
    assert "&lt;script&gt;" in table and "<script" not in table
    assert re.findall(r'<td class="cell"[^>]*>([\d,]+)</td>', table) == ["45", "5", "0", "50"]
    assert "rgba(56, 103, 214, 0.765)" in table  # 45 of 50 of the row: 0.9 x 0.85
    worst = re.search(r"Worst slices of rate.*?</table>", page, re.S).group(0)
    # Lower is better: the highest rate first, NaN last; each links to its finding's row.
    assert re.findall(r">group=(\w)</a>", worst) == ["b", "d", "a", "c"]
    for anchor in re.findall(r'href="#(probe-[\w-]+-f\d+)"', worst):
        assert f'<tr id="{anchor}">' in page
    nav = re.search(r'<nav class="probes".*?</nav>', page, re.S).group(0)
    for pid in ("robustness-classifier", "bias-toxicity", "quality-perplexity"):
        assert f'href="#probe-{pid}"' in nav and f'<section id="probe-{pid}"' in page


def test_registered_sections_appear_in_their_probe_and_a_failing_one_costs_only_itself():
    def gallery(probe_id, findings, report):
        from markupsafe import Markup

        return [Section("kept images", Markup("<p>{} findings of {}</p>").format(len(findings), probe_id)),
                Section("plain", "<b>a str is escaped</b>")] if findings else []

    def broken(probe_id, findings, report):
        raise RuntimeError("no thumbnails")

    register_section(gallery)
    register_section(broken)
    try:
        page = render_html(_report())
    finally:
        _SECTION_HOOKS.remove(gallery)
        _SECTION_HOOKS.remove(broken)
    section = re.search(r'<section id="probe-bias-toxicity".*?</section>', page, re.S).group(0)
    assert "<p>4 findings of bias.toxicity</p>" in section
    assert "&lt;b&gt;a str is escaped&lt;/b&gt;" in section
    assert "RuntimeError: no thumbnails" in section
