"""Sliced Wasserstein distances in torch: the Laplacian-pyramid SWD of Karras et al. (2018)
and the sliced Wasserstein distance between two feature sets.

SWD (ProGAN, "Progressive Growing of GANs", Karras et al. 2018, appendix D): each image is
decomposed into a Laplacian pyramid (5-tap binomial filter ``[1, 4, 6, 4, 1] / 16``, mirror
padding, downsample by 2; a level is the image minus the upsampled next level; the last
level is the low-pass residual). From each level ``patches_per_image`` random 7x7
neighbourhoods are cut; each set's descriptors are normalised per channel by their own mean
and standard deviation (as the reference code does; ``normalize="joint"`` uses both sets'),
projected on random unit directions, sorted, and the mean absolute difference of the sorted
projections is the distance (W1 along each direction, averaged). Reported x1e3, their units.

Example:
    >>> a, b = torch.randn(500, 8), torch.randn(500, 8) + 0.5
    >>> d = random_directions(8, 64, generator=torch.Generator().manual_seed(0))
    >>> float(sliced_wasserstein(a, b, d)) > 0
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["BINOMIAL_5", "laplacian_pyramid", "reconstruct_pyramid", "pyr_down", "pyr_up",
           "random_directions", "sliced_wasserstein", "projected_wasserstein",
           "sorted_wasserstein", "resorted", "patch_descriptors", "normalize_descriptors",
           "pyramid_levels"]

#: The 5-tap binomial (Gaussian) filter of the pyramid, as in OpenCV's pyrDown.
BINOMIAL_5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Separable 5x5 binomial convolution with mirror ("reflect", edge not repeated) padding."""
    c = x.shape[1]
    k = (BINOMIAL_5 * gain ** 0.5).to(x)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur then keep every second row and column (``cv2.pyrDown``); ``x`` is [N, C, H, W] float."""
    return _blur(x)[:, :, ::2, ::2]


def pyr_up(x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Insert zeros between samples and blur with 4x the filter (``cv2.pyrUp``), cropped to ``size``."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    up = _blur(up, gain=4.0)  # the 2-D filter x4 (x2 in each separable pass)
    if size is not None:
        up = up[:, :, :size[0], :size[1]]
    return up


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The Laplacian pyramid of ``x`` ([N, C, H, W], float): ``levels`` tensors, finest first;
    the last is the low-pass residual, so :func:`reconstruct_pyramid` returns ``x`` exactly."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    pyr = [x.float()]
    for _ in range(1, levels):
        low = pyr_down(pyr[-1])
        pyr[-1] = pyr[-1] - pyr_up(low, tuple(pyr[-1].shape[2:]))
        pyr.append(low)
    return pyr


def reconstruct_pyramid(pyr: Sequence[torch.Tensor]) -> torch.Tensor:
    """The image a :func:`laplacian_pyramid` was made from."""
    x = pyr[-1]
    for level in reversed(pyr[:-1]):
        x = pyr_up(x, tuple(level.shape[2:])) + level
    return x


def pyramid_levels(size: int, min_resolution: int = 16) -> list[int]:
    """The resolutions of the SWD pyramid of a ``size``-pixel image: halve while >= ``min_resolution``."""
    res, out = size, []
    while res >= min_resolution:
        out.append(res)
        res //= 2
    return out


def patch_descriptors(level: torch.Tensor, per_image: int, *, size: int = 7,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """``per_image`` random ``size`` x ``size`` patches of each image of ``level``:
    [N * per_image, C, size, size], image by image (the rows of image i are
    ``i * per_image ... (i + 1) * per_image - 1``). Patch centres lie at least ``size // 2``
    pixels inside the border, drawn uniformly as in the reference code."""
    n, c, h, w = level.shape
    r = size // 2
    if h < size or w < size:
        raise ValueError(f"a {h}x{w} pyramid level is smaller than a {size}x{size} patch")
    m = n * per_image
    gen = generator
    ys = torch.randint(r, h - r, (m,), generator=gen)
    xs = torch.randint(r, w - r, (m,), generator=gen)
    img = torch.arange(n).repeat_interleave(per_image)
    off = torch.arange(-r, r + 1)
    rows = (ys[:, None] + off[None, :]).to(level.device)  # [m, size]
    cols = (xs[:, None] + off[None, :]).to(level.device)
    img = img.to(level.device)
    # level[img, :, rows, cols] -> [m, size, size, C]
    patches = level[img[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return patches.permute(0, 3, 1, 2).contiguous()


def normalize_descriptors(*descs: torch.Tensor) -> list[torch.Tensor]:
    """Subtract the per-channel mean and divide by the per-channel standard deviation over all
    the given descriptor sets together ([M, C, k, k] each), then flatten to [M, C*k*k].
    Call it on one set at a time for the reference code's per-set normalisation."""
    allx = torch.cat([d.double() for d in descs])
    mean = allx.mean(dim=(0, 2, 3), keepdim=True)
    std = allx.std(dim=(0, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-12)
    return [((d.double() - mean) / std).reshape(d.shape[0], -1) for d in descs]


def random_directions(dim: int, n: int, *, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` random unit directions in ``dim`` dimensions, uniform on the sphere: [n, dim]
    (rows, as POT's ``projections`` argument is laid out transposed: pass ``.T``)."""
    d = torch.randn(n, dim, generator=generator, dtype=dtype)
    return d / d.norm(dim=1, keepdim=True)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, directions: torch.Tensor, *, p: int = 1,
                       weights_a: torch.Tensor | None = None, weights_b: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Sliced p-Wasserstein distance of two point sets along ``directions`` ([K, D]):
    ``(mean_k W_p^p(a @ d_k, b @ d_k)) ** (1/p)`` with uniform weights, POT's definition.

    With equal sizes W_p along a direction is the mean of ``|sorted(a) - sorted(b)|^p``; with
    unequal sizes the two quantile functions are compared on the union of their breakpoints.
    ``weights_a``/``weights_b`` ([n_a], [n_b], each summing to 1, e.g. bootstrap counts over n)
    replace the uniform weights. For ``p=1`` this is ProGAN's SWD before the x1e3.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or directions.shape[1] != a.shape[1]:
        raise ValueError(f"sets of shape {tuple(a.shape)}, {tuple(b.shape)} and directions "
                         f"{tuple(directions.shape)} do not match: expected [n, D], [m, D], [K, D]")
    d = directions.to(device=a.device, dtype=torch.float64)
    return projected_wasserstein(a.double() @ d.T, b.double() @ d.T, p=p, weights_a=weights_a, weights_b=weights_b)


def projected_wasserstein(pa: torch.Tensor, pb: torch.Tensor, *, p: int = 1, weights_a: torch.Tensor | None = None,
                          weights_b: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`sliced_wasserstein` from the projections themselves ([n, K] and [m, K], one column
    per direction)."""
    if weights_a is None and weights_b is None:
        sa = pa.T.contiguous().sort(dim=1).values  # [K, n]: a contiguous sort per direction
        sb = pb.T.contiguous().sort(dim=1).values
        return sorted_wasserstein(sa, sb, p=p).mean().pow(1.0 / p)
    wa = _weights(weights_a, pa.shape[0], pa)
    wb = _weights(weights_b, pb.shape[0], pb)
    return _quantile_wasserstein(pa, pb, wa, wb, p).mean().pow(1.0 / p)


def sorted_wasserstein(sa: torch.Tensor, sb: torch.Tensor, *, p: int = 1) -> torch.Tensor:
    """W_p^p per row of two uniformly weighted 1-D samples given sorted ([K, n] and [K, m]).

    Equal sizes pair the order statistics; unequal sizes integrate the two quantile functions
    over the union of their steps ``i/n`` and ``j/m`` (the same for every row)."""
    n, m = sa.shape[1], sb.shape[1]
    if n == m:
        return (sa - sb).abs().pow(p).mean(dim=1)
    qs = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                    torch.arange(1, m + 1, dtype=torch.float64) / m]).sort().values
    prev = torch.cat([qs.new_zeros(1), qs[:-1]])
    mid, delta = (qs + prev) / 2, qs - prev
    ja = (mid * n).floor().long().clamp(max=n - 1).to(sa.device)
    jb = (mid * m).floor().long().clamp(max=m - 1).to(sb.device)
    return ((sa[:, ja] - sb[:, jb]).abs().pow(p) * delta.to(sa)).sum(dim=1)


def resorted(sorted_vals: torch.Tensor, order: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The sorted values of a bootstrap resample without sorting again.

    ``sorted_vals`` and ``order`` ([K, n]) are a row-wise sort of the sample and its
    permutation; ``counts`` ([n], summing to n) how often the resample draws each point. The
    resample's sorted row repeats each sorted value as often as its point was drawn."""
    k, n = sorted_vals.shape
    if int(counts.sum()) != n:
        raise ValueError(f"bootstrap counts sum to {int(counts.sum())}, expected the sample size {n}")
    reps = counts.to(sorted_vals.device)[order].reshape(-1)  # every row's counts sum to n
    return sorted_vals.reshape(-1).repeat_interleave(reps).view(k, n)


def _weights(w: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=like.device)
    w = w.to(device=like.device, dtype=torch.float64)
    return w / w.sum()


def _quantile_wasserstein(pa: torch.Tensor, pb: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor,
                          p: int) -> torch.Tensor:
    """W_p^p per column of two weighted 1-D samples, by integrating |F_a^-1 - F_b^-1|^p."""
    sa, ia = pa.sort(dim=0)
    sb, ib = pb.sort(dim=0)
    ca = wa[ia].cumsum(dim=0)  # [n, K]
    cb = wb[ib].cumsum(dim=0)
    qs = torch.cat([ca, cb]).sort(dim=0).values.clamp(max=1.0)  # breakpoints, [n + m, K]
    prev = torch.cat([torch.zeros_like(qs[:1]), qs[:-1]])
    delta = qs - prev
    ja = torch.searchsorted(ca.T.contiguous(), (prev.T.contiguous() + delta.T * 0.5)).T.clamp(max=pa.shape[0] - 1)
    jb = torch.searchsorted(cb.T.contiguous(), (prev.T.contiguous() + delta.T * 0.5)).T.clamp(max=pb.shape[0] - 1)
    va = sa.gather(0, ja)
    vb = sb.gather(0, jb)
    return (delta * (va - vb).abs().pow(p)).sum(dim=0)
