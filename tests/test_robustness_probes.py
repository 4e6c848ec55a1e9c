"""Probes robustness.classifier, robustness.detector_evasion and robustness.text_embedding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audit.errors import InputError, SpecError
from audit.probe import ProbeContext, build_probe
from audit.stats import wilson_interval
from probes.robustness.attacks import NotDifferentiableError, pgd
from probes.robustness.classifier import load_labelled_inputs, parse_eps, robust_accuracy_area
from tests.robustness_support import (
    ArgmaxOneHot,
    Probabilities,
    Quantised,
    detector_subject,
    digits_data,
    digits_subject,
    trained_digits_net,
    write_digits,
    write_generated,
)


def _run(probe_id, subject, data, **params):
    probe = build_probe(probe_id, params)
    ctx = ProbeContext(device="cpu", seed=0, data=data, probe_id=probe_id)
    return {f.key: f for f in probe.run(subject, ctx)}


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("d") / "digits.pt", 150)


# -- robustness.classifier --------------------------------------------------------------------------
def test_classifier_probe_numbers_match_a_direct_computation(digits_file):
    subject = digits_subject()
    got = _run("robustness.classifier", subject, {"images": digits_file}, eps=[0.05, 0.1, 0.3], steps=5,
               random_start=False, n_resamples=200)
    x, y = load_labelled_inputs(digits_file, input_range=(0.0, 1.0))
    clean = subject.logits(x).argmax(1) == y
    clean_f = got["robustness.classifier/clean_accuracy"]
    assert clean_f.value == pytest.approx(float(clean.float().mean())) and clean_f.n == 150
    assert clean_f.ci == wilson_interval(int(clean.sum()), 150)
    accs = []
    for eps in (0.05, 0.1, 0.3):
        adv = pgd(subject, x, y, eps, steps=5, random_start=False)
        robust = clean & ~adv.success
        f = got[f"robustness.classifier/robust_accuracy[attack=pgd,eps={eps:g}]"]
        assert f.value == pytest.approx(float(robust.float().mean())) and f.n == 150
        on_correct = got[f"robustness.classifier/robust_accuracy_on_correct[attack=pgd,eps={eps:g}]"]
        assert on_correct.value == pytest.approx(int(robust.sum()) / int(clean.sum()))
        asr = got[f"robustness.classifier/attack_success_rate[attack=pgd,eps={eps:g}]"]
        assert asr.value == pytest.approx(1 - on_correct.value) and asr.n == int(clean.sum())
        mp = got[f"robustness.classifier/max_perturbation[attack=pgd,eps={eps:g}]"]
        assert mp.value <= eps * (1 + 1e-5) and mp.evidence["within_budget"] and not mp.warnings
        per_class = [got[f"robustness.classifier/robust_accuracy[attack=pgd,class={c},eps={eps:g}]"] for c in range(10)]
        worst = got[f"robustness.classifier/worst_class_robust_accuracy[attack=pgd,eps={eps:g}]"]
        assert worst.value == pytest.approx(min(f.value for f in per_class))
        assert sum(f.n for f in per_class) == 150
        accs.append(f.value)
    assert accs[0] > accs[1] > accs[2], "robust accuracy falls as eps grows"
    area = got["robustness.classifier/robust_accuracy_area[attack=pgd]"]
    curve = [p["robust_accuracy"] for p in area.evidence["points"]]
    # Trapezoids by hand on the curve's points (0, 0.05, 0.1, 0.3).
    hand = (0.05 * (curve[0] + curve[1]) / 2 + 0.05 * (curve[1] + curve[2]) / 2 + 0.2 * (curve[2] + curve[3]) / 2) / 0.3
    assert area.value == pytest.approx(hand) and area.ci.low <= area.value <= area.ci.high
    assert got["robustness.classifier/gradient_masking_suspected"].value == 0.0
    assert got["robustness.classifier/fgsm_beats_pgd"].value == 0.0
    assert got["robustness.classifier/zero_gradient_rate"].value == 0.0
    # Per-image units, named by the image's index in the data, reproduce every rate they are on.
    from audit.units import evaluate_units

    with_units = {k: f for k, f in got.items() if f.units is not None}
    assert {k.split("/")[1].split("[")[0] for k in with_units} == {
        "clean_accuracy", "robust_accuracy", "robust_accuracy_on_correct", "attack_success_rate",
        "robust_accuracy_area", "large_eps_robust_accuracy", "zero_gradient_rate"}
    for k, f in with_units.items():
        assert evaluate_units(f.units) == pytest.approx(f.value, rel=1e-12), k
    assert clean_f.units.ids == tuple(f"images[{i}]" for i in range(150))
    on_correct = got["robustness.classifier/robust_accuracy_on_correct[attack=pgd,eps=0.1]"]
    assert on_correct.units.statistic == "ratio" and len(on_correct.units.ids) == 150  # all images, den = clean
    c3 = got["robustness.classifier/robust_accuracy[attack=pgd,class=3,eps=0.1]"]
    assert len(c3.units.ids) == c3.n == int((y == 3).sum())


def test_robust_accuracy_area_by_hand():
    correct = torch.tensor([[True, True], [True, False], [False, False]])
    # sample 0: (1+1)/2*1 + (1+0)/2*1 = 1.5 over 2; sample 1: (1+0)/2 + 0 = 0.5 over 2
    torch.testing.assert_close(robust_accuracy_area([1.0, 2.0], correct), torch.tensor([0.75, 0.25], dtype=torch.float64))


def test_the_art_backend_gives_the_same_findings_without_random_start(digits_file):
    subject = digits_subject()
    kw = dict(eps=[0.05, 0.1], steps=4, random_start=False, n_resamples=200, per_class=False)
    ours = _run("robustness.classifier", subject, {"images": digits_file}, **kw)
    art = _run("robustness.classifier", subject, {"images": digits_file}, backend="art", **kw)
    for key, f in ours.items():
        if "zero_gradient" in key:
            continue
        assert art[key].value == pytest.approx(f.value, abs=1e-6), key
    assert any("backend: art" in w for w in art["robustness.classifier/clean_accuracy"].warnings)


def test_gradient_masking_is_flagged(digits_file):
    got = _run("robustness.classifier", digits_subject(Quantised(trained_digits_net())), {"images": digits_file},
               eps=[0.05, 0.1], steps=3, n_resamples=200)
    flag = got["robustness.classifier/gradient_masking_suspected"]
    assert flag.value == 1.0 and "gradient masking" in flag.warnings[0]
    assert got["robustness.classifier/zero_gradient_rate"].value == 1.0
    assert any("zero or non-finite input gradient" in w for w in got["robustness.classifier/clean_accuracy"].warnings)


def test_fgsm_beating_pgd_is_flagged(digits_file):
    # One PGD step of a hundredth of eps barely moves: FGSM (one full step) must then look stronger.
    got = _run("robustness.classifier", digits_subject(), {"images": digits_file}, eps=[0.1, 0.2], steps=1,
               step_size=0.01, random_start=False, n_resamples=200)
    flag = got["robustness.classifier/fgsm_beats_pgd"]
    assert flag.value == 1.0 and "FGSM breaks more samples than PGD" in flag.warnings[0]


def test_targeted_attack_and_uint8_inputs(tmp_path):
    path = write_digits(tmp_path / "u8.pt", 60, uint8=True)
    got = _run("robustness.classifier", digits_subject(), {"images": path}, eps=[0.2], attacks=["pgd"],
               targeted=True, steps=5, n_resamples=200)
    asr = got["robustness.classifier/attack_success_rate[attack=pgd,eps=0.2]"]
    assert asr.evidence["objective"] == "classified as the target" and 0 < asr.value <= 1


def test_a_model_returning_probabilities_is_warned_about(digits_file):
    got = _run("robustness.classifier", digits_subject(Probabilities(trained_digits_net())), {"images": digits_file},
               eps=[0.1], steps=2, n_resamples=200)
    assert any("look like probabilities" in w for w in got["robustness.classifier/clean_accuracy"].warnings)


def test_bad_inputs_of_the_classifier_probe(tmp_path, digits_file):
    subject = digits_subject()
    with pytest.raises(SpecError, match=r"eps 2: eps=2.0 is outside the input range"):
        _run("robustness.classifier", subject, {"images": digits_file}, eps=[0.1, 2])
    _, _, x, y = digits_data()
    torch.save({"x": x[:10], "y": y[:10] + 5}, tmp_path / "labels.pt")
    with pytest.raises(InputError, match=r"labels of 'images' range over \[\d+, 14\] but the classifier has 10"):
        _run("robustness.classifier", subject, {"images": tmp_path / "labels.pt"}, eps=[0.1])
    torch.save({"x": x[:10] * 255, "y": y[:10]}, tmp_path / "range.pt")
    with pytest.raises(InputError, match="outside the declared input range"):
        _run("robustness.classifier", subject, {"images": tmp_path / "range.pt"}, eps=[0.1])
    with pytest.raises(NotDifferentiableError, match="do not depend differentiably"):
        _run("robustness.classifier", digits_subject(ArgmaxOneHot(trained_digits_net())), {"images": digits_file},
             eps=[0.1], steps=1)
    torch.save({"x": x[:10]}, tmp_path / "nolabels.pt")
    with pytest.raises(InputError, match="no labels found"):
        _run("robustness.classifier", subject, {"images": tmp_path / "nolabels.pt"}, eps=[0.1])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="junk.pt: cannot read the inputs"):
        _run("robustness.classifier", subject, {"images": tmp_path / "junk.pt"}, eps=[0.1])
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 1, 4, 4), np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(InputError, match=r"the classifier takes \[N, 1, 8, 8\]"):
        _run("robustness.classifier", subject, {"images": tmp_path / "shape.npz"}, eps=[0.1])


@pytest.mark.parametrize("params,message", [
    ({"eps": [0.1, 0.05]}, "strictly ascending"),
    ({"eps": ["8/0"]}, "fraction such as '8/255'"),
    ({"eps": [-0.1]}, "positive finite"),
    ({"attacks": ["cw"]}, "attacks must be"),
    ({"norm": "l1"}, "norm must be"),
    ({"steps": 0}, "steps must be"),
    ({"backend": "foolbox"}, "backend must be"),
    ({"precision": "fp8"}, "precision must be"),
])
def test_invalid_parameters_are_spec_errors(params, message):
    with pytest.raises(SpecError, match=message):
        build_probe("robustness.classifier", params)


def test_parse_eps():
    assert parse_eps("8/255") == (8 / 255, "8/255") and parse_eps(0.5) == (0.5, "0.5")


# -- robustness.detector_evasion --------------------------------------------------------------------
def test_detector_evasion_grows_with_eps_and_matches_a_direct_attack(tmp_path):
    det = detector_subject()
    path = write_generated(tmp_path / "gen.pt", 60)
    got = _run("robustness.detector_evasion", det, {"generated": path}, eps=["4/255", "16/255", "64/255"], steps=5,
               random_start=False)
    x, _ = load_labelled_inputs(path, input_range=(0.0, 1.0), need_labels=False)
    detected = det.logits(x).argmax(1) != 0
    assert got["robustness.detector_evasion/detection_rate"].value == pytest.approx(float(detected.float().mean()))
    rates = []
    for label, eps in (("4/255", 4 / 255), ("16/255", 16 / 255), ("64/255", 64 / 255)):
        adv = pgd(det, x, torch.zeros(60, dtype=torch.long), eps, steps=5, random_start=False, targeted=True)
        f = got[f"robustness.detector_evasion/evasion_rate[eps={label}]"]
        assert f.n == int(detected.sum())
        assert f.value == pytest.approx(int((adv.success & detected).sum()) / int(detected.sum()))
        rates.append(f.value)
    assert rates[0] <= rates[1] <= rates[2] and rates[2] > rates[0]
    assert got["robustness.detector_evasion/max_perturbation[eps=4/255]"].value <= 4 / 255 * (1 + 1e-5)


def test_detector_without_a_real_class_is_an_input_error(tmp_path):
    det = detector_subject()
    det.class_names = ("natural", "synthetic")
    with pytest.raises(InputError, match="no class named 'real' \\(classes: natural, synthetic\\)"):
        _run("robustness.detector_evasion", det, {"generated": write_generated(tmp_path / "g.pt", 5)})
    with pytest.raises(SpecError, match="real_class 7 is not a class index"):
        _run("robustness.detector_evasion", det, {"generated": write_generated(tmp_path / "g.pt", 5)}, real_class=7)


# -- robustness.text_embedding ----------------------------------------------------------------------
def test_text_embedding_attack_lowers_the_target_loss_and_clean_loss_matches_token_logprobs():
    from tests.fakes import tiny_text_generator

    lm = tiny_text_generator()
    prompts, target = ["The quick brown fox.", "Bits per byte compare models."], " lazy dog"
    got = _run("robustness.text_embedding", lm, {}, prompts=prompts, target=target, radius=[0.05, 1.0], steps=10,
               n_resamples=200)
    # Independent path: the clean target loss from the subject's own token log-probs (input ids, no embeddings).
    losses = []
    for p in prompts:
        ids = [lm.bos_token_id, *lm.encode([p])[0]]
        t = lm.encode([target])[0]
        lp = lm.token_logprobs(torch.tensor([ids + t]))[0, len(ids) - 1:]
        losses.append(float(-lp.mean()))
    clean = got["robustness.text_embedding/target_loss_clean"]
    assert clean.value == pytest.approx(np.mean(losses), abs=1e-4) and clean.n == 2
    small = got["robustness.text_embedding/loss_change[radius=0.05]"]
    large = got["robustness.text_embedding/loss_change[radius=1]"]
    assert large.value < small.value <= 0, "a larger ball lowers the target loss more"
    assert got["robustness.text_embedding/attack_success_rate[radius=1]"].value >= \
        got["robustness.text_embedding/attack_success_rate[radius=0.05]"].value


def test_text_embedding_without_an_embedding_model_gives_a_nan_finding_with_the_reason():
    class NoModel:
        kind = "text-generator"

    got = _run("robustness.text_embedding", NoModel(), {})
    f = got["robustness.text_embedding/attack_success_rate"]
    assert math.isnan(f.value) and "no torch model with input embeddings" in f.warnings[0]


def test_text_embedding_parameters_are_validated():
    with pytest.raises(SpecError, match="radius must be"):
        build_probe("robustness.text_embedding", {"radius": [0.2, 0.1]})
    with pytest.raises(SpecError, match="target must be"):
        build_probe("robustness.text_embedding", {"target": "  "})


# -- the demo part ----------------------------------------------------------------------------------
