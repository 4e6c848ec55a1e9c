"""The variational bound of a discrete-time diffusion model, and the KL of two Gaussians.

Notation of Ho et al. (2020), with diffusers' 0-based timesteps: index ``i = 0..T-1`` is the
paper's ``t = i + 1``; ``alpha_bar[i] = prod_{j<=i} (1 - beta_j)``. For data ``x0`` in
[-1, 1] (uint8 images scaled by ``x / 127.5 - 1``) the negative ELBO, in nats per image, is

    L = L_T + sum_{i=1}^{T-1} L_i + L_0
    L_T = KL(q(x_T | x0) || N(0, I))                        (prior; closed form, no model)
    L_i = E_q KL(q(x_{i-1} | x_i, x0) || p(x_{i-1} | x_i))   (Gaussian KLs)
    L_0 = -E_q log p(x0 | x_1)                               (discretised Gaussian decoder)

``p(x_{i-1} | x_i)`` has the mean of the posterior at the model's prediction of ``x0`` (from
its epsilon, x0 or v output) and a variance chosen as in the reference implementations of
Ho et al. and Nichol & Dhariwal (2021): ``fixed_small`` the posterior variance, ``fixed_large``
``beta``, ``learned_range`` the model's interpolation between the two in log space; at
``i = 0`` the posterior variance is 0, so ``posterior_variance[1]`` stands in for it (both
codes' ``posterior_log_variance_clipped``). Each term is one Monte-Carlo draw of ``x_i``
(``calc_bpd_loop`` of improved-diffusion). Divided by ``D * ln 2`` (D = C*H*W) it is in bits
per dimension, comparable to published numbers on 8-bit images (CIFAR-10: about 3.7).

Example:
    >>> import torch
    >>> proc = GaussianDiffusion.from_betas(torch.linspace(1e-4, 0.02, 1000))
    >>> x0 = torch.zeros(2, 3, 8, 8)
    >>> proc.prior_kl(x0).shape
    torch.Size([2])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "GaussianDiffusion",
    "bootstrap_gaussian_kl",
    "VARIANCE_TYPES",
    "discretized_gaussian_log_likelihood",
    "gaussian_kl",
    "normal_kl",
    "stratified_timesteps",
]

#: Model variances the bound is computed for.
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
#: What the model's output predicts.
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), in nats.

    Example:
        >>> float(normal_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0)))
        0.5
    """
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, *,
                                        bins: int = 256) -> torch.Tensor:
    """Elementwise log-probability of ``x`` (on the grid of ``bins`` levels spanning [-1, 1])
    under N(mean, exp(log_scale)^2) integrated over its bin; the edge bins take the tails.

    Exact normal CDFs (``log_ndtr``), not the tanh approximation of the reference code.

    Example:
        >>> x = torch.tensor([-1.0, 0.0039215686, 1.0])
        >>> p = discretized_gaussian_log_likelihood(x, torch.zeros(3), torch.zeros(3)).exp()
        >>> bool(p[0] > 0.49 and p[2] > 0.49 and p[1] < 0.01)
        True
    """
    half = 1.0 / (bins - 1)
    inv = torch.exp(-log_scale)
    upper = (x - mean + half) * inv
    lower = (x - mean - half) * inv
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # log(Phi(u) - Phi(l)) = log Phi(u) + log(1 - Phi(l)/Phi(u)), stable where both are tiny;
    # for bins far in the upper tail use the survival functions instead.
    upper_tail = lower > 0
    mid_lo = torch.where(upper_tail, -upper, lower)
    mid_hi = torch.where(upper_tail, -lower, upper)
    log_hi = torch.special.log_ndtr(mid_hi)
    log_lo = torch.special.log_ndtr(mid_lo)
    mid = log_hi + torch.log1p(-torch.exp((log_lo - log_hi).clamp(max=0.0)).clamp(max=1 - 1e-12))
    edge_lo = x <= -1.0 + half / 2
    edge_hi = x >= 1.0 - half / 2
    return torch.where(edge_lo, log_cdf_upper, torch.where(edge_hi, log_sf_lower, mid))


