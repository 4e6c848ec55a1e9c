"""deepfake.text_detectability: its per-token maths by hand, its scores against an unbatched
full-softmax reference, the Binoculars ratio against its formula, and its bad-input rules.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from audit.errors import InputError, SpecError
from audit.findings import AuditReport, SubjectIdentity
from audit.probe import ProbeContext, build_probe, probe_info
from probes.deepfake.metrics import MIN_PER_CLASS
from probes.deepfake.text_detectability import TextDetectability, cross_entropy_between, token_statistics

WORDS = ("the quick brown fox jumps over the lazy dog while a café serves naïve coffee and models "
         "predict held-out text; lower is better").split()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm():
    from tests.fakes import tiny_text_generator

    return tiny_text_generator()


def observer():
    """``module:callable`` for the observer model: the tiny Llama with other weights, same tokenizer."""
    from tests.fakes import tiny_text_generator

    return tiny_text_generator(seed=1)


def write_corpus(path, n, words=40, seed=0):
    rng = np.random.default_rng(seed)
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": " ".join(rng.choice(WORDS, words))}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def run(subject, path, **params):
    probe = build_probe("deepfake.text_detectability",
                        {"prompt_tokens": 8, "continuation_tokens": 10, "n_resamples": 200, **params})
    return {f.key: f for f in probe.run(subject, ProbeContext(data={"texts": path}, probe_id=probe.id))}


# -- per-token maths ------------------------------------------------------------------------

def test_token_statistics_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
    lp, lr, h = token_statistics(logits, torch.tensor([1, 0]))
    assert lp.tolist() == pytest.approx([math.log(0.25), math.log(0.1)], abs=1e-6)
    assert lr.tolist() == pytest.approx([math.log(2), math.log(3)])   # ties favour the target: rank 2, not 3
    assert h.tolist() == pytest.approx([1.5 * math.log(2), -(0.1 * math.log(0.1) + 0.2 * math.log(0.2)
                                                               + 0.7 * math.log(0.7))], abs=1e-6)


def test_token_statistics_and_cross_entropy_against_a_double_precision_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 11, generator=g) * 3, torch.randn(7, 11, generator=g) * 3
    t = torch.randint(0, 11, (7,), generator=g)
    lp, lr, h = token_statistics(b, t)
    x = cross_entropy_between(a, b)
    for i in range(7):
        p = torch.softmax(b[i].double(), 0)
        q = torch.softmax(a[i].double(), 0)
        rank = 1 + sum(float(p[v]) > float(p[t[i]]) for v in range(11))
        assert float(lp[i]) == pytest.approx(math.log(float(p[t[i]])), abs=1e-5)
        assert float(lr[i]) == pytest.approx(math.log(rank))
        assert float(h[i]) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-5)
        assert float(x[i]) == pytest.approx(float(-(q * p.log()).sum()), abs=1e-5)


# -- scores against an unbatched reference ------------------------------------------------

def _reference_scores(scorer, obs, prompts, conts):
    out = {"log_likelihood": [], "log_rank": [], "entropy": [], "binoculars": []}
    for p, c in zip(prompts, conts):
        head = [scorer.bos_token_id]
        p_ids, c_ids = scorer.encode([p])[0], scorer.encode([c])[0]
        ids = torch.tensor([head + p_ids + c_ids])
        start = len(head) + len(p_ids)
        with torch.no_grad():
            logp = torch.log_softmax(scorer.model(ids).logits[0].double(), -1)[start - 1:-1]
            obs_p = torch.softmax(obs.model(ids).logits[0].double(), -1)[start - 1:-1]
        tgt = ids[0, start:]
        tlp = logp.gather(-1, tgt[:, None])[:, 0]
        ranks = (logp > tlp[:, None]).sum(-1) + 1
        out["log_likelihood"].append(float(tlp.mean()))
        out["log_rank"].append(-float(ranks.double().log().mean()))
        out["entropy"].append(-float(-(logp.exp() * logp).sum(-1).mean()))
        out["binoculars"].append(-float(-tlp.mean() / (-(obs_p * logp).sum(-1)).mean()))
    return {k: np.array(v) for k, v in out.items()}


def test_batched_scores_equal_the_unbatched_reference(lm):
    obs = observer()
    prompts = ["The quick brown", "A café serves", "Models predict held-out", "lazy"]
    conts = [" fox jumps over the lazy dog.", " naïve coffee", " text; lower is better", " dog while a fox"]
    probe = TextDetectability(batch_size=3)
    ours, notes = probe._scores(lm, obs, prompts, conts, ProbeContext(probe_id=probe.id))
    ref = _reference_scores(lm, obs, prompts, conts)
    assert list(ours) == ["log_likelihood", "log_rank", "entropy", "binoculars"] and not notes
    for k in ours:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)


# -- the probe ----------------------------------------------------------------------------

def test_probe_on_the_tiny_model_with_an_observer(lm, tmp_path):
    path = write_corpus(tmp_path / "c.jsonl", 12)
    found = run(lm, path, observer="tests.test_text_detectability:observer", observer_source="python")
    scores = ["log_likelihood", "log_rank", "entropy", "binoculars"]
    metrics = ["auroc", "average_precision", "eer", "tpr_at_fpr_1e-02", "tpr_at_fpr_1e-03",
               "balanced_accuracy", "real_accuracy", "fake_accuracy"]
    assert sorted(found) == sorted(f"deepfake.text_detectability/{m}[score={s}]" for s in scores for m in metrics)
    first = found["deepfake.text_detectability/auroc[score=log_likelihood]"]
    assert first.n == 24 and first.ci is not None and first.ci.low <= first.value <= first.ci.high
    ev = first.evidence
    assert ev["n_real"] == ev["n_fake"] == 12 and ev["observer"] == "tests.test_text_detectability:observer"
    assert ev["n_calibration"] == 8 and ev["n_test"] == 16   # 4 of 12 prompts, pairs kept together
    assert len(ev["examples"]) == 3 and set(ev["examples"][0]) == {"id", "prompt", "human", "generated"}
    bal = found["deepfake.text_detectability/balanced_accuracy[score=log_likelihood]"]
    assert bal.n == 16 and bal.evidence["split"] == "test"
    assert any("cannot resolve an FPR of 0.01" in w for w in first.warnings)
    # the AUROC is the Mann-Whitney statistic of the reported per-class means' scores... checked
    # against scikit-learn on the same scores through the shared module's tests; here: in [0, 1]
    assert 0 <= first.value <= 1
    report = AuditReport(name="t", subject=lm.identity, findings=tuple(found.values()))
    assert AuditReport.from_json(report.to_json()).to_json() == report.to_json()


def test_scores_and_auroc_agree_with_scikit_learn(lm, tmp_path, monkeypatch):
    # Capture the labels and scores handed to the shared metrics, and check the AUROC finding.
    import probes.deepfake.text_detectability as td

    seen = {}
    real_summarize = td.summarize_detection

    def spy(labels, scores, calibration, **kw):
        seen.setdefault("calls", []).append((np.array(labels), np.array(scores), np.array(calibration)))
        return real_summarize(labels, scores, calibration, **kw)

    monkeypatch.setattr(td, "summarize_detection", spy)
    found = run(lm, write_corpus(tmp_path / "c.jsonl", 11, seed=3))
    labels, scores, cal = seen["calls"][0]
    assert labels.tolist() == [0] * 11 + [1] * 11
    assert (cal[:11] == cal[11:]).all()  # a prompt's human and generated texts share a split
    assert found["deepfake.text_detectability/auroc[score=log_likelihood]"].value == pytest.approx(
        roc_auc_score(labels, scores))


def test_too_few_texts_is_an_input_error(lm, tmp_path):
    with pytest.raises(InputError, match=f"needs at least {MIN_PER_CLASS} texts long enough"):
        run(lm, write_corpus(tmp_path / "c.jsonl", MIN_PER_CLASS - 1))
    # long enough in number, but too short in tokens: said so
    with pytest.raises(InputError, match="got 0"):
        run(lm, write_corpus(tmp_path / "s.jsonl", 12, words=2))


def test_model_without_distributions_gives_log_likelihood_only(tmp_path):
    from tests.fakes import tiny_text_generator

    class LogprobsOnly:
        """A TextGenerator-like subject with no ``model`` attribute (token log-probs only)."""

        def __init__(self):
            inner = tiny_text_generator()
            self._inner = inner
            self.identity, self.kind, self.device = inner.identity, inner.kind, inner.device
            self.bos_token_id, self.pad_token_id = inner.bos_token_id, inner.pad_token_id
            self.encode, self.decode, self.generate = inner.encode, inner.decode, inner.generate
            self.token_logprobs = inner.token_logprobs

    found = run(LogprobsOnly(), write_corpus(tmp_path / "c.jsonl", 10))
    assert {k.split("[")[1] for k in found} == {"score=log_likelihood]"}
    assert any("log_rank and entropy were not computed" in w for w in next(iter(found.values())).warnings)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"prompt_tokens": 0}, "prompt_tokens must be an integer >= 1"),
        ({"continuation_tokens": 1}, "continuation_tokens must be an integer >= 2"),
        ({"min_continuation_tokens": 100}, r"min_continuation_tokens must be an integer in 1 \.\. continuation_tokens"),
        ({"max_documents": 3}, f"max_documents must be null or an integer >= {MIN_PER_CLASS}"),
        ({"temperature": -1}, r"temperature must be a number in \[0, 10\]"),
        ({"observer_source": "onnx"}, "observer_source must be one of hf, gguf, python"),
        ({"calibration_fraction": 0.95}, r"calibration_fraction must be a number in \[0.1, 0.9\]"),
        ({"n_resamples": 10}, "n_resamples must be an integer >= 100"),
    ],
)
def test_invalid_parameters(params, expected):
    with pytest.raises(SpecError, match=f"deepfake.text_detectability: {expected}"):
        build_probe("deepfake.text_detectability", params)


def test_registered_with_help():
    info = probe_info("deepfake.text_detectability")
    assert info.summary.startswith("Zero-shot detectability")
    assert info.applies_to == ("text-generator",)
    assert all(h for *_, h in info.params)
    assert SubjectIdentity  # the identity type used by reports (imported for the round-trip above)


def detectability_contract_inputs(tmp_path):
    """FAKES entry of tests/test_contract.py: the tiny Llama on twelve short human texts (the tiny
    model may stop a continuation early: two spare texts keep the minimum of ten pairs)."""
    from tests.fakes import tiny_text_generator

    path = write_corpus(tmp_path / "texts.jsonl", MIN_PER_CLASS + 2, words=20)
    return tiny_text_generator(), {"texts": path}, {"prompt_tokens": 6, "continuation_tokens": 6,
                                                    "min_continuation_tokens": 3, "n_resamples": 200}


def test_auroc_units_are_prompt_pairs_that_reproduce_the_finding(lm, tmp_path):
    from audit.units import evaluate_units

    found = run(lm, write_corpus(tmp_path / "c.jsonl", 11, seed=3))
    for score in ("log_likelihood", "log_rank", "entropy"):
        f = found[f"deepfake.text_detectability/auroc[score={score}]"]
        assert f.units.statistic == "auroc_pairs" and f.units.ids == tuple(f"d{i}" for i in range(11))
        assert evaluate_units(f.units) == pytest.approx(f.value, rel=1e-12)
        neg, pos = np.array(f.units.columns["negative"]), np.array(f.units.columns["positive"])
        assert f.value == pytest.approx(roc_auc_score([0] * 11 + [1] * 11, np.r_[neg, pos]))
    assert found["deepfake.text_detectability/eer[score=log_likelihood]"].units is None  # AUROC only
