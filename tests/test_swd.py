"""quality.sliced_wasserstein: the maths against POT, closed forms and SciPy, and the probe."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from scipy.stats import norm

from audit.errors import InputError, SpecError
from audit.probe import ProbeContext, build_probe
from probes.quality.swd_functional import (
    laplacian_pyramid,
    normalize_descriptors,
    patch_descriptors,
    pyr_down,
    pyr_up,
    pyramid_levels,
    random_directions,
    reconstruct_pyramid,
    sliced_wasserstein,
)
from tests.image_fakes import write_image_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_G = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float64) / 256.0


def _scipy_down(x):  # cv2.pyrDown as written with SciPy: 2-D 5x5 filter, mirror border
    return scipy.ndimage.convolve(x, _G[None, None], mode="mirror")[:, :, ::2, ::2]


def _scipy_up(x):
    n, c, h, w = x.shape
    z = np.zeros((n, c, 2 * h, 2 * w))
    z[:, :, ::2, ::2] = x
    return scipy.ndimage.convolve(z, _G[None, None] * 4.0, mode="mirror")


def test_pyramid_filters_match_scipy_and_reconstruct():
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 32))
    t = torch.tensor(x)
    np.testing.assert_allclose(pyr_down(t).numpy(), _scipy_down(x), atol=1e-9)
    low = _scipy_down(x)
    np.testing.assert_allclose(pyr_up(torch.tensor(low)).numpy(), _scipy_up(low), atol=1e-9)
    pyr = laplacian_pyramid(t.float(), 3)
    assert [tuple(p.shape[2:]) for p in pyr] == [(32, 32), (16, 16), (8, 8)]
    # The finest level is the image minus its blurred-down-up copy, the last one the low-pass.
    np.testing.assert_allclose(pyr[0].numpy(), x - _scipy_up(_scipy_down(x)), atol=1e-3)
    np.testing.assert_allclose(pyr[2].numpy(), _scipy_down(_scipy_down(x)), atol=1e-3)
    np.testing.assert_allclose(reconstruct_pyramid(pyr).numpy(), x, atol=1e-3)
    # A constant image has zero detail bands.
    const = torch.full((1, 1, 16, 16), 7.0)
    bands = laplacian_pyramid(const, 2)
    assert float(bands[0].abs().max()) < 1e-5 and torch.allclose(bands[1], torch.full((1, 1, 8, 8), 7.0))
    assert pyramid_levels(64) == [64, 32, 16] and pyramid_levels(8) == []


def test_patch_descriptors_cut_the_right_pixels():
    level = torch.arange(2 * 2 * 12 * 12, dtype=torch.float32).view(2, 2, 12, 12)
    d = patch_descriptors(level, 5, generator=torch.Generator().manual_seed(0))
    assert d.shape == (10, 2, 7, 7)
    for i in range(10):
        img = i // 5
        hits = [(y, x) for y in range(3, 9) for x in range(3, 9)
                if torch.equal(level[img, :, y - 3:y + 4, x - 3:x + 4], d[i])]
        assert len(hits) == 1  # each row is a 7x7 window of its own image, centre >= 3 from the border
    a, b = normalize_descriptors(d[:5], d[5:])
    both = torch.cat([a, b]).view(10, 2, 49)
    assert torch.allclose(both.mean(dim=(0, 2)), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(both.std(dim=(0, 2), unbiased=False), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("sizes", [(200, 200), (150, 90)])
def test_sliced_wasserstein_matches_pot_on_the_same_projections(p, sizes):
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(1)
    a = torch.randn(sizes[0], 6, generator=g, dtype=torch.float64)
    b = torch.randn(sizes[1], 6, generator=g, dtype=torch.float64) * 1.5 + 0.7
    dirs = random_directions(6, 40, generator=g)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(40, dtype=torch.float64))
    ours = float(sliced_wasserstein(a, b, dirs, p=p))
    ref = ot.sliced_wasserstein_distance(a.numpy(), b.numpy(), projections=dirs.T.numpy(), p=p)
    assert ours == pytest.approx(float(ref), rel=1e-10)


def test_weighted_sets_match_pot():
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(30, 3, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64)
    wa, wb = torch.rand(30, generator=g, dtype=torch.float64), torch.rand(50, generator=g, dtype=torch.float64)
    dirs = random_directions(3, 10, generator=g)
    ours = float(sliced_wasserstein(a, b, dirs, p=2, weights_a=wa, weights_b=wb))
    ref = ot.sliced_wasserstein_distance(a.numpy(), b.numpy(), (wa / wa.sum()).numpy(), (wb / wb.sum()).numpy(),
                                         projections=dirs.T.numpy(), p=2)
    assert ours == pytest.approx(float(ref), rel=1e-9)


def _gaussian_sample(n, m, s):  # exact quantiles: the empirical measure is the Gaussian's to O(1/n)
    return torch.tensor(m + s * norm.ppf((np.arange(n) + 0.5) / n), dtype=torch.float64)[:, None]


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 2.0, 1.0), (1.0, 0.5, -1.0, 2.0), (0.0, 1.0, 0.0, 3.0)])
def test_one_dimensional_gaussians_closed_form(m1, s1, m2, s2):
    a, b, d = _gaussian_sample(20000, m1, s1), _gaussian_sample(20000, m2, s2), torch.ones(1, 1, dtype=torch.float64)
    w2 = np.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2)  # W2 of two 1-D Gaussians
    assert float(sliced_wasserstein(a, b, d, p=2)) == pytest.approx(w2, rel=2e-3, abs=2e-3)
    if s1 == s2:
        assert float(sliced_wasserstein(a, b, d, p=1)) == pytest.approx(abs(m1 - m2), rel=1e-6)


def test_isotropic_gaussians_each_direction_closed_form():
    # N(0, I) vs N(delta, I): along direction t both project to unit-variance Gaussians, W1 = |t . delta|.
    rng = np.random.default_rng(3)
    z = torch.tensor(rng.standard_normal((40000, 4)))
    delta = torch.tensor([1.0, -0.5, 0.25, 2.0], dtype=torch.float64)
    dirs = random_directions(4, 8, generator=torch.Generator().manual_seed(4))
    expected = float((dirs @ delta).abs().mean())
    assert float(sliced_wasserstein(z, z + delta, dirs)) == pytest.approx(expected, rel=1e-9)
    other = torch.tensor(rng.standard_normal((40000, 4))) + delta
    assert float(sliced_wasserstein(z, other, dirs)) == pytest.approx(expected, abs=0.03)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="do not match"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3), torch.ones(1, 2))


# -- the probe ---------------------------------------------------------------------------------------------


def _noise_folder(folder, n, size, seed):  # pixel-wise noise: the blocky texture of the fakes is gone
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(60, 200, (size, size, 3)).astype(np.uint8)).save(folder / f"n{i}.png")
    return folder


def _run(tmp_path, params, shift=0.3, size=32, n=12, noise=False):
    from audit.spec import SubjectSpec
    from audit.subjects.loading import load_subject

    gen = (_noise_folder(tmp_path / "noise", n, size, 5) if noise
           else write_image_folder(tmp_path / f"gen{shift}", n, size=size, seed=1, shift=shift))
    ref = write_image_folder(tmp_path / "ref", n, size=size, seed=2)
    subject = load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(gen)),
                           device="cpu", cache_dir=tmp_path / "cache")
    probe = build_probe("quality.sliced_wasserstein", params)
    ctx = ProbeContext(device="cpu", seed=0, data={"reference": ref}, cache_dir=tmp_path / "cache",
                       probe_id="quality.sliced_wasserstein")
    return {f.metric: f for f in probe.run(subject, ctx)}


_FAST = {"patches_per_image": 16, "n_directions": 32, "n_repeats": 2, "n_resamples": 20, "batch_size": 8}


def test_pyramid_swd_levels_units_and_ordering(tmp_path):
    same = _run(tmp_path, _FAST, shift=0.0)
    shifted = _run(tmp_path, _FAST, shift=0.5)
    assert sorted(shifted) == ["swd_16", "swd_32", "swd_avg"]
    avg = shifted["swd_avg"]
    assert avg.value == pytest.approx((shifted["swd_16"].value + shifted["swd_32"].value) / 2)
    assert avg.evidence["resolutions"] == [32, 16] and "x1e3" in avg.evidence["units"]
    assert avg.ci is not None and avg.ci.low <= avg.value <= avg.ci.high and not avg.higher_is_better
    # Two samples of one distribution are closer than images of another texture.
    noise = _run(tmp_path, _FAST, noise=True)
    assert same["swd_avg"].value < noise["swd_avg"].value
    assert same["swd_32"].value < noise["swd_32"].value
    # A pure brightness shift: per-set normalisation (ProGAN's code) removes most of it, joint keeps it.
    joint = {**_FAST, "normalize": "joint"}
    assert _run(tmp_path, joint, shift=0.5)["swd_avg"].value > 2 * _run(tmp_path, joint, shift=0.0)["swd_avg"].value


def test_small_images_are_upsampled_to_the_minimum_resolution(tmp_path):
    out = _run(tmp_path, _FAST, size=8, shift=0.3)
    assert sorted(out) == ["swd_16", "swd_avg"]
    assert any("upsampled by pixel repetition to 16" in w for w in out["swd_avg"].warnings)


def test_feature_mode_against_a_direct_computation(tmp_path):
    from probes.quality.features import build_extractor
    from audit.subjects.imagedata import iter_image_batches, list_images

    out = _run(tmp_path, {"feature": "tests.image_fakes:tiny_feature_net", "n_directions": 16, "n_repeats": 2,
                          "n_resamples": 20, "batch_size": 8, "p": 2}, shift=0.3, size=16)
    f = out["sliced_wasserstein"]
    fx = build_extractor("tests.image_fakes:tiny_feature_net", {}, device="cpu")
    feats = [torch.cat([fx(b)[0] for b in iter_image_batches(list_images(tmp_path / d), batch_size=8)]).double()
             for d in ("gen0.3", "ref")]
    ctx = ProbeContext(device="cpu", seed=0, probe_id="quality.sliced_wasserstein")
    dirs = random_directions(feats[0].shape[1], 32, generator=ctx.rng("directions"))
    assert f.value == pytest.approx(float(sliced_wasserstein(feats[0], feats[1], dirs, p=2)), rel=1e-6)
    assert f.ci is not None and f.ci.low <= f.value <= f.ci.high and f.evidence["p"] == 2


def test_bad_input(tmp_path):
    with pytest.raises(SpecError, match="patch_size must be an odd"):
        build_probe("quality.sliced_wasserstein", {"patch_size": 6})
    with pytest.raises(SpecError, match="normalize must be"):
        build_probe("quality.sliced_wasserstein", {"normalize": "both"})
    with pytest.raises(SpecError, match="feature must be"):
        build_probe("quality.sliced_wasserstein", {"feature": "pixels"})
    stats = tmp_path / "stats.npz"
    stats.write_bytes(b"x")
    probe = build_probe("quality.sliced_wasserstein", _FAST)
    ctx = ProbeContext(device="cpu", seed=0, data={"reference": stats}, probe_id="quality.sliced_wasserstein")
    with pytest.raises(InputError, match="must be a folder of images"):
        probe.run(object(), ctx)


def test_resorted_equals_sorting_the_resample():
    from probes.quality.swd_functional import resorted, sorted_wasserstein

    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 50, generator=g, dtype=torch.float64)
    s = x.sort(dim=1)
    idx = torch.randint(0, 50, (50,), generator=g)
    counts = torch.bincount(idx, minlength=50)
    assert torch.equal(resorted(s.values, s.indices, counts), x[:, idx].sort(dim=1).values)
    # Unequal sizes: the quantile integral equals POT's 1-D Wasserstein (scipy's for p=1).
    from scipy.stats import wasserstein_distance

    a, b = torch.randn(1, 37, generator=g, dtype=torch.float64), torch.randn(1, 20, generator=g, dtype=torch.float64)
    got = float(sorted_wasserstein(a.sort(dim=1).values, b.sort(dim=1).values, p=1)[0])
    assert got == pytest.approx(wasserstein_distance(a[0].numpy(), b[0].numpy()), rel=1e-12)
