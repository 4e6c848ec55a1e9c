"""FGSM and PGD in plain torch: batched on the device, no host synchronisation in the step loop.

The attacks follow the reference formulation that ART implements (so that the two agree
exactly where no randomness is involved):

* a step moves ``x`` by ``eps_step * sign(g)`` (L-inf) or ``eps_step * g / ||g||_2`` (L2), where
  ``g`` is the gradient of the cross-entropy (ascending for untargeted attacks, descending towards
  the target for targeted ones); non-finite gradient entries are replaced by 0;
* the result is clipped to the input range, then the perturbation is projected onto the eps ball;
* PGD's random start is uniform in the ball (L-inf cube or L2 ball), clipped to the input range;
  with ``restarts > 1`` a later restart replaces the example where it succeeds and the kept one
  does not. FGSM is one step of size eps from the clean input.

Per sample the engine also flags a non-finite gradient (at any step) and an all-zero gradient
at the first step: the second is what saturated softmaxes, quantisation or ``argmax`` layers
give, and a robust accuracy measured through it is not to be trusted (gradient masking).

Everything inside the step loop stays on the device; the only host synchronisations are the
input checks before it. :func:`run_batched` splits a dataset into batches, picks the batch size
from free GPU memory, and halves it on out-of-memory.

Example:
    >>> import torch
    >>> from torch import nn  # noqa: F401 - the examples use it
    >>> torch.manual_seed(0)                                    # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    >>> res = pgd(model, x, y, eps=0.1, steps=5, input_range=(0.0, 1.0))
    >>> bool((res.x_adv - x).abs().max() <= 0.1 + 1e-6)
    True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import InputError, SpecError
from audit.subjects.classifier import InputSpaceModel
from probes.robustness.checks import (
    NORMS,
    Norm,
    check_budget,
    check_inputs,
    check_labels,
    eval_mode,
    looks_like_probabilities,
    perturbation_norms,
    resolve_model,
)

__all__ = [
    "NORMS",
    "AttackResult",
    "InputSpaceModel",
    "Norm",
    "NotDifferentiableError",
    "auto_batch_size",
    "check_inputs",
    "check_labels",
    "eval_mode",
    "fgsm",
    "looks_like_probabilities",
    "per_sample_start",
    "perturbation_norms",
    "pgd",
    "resolve_model",
    "run_batched",
]



class NotDifferentiableError(InputError):
    """The model's logits do not depend differentiably on its input (no gradient to attack)."""


@dataclass(frozen=True)
class AttackResult:
    """What an attack produced, per sample (all tensors on the attack's device).

    Attributes:
        x_adv: the adversarial inputs, same shape as ``x``.
        logits: float32 logits at ``x_adv`` (detached).
        success: bool [N]; untargeted: ``argmax != y``; targeted: ``argmax == target``.
        zero_grad: bool [N]; the loss gradient was exactly zero at the first step.
        nonfinite_grad: bool [N]; the gradient had a NaN or infinite entry at some step.
    """

    x_adv: torch.Tensor
    logits: torch.Tensor
    success: torch.Tensor
    zero_grad: torch.Tensor
    nonfinite_grad: torch.Tensor

    @staticmethod
    def cat(parts: list[AttackResult]) -> AttackResult:
        return AttackResult(*(torch.cat([getattr(p, f) for p in parts]) for f in
                              ("x_adv", "logits", "success", "zero_grad", "nonfinite_grad")))


# -- the attacks -----------------------------------------------------------------------------------
def fgsm(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: Norm = "linf", targeted: bool = False,
         input_range: tuple[float, float] | None = None, autocast: torch.dtype | None = None) -> AttackResult:
    """Fast gradient (sign) method: one step of size ``eps`` from ``x``.

    Args:
        model: a torch module, an :class:`InputSpaceModel` or a Classifier subject (logits out).
        x: inputs [N, ...] in the input range, on the model's device.
        y: int64 labels [N] (the targets when ``targeted``).
        eps: the budget in input units (``8 / 255`` for images in [0, 1]).
        norm: ``"linf"`` (sign of the gradient) or ``"l2"`` (normalised gradient).
        targeted: step towards ``y`` instead of away from it.
        input_range: needed when ``model`` does not carry one.
        autocast: e.g. ``torch.bfloat16`` for screening runs; None (float32) for gates.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> r = fgsm(net, torch.rand(3, 4), torch.tensor([0, 1, 0]), 0.05, input_range=(0.0, 1.0))
        >>> r.x_adv.shape, r.success.dtype
        (torch.Size([3, 4]), torch.bool)
    """
    return pgd(model, x, y, eps, norm=norm, steps=1, eps_step=eps, random_start=False, restarts=1,
               targeted=targeted, input_range=input_range, autocast=autocast)


