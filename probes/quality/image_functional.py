"""The maths of the image fidelity probes, as pure functions (tensors in, tensors out).

* Fréchet distance (FID) between two Gaussians, in float64: ``||mu1 - mu2||^2 + tr(S1) +
  tr(S2) - 2 tr((S1 S2)^1/2)``. The trace of the matrix square root is computed from the
  eigenvalues of the symmetric ``S1^1/2 S2 S1^1/2`` (same eigenvalues as ``S1 S2``), so it
  needs only symmetric eigendecompositions, which are fast and stable on the GPU.
* :class:`FeatureMoments`: streaming mean and covariance, accumulated on the device in
  float64 around a shift (the first batch's mean), which avoids the cancellation of the
  plain ``sum(x x^T) - n mu mu^T`` formula; mergeable across processes.
* KID (Bińkowski et al., 2018): the unbiased polynomial-kernel MMD² averaged over random
  subsets, all subsets of a chunk in one batched matmul.
* Inception Score (Salimans et al., 2016) from logits.
* Precision and recall of Kynkäänniemi et al. (2019): the share of one set that falls in
  the union of k-nearest-neighbour balls of the other.
* Bootstrap resamples of FID, KID (full-sample U-statistic) and IS, drawn as multinomial
  count matrices so that each resample is a few matrix products.

Example:
    >>> import torch
    >>> mu, s = torch.zeros(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    >>> float(frechet_distance(mu, s, mu + 1, 4 * s))   # 3 + 3 + 12 - 2 * 2 * 3
    6.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "FeatureMoments",
    "bootstrap_fid",
    "bootstrap_inception_score",
    "bootstrap_kid",
    "frechet_distance",
    "inception_score",
    "kid",
    "kid_subset_indices",
    "mmd2_unbiased",
    "percentile_interval",
    "poly_kernel",
    "precision_recall",
    "sqrtm_psd",
    "trace_sqrt_product",
]


def sqrtm_psd(sigma: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (float64).

    Tiny negative eigenvalues from rounding are clamped to 0.

    Example:
        >>> sqrtm_psd(torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64))).diagonal().tolist()
        [2.0, 3.0]
    """
    s = sigma.double()
    s = (s + s.T) / 2
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor, *, sqrt1: torch.Tensor | None = None) -> torch.Tensor:
    """``tr((sigma1 sigma2)^1/2)`` for symmetric PSD matrices, via ``eigvalsh(S1^1/2 S2 S1^1/2)``.

    ``sqrt1`` (the square root of ``sigma1``) may be passed when it is reused.
    """
    r = sqrtm_psd(sigma1) if sqrt1 is None else sqrt1
    m = r @ sigma2.double() @ r
    m = (m + m.T) / 2
    return torch.linalg.eigvalsh(m).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor, *,
                     sqrt1: torch.Tensor | None = None) -> torch.Tensor:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), as a float64 scalar tensor.

    Equals ``||mu1 - mu2||² + tr(S1 + S2 - 2 sqrtm(S1 S2))`` (the FID of Heusel et al., 2017),
    with the trace of the square root taken from eigenvalues (no complex ``sqrtm``).

    Example:
        >>> e = torch.eye(2, dtype=torch.float64)
        >>> float(frechet_distance(torch.zeros(2), e, torch.zeros(2), e))
        0.0
    """
    mu1, mu2 = mu1.double(), mu2.double()
    s1, s2 = sigma1.double(), sigma2.double()
    diff = mu1 - mu2
    return diff.dot(diff) + s1.trace() + s2.trace() - 2 * trace_sqrt_product(s1, s2, sqrt1=sqrt1)


@dataclass
class FeatureMoments:
    """Streaming mean and covariance of feature vectors, accumulated in float64 on their device.

    Sums are kept around a fixed shift ``c`` (the first batch's mean): ``s1 = sum(x - c)``,
    ``s2 = sum((x - c)(x - c)^T)``. Then ``mean = c + s1 / n`` and
    ``cov = (s2 - s1 s1^T / n) / (n - 1)``, which stays accurate when the features have a
    large mean (the plain formula subtracts two large, nearly equal numbers).

    Example:
        >>> m = FeatureMoments()
        >>> m.update(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        >>> m.update(torch.tensor([[5.0, 10.0]]))
        >>> m.n, m.mean.tolist(), m.cov[0, 0].item()
        (3, [3.0, 6.0], 4.0)
    """

    n: int = 0
    shift: torch.Tensor | None = None
    s1: torch.Tensor | None = None
    s2: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add a batch [B, D] (any float dtype; summed in float64 on its device)."""
        x = features.detach().double()
        if x.ndim != 2:
            raise ValueError(f"features must be [batch, dim], got shape {tuple(x.shape)}")
        if self.shift is None:
            self.shift = x.mean(0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        xc = x - self.shift
        self.s1 += xc.sum(0)
        self.s2.addmm_(xc.T, xc)
        self.n += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        if self.n == 0 or self.shift is None:
            raise ValueError("no features were added")
        return self.shift + self.s1 / self.n

    @property
    def cov(self) -> torch.Tensor:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        c = (self.s2 - torch.outer(self.s1, self.s1) / self.n) / (self.n - 1)
        return (c + c.T) / 2

    def all_reduce(self) -> None:
        """Sum the moments over a torch.distributed group (every rank must use the same shift:
        rank 0's is broadcast first)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or self.shift is None:
            return
        shift0 = self.shift.clone()
        dist.broadcast(shift0, 0)
        # Re-centre this rank's sums on rank 0's shift: x - c0 = (x - c) + (c - c0).
        d = self.shift - shift0
        self.s2 += torch.outer(self.s1, d) + torch.outer(d, self.s1) + self.n * torch.outer(d, d)
        self.s1 += self.n * d
        self.shift = shift0
        n = torch.tensor([self.n], dtype=torch.float64, device=self.s1.device)
        for t in (self.s1, self.s2, n):
            dist.all_reduce(t)
        self.n = int(n.item())


def poly_kernel(x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, gamma: float | None = None,
                coef: float = 1.0) -> torch.Tensor:
    """``(gamma <x, y> + coef) ** degree`` for batched [..., m, D] inputs (gamma default 1/D)."""
    g = 1.0 / x.shape[-1] if gamma is None else gamma
    return (x @ y.transpose(-1, -2) * g + coef) ** degree


def mmd2_unbiased(k_xx: torch.Tensor, k_xy: torch.Tensor, k_yy: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² from kernel matrices [..., m, m] (equal set sizes, as KID uses)."""
    m = k_xx.shape[-1]
    sxx = k_xx.sum((-1, -2)) - k_xx.diagonal(dim1=-2, dim2=-1).sum(-1)
    syy = k_yy.sum((-1, -2)) - k_yy.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (sxx + syy) / (m * (m - 1)) - 2 * k_xy.sum((-1, -2)) / (m * m)


def kid_subset_indices(n_real: int, n_fake: int, *, subsets: int, subset_size: int,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors [subsets, subset_size] for the real and the generated side.

    Drawn in torchmetrics' order (``randperm(n_real)``, then ``randperm(n_fake)``, per subset),
    so that the same seed gives the same subsets as its KernelInceptionDistance.
    """
    if subset_size < 2 or subset_size > min(n_real, n_fake):
        raise ValueError(f"subset_size must be in 2 .. min(n_real, n_fake) = {min(n_real, n_fake)}, "
                         f"got {subset_size}")
    real, fake = [], []
    for _ in range(subsets):
        real.append(torch.randperm(n_real, generator=generator)[:subset_size])
        fake.append(torch.randperm(n_fake, generator=generator)[:subset_size])
    return torch.stack(real), torch.stack(fake)


def kid(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
        gamma: float | None = None, coef: float = 1.0, generator: torch.Generator | None = None,
        indices: tuple[torch.Tensor, torch.Tensor] | None = None,
        chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel Inception Distance: mean and (population) standard deviation of the unbiased
    polynomial-kernel MMD² over random subsets, and the per-subset values.

    Computed in float64 on the features' device, a chunk of subsets per batched matmul.

    Args:
        real, fake: features [N, D].
        indices: explicit subsets (from :func:`kid_subset_indices`); drawn with ``generator``
            otherwise.
    """
    if indices is None:
        indices = kid_subset_indices(real.shape[0], fake.shape[0], subsets=subsets, subset_size=subset_size,
                                     generator=generator)
    ir, iff = (i.to(real.device) for i in indices)
    s, m = ir.shape
    d = real.shape[1]
    chunk = chunk or max(1, int(2**27 // max(1, m * max(m, d))))  # about 1 GiB of float64 per chunk
    values = []
    xr, xf = real.double(), fake.double()
    for a in range(0, s, chunk):
        fr, ff = xr[ir[a:a + chunk]], xf[iff[a:a + chunk]]
        kw = {"degree": degree, "gamma": gamma, "coef": coef}
        values.append(mmd2_unbiased(poly_kernel(fr, fr, **kw), poly_kernel(fr, ff, **kw), poly_kernel(ff, ff, **kw)))
    per_subset = torch.cat(values)
    return per_subset.mean(), per_subset.std(unbiased=False), per_subset


def inception_score(logits: torch.Tensor, *, splits: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` per split of consecutive samples:
    mean and (population) standard deviation over splits, and the per-split scores.

    Example:
        >>> # Two confident, different classes: p(y) uniform over 2, KL = log 2 for each image.
        >>> s, _, _ = inception_score(torch.tensor([[100.0, 0.0], [0.0, 100.0]]), splits=1)
        >>> round(float(s), 6)
        2.0
    """
    logp = torch.log_softmax(logits.double(), dim=1)
    scores = []
    for part in logp.chunk(splits, dim=0):
        p = part.exp()
        log_py = torch.logsumexp(part, dim=0) - math.log(part.shape[0])
        kl = (p * (part - log_py)).sum(1).mean()
        scores.append(kl.exp())
    s = torch.stack(scores)
    return s.mean(), s.std(unbiased=False), s


def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    # k + 1: the nearest "neighbour" of a point in its own set is itself, at distance 0.
    return torch.cat([torch.cdist(x[a:a + chunk], x).kthvalue(k + 1, dim=1).values
                      for a in range(0, x.shape[0], chunk)])


def _inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([(torch.cdist(points[a:a + chunk], centres) <= radii).any(dim=1)
                      for a in range(0, points.shape[0], chunk)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3,
                     chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN manifolds.

    Precision: the share of generated samples inside some real sample's ball (radius: the
    distance to its k-th nearest real neighbour). Recall: the share of real samples inside
    some generated sample's ball. Distances in float32 (as in the paper's code), chunked.

    Returns:
        ``(precision, recall, in_real_manifold [n_fake] bool, in_fake_manifold [n_real] bool)``.
    """
    if k < 1 or k >= min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k must be in 1 .. min(n_real, n_fake) - 1, got {k}")
    r, f = real.float(), fake.float()
    in_real = _inside_any_ball(f, r, _kth_nn_radius(r, k, chunk), chunk)
    in_fake = _inside_any_ball(r, f, _kth_nn_radius(f, k, chunk), chunk)
    return in_real.double().mean(), in_fake.double().mean(), in_real, in_fake


# -- bootstrap -----------------------------------------------------------------------------------
def _counts(n: int, n_resamples: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Multinomial resample counts [n_resamples, n] (each row sums to n), float64."""
    idx = torch.randint(0, n, (n_resamples, n), generator=generator)
    c = torch.zeros(n_resamples, n, dtype=torch.float64)
    c.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return c.to(device)


def _weighted_moments(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = w.sum()
    mu = (w @ x) / n
    xc = x - mu
    cov = (xc.T * w) @ xc / (n - 1)
    return mu, (cov + cov.T) / 2


def bootstrap_fid(fake: torch.Tensor, *, real: torch.Tensor | None = None,
                  real_mean: torch.Tensor | None = None, real_cov: torch.Tensor | None = None,
                  n_resamples: int = 100, generator: torch.Generator | None = None) -> torch.Tensor:
    """FID of ``n_resamples`` bootstrap resamples, float64 [n_resamples].

    The generated features are resampled; the real ones too when given as features
    (``real``), else the reference Gaussian (``real_mean``/``real_cov``, e.g. from a
    statistics file) is held fixed.
    """
    g = generator or torch.Generator().manual_seed(0)
    xf = fake.double()
    wf = _counts(xf.shape[0], n_resamples, g, xf.device)
    if real is not None:
        xr = real.double()
        wr = _counts(xr.shape[0], n_resamples, g, xr.device)
    else:
        if real_mean is None or real_cov is None:
            raise ValueError("give the real features, or their mean and covariance")
        fixed_sqrt = sqrtm_psd(real_cov)
    out = torch.empty(n_resamples, dtype=torch.float64, device=xf.device)
    for b in range(n_resamples):
        mf, cf = _weighted_moments(xf, wf[b])
        if real is not None:
            mr, cr = _weighted_moments(xr, wr[b])
            out[b] = frechet_distance(mr, cr, mf, cf)
        else:
            out[b] = frechet_distance(real_mean, real_cov, mf, cf, sqrt1=fixed_sqrt)
    return out


def bootstrap_kid(real: torch.Tensor, fake: torch.Tensor, *, n_resamples: int = 100, degree: int = 3,
                  gamma: float | None = None, coef: float = 1.0, max_samples: int = 4096,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Bootstrap resamples [n_resamples] of the full-sample unbiased MMD² (the quantity KID's
    subsets estimate), from the kernel matrices of up to ``max_samples`` samples per side.

    For resample counts ``w`` the U-statistic over the resampled multiset is
    ``(w^T K w - sum_i w_i K_ii) / (n (n - 1))`` (pairs of distinct positions), so all
    resamples cost three matrix products.
    """
    g = generator or torch.Generator().manual_seed(0)
    if real.shape[0] > max_samples:
        real = real[torch.randperm(real.shape[0], generator=g)[:max_samples].to(real.device)]
    if fake.shape[0] > max_samples:
        fake = fake[torch.randperm(fake.shape[0], generator=g)[:max_samples].to(fake.device)]
    xr, xf = real.double(), fake.double()
    kw = {"degree": degree, "gamma": gamma, "coef": coef}
    nr, nf = xr.shape[0], xf.shape[0]
    wr = _counts(nr, n_resamples, g, xr.device)
    wf = _counts(nf, n_resamples, g, xf.device)

    def within(k: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
        quad = ((w @ k) * w).sum(1)
        return (quad - w @ k.diagonal()) / (n * (n - 1))

    k_rr = poly_kernel(xr, xr, **kw)
    t_rr = within(k_rr, wr, nr)
    del k_rr
    k_ff = poly_kernel(xf, xf, **kw)
    t_ff = within(k_ff, wf, nf)
    del k_ff
    k_rf = poly_kernel(xr, xf, **kw)
    t_rf = ((wr @ k_rf) * wf).sum(1) / (nr * nf)
    return t_rr + t_ff - 2 * t_rf


def bootstrap_inception_score(logits: torch.Tensor, *, splits: int = 10, n_resamples: int = 100,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Inception Score (mean over splits) of bootstrap resamples of the images, [n_resamples]."""
    g = generator or torch.Generator().manual_seed(0)
    n = logits.shape[0]
    out = torch.empty(n_resamples, dtype=torch.float64)
    for b in range(n_resamples):
        idx = torch.randint(0, n, (n,), generator=g).to(logits.device)
        out[b] = inception_score(logits[idx], splits=splits)[0]
    return out


def percentile_interval(values: torch.Tensor, confidence: float) -> tuple[float, float] | None:
    """The percentile interval of bootstrap values (finite ones), or None."""
    v = values.detach().double().cpu()
    v = v[torch.isfinite(v)]
    if v.numel() < 2:
        return None
    a = (1 - confidence) / 2
    q = torch.quantile(v, torch.tensor([a, 1 - a], dtype=torch.float64))
    return float(q[0]), float(q[1])