def gaussian_kl(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu1, sigma1) || N(mu2, sigma2)) of two multivariate Gaussians, in nats (float64).

    ``0.5 [tr(S2^-1 S1) + (mu2 - mu1)^T S2^-1 (mu2 - mu1) - d + ln det S2 - ln det S1]``,
    through Cholesky factors. NaN when a covariance is not positive definite (fewer samples
    than feature dimensions).

    Example:
        >>> I = torch.eye(2, dtype=torch.float64)
        >>> float(gaussian_kl(torch.zeros(2), I, torch.ones(2), I))
        1.0
    """
    mu1, mu2 = mu1.double(), mu2.double()
    s1, s2 = sigma1.double(), sigma2.double()
    l1, info1 = torch.linalg.cholesky_ex(s1)
    l2, info2 = torch.linalg.cholesky_ex(s2)
    if int(info1) or int(info2):
        return torch.tensor(math.nan, dtype=torch.float64, device=mu1.device)
    d = mu1.shape[0]
    a = torch.linalg.solve_triangular(l2, l1, upper=False)  # L2^-1 L1: tr(S2^-1 S1) = ||A||_F^2
    diff = torch.linalg.solve_triangular(l2, (mu2 - mu1).unsqueeze(1), upper=False)
    logdet2 = 2 * torch.log(torch.diagonal(l2)).sum()
    logdet1 = 2 * torch.log(torch.diagonal(l1)).sum()
    return 0.5 * ((a ** 2).sum() + (diff ** 2).sum() - d + logdet2 - logdet1)


def stratified_timesteps(T: int, k: int, n: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps for the middle terms ``L_1 .. L_{T-1}`` of ``n`` images.

    ``k >= T - 1``: every timestep, weight 1. Otherwise the indices 1..T-1 are cut into ``k``
    strata of (almost) equal size and each image draws one timestep uniformly in each; its
    weight is the stratum's size (the inverse of its probability), so ``sum_j w_j L_{t_j}`` is
    an unbiased estimate of ``sum_i L_i``.

    Returns:
        ``(t, w)``, both [n, m] with m = min(k, T - 1): int64 timesteps and float64 weights.
    """
    if T < 2:
        return torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0, dtype=torch.float64)
    if k >= T - 1:
        t = torch.arange(1, T).expand(n, -1).clone()
        return t, torch.ones(n, T - 1, dtype=torch.float64)
    edges = torch.linspace(1, T, k + 1, dtype=torch.float64).round().long()  # strata [e_j, e_{j+1})
    lo, size = edges[:-1], edges[1:] - edges[:-1]
    u = torch.rand(n, k, generator=generator, dtype=torch.float64)
    t = lo + (u * size).floor().long().clamp(max=size - 1)
    return t, size.to(torch.float64).expand(n, -1).clone()