def pgd(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: Norm = "linf", steps: int = 10,
        eps_step: float | None = None, random_start: bool = True, restarts: int = 1, targeted: bool = False,
        input_range: tuple[float, float] | None = None, generator: torch.Generator | None = None,
        autocast: torch.dtype | None = None, seed: int | None = None,
        sample_ids: torch.Tensor | None = None) -> AttackResult:
    """Projected gradient descent (Madry et al.) in an L-inf or L2 ball of radius ``eps``.

    Args:
        model, x, y, eps, norm, targeted, input_range, autocast: as for :func:`fgsm`.
        steps: gradient steps per restart.
        eps_step: step length in input units, as ART's ``eps_step`` (torchattacks' ``alpha``);
            default ``2.5 * eps / steps`` (Madry et al.). The probes' ``step_size`` parameter is a
            fraction of eps instead: they pass ``eps_step = step_size * eps``.
        random_start: start uniformly inside the ball (else at ``x``).
        restarts: independent random starts; a sample counts as broken if any restart breaks it.
        generator: the random starts' generator (a CPU one is turned into one seed for the device).
        seed: instead of ``generator``: each sample's random starts come from a generator seeded by
            ``seed``, the restart and the sample's id, so they do not depend on how the samples are
            batched or sharded over ranks (what the probes use).
        sample_ids: int [N], each sample's id for ``seed`` (its index in the whole data set);
            default ``0..N-1``.

    Returns:
        An :class:`AttackResult` whose ``x_adv`` satisfies ``||x_adv - x|| <= eps`` and lies in the
        input range.

    Raises:
        SpecError: eps outside the input range's budget, a bad norm, steps or restarts.
        InputError: ``x`` outside the input range.
        NotDifferentiableError: the logits have no gradient with respect to the input.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> r = pgd(net, torch.rand(3, 4), torch.tensor([0, 1, 0]), 0.5, norm="l2", input_range=(0.0, 1.0))
        >>> bool(((r.x_adv - r.x_adv.clamp(0, 1)).abs().max() == 0))
        True
    """
    fn, module, (lo, hi) = resolve_model(model, input_range)
    check_budget(eps, norm, (lo, hi), x[0].numel() if x.ndim else 1)
    alpha = _pgd_step_length(eps, steps, restarts, eps_step)
    if x.shape[0] != y.shape[0]:
        raise InputError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    check_inputs(x, (lo, hi))
    x = x.detach().float()
    y = y.detach().to(x.device, torch.long)
    if not random_start:
        restarts = 1  # identical runs
    if seed is not None and generator is not None:
        raise SpecError("pgd: give either a generator or a seed for the random starts, not both")
    if sample_ids is not None and len(sample_ids) != x.shape[0]:
        raise InputError(f"pgd: {len(sample_ids)} sample_ids for {x.shape[0]} samples")
    gen = _device_generator(generator, x.device) if random_start and seed is None else None
    # Ascend the loss (untargeted) or descend it towards the target: one sign for the whole loop.
    sign = -1.0 if targeted else 1.0
    amp = (torch.autocast(device_type=x.device.type, dtype=autocast) if autocast is not None
           else contextlib.nullcontext())

    best_x = x
    best_logits: torch.Tensor | None = None
    best_success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    zero_grad = torch.zeros_like(best_success)
    nonfinite = torch.zeros_like(best_success)
    with eval_mode(module), torch.enable_grad():
        for r in range(restarts):
            x_adv = x.clone()
            if random_start and eps > 0:
                noise = (_random_in_ball(x, eps, norm, gen) if seed is None
                         else per_sample_start(x, eps, norm, seed, r, sample_ids))
                x_adv = (x_adv + noise).clamp_(lo, hi)
            for i in range(steps):
                grad, x_adv = _loss_gradient(fn, x_adv, y, amp)
                finite = torch.isfinite(grad)
                nonfinite |= ~finite.flatten(1).all(1)
                grad = torch.where(finite, grad, torch.zeros_like(grad))
                if r == 0 and i == 0:
                    zero_grad = grad.flatten(1).abs().amax(1) == 0
                x_adv = _step(x_adv, grad, sign * alpha, norm).clamp_(lo, hi)
                x_adv = x + _project(x_adv - x, eps, norm)
            with torch.no_grad(), amp:
                logits = fn(x_adv).float()
            pred = logits.argmax(1)
            success = pred == y if targeted else pred != y
            if best_logits is None:
                best_x, best_logits, best_success = x_adv, logits, success
            else:
                take = success & ~best_success
                best_x = torch.where(take.view(-1, *[1] * (x.ndim - 1)), x_adv, best_x)
                best_logits = torch.where(take[:, None], logits, best_logits)
                best_success = best_success | success
    return AttackResult(best_x.detach(), best_logits.detach(), best_success, zero_grad, nonfinite)


