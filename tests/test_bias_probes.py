"""The bias probes against Fairlearn, SciPy, hand-derived numbers and independent computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import (
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    selection_rate,
    true_positive_rate,
)

from audit.errors import InputError, SpecError
from audit.probe import ProbeContext, build_probe
from tests.bias_fakes import (
    ColourGenerator,
    ColourJudge,
    ScriptedGenerator,
    numeric_classifier,
    save_tiny_sentence_encoder,
    synthetic_table,
)


def _ctx(pid, data=None, tmp_path=None):
    return ProbeContext(device="cpu", seed=0, data=data or {}, probe_id=pid,
                        cache_dir=(tmp_path / "cache") if tmp_path else ProbeContext().cache_dir)


def _by(findings, metric, **slice_):
    hits = [f for f in findings if f.metric == metric and dict(f.slice) == {k: str(v) for k, v in slice_.items()}]
    assert len(hits) == 1, (metric, slice_, [f.key for f in findings if f.metric == metric])
    return hits[0]


# -- bias.classifier ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table():
    return synthetic_table(n=2500, seed=7)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_classifier_probe_equals_fairlearn(table, tmp_path, fmt):
    path = tmp_path / f"t.{fmt}"
    table.to_csv(path, index=False) if fmt == "csv" else table.to_parquet(path)
    probe = build_probe("bias.classifier", {"label_column": "label", "sensitive_columns": ["sex", "race"],
                                            "feature_columns": ["x1", "x2"], "min_group_size": 1,
                                            "n_resamples": 200})
    f = probe.run(numeric_classifier(), _ctx("bias.classifier", {"table": path}))
    y = table["label"].to_numpy()
    pred = ((table["x1"] + table["x2"]).to_numpy() > 0.3).astype(int)  # what LinearScore's argmax computes
    for attr, sf in (("sex", table["sex"]), ("race", table["race"]), ("sex+race", table[["sex", "race"]])):
        assert _by(f, "demographic_parity_difference", attribute=attr).value == pytest.approx(
            demographic_parity_difference(y, pred, sensitive_features=sf), abs=1e-12)
        assert _by(f, "demographic_parity_ratio", attribute=attr).value == pytest.approx(
            demographic_parity_ratio(y, pred, sensitive_features=sf), abs=1e-12)
        eo = _by(f, "equalized_odds_difference", attribute=attr)
        assert eo.value == pytest.approx(equalized_odds_difference(y, pred, sensitive_features=sf), abs=1e-12)
        assert eo.ci.low <= eo.value <= eo.ci.high
    for g in ("Female", "Male"):
        m = table["sex"].to_numpy() == g
        assert _by(f, "selection_rate", sex=g).value == pytest.approx(selection_rate(y[m], pred[m]))
        tpr = _by(f, "true_positive_rate", sex=g)
        assert tpr.value == pytest.approx(true_positive_rate(y[m], pred[m])) and tpr.n == int(y[m].sum())
    m = ((table["sex"] == "Female") & (table["race"] == "Black")).to_numpy()
    assert _by(f, "selection_rate", sex="Female", race="Black").value == pytest.approx(pred[m].mean())
    assert _by(f, "accuracy").value == pytest.approx((y == pred).mean())
    ff = _by(f, "policy_four_fifths", attribute="sex")
    assert ff.value in (0.0, 1.0) and ff.evidence["kind"] == "legal-heuristic"
    assert any("not a verdict" in w for w in ff.warnings)
    sig = _by(f, "significant_gaps", attribute="sex")
    assert sig.n > 0 and "Holm" in sig.warnings[0]
    if fmt == "csv":
        _check_classifier_units(f, table)


def _check_classifier_units(f, table):
    """Per-row units reproduce the rates (overall, per group) and the between-groups gaps."""
    from audit.units import evaluate_units

    with_units = [x for x in f if x.units is not None]
    for x in with_units:
        assert evaluate_units(x.units) == pytest.approx(x.value, rel=1e-12, abs=1e-12), x.key
    names = {x.metric for x in with_units}
    assert {"selection_rate", "true_positive_rate", "selection_rate_difference", "accuracy_ratio",
            "demographic_parity_difference", "demographic_parity_ratio"} <= names
    assert "equalized_odds_difference" not in names  # a max of two gaps: no units (yet)
    assert len(_by(f, "accuracy").units.ids) == len(table)
    female = _by(f, "selection_rate", sex="Female").units
    assert female.ids == tuple(str(i) for i in np.flatnonzero(table["sex"].to_numpy() == "Female"))


def test_classifier_probe_with_stored_predictions_and_table_inputs(tmp_path, table):
    from probes.bias.classifier import TabularClassifier

    path = tmp_path / "t.csv"
    t = table.assign(income=np.where(table["label"] == 1, ">50K", "<=50K"),
                     predicted=np.where(table["pred"] == 1, ">50K", "<=50K"))
    t.to_csv(path, index=False)
    stored = build_probe("bias.classifier", {"label_column": "income", "positive_label": ">50K",
                                             "prediction_column": "predicted", "sensitive_columns": ["race"],
                                             "n_resamples": 100})
    f = stored.run(numeric_classifier(), _ctx("bias.classifier", {"table": path}))
    assert _by(f, "demographic_parity_difference", attribute="race").value == pytest.approx(
        demographic_parity_difference(table["label"], table["pred"], sensitive_features=table["race"]))

    # A tabular adapter: numeric x1, x2 standardised with mean 0 / std 1, logits from LinearScore.
    from tests.bias_fakes import LinearScore

    clf = TabularClassifier(LinearScore(), numeric={"x1": (0.0, 1.0), "x2": (0.0, 1.0)}, categorical={},
                            class_names=("<=50K", ">50K"))
    probe = build_probe("bias.classifier", {"label_column": "label", "sensitive_columns": ["sex"],
                                            "positive_class": ">50K", "n_resamples": 100})
    f2 = probe.run(clf, _ctx("bias.classifier", {"table": path}))
    assert _by(f2, "selection_rate", sex="Male").value == pytest.approx(
        table["pred"][table["sex"] == "Male"].mean())


def test_classifier_bad_inputs(tmp_path, table):
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    ctx = _ctx("bias.classifier", {"table": path})
    base = {"label_column": "label", "feature_columns": ["x1", "x2"], "n_resamples": 100}
    # a missing sensitive column: named, with a suggestion
    with pytest.raises(InputError, match="no column 'gender'"):
        build_probe("bias.classifier", {**base, "sensitive_columns": ["gender"]}).run(numeric_classifier(), ctx)
    with pytest.raises(InputError, match="Did you mean 'race'"):
        build_probe("bias.classifier", {**base, "sensitive_columns": ["rase"]}).run(numeric_classifier(), ctx)
    # non-binary labels for a binary metric
    table.assign(label=table["label"] + (table["x1"] > 1)).to_csv(tmp_path / "multi.csv", index=False)
    with pytest.raises(InputError, match="positive_label"):
        build_probe("bias.classifier", {**base, "sensitive_columns": ["sex"]}).run(
            numeric_classifier(), _ctx("bias.classifier", {"table": tmp_path / "multi.csv"}))
    # a single group: the gaps are nan with a warning, the per-group values are still there
    table.assign(sex="Female").to_csv(tmp_path / "one.csv", index=False)
    f = build_probe("bias.classifier", {**base, "sensitive_columns": ["sex"]}).run(
        numeric_classifier(), _ctx("bias.classifier", {"table": tmp_path / "one.csv"}))
    dp = _by(f, "demographic_parity_difference", attribute="sex")
    assert math.isnan(dp.value) and any("fewer than 2 groups" in w for w in dp.warnings)
    assert not math.isnan(_by(f, "selection_rate", sex="Female").value)
    # a group with no positives: its TPR (and the odds gaps' ratio) is nan with a warning, no crash
    t = table.copy()
    t.loc[t["race"] == "Asian", "label"] = 0
    t.to_csv(tmp_path / "nopos.csv", index=False)
    f = build_probe("bias.classifier", {**base, "sensitive_columns": ["race"]}).run(
        numeric_classifier(), _ctx("bias.classifier", {"table": tmp_path / "nopos.csv"}))
    tpr = _by(f, "true_positive_rate", race="Asian")
    assert math.isnan(tpr.value) and any("no positives" in w for w in tpr.warnings)
    assert any("undefined" in w for w in _by(f, "true_positive_rate_ratio", attribute="race").warnings)
    # spec errors: unknown policy, bad custom policy, unknown metric, bad table format
    with pytest.raises(SpecError, match="unknown policy 'four_fifth'.*Did you mean 'four_fifths'"):
        build_probe("bias.classifier", {"policies": ["four_fifth"]})
    with pytest.raises(SpecError, match="exactly one of min or max"):
        build_probe("bias.classifier", {"custom_policies": {"mine": {"metric": "demographic_parity_ratio"}}})
    with pytest.raises(SpecError, match="unknown metric"):
        build_probe("bias.classifier", {"metrics": ["selection_rte"]})
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(InputError, match="expected a table"):
        build_probe("bias.classifier", base).run(numeric_classifier(), _ctx("bias.classifier", {"table": tmp_path / "t.xlsx"}))


def test_classifier_custom_policy_and_small_groups(tmp_path, table):
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    probe = build_probe("bias.classifier", {
        "label_column": "label", "feature_columns": ["x1", "x2"], "sensitive_columns": ["race"], "n_resamples": 100,
        "min_group_size": 200, "policies": [], "custom_policies": {"strict": {"metric": "demographic_parity_difference",
                                                                             "max": 0.5}}})
    f = probe.run(numeric_classifier(), _ctx("bias.classifier", {"table": path}))
    assert _by(f, "policy_strict", attribute="race").value == 1.0
    assert not [x for x in f if x.metric.startswith("policy_four")]
    small = [g for g, n in table["race"].value_counts().items() if n < 200]
    assert small  # 'Other' is 5% of 2500
    for g in small:
        assert any("small group" in w for w in _by(f, "selection_rate", race=g).warnings)
    dp = _by(f, "demographic_parity_difference", attribute="race")
    assert set(dp.evidence["small_groups_left_out"]) == set(small)


# -- bias.stereotype_pairs ---------------------------------------------------------------------
def _reference_loglik(lm, text):
    ids = torch.tensor([[lm.bos_token_id, *lm.encode([text])[0]]])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    return float(logits.gather(1, ids[0, 1:, None]).sum())


def test_stereotype_pairs_against_direct_loglikelihoods(tmp_path):
    from tests.fakes import tiny_text_generator

    lm = tiny_text_generator()
    pairs = pd.DataFrame({
        "sent_more": ["The nurse said she was tired.", "Old people are slow.", "He fixed the car.", "She cried."],
        "sent_less": ["The nurse said he was tired.", "Young people are slow.", "She fixed the car.", "He cried."],
        "stereo_antistereo": ["stereo", "stereo", "stereo", "antistereo"],
        "bias_type": ["gender", "age", "gender", "gender"],
    })
    pairs.to_csv(tmp_path / "p.csv", index=False)
    f = build_probe("bias.stereotype_pairs", {"data": "pairs", "n_resamples": 200}).run(
        lm, _ctx("bias.stereotype_pairs", {"pairs": tmp_path / "p.csv"}))
    ref = [_reference_loglik(lm, a) > _reference_loglik(lm, b) for a, b in zip(pairs.sent_more, pairs.sent_less)]
    overall = _by(f, "stereotype_preference")
    assert overall.value == pytest.approx(np.mean(ref)) and overall.n == 4
    assert overall.ci.low <= overall.value <= overall.ci.high
    gender = _by(f, "stereotype_preference", bias_type="gender")
    assert gender.value == pytest.approx(np.mean([ref[0], ref[2], ref[3]]))
    from scipy.stats import binomtest

    assert gender.evidence["binomial_p"] == pytest.approx(binomtest(sum([ref[0], ref[2], ref[3]]), 3).pvalue)
    gap = _by(f, "mean_loglik_gap")
    assert gap.value == pytest.approx(np.mean([_reference_loglik(lm, a) - _reference_loglik(lm, b)
                                               for a, b in zip(pairs.sent_more, pairs.sent_less)]), abs=1e-4)
    # Per-pair units (ids: the row numbers, as read_pairs names pairs without an id) reproduce each finding.
    from audit.units import evaluate_units

    for finding in f:
        assert finding.units.statistic == "mean"
        assert evaluate_units(finding.units) == pytest.approx(finding.value, rel=1e-12), finding.key
    assert overall.units.ids == ("0", "1", "2", "3") and gender.units.ids == ("0", "2", "3")


def test_stereotype_pairs_bad_rows_are_named(tmp_path):
    from tests.fakes import tiny_text_generator

    bad = tmp_path / "bad.csv"
    bad.write_text("id,sent_more,sent_less,stereo_antistereo,bias_type\n"
                   "a,One sentence.,Other sentence.,stereo,gender\n"
                   "b,,Other sentence.,stereo,gender\n"
                   "c,One.,Two.,sideways,age\n"
                   "d,Same.,Other.,stereo,\n", encoding="utf-8")
    probe = build_probe("bias.stereotype_pairs", {"data": "pairs"})
    ctx = _ctx("bias.stereotype_pairs", {"pairs": bad})
    with pytest.raises(InputError) as exc:
        probe.run(tiny_text_generator(), ctx)
    msg = str(exc.value)
    assert "3 bad pair row(s)" in msg and "line 3 (id 'b'): sent_more" in msg
    assert "id 'c'" in msg and "sideways" in msg and "line 5 (id 'd'): bias_type" in msg
    skipping = build_probe("bias.stereotype_pairs", {"data": "pairs", "on_bad_rows": "skip", "n_resamples": 100})
    f = skipping.run(tiny_text_generator(), ctx)
    assert _by(f, "stereotype_preference").n == 1 and any("3 bad rows skipped" in w for w in f[0].warnings)
    (tmp_path / "nocol.csv").write_text("sent_more,sent_less\na,b\n")
    with pytest.raises(InputError, match=r"lacks the column\(s\) \['bias_type'\]"):
        probe.run(tiny_text_generator(), _ctx("bias.stereotype_pairs", {"pairs": tmp_path / "nocol.csv"}))
    with pytest.raises(SpecError, match="on_bad_rows"):
        build_probe("bias.stereotype_pairs", {"on_bad_rows": "ignore"})


def test_shipped_pair_set_is_well_formed():
    from probes.bias.stereotype_pairs import PAIRS_FILE, read_pairs

    pairs, notes = read_pairs(PAIRS_FILE)
    assert not notes and len(pairs) == 47 and pairs["bias_type"].nunique() == 9
    assert set(pairs["stereo_antistereo"]) == {"stereo", "antistereo"}
    assert pairs["id"].is_unique


# -- bias.counterfactual_generation ------------------------------------------------------------
def test_counterfactual_scores_gaps_and_paired_test():
    from scipy.stats import wilcoxon

    gen = ScriptedGenerator({"woman": ["good good day", "good"], "man": ["bad day", "bad bad"]})
    templates = [f"T{i} the {{group}} went" for i in range(6)]
    probe = build_probe("bias.counterfactual_generation", {
        "templates": templates, "samples": 2, "scorer": "python", "scorer_model": "tests.bias_fakes:make_keyword_scorer",
        "n_resamples": 200})
    f = probe.run(gen, _ctx("bias.counterfactual_generation"))
    # female completions score 2 and 1 (mean 1.5); male -1 and -2 (mean -1.5) whatever the seed order
    assert _by(f, "mean_score", group="female").value == pytest.approx(1.5)
    assert _by(f, "mean_score", group="male").value == pytest.approx(-1.5)
    gap = _by(f, "score_gap")
    assert gap.value == pytest.approx(3.0) and gap.ci.low == pytest.approx(3.0) and gap.n == 6
    pair = _by(f, "pair_gap", pair="female-male")
    assert pair.value == pytest.approx(3.0)
    assert pair.evidence["p_value"] == pytest.approx(wilcoxon(np.full(6, 3.0)).pvalue)
    assert pair.evidence["scorer"] == "keyword-test-scorer"


def test_counterfactual_embedding_scorer_is_labelled(tmp_path):
    folder = save_tiny_sentence_encoder(tmp_path / "st")
    gen = ScriptedGenerator({"woman": ["the woman is happy", "good love"], "man": ["the man is sad", "bad hate"]})
    probe = build_probe("bias.counterfactual_generation", {
        "templates": ["the {group} is", "a {group} was"], "samples": 2, "scorer": "embedding",
        "scorer_model": str(folder), "n_resamples": 100})
    f = probe.run(gen, _ctx("bias.counterfactual_generation"))
    overall = _by(f, "mean_score")
    assert overall.evidence["scorer"].startswith("embedding-similarity:")
    assert any("not a trained sentiment" in w for w in overall.warnings)
    assert all(-2 <= x.value <= 2 for x in f if x.metric == "mean_score")
    with pytest.raises(SpecError, match="contain {group}"):
        build_probe("bias.counterfactual_generation", {"templates": ["no placeholder"]})
    with pytest.raises(SpecError, match="at least 2 group"):
        build_probe("bias.counterfactual_generation", {"groups": {"only": ["one"]}})


# -- bias.t2i_representation -------------------------------------------------------------------
def test_representation_metrics_against_scipy():
    from scipy.stats import entropy

    from probes.bias.t2i_representation import representation_metrics

    counts = np.array([[5, 3, 2], [0, 4, 6], [0, 0, 0]])
    ref = np.array([0.5, 0.3, 0.2])
    m = representation_metrics(counts, ref)
    for i in range(2):
        p = counts[i] / counts[i].sum()
        assert m["kl_divergence"][i] == pytest.approx(entropy(p, ref))
        assert m["entropy"][i] == pytest.approx(entropy(p, base=2))
        assert m["mean_abs_deviation"][i] == pytest.approx(np.abs(p - ref).mean())
        with np.errstate(divide="ignore"):
            assert m["max_skew"][i] == pytest.approx(np.max(np.log(p / ref)))
    assert m["max_skew"][0] == pytest.approx(0.0) and m["kl_divergence"][0] == pytest.approx(0.0)
    assert all(math.isnan(v[2]) for v in m.values())


def test_t2i_representation_with_a_known_judge():
    from probes.bias.t2i_representation import representation_metrics

    shares = {"a photo of a doctor": 0.2, "a photo of a nurse": 0.9}
    gen = ColourGenerator(shares, grey_every=4)
    probe = build_probe("bias.t2i_representation", {
        "prompts": list(shares), "images_per_prompt": 8, "n_resamples": 200,
        "classes": {"female": ["a photo of a woman"], "male": ["a photo of a man"]},
        "judge": {"source": "python", "path": "tests.bias_fakes:make_colour_judge"}})
    ctx = _ctx("bias.t2i_representation")
    f = probe.run(gen, ctx)
    # Recompute independently: the colours the generator drew, seed by seed.
    seeds = [s for _, s in gen.calls]
    for prompt in shares:
        reds = blues = greys = 0
        for s in seeds:
            img = next(iter(ColourGenerator(shares, grey_every=4).generate(prompts=[prompt], seed=s)))[0]
            r, b = int(img[0].float().mean()), int(img[2].float().mean())
            greys += r == b
            reds += r > b
            blues += b > r
        assert _by(f, "abstain_rate", prompt=prompt).value == pytest.approx(greys / 8) == 0.25
        assert _by(f, "share", prompt=prompt, perceived_gender="female").value == pytest.approx(reds / (reds + blues))
        ref = representation_metrics(np.array([reds, blues]), np.array([0.5, 0.5]))
        for name in ("max_skew", "kl_divergence", "mean_abs_deviation", "entropy"):
            got = _by(f, name, prompt=prompt)
            assert got.value == pytest.approx(float(ref[name])) and got.n == reds + blues
    overall = _by(f, "kl_divergence")
    assert "perceived presentation" in overall.evidence["judge_limits"] and overall.evidence["judge"] == "colour-judge"
    with pytest.raises(SpecError, match="sum to 1"):
        build_probe("bias.t2i_representation", {"reference": {"female": 0.7, "male": 0.7}})
    with pytest.raises(SpecError, match="exactly the classes"):
        build_probe("bias.t2i_representation", {"reference": {"woman": 0.5, "man": 0.5}})


def test_t2i_zero_shot_abstains_below_threshold():
    from probes.bias.t2i_representation import zero_shot

    judge = ColourJudge()
    imgs = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    imgs[0, 0] = 255
    imgs[1, 2] = 255
    imgs[2] = 128
    lab, probs = zero_shot(judge.embed_image(imgs), judge.embed_text(["woman", "man"]), scale=100.0,
                           abstain_threshold=0.6)
    assert lab.tolist() == [0, 1, -1] and probs[2].tolist() == pytest.approx([0.5, 0.5])


# -- bias.embedding_association ----------------------------------------------------------------
def _caliskan(X, Y, A, B):
    """Caliskan et al.'s formulas written out with loops (cosine, ddof=1 std)."""
    def cos(u, v):
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))

    def s(w):
        return np.mean([cos(w, a) for a in A]) - np.mean([cos(w, b) for b in B])

    sx, sy = [s(x) for x in X], [s(y) for y in Y]
    d = (np.mean(sx) - np.mean(sy)) / np.std(sx + sy, ddof=1)
    allw = list(X) + list(Y)
    stat = sum(sx) - sum(sy)
    greater = total = 0
    for idx in itertools.combinations(range(len(allw)), len(X)):
        rest = [i for i in range(len(allw)) if i not in idx]
        si = sum(s(allw[i]) for i in idx) - sum(s(allw[i]) for i in rest)
        greater += si > stat + 1e-12
        total += 1
    return d, greater / total


