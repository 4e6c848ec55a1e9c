"""deepfake.image_detectability: the post-processing transforms against Pillow/SciPy, the
cross-validated linear probe against scikit-learn, detectability of separable and identical
sets, transforms applied to both classes, the calibrated threshold, the evasion attack against
a hand-computed optimum, and the bad-input rules. Tiny random-weight nets, 16x16 images.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from audit.errors import InputError, SpecError
from audit.findings import AuditReport, SubjectIdentity
from audit.probe import ProbeContext, build_probe
from probes.deepfake.image_detectability import (
    LinearProbeModule,
    cross_validated_scores,
    detector_score,
    stratified_calibration,
    stratified_folds,
)
from probes.deepfake.metrics import calibrate_threshold, summarize_detection
from probes.deepfake.postprocess import (
    gaussian_blur,
    gaussian_noise,
    jpeg,
    parse_postprocess,
    random_crop,
    resize_down_up,
)
from tests.deepfake_fakes import generator_subject, write_real
from tests.image_fakes import random_images, write_image_folder

PID = "deepfake.image_detectability"
FEATURE = "tests.image_fakes:tiny_feature_net"
RB = ["real", "fake"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def detector(name: str, shape=(3, 16, 16), class_names=RB) -> dict:
    return {"source": "python", "path": f"tests.deepfake_fakes:{name}",
            "options": {"input_shape": list(shape), **({"class_names": class_names} if class_names else {})}}


def run(subject, real, tmp_path, **params):
    base = {"feature": FEATURE, "folds": 3, "postprocess": [], "eps": [], "n_resamples": 200, "n_samples": 40}
    probe = build_probe(PID, {**base, **params})
    ctx = ProbeContext(data={"reference": real}, probe_id=PID, cache_dir=tmp_path / "cache")
    findings = probe.run(subject, ctx)
    return {f.key: f for f in findings}, probe, ctx


def key(metric, detector="linear_probe", postprocess="none", **extra):
    sl = {"detector": detector, **({"postprocess": postprocess} if postprocess else {}), **extra}
    return f"{PID}/{metric}[" + ",".join(f"{k}={sl[k]}" for k in sorted(sl)) + "]"


def images(n=4, size=16, seed=0, channels=3):
    return torch.from_numpy(random_images(n, size, seed=seed, channels=channels)).permute(0, 3, 1, 2).contiguous()


# -- post-processing ------------------------------------------------------------------------

def test_jpeg_equals_a_pillow_round_trip_and_keeps_grey_images_grey():
    from PIL import Image

    x = images(3)
    out = jpeg(x, 40)
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=40)
        ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert np.array_equal(out[i].permute(1, 2, 0).numpy(), ref)
    assert not torch.equal(out, x)
    grey = jpeg(images(2, channels=1), 30)
    assert grey.shape == (2, 1, 16, 16) and grey.dtype == torch.uint8


def test_blur_matches_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    x = images(2, size=16)
    for sigma in (0.7, 1.0, 2.0):
        ours = gaussian_blur(x, sigma).numpy().astype(float)
        # scipy's radius is int(truncate * sigma + 0.5); ours is ceil(3 sigma): equal for these sigmas.
        ref = gaussian_filter(x.numpy().astype(float), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=3.0)
        assert np.abs(ours - ref.round()).max() <= 1, sigma


def test_resize_noise_and_crop_keep_the_shape_and_do_what_they_say():
    x = images(6)
    checker = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    checker[..., ::2, ::2] = checker[..., 1::2, 1::2] = 255
    flat = resize_down_up(checker, 0.5)  # half resolution cannot hold a 1-pixel checkerboard
    assert flat.shape == checker.shape and (flat.float() - 127.5).abs().max() <= 3  # from +-127.5
    grey = torch.full((2, 1, 64, 64), 128, dtype=torch.uint8)
    noisy = gaussian_noise(grey, 0.02, seed=3)
    assert (noisy.float() - 128).std().item() == pytest.approx(0.02 * 255, rel=0.1)
    assert torch.equal(noisy, gaussian_noise(grey, 0.02, seed=3))
    assert not torch.equal(noisy, gaussian_noise(grey, 0.02, seed=4))
    c = random_crop(x, 0.5, seed=1)
    assert c.shape == x.shape and torch.equal(c, random_crop(x, 0.5, seed=1))
    assert not torch.equal(c, random_crop(x, 0.5, seed=2))
    # A crop of a horizontal ramp keeps half the ramp: its range halves.
    ramp = torch.arange(16, dtype=torch.float32).mul(16).round().to(torch.uint8).expand(1, 1, 16, 16).contiguous()
    cr = random_crop(ramp, 0.5, seed=0).float()
    assert 100 < (cr.max() - cr.min()).item() < 160
    for step in ("jpeg:50", "resize:0.5", "blur:1", "noise:0.05", "crop:0.75", "none"):
        t = parse_postprocess(step)
        out = t(x, seed=7)
        assert out.shape == x.shape and out.dtype == torch.uint8 and torch.equal(out, t(x, seed=7)), step


def test_parse_postprocess_names_the_range():
    assert parse_postprocess("JPEG:75").label == "jpeg:75"
    for bad, match in (("jpeg:120", "quality"), ("jpeg:7.5", "integer"), ("sharpen:1", "unknown kind"),
                       ("resize:2", r"\(0, 1\)"), ("blur", "sigma"), ("noise:-1", "std")):
        with pytest.raises(SpecError, match=match):
            parse_postprocess(bad)


# -- the linear probe against scikit-learn ------------------------------------------------------

def test_cross_validated_scores_equal_sklearn_cross_val_predict():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(50, int), np.ones(30, int)]
    x = rng.normal(size=(80, 12)) * rng.uniform(0.5, 20, 12) + 0.6 * y[:, None]
    folds = stratified_folds(y, 4, seed=1)
    for k in range(4):  # stratified: every fold holds its share of each class
        assert abs((folds[y == 0] == k).sum() - 12.5) <= 1 and abs((folds[y == 1] == k).sum() - 7.5) <= 1
    ours, models, notes = cross_validated_scores(x, y, folds, c=0.5)
    ref = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=0.5, class_weight="balanced",
                                                                               max_iter=2000)),
                            x, y, cv=PredefinedSplit(folds), method="decision_function")
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-8)
    assert len(models) == 4 and not notes
    cal = stratified_calibration(y, 1 / 3, seed=0)
    summary = summarize_detection(y, ours, cal, n_resamples=200)
    assert summary.metrics["auroc"].value == pytest.approx(roc_auc_score(y, ref), abs=1e-12)


def test_probe_auroc_equals_sklearn_on_the_same_folds_and_features(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from probes.quality.features import build_extractor

    real = write_real(tmp_path / "real", 40)
    subject = generator_subject(shift=1.0)
    found, probe, ctx = run(subject, real, tmp_path, linear_probe_c=0.3)
    # The same images, features and folds, scored by scikit-learn's own cross-validation.
    x_real, _, _ = probe._real_images(ctx, "RGB")
    x_fake, _ = probe._generated_images(subject, x_real.shape[0], "RGB", (16, 16), ctx)
    fx = build_extractor(FEATURE, {})
    feats = torch.cat([fx(x_real)[0], fx(x_fake)[0]]).double().numpy()
    y = np.r_[np.zeros(len(x_real), int), np.ones(len(x_fake), int)]
    folds = stratified_folds(y, 3, ctx.child_seed("folds"))
    ref = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=0.3, class_weight="balanced",
                                                                               max_iter=2000)),
                            feats, y, cv=PredefinedSplit(folds), method="decision_function")
    auroc = found[key("auroc")]
    assert auroc.value == pytest.approx(roc_auc_score(y, ref), abs=1e-9)
    assert auroc.n == 80 and auroc.ci.low <= auroc.value <= auroc.ci.high
    assert auroc.evidence["detector"]["extractor"]["name"] == f"module:{FEATURE}"
    assert any("domain extractor" in w for w in auroc.warnings)
    # Per-image units (real files by path, generated images by index) reproduce every AUROC finding.
    from audit.units import evaluate_units

    aurocs = [f for f in found.values() if f.metric == "auroc"]
    assert aurocs and all(evaluate_units(f.units) == pytest.approx(f.value, rel=1e-12) for f in aurocs)
    assert auroc.units.ids[-1] == "generated[39]" and auroc.units.ids[0].startswith("real:")
    assert all(f.units is None for f in found.values() if f.metric != "auroc")


def test_linear_probe_module_equals_the_sklearn_decision_function():
    from probes.quality.features import build_extractor

    fx = build_extractor(FEATURE, {})
    x = torch.cat([images(20, seed=1), images(20, seed=2) // 2])
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    feats = fx(x)[0].double().numpy()
    _, models, _ = cross_validated_scores(feats, y, np.tile([0, 1], 20))
    module = LinearProbeModule(fx, models[0])
    with torch.no_grad():
        ours = module(x.float() / 255.0).numpy()
    np.testing.assert_allclose(ours, models[0].decision_function(feats), rtol=1e-4, atol=1e-4)


# -- detectability: separable, identical ----------------------------------------------------------

def test_a_clearly_separable_set_is_detected_and_an_identical_one_is_not(tmp_path):
    real = write_real(tmp_path / "real", 40)
    sep, _, _ = run(generator_subject(shift=3.0), real, tmp_path)
    same, _, _ = run(generator_subject(shift=0.0), real, tmp_path)
    a = sep[key("auroc")]
    assert a.value >= 0.98 and sep[key("eer")].value <= 0.05
    assert sep[key("balanced_accuracy")].value >= 0.9
    b = same[key("auroc")]
    assert b.ci.low <= 0.5 <= b.ci.high and abs(b.value - 0.5) < 0.2
    for m in ("average_precision", "tpr_at_fpr_1e-02", "tpr_at_fpr_1e-03", "real_accuracy", "fake_accuracy"):
        f = same[key(m)]
        assert 0 <= f.value <= 1 and f.ci is not None and f.ci.low <= f.value <= f.ci.high, m


def test_postprocessing_reaches_both_classes_so_a_format_leak_gives_no_free_win(tmp_path):
    """The generator's files are JPEGs, the real ones PNGs: a detector of JPEG artefacts wins on the
    clean images. Re-encoding both classes removes the format as a label; re-encoding one would not."""
    real = write_real(tmp_path / "real", 40)
    subject = generator_subject(shift=0.0, jpeg_quality=30)
    found, probe, ctx = run(subject, real, tmp_path, feature=None, detector=detector("jpeg_detector"),
                            postprocess=["jpeg:30", "blur:1"])
    clean = found[key("auroc", "detector")]
    assert clean.value > 0.95  # the format leaks on the files as given
    both = found[key("auroc", "detector", "jpeg:30")]
    assert both.ci.low <= 0.5 <= both.ci.high and both.value < 0.75
    curve = clean.evidence["detectability_curves"]
    assert [p["postprocess"] for p in curve["jpeg"]] == ["none", "jpeg:30"]
    assert curve["jpeg"][1]["auroc"] == pytest.approx(both.value)
    # Had only the real images been left alone (the transform on one class), the detector would win.
    from tests.deepfake_fakes import jpeg_detector

    x_real, _, _ = probe._real_images(ctx, "RGB")
    x_fake, _ = probe._generated_images(subject, 40, "RGB", (16, 16), ctx)
    with torch.no_grad():
        net = jpeg_detector()
        s_real = net(x_real.float() / 255)[:, 1].numpy()
        s_fake = net(jpeg(x_fake, 30).float() / 255)[:, 1].numpy()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(np.r_[np.zeros(40), np.ones(40)], np.r_[s_real, s_fake]) > 0.95


def test_the_threshold_is_fixed_on_the_calibration_split(tmp_path):
    real = write_real(tmp_path / "real", 40)
    subject = generator_subject(shift=0.5)
    found, probe, ctx = run(subject, real, tmp_path, feature=None, detector=detector("brightness_detector"))
    # Recompute by hand: the detector's scores, the calibration mask, Youden's threshold on it.
    x_real, _, _ = probe._real_images(ctx, "RGB")
    x_fake, _ = probe._generated_images(subject, 40, "RGB", (16, 16), ctx)
    x = torch.cat([x_real, x_fake]).float() / 255
    scores = ((x.mean(dim=(1, 2, 3)) - 0.5) * 10).double().numpy()
    y = np.r_[np.zeros(40, int), np.ones(40, int)]
    cal = stratified_calibration(y, 1 / 3, ctx.child_seed("calibration"))
    thr = calibrate_threshold(y[cal], scores[cal])
    f = found[key("balanced_accuracy", "detector")]
    assert f.evidence["threshold"] == pytest.approx(thr, abs=1e-6) and f.evidence["split"] == "test"
    assert f.n == int((~cal).sum())
    real_acc = np.mean(scores[~cal & (y == 0)] < thr)
    assert found[key("real_accuracy", "detector")].value == pytest.approx(real_acc, abs=1e-9)
    # Flipping every test label leaves the threshold where it was; flipping calibration labels moves it.
    flipped = y.copy()
    flipped[~cal] = 1 - flipped[~cal]
    s1 = summarize_detection(y, scores, cal, n_resamples=100)
    s2 = summarize_detection(flipped, scores, cal, n_resamples=100)
    assert s1.threshold == s2.threshold
    assert s2.metrics["balanced_accuracy"].value == pytest.approx(1 - s1.metrics["balanced_accuracy"].value)
    flipped_cal = y.copy()
    flipped_cal[cal] = 1 - flipped_cal[cal]
    assert summarize_detection(flipped_cal, scores, cal, n_resamples=100).threshold != s1.threshold


# -- evasion -------------------------------------------------------------------------------------

def test_evasion_of_a_linear_detector_matches_the_hand_computed_optimum(tmp_path):
    """The brightness detector is linear in the pixels: the best L-inf attack lowers every pixel by
    eps (clipped at 0), and PGD reaches it, so the evasion count is known in closed form."""
    real = write_real(tmp_path / "real", 40)
    subject = generator_subject(shift=0.5)
    eps = ["2/255", "8/255"]
    found, probe, ctx = run(subject, real, tmp_path, feature=None, detector=detector("brightness_detector"),
                            eps=eps, attack_steps=10)
    thr = found[key("auroc", "detector")].evidence["threshold"]
    x_fake, _ = probe._generated_images(subject, 40, "RGB", (16, 16), ctx)
    x = x_fake.float() / 255
    clean = ((x.mean(dim=(1, 2, 3)) - 0.5) * 10)
    detected = clean > thr
    det = found[key("detection_rate", "detector", None)]
    assert det.value == pytest.approx(detected.float().mean().item()) and det.n == 40
    rates = []
    for label in eps:
        e = float(label.split("/")[0]) / 255
        attacked = ((x - e).clamp(0, 1).mean(dim=(1, 2, 3)) - 0.5) * 10
        fooled = detected & (attacked <= thr)
        ev = found[key("evasion_rate", "detector", None, eps=label)]
        assert ev.value == pytest.approx(fooled.sum().item() / detected.sum().item()), label
        assert ev.ci.low <= ev.value <= ev.ci.high and ev.n == int(detected.sum())
        mp = found[key("max_perturbation", "detector", None, eps=label)]
        assert mp.value <= e * (1 + 1e-5) + 1e-7 and mp.evidence["within_budget"] and not mp.warnings
        under = found[key("detection_rate_under_attack", "detector", None, eps=label)]
        assert under.value == pytest.approx((detected & ~fooled).float().mean().item())
        rates.append(ev.value)
    assert rates[1] > rates[0] > 0  # a bigger budget hides more


def test_evasion_of_the_linear_probe_runs_through_the_feature_network(tmp_path):
    real = write_real(tmp_path / "real", 40)
    found, _, _ = run(generator_subject(shift=2.0), real, tmp_path, eps=["1/255", "16/255"], attack_steps=5,
                      attack_samples=30)
    det = found[key("detection_rate", postprocess=None)]
    assert det.n == 30 and det.value > 0.8 and det.evidence["points"][0]["label"] == "1/255"
    assert any("subset of 30" in w for w in det.warnings)
    small = found[key("evasion_rate", postprocess=None, eps="1/255")]
    big = found[key("evasion_rate", postprocess=None, eps="16/255")]
    assert 0 <= small.value <= big.value <= 1 and big.value > 0
    for label, e in (("1/255", 1 / 255), ("16/255", 16 / 255)):
        mp = found[key("max_perturbation", postprocess=None, eps=label)]
        assert 0 < mp.value <= e + 1e-6


def test_a_feature_network_without_gradients_gets_nan_evasion_with_the_reason(tmp_path):
    real = write_real(tmp_path / "real", 20)
    found, _, _ = run(generator_subject(shift=2.0), real, tmp_path, feature="tests.deepfake_fakes:detached_features",
                      eps=["4/255"], n_samples=20)
    ev = found[key("evasion_rate", postprocess=None, eps="4/255")]
    assert math.isnan(ev.value) and any("no evasion attack" in w and "gradient" in w for w in ev.warnings)
    assert found[key("auroc")].value > 0.9  # the detection metrics are unaffected


# -- detector outputs ------------------------------------------------------------------------

def test_detector_score_is_the_log_odds_of_not_real():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    s = detector_score(logits, real=1)
    p = torch.softmax(logits, 1)
    np.testing.assert_allclose(s.numpy(), torch.log((1 - p[:, 1]) / p[:, 1]).numpy(), rtol=1e-5)
    probs = torch.softmax(logits, 1)
    np.testing.assert_allclose(detector_score(probs, 1, probabilities=True).numpy(), s.numpy(), rtol=1e-5)
    assert detector_score(torch.tensor([[0.3], [-2.0]]), real=0).tolist() == pytest.approx([0.3, -2.0])


def test_a_single_score_detector_works(tmp_path):
    real = write_real(tmp_path / "real", 20)
    found, _, _ = run(generator_subject(shift=2.0), real, tmp_path, feature=None, n_samples=20,
                      detector=detector("single_score_detector", class_names=None))
    f = found[key("auroc", "detector")]
    assert f.value == 1.0 and f.evidence["detector"]["score"] == "logit"


@pytest.mark.parametrize("name, match", [
    ("hard_detector", "hard decisions"),
    ("nan_detector", "non-finite"),
])
def test_a_detector_whose_output_is_not_a_score_is_refused(tmp_path, name, match):
    real = write_real(tmp_path / "real", 20)
    with pytest.raises(InputError, match=match):
        run(generator_subject(shift=0.5), real, tmp_path, feature=None, n_samples=20, detector=detector(name))


def test_a_detector_of_the_wrong_shape_or_without_a_real_class_is_refused(tmp_path):
    real = write_real(tmp_path / "real", 20)
    with pytest.raises(InputError, match="expected logits of shape"):
        run(generator_subject(), real, tmp_path, feature=None, n_samples=20,
            detector={"source": "python", "path": "torch.nn:Identity", "options": {"input_shape": [3, 16, 16]}})
    with pytest.raises(InputError, match="no class named 'real'"):
        run(generator_subject(), real, tmp_path, feature=None, n_samples=20,
            detector=detector("brightness_detector", class_names=["a", "b"]))


# -- bad input -----------------------------------------------------------------------------------

def test_too_few_images_per_class_is_an_input_error(tmp_path):
    real = write_real(tmp_path / "real", 6)
    with pytest.raises(InputError, match=r"at least 10 real and 10 generated samples, got 6 real"):
        run(generator_subject(), real, tmp_path)


def test_strong_imbalance_is_reported_with_balanced_metrics_and_a_warning(tmp_path):
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    real = write_real(tmp_path / "real", 60)
    gen = write_image_folder(tmp_path / "gen", 12, seed=9, shift=2.0)
    subject = load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(gen)),
                           device="cpu", cache_dir=tmp_path / "c")
    found, _, _ = run(subject, real, tmp_path, n_samples=60)
    bal = found[key("balanced_accuracy")]
    assert any("strong class imbalance (60 real, 12 generated)" in w for w in bal.warnings)
    assert bal.ci is not None and found[key("auroc")].evidence["n_generated"] == 12


def test_images_of_different_sizes_are_resized_and_recorded(tmp_path):
    real = write_real(tmp_path / "real", 12, size=16)
    write_image_folder(tmp_path / "real" / "more", 12, size=20, seed=5)
    found, _, _ = run(generator_subject(shift=1.0, size=24), real, tmp_path, n_samples=24)
    f = found[key("auroc")]
    assert f.evidence["image_size"] == [16, 16]
    assert f.evidence["real_images"]["source_sizes"] == {"16x16": 12, "20x20": 12}
    assert f.evidence["real_images"]["resized"] == 12
    assert f.evidence["generated_images"]["source_sizes"] == {"24x24": 24}
    assert f.evidence["generated_images"]["resized"] == 24
    assert any("different sizes" in w for w in f.warnings) and any("resized to 16x16" in w for w in f.warnings)


def test_spec_errors_name_the_parameter():
    for params, match in (
        ({"postprocess": ["jpeg:101"]}, "quality"),
        ({"postprocess": ["none"]}, "postprocess"),
        ({"eps": ["4/255", "1/255"]}, "ascending"),
        ({"detector": {"source": "onnx", "path": "d.onnx"}}, "detector"),
        ({"detector": {"source": "python"}}, "detector"),
        ({"feature": None}, "nothing to run"),
        ({"folds": 1}, "folds"),
        ({"n_samples": 5}, "n_samples"),
    ):
        with pytest.raises(SpecError, match=match):
            build_probe(PID, params)


def test_findings_round_trip_through_the_report(tmp_path):
    real = write_real(tmp_path / "real", 20)
    found, _, _ = run(generator_subject(shift=1.0), real, tmp_path, n_samples=20, postprocess=["noise:0.05"],
                      eps=["2/255"], attack_steps=2)
    report = AuditReport(name="t", findings=tuple(found.values()),
                         subject=SubjectIdentity(name="g", kind="image-generator", source="python"))
    text = report.to_json()
    assert AuditReport.from_json(text).to_json() == text
    assert key("auroc", postprocess="noise:0.05") in found