def _pgd_step_length(eps: float, steps: int, restarts: int, eps_step: float | None) -> float:
    """The PGD step in input units, after checking ``steps``, ``restarts`` and ``eps_step``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SpecError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise SpecError(f"restarts must be an integer >= 1, got {restarts!r}")
    alpha = 2.5 * eps / steps if eps_step is None else eps_step
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        if eps == 0:
            return 0.0
        raise SpecError(f"eps_step (the PGD step, in input units) must be a positive number, got {eps_step!r}")
    return alpha


def _loss_gradient(fn: Callable[[torch.Tensor], torch.Tensor], x_adv: torch.Tensor, y: torch.Tensor,
                   amp: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of the summed cross-entropy at ``x_adv``, and ``x_adv`` detached."""
    x_adv.requires_grad_(True)
    with amp:
        logits = fn(x_adv)
    if not logits.requires_grad:
        raise NotDifferentiableError(
            "the classifier's logits do not depend differentiably on its input (the output has no "
            "gradient: a torch.no_grad, .detach(), argmax or non-torch step inside the model?); "
            "gradient attacks cannot run on it")
    loss = F.cross_entropy(logits.float(), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x_adv, allow_unused=True)
    if grad is None:
        raise NotDifferentiableError(
            "the classifier's logits do not depend on its input through autograd (its gradient "
            "with respect to the input is None: the input is detached inside the model)")
    return grad, x_adv.detach()


