"""Tests of the energy.inference probe, with meters of known power (hand-derived numbers),
tiny subjects built in code, and, once, the real meters of this machine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audit.errors import SpecError
from audit.findings import AuditReport, SubjectIdentity
from audit.probe import ProbeContext, build_probe
from audit.subjects import TextGenerator
from probes.energy.inference import host_peak_rss_bytes, percentile_ci, psnr_db, reset_host_peak
from tests.energy_fakes import PowerMeter, TinyClassifier, TinyImageGenerator
from tests.fakes import tiny_text_generator

FAST = {"repeats": 3, "min_window_s": 0.05, "idle_s": 0.05, "warmup_calls": 1, "max_new_tokens": 3,
        "batch_size": 4, "cpu_estimate": False, "n_resamples": 200}


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return tiny_text_generator()


def run(subject, meter=None, **params):
    probe = build_probe("energy.inference", {**FAST, **params})
    ctx = ProbeContext(device="cpu", seed=0, probe_id="energy.inference", meter=meter)
    return {f.key: f for f in probe.run(subject, ctx)}


def test_measured_energy_per_unit_is_power_over_throughput(lm):
    # Idle window at 10 W, then every window at 60 W: J/1k tokens = 1000 * 60 / (tokens/s),
    # net = 1000 * (60 - 10) / (tokens/s), both over the same windows.
    meter = PowerMeter([10.0, 60.0])
    f = run(lm, meter, operations=["score"])
    s = "[operation=score]"
    tput = f[f"energy.inference/throughput_tokens_per_s{s}"]
    gross = f[f"energy.inference/energy_j_per_1k_tokens{s}"]
    net = f[f"energy.inference/energy_net_j_per_1k_tokens{s}"]
    assert gross.value == pytest.approx(1000 * 60 / tput.value, rel=1e-3)
    assert net.value == pytest.approx(1000 * 50 / tput.value, rel=1e-3)
    assert gross.ci.low <= gross.value <= gross.ci.high and gross.n == 3
    assert gross.unit == "J/1k tokens" and not gross.higher_is_better
    assert not any("unavailable" in w for w in gross.warnings)
    assert f"energy.inference/energy_estimate_j_per_1k_tokens{s}" not in f  # nothing estimated
    lat50, lat95 = f[f"energy.inference/latency_p50_s{s}"], f[f"energy.inference/latency_p95_s{s}"]
    assert 0 < lat50.value <= lat95.value and lat50.n == gross.evidence["calls"]
    assert gross.evidence["units"] == pytest.approx(tput.value * gross.evidence["seconds"])
    assert f[f"energy.inference/peak_host_memory_mib{s}"].value > 10
    assert f"energy.inference/peak_device_memory_mib{s}" not in f  # CPU: no device memory
    assert not meter.closed  # the context's meter belongs to the caller
    # Per-window units reproduce the ratios over windows; windows do not pair across variants.
    from audit.units import attach_deltas, evaluate_units
    from audit.unitstats import statistic_info

    for finding in (gross, net, tput):
        assert finding.units.statistic == "window_ratio" and len(finding.units.ids) == 3
        assert evaluate_units(finding.units) == pytest.approx(finding.value, rel=1e-9)
    assert not statistic_info("window_ratio").pairable
    from dataclasses import replace

    d = attach_deltas([gross, replace(gross, variant="v")])[1].delta
    assert not d.paired and d.ci.method == "unpaired-bootstrap-percentile-95"


def test_generation_counts_generated_tokens(lm):
    # The tiny model's random byte-level tokens often end in half a UTF-8 character, which
    # decodes to U+FFFD and re-encodes as 3 tokens: counting by re-encoding overcounted (60 for
    # 48 here). The engine's own token ids count exactly.
    from probes.energy.inference import _BUILTIN_PROMPTS

    # Reference: transformers' greedy generate, one prompt at a time, tokens before any EOS.
    per_prompt = []
    for p in _BUILTIN_PROMPTS:
        ids = lm.tokenizer.encode(p, return_tensors="pt")
        with torch.inference_mode():
            gen = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                                    pad_token_id=lm.pad_token_id)[0, ids.shape[1]:].tolist()
        per_prompt.append(len(gen[:gen.index(lm.tokenizer.eos_token_id)] if lm.tokenizer.eos_token_id in gen
                              else gen))
    assert per_prompt == [3] * len(_BUILTIN_PROMPTS)  # no EOS: every call generates 4 x 3 tokens
    f = run(lm, PowerMeter([0.0, 30.0]), operations=["generate"], max_new_tokens=3)
    ev = f["energy.inference/energy_j_per_1k_tokens[operation=generate]"].evidence
    assert ev["units"] == 3 * 4 * ev["calls"]
    assert "generated token ids" in ev["workload"]


def test_generation_of_a_plain_generator_counts_by_re_encoding(lm):
    class Plain(TextGenerator):  # a user's generator: text out, no token ids
        identity = SubjectIdentity(name="plain", kind="text-generator", source="python")

        def encode(self, texts):
            return [t.split() for t in texts]

        def decode(self, ids):
            return " ".join(ids)

        def generate(self, prompts, *, max_new_tokens=32, temperature=0.0, seed=0):
            return ["two words"] * len(prompts)

    f = run(Plain(), PowerMeter([0.0, 30.0]), operations=["generate"], max_new_tokens=3)
    ev = f["energy.inference/energy_j_per_1k_tokens[operation=generate]"].evidence
    assert ev["units"] == 2 * 4 * ev["calls"] and "re-encoding" in ev["workload"]


def test_no_counter_is_nan_with_reason_never_zero(lm):
    f = run(lm, PowerMeter(kind="unavailable"), operations=["score"])
    for metric in ("energy_j_per_1k_tokens", "energy_net_j_per_1k_tokens"):
        g = f[f"energy.inference/{metric}[operation=score]"]
        assert math.isnan(g.value) and g.ci is None
        assert any("energy unavailable" in w and "no readable energy counter" in w for w in g.warnings)
    assert not any("estimate" in k for k in f)


def test_estimate_is_kept_apart_and_labelled(lm):
    f = run(lm, PowerMeter([20.0], kind="estimate", device="CPU"), operations=["score"], country="FR")
    assert math.isnan(f["energy.inference/energy_j_per_1k_tokens[operation=score]"].value)
    est = f["energy.inference/energy_estimate_j_per_1k_tokens[operation=score]"]
    tput = f["energy.inference/throughput_tokens_per_s[operation=score]"].value
    assert est.value == pytest.approx(1000 * 20 / tput, rel=1e-3)
    assert any(w.startswith("ESTIMATE, not a measurement") for w in est.warnings)
    assert "energy.inference/emissions_g_co2e_per_1k_tokens[operation=score]" not in f
    em = f["energy.inference/emissions_estimate_g_co2e_per_1k_tokens[operation=score]"]
    assert em.value == pytest.approx(est.value / 3.6e6 * 56.039)
    assert "ESTIMATED" in em.evidence["basis"]


def test_partial_measurement_says_what_is_left_out(lm):
    f = run(lm, PowerMeter([0.0, 40.0], extra=True), operations=["score"])
    g = f["energy.inference/energy_j_per_1k_tokens[operation=score]"]
    assert math.isfinite(g.value)
    assert any(w.startswith("partial: CPU not measured") for w in g.warnings)


def test_counter_that_did_not_advance_is_flagged_approximate(lm):
    f = run(lm, PowerMeter(stall=True), operations=["score"])
    g = f["energy.inference/energy_j_per_1k_tokens[operation=score]"]
    assert g.value == 0.0 and g.evidence["approximate"] is True
    assert any(w.startswith("approximate: the energy counter of GPU 0 did not advance in 3 of 3") for w in g.warnings)


def test_emissions_from_spec_value_and_pue(lm):
    f = run(lm, PowerMeter([0.0, 60.0]), operations=["score"], grid_intensity_g_per_kwh=100.0,
            grid_source="supplier contract 2025", pue=1.5)
    e = f["energy.inference/energy_j_per_1k_tokens[operation=score]"]
    g = f["energy.inference/emissions_g_co2e_per_1k_tokens[operation=score]"]
    assert g.value == pytest.approx(e.value / 3.6e6 * 100.0 * 1.5)
    assert g.ci.low == pytest.approx(e.ci.low / 3.6e6 * 150.0)
    assert "supplier contract 2025" in g.evidence["stated"] and "PUE 1.5" in g.evidence["stated"]
    assert g.unit == "gCO2e/1k tokens"


def test_classifier_j_per_1k_classifications_and_variants():
    f = run(TinyClassifier(), PowerMeter([5.0, 25.0]), variants=["bfloat16"], batch_size=16)
    for v in ("as-loaded", "bfloat16"):
        s = f"[operation=classify,variant={v}]"
        e = f[f"energy.inference/energy_j_per_1k_classifications{s}"]
        t = f[f"energy.inference/throughput_classifications_per_s{s}"]
        assert e.value == pytest.approx(1000 * 25 / t.value, rel=1e-3)
    ref = f["energy.inference/quality_agreement_with_reference[variant=as-loaded]"]
    bf = f["energy.inference/quality_agreement_with_reference[variant=bfloat16]"]
    assert ref.value == 1.0 and 0.5 <= bf.value <= 1.0 and bf.ci.method.startswith("wilson")


def test_image_generator_j_per_image_and_psnr_variant():
    f = run(TinyImageGenerator(), PowerMeter([0.0, 12.0]), variants=["bfloat16"], batch_size=4)
    s = "[operation=generate,variant=as-loaded]"
    e = f[f"energy.inference/energy_j_per_image{s}"]
    t = f[f"energy.inference/throughput_images_per_s{s}"]
    assert e.unit == "J/image" and e.value == pytest.approx(12 / t.value, rel=1e-3)
    p = f["energy.inference/quality_psnr_vs_reference_db[variant=bfloat16]"]
    assert 15 < p.value < math.inf  # bfloat16 changes some pixels, not many


def test_variant_without_torch_module_degrades_one_finding():
    # A generator whose torch module is not exposed as `model`: it runs, but cannot be cast.
    class NoModel(TinyImageGenerator):
        def __init__(self):
            super().__init__()
            self.decoder, self.model = self.model, None

        def generate(self, n=None, *, prompts=None, seed=0, batch_size=64):
            self.model = self.decoder
            try:
                yield from super().generate(n, prompts=prompts, seed=seed, batch_size=batch_size)
            finally:
                self.model = None

    f = run(NoModel(), PowerMeter([0.0, 5.0]), variants=["float16"])
    bad = f["energy.inference/energy_j_per_image[operation=generate,variant=float16]"]
    assert math.isnan(bad.value) and "no torch module" in bad.warnings[0]
    assert math.isfinite(f["energy.inference/energy_j_per_image[operation=generate,variant=as-loaded]"].value)


def test_findings_round_trip(lm):
    findings = list(run(lm, PowerMeter([0.0, 9.0]), country="DE").values())
    report = AuditReport(name="e", findings=tuple(findings),
                         subject=SubjectIdentity(name="t", kind="text-generator", source="python"))
    assert AuditReport.from_json(report.to_json()).to_json() == report.to_json()


def test_real_meters_on_this_machine_never_give_a_silent_number(lm):
    """No ctx.meter: the probe's own meters. Where a counter is readable the energy is a number;
    where not, it is nan with the reason and (cpu_estimate) codecarbon's estimate stands apart."""
    f = run(lm, None, operations=["score"], cpu_estimate=True, repeats=2, min_window_s=0.3)
    g = f["energy.inference/energy_j_per_1k_tokens[operation=score]"]
    counters = [r for w in g.evidence["per_window"] for r in [w["energy"]]]
    if all(c["joules"] is None for c in counters):
        assert math.isnan(g.value) and any("energy unavailable" in w for w in g.warnings)
        est = f["energy.inference/energy_estimate_j_per_1k_tokens[operation=score]"]
        assert est.value > 0 and any("codecarbon" in w and "ESTIMATE" in w for w in est.warnings)
    else:
        assert g.value >= 0


