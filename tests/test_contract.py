"""A contract test over every registered probe (built-in and entry points): it runs on a
tiny fake subject and returns findings that round-trip through the report's JSON.

A new probe must add its fake subject and inputs to FAKES, or this test fails for it.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from audit.findings import AuditReport, Finding, SubjectIdentity
from audit.probe import ProbeContext, build_probe, probe_info, registry
from tests.energy_fakes import energy_inference_inputs
from tests.fakes import tiny_text_generator
from tests import test_diffusion_likelihood, test_text_detectability, test_text_diversity
from tests import bias_fakes, deepfake_fakes, human_fakes, image_fakes
from tests import privacy_fakes, robustness_support
from tests import test_image_replication, test_visual_inspection
from tests import test_footprint


def _perplexity_inputs(tmp_path):
    p = tmp_path / "texts.jsonl"
    p.write_text("".join(json.dumps({"id": f"d{i}", "genre": "g", "text": f"Doc {i}: the quick brown fox."}) + "\n"
                         for i in range(4)), encoding="utf-8")
    return tiny_text_generator(), {"texts": p}, {"max_length": 8, "stride": 4, "n_resamples": 200}


FAKES = {
    "quality.perplexity": _perplexity_inputs,
    "quality.image_fidelity": image_fakes.image_fidelity_inputs,
    "quality.clip_score": image_fakes.clip_score_inputs,
    "quality.sliced_wasserstein": image_fakes.sliced_wasserstein_inputs,
    "quality.diffusion_likelihood": test_diffusion_likelihood.likelihood_contract_inputs,
    "robustness.classifier": robustness_support.classifier_contract_inputs,
    "robustness.detector_evasion": robustness_support.detector_contract_inputs,
    "robustness.text_embedding": robustness_support.text_embedding_contract_inputs,
    "energy.inference": energy_inference_inputs,
    "energy.footprint": test_footprint.footprint_contract_inputs,
    "human.ratings": human_fakes.human_ratings_inputs,
    "quality.text_diversity": test_text_diversity.diversity_contract_inputs,
    "deepfake.text_detectability": test_text_detectability.detectability_contract_inputs,
    "deepfake.image_detectability": deepfake_fakes.image_detectability_inputs,
    "bias.classifier": bias_fakes.bias_classifier_inputs,
    "bias.stereotype_pairs": bias_fakes.stereotype_pairs_inputs,
    "bias.counterfactual_generation": bias_fakes.counterfactual_inputs,
    "bias.t2i_representation": bias_fakes.t2i_inputs,
    "bias.embedding_association": bias_fakes.embedding_association_inputs,
    "privacy.image_replication": test_image_replication.replication_contract_inputs,
    "quality.visual_inspection": test_visual_inspection.visual_contract_inputs,
    "privacy.extraction": privacy_fakes.extraction_inputs,
    "privacy.membership_inference": privacy_fakes.membership_inputs,
    "privacy.pii_leakage": privacy_fakes.pii_inputs,
}

# Probes that record per-sample rows (ctx.record_samples, written to samples.parquet).
RECORDS_SAMPLES = {"quality.perplexity", "robustness.classifier", "robustness.text_embedding", "quality.text_diversity",
                   "deepfake.text_detectability", "deepfake.image_detectability", "bias.counterfactual_generation",
                   "privacy.extraction", "privacy.membership_inference", "privacy.pii_leakage"}

BUILTIN = sorted(pid for pid in registry.ids() if not pid.startswith(("test.", "example.", "lazy.", "ext.")))


def test_every_builtin_probe_has_a_fake():
    assert sorted(FAKES) == BUILTIN


@pytest.mark.parametrize("probe_id", BUILTIN)
def test_probe_contract(probe_id, tmp_path):
    info = probe_info(probe_id)
    assert info.summary and info.summary[0].isupper(), "the docstring's first line is the summary"
    assert info.applies_to, "a probe names the subject kinds it applies to"
    cls = registry.get(probe_id)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    build_probe(probe_id, {})  # defaults are valid

    subject, data, params = FAKES[probe_id](tmp_path)
    probe = build_probe(probe_id, params)
    ctx = ProbeContext(device="cpu", seed=0, data=data, cache_dir=tmp_path / "cache", probe_id=probe_id)
    findings = probe.run(subject, ctx)
    assert findings and all(isinstance(f, Finding) for f in findings)
    keys = [f.key for f in findings]
    assert len(keys) == len(set(keys)), "finding keys are unique within a probe"
    for f in findings:
        assert f.probe == probe_id and f.metric and isinstance(f.higher_is_better, bool)
        if f.ci is not None and not math.isnan(f.value):
            assert f.ci.low <= f.ci.high and f.ci.method
        assert f.n is None or f.n >= 0
    report = AuditReport(name="contract", findings=tuple(findings),
                         subject=SubjectIdentity(name="fake", kind=subject.kind, source="python"))
    text = report.to_json()
    assert AuditReport.from_json(text).to_json() == text
    if probe_id in RECORDS_SAMPLES:
        assert ctx.samples is not None and ctx.samples.rows, "this probe records its samples"
    if ctx.samples is not None:
        import pandas as pd

        from audit.samples import write_samples

        df = pd.read_parquet(write_samples([ctx.samples], tmp_path / "samples.parquet"))
        assert len(df) == len(ctx.samples.rows) and set(df["probe"]) == {probe_id}