def _step(x: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return x + alpha * grad.sign()
    g = grad.flatten(1)
    n = g.norm(dim=1, keepdim=True)
    # 1/||g|| where it is positive, else 0: a zero gradient gives no step (as ART does).
    inv = torch.where(n > 0, n.reciprocal(), torch.zeros_like(n))
    return x + alpha * (g * inv).view_as(x)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    d = delta.flatten(1)
    n = d.norm(dim=1, keepdim=True)
    factor = torch.where(n > eps, eps / n.clamp_min(torch.finfo(n.dtype).tiny), torch.ones_like(n))
    return (d * factor).view_as(delta)


def _random_in_ball(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator | None) -> torch.Tensor:
    if norm == "linf":
        return (torch.rand(x.shape, device=x.device, generator=gen) * 2 - 1) * eps
    n, d = x.shape[0], x[0].numel()
    direction = torch.randn((n, d), device=x.device, generator=gen)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    # Radius eps * U^(1/d): uniform in the ball's volume (as ART's random_sphere).
    radius = eps * torch.rand((n, 1), device=x.device, generator=gen).pow(1.0 / d)
    return (direction * radius).view_as(x)


def per_sample_start(x: torch.Tensor, eps: float, norm: str, seed: int, restart: int,
                     sample_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Random starts uniform in the ball, each sample's from its own generator seeded by
    ``(seed, restart, sample id)``: the same noise whatever the batch or rank a sample lands in.

    Example:
        >>> x = torch.zeros(4, 3)
        >>> a = per_sample_start(x, 0.1, "linf", 7, 0)
        >>> torch.equal(a[2:], per_sample_start(x[2:], 0.1, "linf", 7, 0, torch.tensor([2, 3])))
        True
    """
    ids = range(x.shape[0]) if sample_ids is None else [int(i) for i in sample_ids]  # host ints, before the loop
    parts = []
    for i in ids:
        g = torch.Generator(device=x.device)
        g.manual_seed(_mix_seed(seed, restart, i))
        parts.append(_random_in_ball(x[:1], eps, norm, g))
    return torch.cat(parts) if parts else torch.zeros_like(x)


def _mix_seed(seed: int, restart: int, index: int) -> int:
    import hashlib

    digest = hashlib.blake2b(f"{int(seed)}:{restart}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if generator is None:
        return None
    if generator.device == torch.device(device) or (generator.device.type == torch.device(device).type == "cpu"):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())  # once, before any loop
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


# -- batching --------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def auto_batch_size(fn: Callable[[torch.Tensor], torch.Tensor], x_sample: torch.Tensor, *, n: int,
                    cpu_batch: int = 256, max_batch: int = 4096, memory_fraction: float = 0.6) -> int:
    """A batch size for attacking ``n`` inputs shaped like ``x_sample`` [k, ...].

    On CUDA it measures the peak memory of one forward and backward pass on 8 inputs and fills
    ``memory_fraction`` of the free memory (rounded down to a power of two, at most ``max_batch``);
    :func:`run_batched` halves it if that still runs out. On the CPU memory rarely binds and
    ``cpu_batch`` keeps the working set in cache.
    """
    if x_sample.device.type != "cuda":
        return max(1, min(n, cpu_batch))
    probe = x_sample[:1].expand(8, *x_sample.shape[1:]).clone().float().requires_grad_(True)
    torch.cuda.synchronize(x_sample.device)
    base = torch.cuda.memory_allocated(x_sample.device)
    torch.cuda.reset_peak_memory_stats(x_sample.device)
    try:
        with torch.enable_grad():
            out = fn(probe)
            if out.requires_grad:
                torch.autograd.grad(out.float().logsumexp(1).sum(), probe, allow_unused=True)
        peak = torch.cuda.max_memory_allocated(x_sample.device) - base
    except Exception as exc:
        if _is_oom(exc):
            return 1
        raise
    free, _total = torch.cuda.mem_get_info(x_sample.device)
    per_sample = max(peak / 8, 1.0)
    size = int(memory_fraction * free / per_sample)
    size = 2 ** int(math.log2(max(size, 1)))
    return max(1, min(n, size, max_batch))


def run_batched(attack: Callable[..., AttackResult], model: Any, x: torch.Tensor, y: torch.Tensor, *,
                batch_size: int | None = None, device: Any = None, sample_ids: torch.Tensor | None = None,
                **kwargs: Any) -> AttackResult:
    """Run ``attack(model, xb, yb, **kwargs)`` over ``x`` in batches on ``device``; concatenate.

    ``batch_size`` None picks one with :func:`auto_batch_size`; on out-of-memory the batch size is
    halved and the failed batch retried (down to 1, then the error is raised). With a ``seed`` in
    ``kwargs`` each batch gets its samples' ids (``sample_ids``, default ``0..N-1``), so that the
    per-sample random starts do not depend on the batch size.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> r = run_batched(fgsm, net, torch.rand(10, 4), torch.zeros(10, dtype=torch.long), batch_size=3,
        ...                 eps=0.1, input_range=(0.0, 1.0))
        >>> r.x_adv.shape
        torch.Size([10, 4])
    """
    n = x.shape[0]
    if n == 0:
        raise InputError("no inputs to attack")
    dev = torch.device(device) if device is not None else x.device
    fn = resolve_model(model, kwargs.get("input_range"))[0]
    size = batch_size or auto_batch_size(fn, x[:1].to(dev), n=n)
    if sample_ids is not None and len(sample_ids) != n:
        raise InputError(f"run_batched: {len(sample_ids)} sample_ids for {n} samples")
    ids = None
    if kwargs.get("seed") is not None:
        ids = torch.as_tensor(sample_ids if sample_ids is not None else range(n), dtype=torch.long)
    parts: list[AttackResult] = []
    start = 0
    while start < n:
        xb, yb = x[start:start + size].to(dev, non_blocking=True), y[start:start + size].to(dev, non_blocking=True)
        try:
            extra = {} if ids is None else {"sample_ids": ids[start:start + size]}
            parts.append(attack(model, xb, yb, **kwargs, **extra))
        except Exception as exc:
            if not _is_oom(exc) or size == 1:
                raise
            size = max(1, size // 2)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            continue
        start += xb.shape[0]
    return AttackResult.cat(parts)
