"""quality.image_fidelity and its maths, against independent references: SciPy's sqrtm,
NumPy's covariance, torchmetrics' FID and KID, torch-fidelity's IS and precision/recall."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from audit.errors import InputError
from audit.probe import ProbeContext, build_probe
from probes.quality.features import inception_extractor, module_extractor
from probes.quality.image_fidelity import collect_features
from probes.quality.image_functional import (
    FeatureMoments,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
)
from tests.image_fakes import FeaturesOnly, random_images, tiny_feature_net, write_image_folder


def _rand_psd(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, 3 * d))
    return a @ a.T / (3 * d)


def test_frechet_distance_equals_scipy_sqrtm_reference():
    d = 24
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _rand_psd(d, 1), _rand_psd(d, 2)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    ours = frechet_distance(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2)))
    assert ours.dtype == torch.float64
    assert float(ours) == pytest.approx(ref, rel=1e-10)
    # Identical Gaussians are at distance 0; hand-derived case: identity vs 4 * identity.
    e = torch.eye(3, dtype=torch.float64)
    assert float(frechet_distance(torch.zeros(3), e, torch.zeros(3), e)) == pytest.approx(0, abs=1e-12)
    assert float(frechet_distance(torch.zeros(3), e, torch.ones(3), 4 * e)) == pytest.approx(6.0)


def test_streaming_moments_match_numpy_and_survive_a_large_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)) * 0.01 + 1e4  # a large mean: the naive formula loses digits here
    m = FeatureMoments()
    for part in np.array_split(x, 7):
        m.update(torch.from_numpy(part))
    assert m.n == 500
    np.testing.assert_allclose(m.mean.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.cov.numpy(), np.cov(x, rowvar=False), rtol=1e-6, atol=1e-12)


def _batches(n, seed, shift=0.0, bs=16):
    imgs = torch.from_numpy(random_images(n, 16, seed=seed, shift=shift)).permute(0, 3, 1, 2).contiguous()
    return list(imgs.split(bs))


def test_fid_equals_torchmetrics_with_the_same_extractor():
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _batches(80, 1), _batches(70, 2, shift=1.0)
    fx = module_extractor("tests.image_fakes:tiny_feature_net", device="cpu")
    col_r, col_f = collect_features(real, fx), collect_features(fake, fx)
    ours = float(frechet_distance(col_r.moments.mean, col_r.moments.cov, col_f.moments.mean, col_f.moments.cov))

    metric = FrechetInceptionDistance(feature=FeaturesOnly(tiny_feature_net()))
    for b in real:
        metric.update(b, real=True)
    for b in fake:
        metric.update(b, real=False)
    ref = float(metric.compute())
    assert ours > 0.01
    assert ours == pytest.approx(ref, rel=1e-4)


def test_kid_equals_torchmetrics_given_the_same_subsets():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    rng = np.random.default_rng(3)
    real = torch.from_numpy(rng.normal(size=(120, 10))).double()
    fake = torch.from_numpy(rng.normal(size=(90, 10)) * 1.2 + 0.3).double()
    metric = KernelInceptionDistance(feature=Identity(), subsets=7, subset_size=40)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    torch.manual_seed(11)  # torchmetrics draws its subsets from the global generator
    ref_mean, ref_std = metric.compute()
    mean, std, per = kid(real, fake, subsets=7, subset_size=40, generator=torch.Generator().manual_seed(11))
    assert per.shape == (7,)
    assert float(mean) == pytest.approx(float(ref_mean), rel=1e-10)
    assert float(std) == pytest.approx(float(ref_std), rel=1e-10)


def test_inception_score_equals_the_formula_and_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    # Hand-built: 4 images, each certain of a different one of 4 classes -> p(y) uniform,
    # KL = log 4 for each image, IS = 4. And all certain of the same class -> IS = 1.
    sure = torch.eye(4) * 50
    assert float(inception_score(sure, splits=1)[0]) == pytest.approx(4.0, rel=1e-9)
    assert float(inception_score(sure[[0, 0, 0, 0]], splits=1)[0]) == pytest.approx(1.0, rel=1e-9)

    logits = torch.from_numpy(np.random.default_rng(0).normal(size=(200, 7)) * 2).float()
    p = torch.softmax(logits.double(), 1).numpy()
    by_hand = []
    for part in np.array_split(p, 4):
        py = part.mean(0)
        by_hand.append(np.exp((part * (np.log(part) - np.log(py))).sum(1).mean()))
    mean, std, per = inception_score(logits, splits=4)
    np.testing.assert_allclose(per.numpy(), by_hand, rtol=1e-10)
    ref = isc_features_to_metric(logits, splits=4, shuffle=False)
    assert float(mean) == pytest.approx(ref["inception_score_mean"], rel=1e-5)
    assert float(std) == pytest.approx(ref["inception_score_std"], rel=1e-4)


def test_precision_recall_equal_torch_fidelity():
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    rng = np.random.default_rng(5)
    real = torch.from_numpy(rng.normal(size=(150, 6))).float()
    fake = torch.from_numpy(rng.normal(size=(130, 6)) * 0.7 + 0.5).float()
    p, r, in_real, in_fake = precision_recall(real, fake, k=3, chunk=37)
    ref_p, ref_r = calculate_precision_recall_part(fake, real, neighborhood=3)  # (generated, real)
    assert float(p) == pytest.approx(ref_p, abs=1e-6) and float(r) == pytest.approx(ref_r, abs=1e-6)
    assert 0 < float(p) < 1 and 0 < float(r) < 1 and in_real.shape == (130,) and in_fake.shape == (150,)


def _inception_weights(tmp_path):
    """Random weights for the standard FID Inception architecture, built in code (no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    original = tfi.load_state_dict_from_url
    tfi.load_state_dict_from_url = lambda *a, **k: None
    orig_load = tfi.FeatureExtractorInceptionV3.load_state_dict
    tfi.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
    try:
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        tfi.load_state_dict_from_url = original
        tfi.FeatureExtractorInceptionV3.load_state_dict = orig_load
    # Calibrate the batch norms on random images: without it random convolutions shrink the
    # features to ~1e-6 and any comparison would pass.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_inception_features_equal_torchmetrics_inception(tmp_path):
    from torchmetrics.image.fid import NoTrainInceptionV3

    torch.set_num_threads(1)
    weights = _inception_weights(tmp_path)
    fx = inception_extractor(weights, device="cpu")
    assert fx.describe()["resize"] == "bilinear-tf1" and fx.describe()["antialias"] is False
    assert len(fx.weights_sha256) == 64 and fx.dim == 2048 and fx.has_logits
    imgs = _batches(4, 7, bs=4)[0]
    feats, logits = fx(imgs)
    ref = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights),
                             antialias=False)
    with torch.no_grad():
        ref_feats = ref(imgs)
    assert feats.shape == (4, 2048) and logits.shape == (4, 1008)
    assert float(feats.std()) > 0.05  # features of a meaningful scale
    torch.testing.assert_close(feats, ref_feats, rtol=1e-4, atol=1e-5)


