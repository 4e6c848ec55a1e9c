"""quality.text_diversity and its maths, against independent references.

References: distinct-n worked out by hand; BLEU and self-BLEU against torchmetrics'
``bleu_score`` called the direct way (one call per hypothesis, the other samples as its
references); ROUGE-L from a hand-computed longest common subsequence; and a scripted
subject whose generations are known, so every finding can be recomputed by hand.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from torchmetrics.functional.text import bleu_score, chrf_score

from audit.errors import InputError, SpecError
from audit.findings import AuditReport, SubjectIdentity
from audit.probe import ProbeContext, build_probe, probe_info
from audit.subjects import TextGenerator
from probes.quality.text_diversity import TextDiversity, reference_scores
from probes.quality.text_functional import distinct_n, self_bleu, sentence_bleu, tokenize


# -- the maths ------------------------------------------------------------------------------

def test_tokenize():
    assert tokenize("Hello, World!  It's 3pm.") == ["hello", ",", "world", "!", "it", "'", "s", "3pm", "."]
    assert tokenize("Café", lowercase=False) == ["Café"]
    assert tokenize("   ") == []


def test_distinct_n_by_hand():
    a = "the cat sat on the mat".split()
    b = "the cat ran".split()
    # unigrams: 9 in all; distinct: the, cat, sat, on, mat, ran = 6
    assert distinct_n([a, b], 1) == pytest.approx(6 / 9)
    # bigrams: 5 + 2 = 7; "the cat" twice -> 6 distinct
    assert distinct_n([a, b], 2) == pytest.approx(6 / 7)
    # trigrams: 4 + 1 = 5; "the cat sat" / "the cat ran" differ -> 5 distinct
    assert distinct_n([a, b], 3) == 1.0
    assert distinct_n([["x"] * 5], 1) == pytest.approx(1 / 5)
    assert math.isnan(distinct_n([["x"], []], 2))
    with pytest.raises(ValueError):
        distinct_n([a], 0)


def _random_texts(rng, k, vocab=6, lo=1, hi=14):
    words = [f"w{i}" for i in range(vocab)]
    return [[rng.choice(words) for _ in range(rng.randint(lo, hi))] for _ in range(k)]


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("max_n", [1, 2, 4])
def test_sentence_bleu_equals_torchmetrics(smooth, max_n):
    rng = random.Random(max_n * 10 + smooth)
    for _ in range(60):
        hyp = _random_texts(rng, 1, vocab=4)[0]
        refs = _random_texts(rng, rng.randint(1, 4), vocab=4)
        ours = sentence_bleu(hyp, refs, max_n=max_n, smooth=smooth)
        ref = float(bleu_score([" ".join(hyp)], [[" ".join(r) for r in refs]], n_gram=max_n, smooth=smooth))
        assert ours == pytest.approx(ref, abs=1e-6), (hyp, refs)


@pytest.mark.parametrize("max_n", [2, 4])
def test_self_bleu_equals_torchmetrics_computed_directly(max_n):
    rng = random.Random(max_n)
    for _ in range(15):
        texts = _random_texts(rng, rng.randint(2, 6), vocab=5, lo=3)
        direct = np.mean([
            float(bleu_score([" ".join(texts[i])], [[" ".join(t) for j, t in enumerate(texts) if j != i]],
                             n_gram=max_n, smooth=True))
            for i in range(len(texts))
        ])
        assert self_bleu(texts, max_n=max_n) == pytest.approx(direct, abs=1e-6)
    assert self_bleu([["a", "b", "c", "d"]] * 3) == 1.0
    assert math.isnan(self_bleu([["a"]]))


def test_reference_scores_by_hand_and_against_torchmetrics():
    s = reference_scores(["a b c d", "", "the cat sat on the mat"], "a c d e")
    # ROUGE-L: LCS(a b c d, a c d e) = a c d: P = R = 3/4, F1 = 3/4
    assert s["rouge_l"][0] == pytest.approx(0.75)
    assert [v[1] for v in s.values()] == [0.0, 0.0, 0.0]  # empty generation scores 0
    assert s["bleu"][2] == pytest.approx(float(bleu_score(["the cat sat on the mat"], [["a c d e"]], smooth=True)))
    assert s["chrf"][0] == pytest.approx(float(chrf_score(["a b c d"], [["a c d e"]])))
    same = reference_scores(["Sunlight is scattered by air."], "Sunlight is scattered by air.")
    assert [v[0] for v in same.values()] == pytest.approx([1.0, 1.0, 1.0])


# -- the probe on a scripted subject ------------------------------------------------------

class ScriptedGenerator(TextGenerator):
    """Returns SCRIPT[prompt][round], where round counts the calls for that prompt; records the seeds."""

    def __init__(self, script):
        self.identity = SubjectIdentity(name="scripted", kind="text-generator", source="python")
        self.script = script
        self.calls = []

    def generate(self, prompts, *, max_new_tokens=32, temperature=0.0, seed=0):
        out = [self.script[p][sum(p in c[0] for c in self.calls)] for p in prompts]
        self.calls.append((list(prompts), max_new_tokens, temperature, seed))
        return out


SCRIPT = {
    "P1": ["the cat sat", "the cat ran", "a dog sat", "the cat sat"],
    "P2": ["one two three four five", "one two three four six", "five four three two one", ""],
    "P3": ["Hello there!", "hello, there", "good morning", "hello there"],
}


def write_prompts(path, refs=None):
    refs = refs or {}
    path.write_text("".join(json.dumps({"id": p.lower(), "text": p, **({"reference": refs[p]} if p in refs else {})})
                            + "\n" for p in SCRIPT), encoding="utf-8")
    return path


def run(subject, path, seed=0, **params):
    probe = build_probe("quality.text_diversity", {"n_resamples": 200, **params})
    return {f.key: f for f in probe.run(subject, ProbeContext(data={"prompts": path}, seed=seed, probe_id=probe.id))}


def test_probe_findings_equal_hand_computed_means(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl", refs={"P1": "the cat sat", "P3": "hello there"})
    subject = ScriptedGenerator(SCRIPT)
    found = run(subject, path, max_new_tokens=7, temperature=0.7)
    toks = {p: [tokenize(s) for s in samples] for p, samples in SCRIPT.items()}
    for n in (1, 2, 3):
        expected = np.mean([distinct_n(toks[p], n) for p in SCRIPT])
        f = found[f"quality.text_diversity/distinct_{n}"]
        assert f.value == pytest.approx(expected) and f.n == 3 and f.higher_is_better
        assert f.ci is not None and f.ci.low <= f.value <= f.ci.high
    # P1 unigrams: the cat sat the cat ran a dog sat the cat sat -> 6 distinct of 12
    assert found["quality.text_diversity/distinct_1"].evidence["per_prompt"][0] == pytest.approx(6 / 12)
    sb = found["quality.text_diversity/self_bleu"]
    # the empty sample of P2 is left out of its self-BLEU (it is neither hypothesis nor reference)
    assert sb.value == pytest.approx(np.mean([self_bleu([t for t in toks[p] if t]) for p in SCRIPT]))
    assert sb.evidence["per_prompt"][1] == pytest.approx(self_bleu(toks["P2"][:3]))
    assert sb.higher_is_better is False
    assert any("1 of 12 generations are empty" in w for w in sb.warnings)
    assert any("only 3 prompts" in w for w in sb.warnings)
    # references: P1 and P3 only, sentence-level torchmetrics scores averaged per prompt, then over prompts
    for metric in ("bleu", "rouge_l", "chrf"):
        f = found[f"quality.text_diversity/{metric}"]
        per = [np.mean(reference_scores(SCRIPT[p], r)[metric]) for p, r in (("P1", "the cat sat"),
                                                                              ("P3", "hello there"))]
        assert f.value == pytest.approx(np.mean(per)) and f.n == 2
        assert any("2 of 3 prompts have a 'reference'" in w for w in f.warnings)
    # four samples per prompt, each drawn with its own seed (by prompt and round), as asked for
    assert len(subject.calls) == 4 * len(SCRIPT)
    assert [c[0] for c in subject.calls] == [[p] for p in SCRIPT for _ in range(4)]
    assert all(c[1] == 7 and c[2] == 0.7 for c in subject.calls)
    seeds = [c[3] for c in subject.calls]
    assert len(set(seeds)) == 4 * len(SCRIPT)
    again = ScriptedGenerator(SCRIPT)
    run(again, path)
    assert [c[3] for c in again.calls] == seeds  # same audit seed, same draws
    other = ScriptedGenerator(SCRIPT)
    run(other, path, seed=1)
    assert [c[3] for c in other.calls] != seeds
    report = AuditReport(name="d", subject=subject.identity, findings=tuple(found.values()))
    assert AuditReport.from_json(report.to_json()).to_json() == report.to_json()


def test_no_references_gives_no_reference_findings_and_template_is_applied(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl")
    script = {f"Q: {p}\nA:": v for p, v in SCRIPT.items()}
    found = run(ScriptedGenerator(script), path, prompt_template="Q: {prompt}\nA:", ngram_orders=[2])
    assert sorted(k.split("/")[1] for k in found) == ["distinct_2", "self_bleu"]


def test_prompt_with_only_empty_generations_degrades_one_prompt(tmp_path):
    script = {**SCRIPT, "P2": ["", "", "", ""]}
    found = run(ScriptedGenerator(script), write_prompts(tmp_path / "p.jsonl"))
    f = found["quality.text_diversity/distinct_1"]
    assert f.n == 2 and any("1 prompts have no distinct_1" in w and "'p2'" in w for w in f.warnings)
    assert found["quality.text_diversity/self_bleu"].n == 2
    assert f.value == pytest.approx(np.mean([distinct_n([tokenize(s) for s in SCRIPT[p]], 1) for p in ("P1", "P3")]))


def test_too_few_prompts_is_an_input_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"text": "P1"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="needs at least 2 prompts"):
        run(ScriptedGenerator(SCRIPT), path)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"samples_per_prompt": 1}, "samples_per_prompt must be an integer >= 2"),
        ({"temperature": 0}, r"temperature must be a number in \(0, 10\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"ngram_orders": []}, "ngram_orders must be a non-empty list"),
        ({"ngram_orders": [1, 1]}, "ngram_orders must be a non-empty list"),
        ({"bleu_max_n": 0}, "bleu_max_n must be an integer in 1 .. 8"),
        ({"prompt_template": "no placeholder"}, "prompt_template must be a string with exactly one"),
        ({"max_prompts": 1}, "max_prompts must be null or an integer >= 2"),
        ({"n_resamples": 5}, "n_resamples must be an integer >= 100"),
    ],
)
def test_invalid_parameters(params, expected):
    with pytest.raises(SpecError, match=f"quality.text_diversity: {expected}"):
        build_probe("quality.text_diversity", params)


def test_registered_with_help():
    info = probe_info("quality.text_diversity")
    assert info.summary.startswith("Diversity of a language model's generations")
    assert all(h for *_, h in info.params)
    assert TextDiversity.requires == ("generate",)


def diversity_contract_inputs(tmp_path):
    """FAKES entry of tests/test_contract.py: the tiny Llama, three prompts (one with a reference)."""
    from tests.fakes import tiny_text_generator

    path = write_prompts(tmp_path / "prompts.jsonl", refs={"P1": "the cat sat"})
    return tiny_text_generator(), {"prompts": path}, {"samples_per_prompt": 2, "max_new_tokens": 4,
                                                      "n_resamples": 200}


def test_units_are_per_prompt_and_reproduce_every_finding(tmp_path):
    from audit.units import evaluate_units

    path = write_prompts(tmp_path / "p.jsonl", refs={"P1": "the cat sat", "P3": "hello there"})
    found = run(ScriptedGenerator(SCRIPT), path)
    for key, f in found.items():
        assert f.units.statistic == "mean", key
        assert evaluate_units(f.units) == pytest.approx(f.value, rel=1e-12), key
    assert found["quality.text_diversity/distinct_1"].units.ids == ("p1", "p2", "p3")
    assert found["quality.text_diversity/bleu"].units.ids == ("p1", "p3")  # the prompts with a reference
    # A prompt without a value is not a unit (it is not in the finding either).
    empty = run(ScriptedGenerator({**SCRIPT, "P2": ["", "", "", ""]}), write_prompts(tmp_path / "q.jsonl"))
    assert empty["quality.text_diversity/distinct_1"].units.ids == ("p1", "p3")