@pytest.mark.parametrize("params, match", [
    ({"repeats": 1}, "repeats"),
    ({"variants": ["int3"]}, "variants"),
    ({"operations": ["train"]}, "operations"),
    ({"pue": 0.9}, "pue"),
    ({"country": "XX"}, "no grid intensity for country code 'XX'"),
    ({"grid_intensity_g_per_kwh": -1}, "grid_intensity_g_per_kwh"),
    ({"min_window_s": -1}, "min_window_s"),
    ({"cpu_estimate": "yes"}, "cpu_estimate"),
])
def test_invalid_parameters(params, match):
    with pytest.raises(SpecError, match=match):
        build_probe("energy.inference", params)


def test_operation_that_does_not_apply_is_nan():
    f = run(TinyClassifier(), PowerMeter(), operations=["score"])
    (g,) = f.values()
    assert math.isnan(g.value) and "does not apply to a classifier" in g.warnings[0]


# -- pure helpers against references ---------------------------------------------------------


def test_percentile_ci_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 0.01, size=200)
    for q in (50, 95):
        v, ci = percentile_ci(x, q, n_resamples=500)
        assert v == np.percentile(x, q) and ci.low <= v <= ci.high
    empty, no_ci = percentile_ci([], 50)
    assert math.isnan(empty) and no_ci is None


def test_psnr_matches_torchmetrics():
    from torchmetrics.functional.image import peak_signal_noise_ratio

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (5, 3, 8, 8), generator=g, dtype=torch.uint8)
    b = (a.int() + torch.randint(-9, 10, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    ref = peak_signal_noise_ratio(b.double(), a.double(), data_range=255.0, reduction="none", dim=(1, 2, 3))
    assert np.allclose(psnr_db(b, a), ref.numpy())
    assert psnr_db(a, a)[0] == math.inf


def test_host_peak_reset():
    import mmap

    if not reset_host_peak():
        pytest.skip("/proc/self/clear_refs is not writable here")
    before = host_peak_rss_bytes()
    size = 96 * 2**20
    block = mmap.mmap(-1, size)  # fresh anonymous pages: resident only once written
    for offset in range(0, size, 4096):
        block[offset] = 1
    assert host_peak_rss_bytes() >= before + 80 * 2**20
    block.close()
    reset_host_peak()  # the peak falls back to what is resident now
    assert host_peak_rss_bytes() < before + 80 * 2**20
