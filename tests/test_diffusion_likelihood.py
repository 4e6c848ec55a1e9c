"""quality.diffusion_likelihood and its maths, against closed forms computed here with NumPy/SciPy.

The analytic case: pixels x0 ~ N(m, s^2) i.i.d. and the exact optimal denoiser of that
Gaussian, E[eps | x_t] = b (x_t - a m) / (a^2 s^2 + b^2) with a = sqrt(abar_t), b = sqrt(1 - abar_t).
Given x0, every term's expectation over the noise has a closed form (L_T, L_t) or a 1-D
integral (L_0, by Gauss-Hermite quadrature), evaluated here independently of the probe.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from audit.errors import InputError, SpecError
from audit.probe import ProbeContext, build_probe
from probes.quality.diffusion_functional import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    normal_kl,
    stratified_timesteps,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

M, S = 0.1, 0.3
BETAS = np.linspace(1e-3, 0.35, 10)


def _abar(betas):
    abar = np.cumprod(1 - betas)
    return abar, np.concatenate([[1.0], abar[:-1]])


def optimal_eps(x_t: torch.Tensor, t: torch.Tensor, betas=BETAS) -> torch.Tensor:
    abar = torch.tensor(_abar(betas)[0])[t].view(-1, 1, 1, 1).to(x_t.dtype)
    a, b = abar.sqrt(), (1 - abar).sqrt()
    return b * (x_t - a * M) / (a * a * S * S + b * b)


# -- closed forms (NumPy), per image given x0 [N, D] ------------------------------------------------
def closed_prior(x0, betas=BETAS):
    ab = _abar(betas)[0][-1]
    return (0.5 * (-1 - np.log(1 - ab) + (1 - ab) + ab * x0 ** 2)).sum(1)


def closed_diffusion(x0, variance="fixed_small", betas=BETAS):
    abar, abar_prev = _abar(betas)
    post = betas * (1 - abar_prev) / (1 - abar)
    total = np.zeros(x0.shape[0])
    for t in range(1, len(betas)):
        a, b = math.sqrt(abar[t]), math.sqrt(1 - abar[t])
        k = a * S * S / (a * a * S * S + b * b)
        c1 = math.sqrt(abar_prev[t]) * betas[t] / (1 - abar[t])
        var_p = post[t] if variance == "fixed_small" else betas[t]
        esq = c1 ** 2 * ((1 - k * a) ** 2 * (x0 - M) ** 2 + k ** 2 * b ** 2)
        total += (0.5 * (-1 + np.log(var_p) - np.log(post[t]) + post[t] / var_p + esq / var_p)).sum(1)
    return total


def _decoder_nll_np(x0, mean, sigma):
    """-log of the discretised Gaussian bin probability with SciPy's log CDF / log survival function
    (the bin mass through the tail it lies in, so that far bins do not underflow)."""
    h = 1.0 / 255
    hi, lo = (x0 + h - mean) / sigma, (x0 - h - mean) / sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        below = stats.norm.logcdf(hi) + np.log1p(-np.exp(stats.norm.logcdf(lo) - stats.norm.logcdf(hi)))
        above = stats.norm.logsf(lo) + np.log1p(-np.exp(stats.norm.logsf(hi) - stats.norm.logsf(lo)))
    logp = np.where(x0 <= -1 + h / 2, stats.norm.logcdf(hi),
                    np.where(x0 >= 1 - h / 2, stats.norm.logsf(lo), np.where(lo > 0, above, below)))
    return -logp


def closed_decoder(x0, betas=BETAS, nodes=80):
    """E_eps[L_0 | x0] by Gauss-Hermite quadrature: x_1 = a x0 + b eps, the model's mean is
    E[x0 | x_1] (the posterior at t=1 is x0 itself), sigma^2 = posterior_variance[1]."""
    abar, abar_prev = _abar(betas)
    post1 = betas[1] * (1 - abar_prev[1]) / (1 - abar[1])
    a, b = math.sqrt(abar[0]), math.sqrt(1 - abar[0])
    k = a * S * S / (a * a * S * S + b * b)
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    out = np.zeros_like(x0)
    for zi, wi in zip(z, w):
        mean = M + k * (a * x0 + b * zi - a * M)
        out += wi * _decoder_nll_np(x0, mean, math.sqrt(post1))
    return out.sum(1)


# -- the pure functions ------------------------------------------------------------------------------
def test_normal_kl_matches_the_formula_and_is_zero_for_equal_gaussians():
    rng = np.random.default_rng(0)
    m1, m2, lv1, lv2 = rng.normal(size=(4, 50))
    ref = np.log(np.exp(0.5 * lv2) / np.exp(0.5 * lv1)) + (np.exp(lv1) + (m1 - m2) ** 2) / (2 * np.exp(lv2)) - 0.5
    got = normal_kl(*(torch.tensor(v) for v in (m1, lv1, m2, lv2))).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert float(normal_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(0.3), torch.tensor(-1.0))) == 0.0


def test_gaussian_kl_matches_numpy_and_a_monte_carlo_estimate():
    rng = np.random.default_rng(1)
    d = 5
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.5 * np.eye(d), b @ b.T + 0.5 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    inv2 = np.linalg.inv(s2)
    ref = 0.5 * (np.trace(inv2 @ s1) + (mu2 - mu1) @ inv2 @ (mu2 - mu1) - d
                 + np.linalg.slogdet(s2)[1] - np.linalg.slogdet(s1)[1])
    got = float(gaussian_kl(*(torch.tensor(v) for v in (mu1, s1, mu2, s2))))
    assert got == pytest.approx(ref, rel=1e-10)
    x = stats.multivariate_normal(mu1, s1).rvs(200_000, random_state=2)
    mc = np.mean(stats.multivariate_normal(mu1, s1).logpdf(x) - stats.multivariate_normal(mu2, s2).logpdf(x))
    assert got == pytest.approx(mc, rel=0.02)
    assert math.isnan(float(gaussian_kl(torch.zeros(2), torch.zeros(2, 2), torch.zeros(2), torch.eye(2))))


def test_discretized_gaussian_matches_scipy_including_edges_and_tails():
    x = torch.tensor([-1.0, -1 + 2 / 255, -0.5, 0.0, 1 / 255, 0.6, 1 - 2 / 255, 1.0, 0.0, 0.9],
                     dtype=torch.float64)
    mean = torch.tensor([0.0, -0.9, -0.4, 0.02, 0.5, 0.6, 0.99, 0.7, 3.0, -2.5], dtype=torch.float64)
    log_scale = torch.log(torch.tensor([0.3, 0.05, 0.2, 0.01, 0.1, 0.002, 0.03, 0.4, 0.2, 0.3], dtype=torch.float64))
    got = -discretized_gaussian_log_likelihood(x, mean, log_scale).numpy()
    ref = _decoder_nll_np(x.numpy(), mean.numpy(), log_scale.exp().numpy())
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    # Where no tail trick is needed, plainly Phi(upper) - Phi(lower).
    xs, ms, ss = x.numpy()[2:4], mean.numpy()[2:4], log_scale.exp().numpy()[2:4]
    plain = -np.log(stats.norm.cdf((xs + 1 / 255 - ms) / ss) - stats.norm.cdf((xs - 1 / 255 - ms) / ss))
    np.testing.assert_allclose(got[2:4], plain, rtol=1e-9)
    # Probabilities over the 256 bins sum to one.
    grid = torch.linspace(-1, 1, 256, dtype=torch.float64)
    total = discretized_gaussian_log_likelihood(grid, torch.full_like(grid, 0.2), torch.full_like(grid, -2.0)).exp().sum()
    assert float(total) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_one_kl_term_at_fixed_noise_matches_numpy(variance):
    rng = np.random.default_rng(3)
    x0 = np.clip(rng.normal(M, S, size=(4, 1, 2, 2)), -1, 1)
    eps = rng.normal(size=x0.shape)
    t = np.array([1, 4, 7, 9])
    v = 0.3
    proc = GaussianDiffusion.from_betas(torch.tensor(BETAS), variance_type=variance)

    def model(x_t, tt):
        e = optimal_eps(x_t, tt)
        return torch.cat([e, torch.full_like(e, v)], 1) if variance == "learned_range" else e

    got = proc.vb_term(model, torch.tensor(x0), torch.tensor(t), torch.tensor(eps)).numpy()
    abar, abar_prev = _abar(BETAS)
    post = BETAS * (1 - abar_prev) / (1 - abar)
    ref = []
    for i, ti in enumerate(t):
        a, b = math.sqrt(abar[ti]), math.sqrt(1 - abar[ti])
        xt = a * x0[i] + b * eps[i]
        e = b * (xt - a * M) / (a * a * S * S + b * b)
        x0_hat = (xt - b * e) / a
        c1 = math.sqrt(abar_prev[ti]) * BETAS[ti] / (1 - abar[ti])
        c2 = math.sqrt(1 - BETAS[ti]) * (1 - abar_prev[ti]) / (1 - abar[ti])
        mu_q, mu_p = c1 * x0[i] + c2 * xt, c1 * x0_hat + c2 * xt
        var_p = {"fixed_small": post[ti], "fixed_large": BETAS[ti],
                 "learned_range": math.exp((v + 1) / 2 * math.log(BETAS[ti]) + (1 - v) / 2 * math.log(post[ti]))}[variance]
        ref.append(np.sum(stats.norm(0, 1).entropy() * 0 + 0.5 * (np.log(var_p / post[ti]) + (post[ti] + (mu_q - mu_p) ** 2) / var_p - 1)))
    np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_decoder_term_at_fixed_noise_matches_scipy():
    rng = np.random.default_rng(4)
    x0 = np.round((np.clip(rng.normal(M, S, size=(6, 1, 2, 2)), -1, 1) + 1) * 127.5) / 127.5 - 1
    x0[0, 0, 0, 0], x0[1, 0, 0, 0] = -1.0, 1.0
    eps = rng.normal(size=x0.shape)
    proc = GaussianDiffusion.from_betas(torch.tensor(BETAS))
    got = proc.vb_term(optimal_eps, torch.tensor(x0), torch.zeros(6, dtype=torch.long), torch.tensor(eps)).numpy()
    abar, abar_prev = _abar(BETAS)
    post1 = BETAS[1] * (1 - abar_prev[1]) / (1 - abar[1])
    a, b = math.sqrt(abar[0]), math.sqrt(1 - abar[0])
    k = a * S * S / (a * a * S * S + b * b)
    mean = M + k * (a * x0 + b * eps - a * M)
    ref = _decoder_nll_np(x0, mean, math.sqrt(post1)).reshape(6, -1).sum(1)
    np.testing.assert_allclose(got, ref, rtol=1e-9)


def test_stratified_timesteps_cover_the_strata_and_weigh_by_their_size():
    g = torch.Generator().manual_seed(0)
    t, w = stratified_timesteps(1000, 10, 500, generator=g)
    assert t.shape == w.shape == (500, 10)
    assert torch.allclose(w.sum(1), torch.full((500,), 999.0, dtype=torch.float64))
    edges = torch.linspace(1, 1000, 11, dtype=torch.float64).round().long()
    assert bool(((t >= edges[:-1]) & (t < edges[1:])).all())
    assert t.min() >= 1 and t.max() <= 999
    t_all, w_all = stratified_timesteps(10, 50, 3, generator=g)
    assert t_all.tolist() == [list(range(1, 10))] * 3 and bool((w_all == 1).all())


def test_stratified_estimate_is_unbiased_for_the_gaussian_case():
    rng = np.random.default_rng(5)
    x0 = torch.tensor(np.clip(rng.normal(M, S, size=(4000, 1, 2, 2)), -1, 1))
    proc = GaussianDiffusion.from_betas(torch.tensor(BETAS))
    t, w = stratified_timesteps(len(BETAS), 3, x0.shape[0], generator=torch.Generator().manual_seed(1))
    terms = proc.elbo_terms(optimal_eps, x0, timesteps=t, weights=w, generator=torch.Generator().manual_seed(2))
    ref = closed_diffusion(x0.numpy().reshape(len(x0), -1))
    d = terms["diffusion"].numpy()
    se = d.std() / math.sqrt(d.size)
    assert abs(d.mean() - ref.mean()) < 4 * se


# -- the probe, end to end on the analytic case -----------------------------------------------------
class GaussianOptimalDenoiser:
    """A subject with the ``denoiser`` capability whose UNet is the exact optimal denoiser."""

    kind = "image-generator"
    capabilities = frozenset({"generate_images", "denoiser"})
    sample_shape = (1, 4, 4)

    def __init__(self, scheduler):
        self.training_scheduler = scheduler
        self.calls = 0

    def predict(self, x_t, t):
        self.calls += 1
        return optimal_eps(x_t.double(), t).float()


def _gaussian_folder(folder: Path, n: int, seed: int = 0) -> np.ndarray:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    u8 = np.clip(np.round((rng.normal(M, S, size=(n, 4, 4)) + 1) * 127.5), 0, 255).astype(np.uint8)
    for i, im in enumerate(u8):
        Image.fromarray(im, mode="L").save(folder / f"g{i:04d}.png")
    return u8.reshape(n, -1).astype(np.float64) / 127.5 - 1


def _ddpm_scheduler(**kw):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=len(BETAS), trained_betas=BETAS.tolist(), clip_sample=False, **kw)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_probe_terms_match_closed_forms_for_gaussian_data(tmp_path, variance):
    x0 = _gaussian_folder(tmp_path / "real", 1000)
    subject = GaussianOptimalDenoiser(_ddpm_scheduler(variance_type=variance))
    probe = build_probe("quality.diffusion_likelihood", {"timesteps": "all", "batch_size": 250, "n_resamples": 200})
    ctx = ProbeContext(device="cpu", seed=0, data={"real": tmp_path / "real"}, cache_dir=tmp_path / "c",
                       probe_id=probe.id)
    got = {f.metric: f for f in probe.run(subject, ctx)}
    d_ln2 = 16 * math.log(2)
    prior, diff, dec = closed_prior(x0) / d_ln2, closed_diffusion(x0, variance) / d_ln2, closed_decoder(x0) / d_ln2
    assert got["prior_bpd"].value == pytest.approx(prior.mean(), rel=1e-6)       # no noise in L_T
    # One noise draw per term: within 4 standard errors (the 95% bootstrap interval spans ~3.9 SE).
    for metric, ref in (("diffusion_bpd", diff.mean()), ("decoder_bpd", dec.mean()),
                        ("nll_bpd", prior.mean() + diff.mean() + dec.mean())):
        f = got[metric]
        assert abs(f.value - ref) < 4 * (f.ci.high - f.ci.low) / 3.92, (metric, f.value, ref)
        assert f.value == pytest.approx(ref, rel=0.05)
    total = got["nll_bpd"]
    assert total.value == pytest.approx(sum(got[m].value for m in ("prior_bpd", "diffusion_bpd", "decoder_bpd")))
    assert total.ci.low < total.value < total.ci.high and total.unit == "bits/dim" and total.n == 1000
    assert total.evidence["timesteps_per_image"] == len(BETAS) and total.evidence["variance_type"] == variance
    assert subject.calls == 4 * len(BETAS)  # 4 batches x (9 KL terms + the decoder)
    # A worse denoiser has a worse bound (the optimal one minimises every term).
    worse = GaussianOptimalDenoiser(subject.training_scheduler)
    worse.predict = lambda x_t, t: 1.2 * optimal_eps(x_t.double(), t).float()
    assert {f.metric: f for f in probe.run(worse, ctx)}["diffusion_bpd"].value > got["diffusion_bpd"].value


def test_stratified_probe_states_its_estimator(tmp_path):
    _gaussian_folder(tmp_path / "real", 40)
    probe = build_probe("quality.diffusion_likelihood", {"timesteps": 3, "n_resamples": 200})
    ctx = ProbeContext(device="cpu", seed=0, data={"real": tmp_path / "real"}, cache_dir=tmp_path / "c",
                       probe_id=probe.id)
    total = probe.run(GaussianOptimalDenoiser(_ddpm_scheduler()), ctx)[0]
    assert total.evidence["timesteps_per_image"] == 4 and "stratified" in total.evidence["estimator"]
    assert any("3 of 9 timesteps" in w for w in total.warnings)
    assert ctx.samples.offered == 40  # one row per image (its file and terms) for samples.parquet


# -- bad input -------------------------------------------------------------------------------------
def test_non_ddpm_scheduler_is_refused_naming_the_ones_that_apply(tmp_path):
    from diffusers import PNDMScheduler

    _gaussian_folder(tmp_path / "real", 4)
    probe = build_probe("quality.diffusion_likelihood", {})
    ctx = ProbeContext(device="cpu", data={"real": tmp_path / "real"}, cache_dir=tmp_path / "c", probe_id=probe.id)
    with pytest.raises(InputError, match=r"scheduler is PNDMScheduler.*DDPMScheduler, DDIMScheduler"):
        probe.run(GaussianOptimalDenoiser(PNDMScheduler(num_train_timesteps=10)), ctx)


@pytest.mark.parametrize("params, match", [
    ({"timesteps": 0}, "timesteps must be 'all' or an integer"),
    ({"timesteps": "some"}, "timesteps must be"),
    ({"variance": "learned"}, "variance must be one of"),
    ({"data": ""}, "data must be the name of a data input"),
    ({"n_images": 1}, "n_images must be an integer >= 2"),
])
def test_bad_params_are_spec_errors(params, match):
    with pytest.raises(SpecError, match=match):
        build_probe("quality.diffusion_likelihood", params)


def test_an_unsupported_variance_type_is_refused(tmp_path):
    _gaussian_folder(tmp_path / "real", 4)
    probe = build_probe("quality.diffusion_likelihood", {})
    ctx = ProbeContext(device="cpu", data={"real": tmp_path / "real"}, cache_dir=tmp_path / "c", probe_id=probe.id)
    with pytest.raises(InputError, match="variance_type 'learned' is not supported"):
        probe.run(GaussianOptimalDenoiser(_ddpm_scheduler(variance_type="learned")), ctx)


def likelihood_contract_inputs(tmp_path):
    """FAKES entry of tests/test_contract.py: the optimal Gaussian denoiser on 8 held-out images."""
    _gaussian_folder(tmp_path / "real", 8)
    return GaussianOptimalDenoiser(_ddpm_scheduler()), {"real": tmp_path / "real"}, {"n_resamples": 200}


def test_image_fidelity_gaussian_kl_is_the_kl_of_gaussians_fitted_to_the_features(tmp_path):
    """quality.image_fidelity's gaussian_kl against NumPy on the same extractor's features."""
    from audit.subjects.imagedata import iter_image_batches, list_images
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec
    from probes.quality.features import build_extractor
    from tests.image_fakes import write_image_folder

    gen = write_image_folder(tmp_path / "gen", 60, seed=1, shift=0.3)
    ref = write_image_folder(tmp_path / "ref", 60, seed=2)
    subject = load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(gen)), device="cpu",
                           cache_dir=tmp_path / "c")
    probe = build_probe("quality.image_fidelity", {"feature": "tests.image_fakes:tiny_feature_net",
                                                   "metrics": ["gaussian_kl"], "n_resamples": 50})
    ctx = ProbeContext(device="cpu", data={"reference": ref}, cache_dir=tmp_path / "c", probe_id=probe.id)
    (kl,) = probe.run(subject, ctx)
    fx = build_extractor("tests.image_fakes:tiny_feature_net", {}, device="cpu")

    def feats(folder):
        return np.concatenate([fx(b)[0].double().numpy() for b in iter_image_batches(list_images(folder))])

    fg, fr = feats(gen), feats(ref)
    mg, mr, sg, sr = fg.mean(0), fr.mean(0), np.cov(fg, rowvar=False), np.cov(fr, rowvar=False)
    inv = np.linalg.inv(sr)
    want = 0.5 * (np.trace(inv @ sg) + (mr - mg) @ inv @ (mr - mg) - fg.shape[1]
                  + np.linalg.slogdet(sr)[1] - np.linalg.slogdet(sg)[1])
    assert kl.metric == "gaussian_kl" and kl.value == pytest.approx(want, rel=1e-6)
    assert kl.ci.low <= kl.value <= kl.ci.high and kl.evidence["reverse_kl"] > 0
    # Fewer samples than feature dimensions: no KL, and the reason.
    small = build_probe("quality.image_fidelity", {"feature": "tests.image_fakes:tiny_feature_net",
                                                   "metrics": ["gaussian_kl"], "n_samples": 8, "n_resamples": 50})
    (nan,) = small.run(subject, ctx)
    assert math.isnan(nan.value) and "singular" in nan.warnings[-1]


class _DeadUnitNet(torch.nn.Module):
    """tiny_feature_net's features with two dead units (always 0) appended."""

    def __init__(self):
        super().__init__()
        from tests.image_fakes import tiny_feature_net

        self.net = tiny_feature_net()

    def forward(self, x):
        f = self.net.features(x)
        return torch.cat([f, torch.zeros(f.shape[0], 2)], 1)


def dead_unit_net():
    return _DeadUnitNet().eval()


def test_gaussian_kl_leaves_out_features_constant_in_both_sets(tmp_path):
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec
    from tests.image_fakes import write_image_folder

    gen = write_image_folder(tmp_path / "gen", 40, seed=1, shift=0.3)
    ref = write_image_folder(tmp_path / "ref", 40, seed=2)
    subject = load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(gen)), device="cpu",
                           cache_dir=tmp_path / "c")
    ctx = ProbeContext(device="cpu", data={"reference": ref}, cache_dir=tmp_path / "c", probe_id="quality.image_fidelity")
    params = {"metrics": ["gaussian_kl"], "n_resamples": 50, "feature_options": {"logits": False}}
    (dead,) = build_probe("quality.image_fidelity", {**params, "feature": "tests.test_diffusion_likelihood:dead_unit_net"}
                          ).run(subject, ctx)
    (live,) = build_probe("quality.image_fidelity", {**params, "feature": "tests.image_fakes:tiny_feature_net"}
                          ).run(subject, ctx)
    assert dead.value == pytest.approx(live.value, rel=1e-9) and dead.evidence["dims_used"] == 16
    assert any("2 of 18 feature dimension(s) constant" in w for w in dead.warnings)