def test_inception_offline_without_weights_names_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as exc:
        inception_extractor(None, device="cpu")
    msg = str(exc.value)
    assert "inception_weights: PATH" in msg and "feature: clip" in msg and "module:factory" in msg


def _ctx(data, **kw):
    return ProbeContext(device="cpu", seed=0, data=data, probe_id="quality.image_fidelity", **kw)


def _folder_subject(path):
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    return load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(path)), device="cpu",
                        cache_dir=path.parent / "cache")


PARAMS = {"feature": "tests.image_fakes:tiny_feature_net", "kid_subsets": 10, "kid_subset_size": 20,
          "is_splits": 2, "n_resamples": 50, "batch_size": 16}


def test_probe_findings_intervals_and_small_n_warning(tmp_path):
    gen = write_image_folder(tmp_path / "gen", 40, seed=1, shift=0.5)
    ref = write_image_folder(tmp_path / "ref", 50, seed=2)
    probe = build_probe("quality.image_fidelity", PARAMS)
    findings = {f.metric: f for f in probe.run(_folder_subject(gen), _ctx({"reference": ref}))}
    assert set(findings) == {"fid", "kid", "inception_score", "precision", "recall"}
    fid = findings["fid"]
    assert fid.value > 0 and fid.ci.low <= fid.value <= fid.ci.high and fid.n == 40
    assert fid.evidence["n_generated"] == 40 and fid.evidence["n_reference"] == 50
    assert any("< 2048" in w and "biased upwards" in w for w in fid.warnings)
    assert any("not the standard FID Inception" in w for w in fid.warnings)
    assert fid.evidence["extractor"]["weights_sha256"] and fid.evidence["extractor"]["dim"] == 16
    kid_f = findings["kid"]
    assert kid_f.ci.low <= kid_f.value <= kid_f.ci.high and "kid_subset_std" in kid_f.evidence
    assert findings["precision"].ci.method.startswith("wilson") and findings["recall"].n == 50
    # Same images on both sides: FID about 0, far below the shifted set's.
    same = {f.metric: f for f in probe.run(_folder_subject(ref), _ctx({"reference": ref}))}
    assert same["fid"].value == pytest.approx(0.0, abs=1e-6) and same["fid"].value < fid.value
    assert same["precision"].value == 1.0 and same["recall"].value == 1.0