@dataclass(frozen=True)
class GaussianDiffusion:
    """The forward process of a discrete-time DDPM (float64 schedules) and the terms of its bound.

    Attributes:
        betas: [T] noise schedule.
        variance_type: one of :data:`VARIANCE_TYPES`.
        prediction_type: one of :data:`PREDICTION_TYPES`.
        clip_denoised: clip the predicted x0 to [-1, 1] before forming the mean (as sampling does
            when the scheduler's ``clip_sample`` is on).
    """

    betas: torch.Tensor
    variance_type: str = "fixed_small"
    prediction_type: str = "epsilon"
    clip_denoised: bool = False

    @classmethod
    def from_betas(cls, betas: torch.Tensor, **kwargs) -> GaussianDiffusion:
        b = torch.as_tensor(betas, dtype=torch.float64).flatten().cpu()
        if b.numel() < 1 or not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must be a non-empty sequence in (0, 1)")
        if kwargs.get("variance_type", "fixed_small") not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {kwargs['variance_type']!r}")
        if kwargs.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {kwargs['prediction_type']!r}")
        return cls(b, **kwargs)

    # schedules (float64, CPU; indexed then moved) ---------------------------------------------
    @property
    def T(self) -> int:
        return int(self.betas.numel())

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self.betas, 0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> torch.Tensor:
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> torch.Tensor:
        pv = self.posterior_variance
        return torch.log(torch.cat([pv[1:2], pv[1:]])) if self.T > 1 else torch.log(self.betas)

    def _at(self, v: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return v.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    # the process ---------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        ab = self._at(self.alphas_cumprod, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x0)."""
        ab, abp, b = (self._at(v, t, x0) for v in (self.alphas_cumprod, self.alphas_cumprod_prev, self.betas))
        mean = (abp.sqrt() * b / (1 - ab)) * x0 + ((1 - b).sqrt() * (1 - abp) / (1 - ab)) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, t, x0).expand_as(x0)

    def p_mean_logvar(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(x_{t-1} | x_t) from the model's raw output."""
        c = x_t.shape[1]
        if self.variance_type == "learned_range":
            if model_out.shape[1] != 2 * c:
                raise ValueError(f"learned_range needs 2*{c} output channels, got {model_out.shape[1]}")
            model_out, v = model_out[:, :c], model_out[:, c:]
            min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._at(torch.log(self.betas), t, x_t)
            frac = (v + 1) / 2
            logvar = frac * max_log + (1 - frac) * min_log
        else:
            model_out = model_out[:, :c]
            if self.variance_type == "fixed_large":
                large = torch.cat([self.posterior_variance[1:2], self.betas[1:]]) if self.T > 1 else self.betas
                logvar = self._at(torch.log(large), t, x_t).expand_as(x_t)
            else:
                logvar = self._at(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        ab = self._at(self.alphas_cumprod, t, x_t)
        if self.prediction_type == "epsilon":
            x0 = (x_t - (1 - ab).sqrt() * model_out) / ab.sqrt()
        elif self.prediction_type == "sample":
            x0 = model_out
        else:  # v_prediction
            x0 = ab.sqrt() * x_t - (1 - ab).sqrt() * model_out
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, logvar

    # the bound -----------------------------------------------------------------------------------
    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T per image [B], nats."""
        t = torch.full((x0.shape[0],), self.T - 1, dtype=torch.long)
        ab = self._at(self.alphas_cumprod, t, x0)
        kl = normal_kl(ab.sqrt() * x0, torch.log(1 - ab).expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0))
        return kl.flatten(1).sum(1)

    def vb_term(self, model: ModelFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Per image [B], nats: L_t (Gaussian KL) where ``t > 0``, the decoder NLL L_0 where ``t == 0``."""
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t).to(x0.dtype)
        mean, logvar = self.p_mean_logvar(out, x_t, t)
        true_mean, true_logvar = self.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, true_logvar, mean, logvar).flatten(1).sum(1)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).flatten(1).sum(1)
        return torch.where(t.to(x0.device) == 0, nll, kl)

    def elbo_terms(self, model: ModelFn, x0: torch.Tensor, *, timesteps: torch.Tensor, weights: torch.Tensor,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The bound's terms per image (nats, [B] each): ``prior`` L_T, ``diffusion`` the
        (weighted) sum of L_t over ``timesteps`` [B, m], ``decoder`` L_0. Noise is drawn on the
        CPU from ``generator`` (the same terms on any device); the model is called once per
        column of ``timesteps`` and once for L_0."""
        b = x0.shape[0]
        diffusion = torch.zeros(b, dtype=x0.dtype, device=x0.device)
        for j in range(timesteps.shape[1]):
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device, x0.dtype)
            term = self.vb_term(model, x0, timesteps[:, j], noise)
            diffusion = diffusion + weights[:, j].to(x0.device, x0.dtype) * term
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device, x0.dtype)
        decoder = self.vb_term(model, x0, torch.zeros(b, dtype=torch.long), noise)
        return {"prior": self.prior_kl(x0), "diffusion": diffusion, "decoder": decoder}


def bootstrap_gaussian_kl(fake: torch.Tensor, *, real: torch.Tensor | None = None,
                          real_mean: torch.Tensor | None = None, real_cov: torch.Tensor | None = None,
                          n_resamples: int = 100, generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`gaussian_kl` (generated || real) of ``n_resamples`` bootstrap resamples of the
    features, float64 [n_resamples]; the real side is resampled when given as features, else
    its Gaussian (e.g. from a statistics file) is held fixed. As for FID."""
    from probes.quality.image_functional import _counts, _weighted_moments

    g = generator or torch.Generator().manual_seed(0)
    xf = fake.double()
    wf = _counts(xf.shape[0], n_resamples, g, xf.device)
    if real is None and (real_mean is None or real_cov is None):
        raise ValueError("give the real features, or their mean and covariance")
    xr = real.double() if real is not None else None
    wr = _counts(xr.shape[0], n_resamples, g, xr.device) if xr is not None else None
    out = torch.empty(n_resamples, dtype=torch.float64, device=xf.device)
    for b in range(n_resamples):
        mf, cf = _weighted_moments(xf, wf[b])
        mr, cr = _weighted_moments(xr, wr[b]) if xr is not None else (real_mean, real_cov)
        out[b] = gaussian_kl(mf, cf, mr, cr)
    return out
