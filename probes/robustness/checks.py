"""The checks of what an attack runs on: the model resolved to a logits function and an input range, the
checks of its inputs, labels and budget, and perturbation norms. Shared by the plain-torch
attacks (:mod:`probes.robustness.attacks`, which re-exports these) and the ART backend.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch import nn

from audit.errors import InputError, SpecError

__all__ = ["NORMS", "Norm", "check_budget", "check_inputs", "check_labels", "eval_mode", "looks_like_probabilities",
           "perturbation_norms", "resolve_model"]

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")
#: Outputs that are non-negative, at most 1 and sum to 1 per row within this are probabilities.
_PROBABILITY_TOL = 1e-3


# -- the model -------------------------------------------------------------------------------------
def resolve_model(model: Any, input_range: tuple[float, float] | None = None
                  ) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module | None, tuple[float, float]]:
    """``(logits function, torch module or None, input range)`` for a module or a Classifier subject.

    A :class:`~audit.subjects.Classifier` (anything with ``logits`` and ``input_range``) is called
    through ``logits``; an :class:`InputSpaceModel` brings its own range; a bare module or callable
    needs ``input_range``.

    Raises:
        SpecError: no input range is known, or it is not ``low < high``.
    """
    if callable(getattr(model, "logits", None)) and not isinstance(model, nn.Module):
        fn, module = model.logits, getattr(model, "model", None)
        own = getattr(model, "input_range", None)
    else:
        fn, module, own = model, model if isinstance(model, nn.Module) else None, getattr(model, "input_range", None)
    rng = input_range if input_range is not None else own
    if rng is None:
        raise SpecError("the attack needs the model's input range, e.g. input_range=(0.0, 1.0)")
    lo, hi = float(rng[0]), float(rng[1])
    if not lo < hi:
        raise SpecError(f"input_range must be (low, high) with low < high, got {rng!r}")
    return fn, module if isinstance(module, nn.Module) else None, (lo, hi)


@contextlib.contextmanager
def eval_mode(module: nn.Module | None) -> Iterator[None]:
    """Put ``module`` in eval mode and restore every submodule's own train/eval flag afterwards.

    Example:
        >>> net = nn.Sequential(nn.Dropout(), nn.Linear(2, 2)).train()
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    if module is None or not hasattr(module, "modules"):
        yield
        return
    saved = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def check_inputs(x: torch.Tensor, input_range: tuple[float, float], *, what: str = "inputs") -> None:
    """Raise :class:`InputError` when ``x`` is not finite or leaves ``input_range`` (one sync)."""
    lo, hi = input_range
    if not x.is_floating_point():
        raise InputError(f"{what} must be floating point in {list(input_range)}, got dtype {x.dtype}")
    if x.numel() == 0:
        return
    stats = torch.stack([x.amin().float(), x.amax().float(), torch.isfinite(x).all().float()]).tolist()
    if stats[2] < 1:
        raise InputError(f"{what} contain NaN or infinite values")
    tol = 1e-6 * (hi - lo)
    if stats[0] < lo - tol or stats[1] > hi + tol:
        raise InputError(f"{what} lie in [{stats[0]:.4g}, {stats[1]:.4g}], outside the declared input range "
                         f"[{lo:g}, {hi:g}]; scale them to the range or declare the range the model expects "
                         "(subject.options.input_range)")


def check_labels(y: torch.Tensor, num_classes: int, *, what: str = "labels") -> None:
    """Raise :class:`InputError` when a label is not an integer class index in ``0..num_classes-1``."""
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1:
        raise InputError(f"{what} must be a 1-D integer tensor of class indices, got {y.dtype} of shape {list(y.shape)}")
    if y.numel() == 0:
        return
    lo, hi = torch.stack([y.min(), y.max()]).tolist()
    if lo < 0 or hi >= num_classes:
        raise InputError(f"{what} range over [{lo}, {hi}] but the classifier has {num_classes} classes "
                         f"(expected 0..{num_classes - 1})")


def looks_like_probabilities(out: torch.Tensor) -> bool:
    """Whether a model's outputs look like probabilities (rows in [0, 1] summing to 1), not logits.

    Cross-entropy on probabilities has tiny, saturating gradients: attacks through them are weak and
    robust accuracy is overstated. Log-probabilities are fine (cross-entropy is the same).

    Example:
        >>> looks_like_probabilities(torch.softmax(torch.randn(4, 3), 1)), looks_like_probabilities(torch.randn(4, 3))
        (True, False)
    """
    if out.ndim != 2 or out.numel() == 0 or out.shape[1] < 2:
        return False
    o = out.detach().float()
    ok = (o.min() >= 0) & (o.max() <= 1) & ((o.sum(1) - 1).abs().max() <= _PROBABILITY_TOL)
    return bool(ok)


def perturbation_norms(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Per-sample L-inf or L2 norm of ``delta`` [N, ...] (float32, [N])."""
    flat = delta.detach().flatten(1).float()
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def check_budget(eps: float, norm: str, input_range: tuple[float, float], dims: int) -> None:
    """Raise :class:`SpecError` for a bad norm, or an ``eps`` outside what the input range allows."""
    if norm not in NORMS:
        raise SpecError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    width = input_range[1] - input_range[0]
    limit = width if norm == "linf" else width * math.sqrt(dims)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 <= eps <= limit:
        what = "the input range's width" if norm == "linf" else "the input space's diameter (width * sqrt(dims))"
        raise SpecError(f"eps={eps!r} is outside the input range: an {norm} budget must be in [0, {limit:g}] "
                        f"({what}) for inputs in [{input_range[0]:g}, {input_range[1]:g}]")