def test_stats_file_built_by_the_cli_gives_the_same_fid_and_wrong_extractor_is_refused(tmp_path):
    from click.testing import CliRunner

    from audit.cli import cli

    gen = write_image_folder(tmp_path / "gen", 30, seed=1, shift=0.5)
    ref = write_image_folder(tmp_path / "ref", 40, seed=2)
    stats = tmp_path / "ref.npz"
    res = CliRunner().invoke(cli, ["stats", "build", str(ref), "--out", str(stats), "--device", "cpu",
                                   "--feature", "tests.image_fakes:tiny_feature_net"])
    assert res.exit_code == 0, res.output
    assert "n=40" in res.output and stats.is_file()

    probe = build_probe("quality.image_fidelity", PARAMS)
    from_folder = {f.metric: f for f in probe.run(_folder_subject(gen), _ctx({"reference": ref}))}
    from_stats = {f.metric: f for f in probe.run(_folder_subject(gen), _ctx({"reference": stats}))}
    assert from_stats["fid"].value == pytest.approx(from_folder["fid"].value, rel=1e-9)
    assert from_stats["kid"].value == pytest.approx(from_folder["kid"].value, rel=1e-6)
    assert from_stats["fid"].evidence["n_reference"] == 40

    other = build_probe("quality.image_fidelity", {**PARAMS, "feature_options": {"factory_kwargs": {"seed": 1}}})
    with pytest.raises(InputError) as exc:
        other.run(_folder_subject(gen), _ctx({"reference": stats}))
    assert "another feature extractor" in str(exc.value) and "weights_sha256" in str(exc.value)
    resized = build_probe("quality.image_fidelity", {**PARAMS, "feature_options": {"input_size": 8}})
    with pytest.raises(InputError, match="input_size"):
        resized.run(_folder_subject(gen), _ctx({"reference": stats}))


def test_generated_side_of_fewer_than_2_images_is_an_input_error(tmp_path):
    gen = write_image_folder(tmp_path / "gen", 3, seed=1)
    for p in sorted(gen.glob("*.png"))[1:]:
        p.write_bytes(b"not a png")  # two corrupt files: one readable image remains
    ref = write_image_folder(tmp_path / "ref", 10, seed=2)
    probe = build_probe("quality.image_fidelity", PARAMS)
    with pytest.raises(InputError, match="at least 2"):
        probe.run(_folder_subject(gen), _ctx({"reference": ref}))


def test_bad_parameters_are_spec_errors():
    from audit.errors import SpecError

    for bad in ({"feature": "resnet"}, {"metrics": ["fid", "sharpness"]}, {"n_samples": 1},
                {"feature_options": {"channels": 1}}, {"confidence": 1.5}):
        with pytest.raises(SpecError):
            build_probe("quality.image_fidelity", bad)
    assert math.isfinite(build_probe("quality.image_fidelity", {}).confidence)
