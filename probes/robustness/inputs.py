"""What the robustness probes share: the threat model's parameters, budgets such as ``"8/255"``,
and labelled inputs read safely from ``.pt`` / ``.npz`` / ``.safetensors`` files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from audit.errors import InputError, SpecError
from audit.probe import ParamCheck, ProbeContext
from probes.robustness.attacks import check_inputs

__all__ = ["check_threat_model", "load_labelled_inputs", "parse_eps", "subsample"]

_X_KEYS = ("x", "images", "inputs")
_Y_KEYS = ("y", "labels", "targets")


def check_threat_model(check: ParamCheck, example_eps: str) -> None:
    """The attack parameters the robustness probes share: ``eps`` (ascending budgets), ``norm``,
    ``steps``, ``step_size``, ``random_start`` and ``restarts`` (a :class:`SpecError` otherwise)."""
    p, fail = check.params, check.fail
    if not isinstance(p.eps, tuple) or not p.eps:
        fail("eps", f"a non-empty list of budgets, e.g. {example_eps}")
    values = [parse_eps(e, where=f"{p.id}: eps")[0] for e in p.eps]
    if any(b <= a for a, b in zip(values, values[1:])):
        fail("eps", "strictly ascending budgets")
    if p.norm not in ("linf", "l2"):
        fail("norm", "'linf' or 'l2'")
    check.int_at_least("steps", 1)
    if p.step_size is not None and (not check.is_num(p.step_size) or not 0 < p.step_size <= 10):
        fail("step_size", "a fraction of eps in (0, 10], or null for 2.5 / steps")
    if not isinstance(p.random_start, bool):
        fail("random_start", "true or false")
    check.int_at_least("restarts", 1)


def parse_eps(value: float | int | str, *, where: str = "eps") -> tuple[float, str]:
    """A budget and its label: ``"8/255"`` -> ``(0.0313..., "8/255")``, ``0.1`` -> ``(0.1, "0.1")``.

    Example:
        >>> parse_eps("8/255")[1], round(parse_eps("8/255")[0], 5), parse_eps(0.25)
        ('8/255', 0.03137, (0.25, '0.25'))
    """
    if isinstance(value, bool):
        raise SpecError(f"{where}: expected a number or a fraction such as '8/255', got {value!r}")
    if isinstance(value, (int, float)):
        v, label = float(value), f"{float(value):g}"
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            v, label = float(Fraction(text)), text
        except (ValueError, ZeroDivisionError):
            raise SpecError(f"{where}: expected a number or a fraction such as '8/255', got {value!r}") from None
    else:
        raise SpecError(f"{where}: expected a number or a fraction such as '8/255', got {value!r}")
    if not math.isfinite(v) or v <= 0:
        raise SpecError(f"{where}: a budget must be a positive finite number, got {value!r}")
    return v, label


def load_labelled_inputs(path: str | Path, *, input_range: tuple[float, float], input_shape: Sequence[int] = (),
                         need_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs ``x`` [N, *input_shape] (float32, in ``input_range``) and labels ``y`` [N] from a file.

    Files: ``.pt``/``.pth`` (``torch.save`` of ``{"x": ..., "y": ...}`` or an ``(x, y)`` pair, read
    with ``weights_only=True``: no code runs), ``.npz`` (arrays ``x``, ``y``; no pickles) or
    ``.safetensors`` (tensors ``x``, ``y``). ``images``/``labels`` are accepted for ``x``/``y``.
    uint8 inputs are read as 0..255 images and scaled to the input range.

    Raises:
        InputError: unreadable file, missing keys, wrong shapes, values outside the range.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        if suffix in (".pt", ".pth"):
            obj = torch.load(p, map_location="cpu", weights_only=True)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                obj = {k: torch.from_numpy(z[k]) for k in z.files}
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p))
        else:
            raise InputError(f"{p}: unsupported input file; expected .pt, .npz or .safetensors with tensors x and y")
    except InputError:
        raise
    except Exception as exc:  # corrupt or foreign file: say which and why
        raise InputError(f"{p}: cannot read the inputs: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    if isinstance(obj, torch.Tensor):
        x, y = obj, None
    elif isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    elif isinstance(obj, dict):
        x = next((obj[k] for k in _X_KEYS if k in obj), None)
        y = next((obj[k] for k in _Y_KEYS if k in obj), None)
        if x is None:
            raise InputError(f"{p}: no inputs found; expected a tensor under one of {list(_X_KEYS)} "
                             f"(keys found: {sorted(map(str, obj))})")
    else:
        raise InputError(f"{p}: expected a dict with tensors x and y, or an (x, y) pair; got {type(obj).__name__}")
    if not isinstance(x, torch.Tensor) or (y is not None and not isinstance(y, torch.Tensor)):
        raise InputError(f"{p}: x and y must be tensors")
    lo, hi = input_range
    if x.dtype == torch.uint8:
        x = x.float() / 255.0 * (hi - lo) + lo
    elif not x.is_floating_point():
        raise InputError(f"{p}: inputs must be floating point in [{lo:g}, {hi:g}] or uint8 images, got {x.dtype}")
    x = x.float()
    if input_shape and tuple(x.shape[1:]) != tuple(input_shape):
        raise InputError(f"{p}: inputs have shape {list(x.shape)}; the classifier takes [N, {', '.join(map(str, input_shape))}]")
    check_inputs(x, input_range, what=f"{p}: inputs")
    if y is None:
        if need_labels:
            raise InputError(f"{p}: no labels found; expected an integer tensor under one of {list(_Y_KEYS)}")
        return x, None
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.dtype.is_floating_point:
        if not torch.equal(y, y.round()):
            raise InputError(f"{p}: labels must be integer class indices, got fractional values")
        y = y.long()
    if y.shape[0] != x.shape[0]:
        raise InputError(f"{p}: {x.shape[0]} inputs but {y.shape[0]} labels")
    return x, y.long()


def subsample(x: torch.Tensor, y: torch.Tensor, max_samples: int | None, ctx: ProbeContext
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """At most ``max_samples`` samples (a seeded subset, in data order) and their indices in the data."""
    n = x.shape[0]
    if n == 0:
        raise InputError("no samples to attack: the data input is empty")
    if max_samples is None or n <= max_samples:
        return x, y, torch.arange(n), []
    idx = torch.randperm(n, generator=ctx.rng("samples"))[:max_samples].sort().values
    return x[idx], y[idx], idx, [f"a seeded subset of {max_samples} of the {n} samples was attacked (max_samples)"]
