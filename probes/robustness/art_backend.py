"""The same attacks through the Adversarial Robustness Toolbox (``backend: art``): the cross-check.

ART's ``FastGradientMethod`` and ``ProjectedGradientDescent`` (its PyTorch implementation) run on
the same torch module, with the same budget, step size, steps, random start and restarts as
:mod:`probes.robustness.attacks`. Without random start the two give the same adversarial
examples (to float rounding); with it, they draw different starts and agree within the
sampling interval. ART works on NumPy arrays batch by batch, computes parameter gradients it
does not need, and syncs with the host at every step: it is the reference, not the fast path.

Example:
    >>> res = art_pgd(model, x, y, eps=8 / 255, steps=10, input_range=(0.0, 1.0))   # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from audit.errors import InputError, require
from probes.robustness.attacks import (
    AttackResult,
    Norm,
    check_inputs,
    eval_mode,
    resolve_model,
)
from probes.robustness.checks import check_budget

__all__ = ["ART_DEFAULT_BATCH_SIZE", "art_classifier", "art_fgsm", "art_pgd"]

#: The batch size ART's attacks use unless told otherwise.
ART_DEFAULT_BATCH_SIZE = 32


def art_classifier(model: Any, *, input_shape: tuple[int, ...], num_classes: int,
                   input_range: tuple[float, float] | None = None) -> tuple[Any, torch.nn.Module, tuple[float, float]]:
    """An ART ``PyTorchClassifier`` around the torch module of ``model`` (clip values = input range).

    Returns ``(estimator, module, input_range)``.

    Raises:
        InputError: ``model`` has no torch module (ART needs one).
    """
    require("art", extra="robustness", purpose="backend: art (the Adversarial Robustness Toolbox)")
    from art.estimators.classification import PyTorchClassifier

    _fn, module, rng = resolve_model(model, input_range)
    if module is None:
        raise InputError("backend: art needs the classifier's torch module (subject.model); this subject has none")
    device = next(iter(module.buffers()), None) if next(iter(module.parameters()), None) is None \
        else next(iter(module.parameters()))
    device_type = "gpu" if device is not None and device.device.type == "cuda" else "cpu"
    est = PyTorchClassifier(model=module, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(input_shape),
                            nb_classes=int(num_classes), clip_values=rng, device_type=device_type)
    return est, module, rng


def _result(est: Any, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: np.ndarray,
            targeted: bool, batch_size: int) -> AttackResult:
    adv = torch.from_numpy(x_adv).to(x.device)
    logits = torch.from_numpy(est.predict(x_adv, batch_size=batch_size)).to(x.device).float()
    pred = logits.argmax(1)
    success = pred == y if targeted else pred != y
    unknown = torch.zeros_like(success)  # ART does not report per-sample gradient problems
    return AttackResult(adv, logits, success, unknown, unknown)


def art_fgsm(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float, *, num_classes: int, norm: Norm = "linf",
             targeted: bool = False, input_range: tuple[float, float] | None = None,
             batch_size: int = ART_DEFAULT_BATCH_SIZE) -> AttackResult:
    """FGSM through ART's ``FastGradientMethod`` (same arguments as :func:`attacks.fgsm`)."""
    from art.attacks.evasion import FastGradientMethod

    est, module, rng = art_classifier(model, input_shape=tuple(x.shape[1:]), num_classes=num_classes,
                                      input_range=input_range)
    check_budget(eps, norm, rng, x[0].numel())
    check_inputs(x, rng)
    with eval_mode(module):  # ART sets eval mode itself and never restores it
        attack = FastGradientMethod(est, norm=np.inf if norm == "linf" else 2, eps=float(eps), eps_step=float(eps),
                                    targeted=targeted, batch_size=batch_size)
        x_np = x.detach().float().cpu().numpy()
        x_adv = attack.generate(x_np, y=y.detach().cpu().numpy())
        return _result(est, module, x, y.to(x.device), x_adv, targeted, batch_size)


def art_pgd(model: Any, x: torch.Tensor, y: torch.Tensor, eps: float, *, num_classes: int, norm: Norm = "linf",
            steps: int = 10, eps_step: float | None = None, random_start: bool = True, restarts: int = 1,
            targeted: bool = False, input_range: tuple[float, float] | None = None,
            batch_size: int = ART_DEFAULT_BATCH_SIZE, seed: int | None = None) -> AttackResult:
    """PGD through ART's ``ProjectedGradientDescent`` (same arguments as :func:`attacks.pgd`).

    ART draws its random starts from NumPy's global generator; ``seed`` seeds it first.
    """
    from art.attacks.evasion import ProjectedGradientDescent

    est, module, rng = art_classifier(model, input_shape=tuple(x.shape[1:]), num_classes=num_classes,
                                      input_range=input_range)
    check_budget(eps, norm, rng, x[0].numel())
    check_inputs(x, rng)
    alpha = 2.5 * eps / steps if eps_step is None else eps_step
    if seed is not None:
        np.random.seed(seed % (2**32))
    with eval_mode(module):
        attack = ProjectedGradientDescent(
            est, norm=np.inf if norm == "linf" else 2, eps=float(eps), eps_step=float(max(alpha, math.ulp(0.0))),
            max_iter=int(steps), targeted=targeted, num_random_init=int(restarts) if random_start else 0,
            batch_size=batch_size, verbose=False)
        x_np = x.detach().float().cpu().numpy()
        x_adv = attack.generate(x_np, y=y.detach().cpu().numpy())
        return _result(est, module, x, y.to(x.device), x_adv, targeted, batch_size)