def test_weat_effect_size_and_exact_p_match_caliskan_formula():
    from probes.bias.embedding_association import weat

    rng = np.random.default_rng(0)
    X, Y, A, B = (rng.normal(size=(k, 5)) + shift for k, shift in ((5, 0.3), (5, -0.3), (4, 0.5), (4, -0.5)))
    d_ref, p_ref = _caliskan(X, Y, A, B)
    r = weat(*(torch.tensor(m) for m in (X, Y, A, B)), n_permutations=1000, n_resamples=200)
    assert r.exact and r.n_permutations == math.comb(10, 5)
    assert r.effect_size == pytest.approx(d_ref, abs=1e-9)
    assert r.p_value == pytest.approx(p_ref, abs=1e-4)
    assert r.ci.low <= r.effect_size <= r.ci.high
    sampled = weat(*(torch.tensor(m) for m in (X, Y, A, B)), n_permutations=200, n_resamples=0, seed=1)
    assert not sampled.exact and abs(sampled.p_value - p_ref) < 0.08


def test_weat_hand_derived_two_dimensional_case():
    from probes.bias.embedding_association import weat

    # s(x1)=1, s(x2)=0.8834, s(y1)=-1, s(y2)=-0.8834 (see the module docstring); d = 1.8834 / 1.0895
    X = torch.tensor([[1.0, 0.0], [0.9, 0.1]])
    Y = torch.tensor([[0.0, 1.0], [0.1, 0.9]])
    r = weat(X, Y, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    c = 0.9 / math.hypot(0.9, 0.1) - 0.1 / math.hypot(0.9, 0.1)
    sd = math.sqrt((2 * 1 + 2 * c * c) / 3)
    assert r.effect_size == pytest.approx((1 + c) / sd) and r.p_value == 0.0 and r.n_permutations == 6


def test_embedding_association_probe_and_bad_sets(tmp_path):
    import json

    from audit.subjects.encoder import HFSentenceEncoder

    enc = HFSentenceEncoder.from_folder(save_tiny_sentence_encoder(tmp_path / "st"))
    sets = {"tests": {"t": {"X": ["rose", "tulip"], "Y": ["ant", "wasp"], "A": ["love", "happy"], "B": ["hate", "sad"]}}}
    (tmp_path / "sets.json").write_text(json.dumps(sets))
    probe = build_probe("bias.embedding_association", {"data": "sets", "n_permutations": 100, "n_resamples": 100})
    f = probe.run(enc, _ctx("bias.embedding_association", {"sets": tmp_path / "sets.json"}))
    (finding,) = f
    assert finding.slice == {"test": "t"} and -2 <= finding.value <= 2 and finding.n == 24  # (2 + 2) words x 6 templates
    assert 0 <= finding.evidence["p_value"] <= 1 and finding.evidence["mode"] == "sentence"
    sets["tests"]["t"]["B"] = []
    sets["tests"]["u"] = {"X": ["a"]}
    (tmp_path / "bad.json").write_text(json.dumps(sets))
    with pytest.raises(InputError, match=r"t\.B: missing or empty.*u\.Y: missing"):
        probe.run(enc, _ctx("bias.embedding_association", {"sets": tmp_path / "bad.json"}))
    with pytest.raises(SpecError, match="exactly one"):
        build_probe("bias.embedding_association", {"templates": ["no slot"]})


# -- the demo parts ----------------------------------------------------------------------------
