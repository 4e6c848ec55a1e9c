"""Probe ``robustness.detector_evasion``: how easily small perturbations hide generated content.

A detector is a classifier subject whose classes include "real" (e.g. ``("real", "fake")``). The
probe takes generated samples only and runs targeted PGD towards "real" at small budgets
(1/255 to 8/255 by default). It reports the clean detection rate, the share of initially detected
samples that the attack turns into "real" (the evasion rate), and the detection rate left under
attack, each with a Wilson interval. :func:`evasion_curve` is the reusable maths (the deepfake
probes call it on their own detectors).

Example (spec):
    subject: {kind: classifier, source: python, path: my_detectors:load, options: {input_shape: [3, 64, 64],
              class_names: [real, fake]}}
    data: {generated: generated.pt}        # x only (labels, if present, are ignored)
    probes:
      - id: robustness.detector_evasion
        params: {eps: ["1/255", "2/255", "4/255", "8/255"], steps: 10}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from audit.errors import InputError, SpecError
from audit.findings import Finding
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import wilson_interval
from probes.robustness.attacks import perturbation_norms, pgd, run_batched
from probes.robustness.checks import check_budget
from probes.robustness.classifier import check_threat_model, load_labelled_inputs, parse_eps

__all__ = ["DetectorEvasion", "evasion_curve", "real_class_index"]


def real_class_index(class_names: Sequence[str] | None, real_class: str | int, num_classes: int) -> int:
    """The index of the "real" class: by name (case-insensitive) or as an index.

    Example:
        >>> real_class_index(("Real", "Fake"), "real", 2), real_class_index(None, 1, 2)
        (0, 1)
    """
    if num_classes < 2:
        raise InputError(f"the detector returns {num_classes} logit(s); expected one per class (real, generated, ...) "
                         "— wrap a single-logit detector to return [0, z] logits")
    if isinstance(real_class, int) and not isinstance(real_class, bool):
        if not 0 <= real_class < num_classes:
            raise SpecError(f"real_class {real_class} is not a class index of this detector (0..{num_classes - 1})")
        return real_class
    names = [str(n).lower() for n in (class_names or ())]
    if str(real_class).lower() not in names:
        have = ", ".join(class_names) if class_names else "none (the subject declares no class_names)"
        raise InputError(f"the detector has no class named {real_class!r} (classes: {have}); set the probe's "
                         "real_class to its name or index, or declare subject.options.class_names")
    return names.index(str(real_class).lower())


def evasion_curve(detector: Any, x: torch.Tensor, real: int, budgets: Sequence[float], *, norm: str = "linf",
                  steps: int = 10, step_size: float | None = None, random_start: bool = True, restarts: int = 1,
                  batch_size: int | None = None, device: Any = None, seed: int | None = None,
                  sample_ids: torch.Tensor | None = None, dist: Any = None,
                  autocast: torch.dtype | None = None) -> dict[str, Any]:
    """Targeted PGD towards ``real`` on generated samples ``x``, at each budget.

    Returns (host tensors): ``detected`` bool [N] (clean prediction is not ``real``), and per
    budget ``fooled`` bool [N] (classified ``real`` under attack) and ``max_perturbation``.
    ``step_size`` is a fraction of each eps (default ``2.5 / steps``). Random starts are drawn
    per sample from ``seed`` and its id (``sample_ids``, default ``0..N-1``); with ``dist`` (an
    :class:`audit.distributed.Distributed`) each rank attacks its shard of ``x`` and the
    per-sample results are gathered in sample order.
    """
    dev = torch.device(device) if device is not None else x.device
    n = x.shape[0]
    mine = dist.shard(n) if dist is not None else range(n)
    ids = torch.arange(n) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.long)
    xs, ids = x[mine.start:mine.stop], ids[mine.start:mine.stop]
    cols = []  # per sample: detected, then fooled and perturbation norm per budget
    if len(mine):
        with torch.no_grad():
            clean = torch.cat([detector.logits(xb.to(dev)).float().argmax(1).cpu() for xb in xs.split(batch_size or 512)])
        cols.append((clean != real).double())
        target = torch.full((xs.shape[0],), real, dtype=torch.long)
        for eps in budgets:
            res = run_batched(pgd, detector, xs, target, batch_size=batch_size, device=dev, eps=eps, norm=norm,
                              steps=steps, eps_step=None if step_size is None else step_size * eps,
                              random_start=random_start, restarts=restarts, targeted=True, seed=seed,
                              sample_ids=ids, autocast=autocast)
            cols.append(res.success.double().cpu())
            cols.append(perturbation_norms(res.x_adv - xs.to(res.x_adv.device), norm).double().cpu())
    table = torch.stack(cols, 1) if cols else torch.zeros((0, 1 + 2 * len(budgets)), dtype=torch.float64)
    if dist is not None:
        table = dist.gather_tensor(table, mine)
    fooled = [table[:, 1 + 2 * j] > 0.5 for j in range(len(budgets))]
    max_pert = [float(table[:, 2 + 2 * j].max()) if n else 0.0 for j in range(len(budgets))]
    return {"detected": table[:, 0] > 0.5, "fooled": fooled, "max_perturbation": max_pert}


@register("robustness.detector_evasion")
@dataclass(frozen=True)
class DetectorEvasion:
    """Share of generated samples that small PGD perturbations make a detector call real.

    Findings: ``detection_rate`` (clean, over all generated samples); per ``eps``:
    ``evasion_rate`` (over the initially detected samples: the share turned into "real"),
    ``detection_rate_under_attack`` (over all samples) and ``max_perturbation``. Wilson intervals.
    """

    id: ClassVar[str] = "robustness.detector_evasion"
    applies_to: ClassVar[tuple[str, ...]] = ("classifier",)
    requires: ClassVar[tuple[str, ...]] = ("logits", "gradients")

    data: str = field(default="generated", metadata={"help": "named data input of generated samples (.pt/.npz/.safetensors with x)"})
    real_class: str | int = field(default="real", metadata={"help": "the detector's class for real content: its name or index"})
    eps: tuple[float | str, ...] = field(default=("1/255", "2/255", "4/255", "8/255"), metadata={"help": "budgets in input units, ascending"})
    norm: str = field(default="linf", metadata={"help": "threat model: linf or l2"})
    steps: int = field(default=10, metadata={"help": "PGD steps"})
    step_size: float | None = field(default=None, metadata={"help": "PGD step as a fraction of eps (default 2.5 / steps)"})
    random_start: bool = field(default=True, metadata={"help": "PGD starts uniformly inside the eps ball"})
    restarts: int = field(default=1, metadata={"help": "PGD random restarts"})
    max_samples: int | None = field(default=1000, metadata={"help": "most samples to attack (a seeded subset); null for all"})
    batch_size: int | None = field(default=None, metadata={"help": "batch size (default: from free GPU memory)"})
    precision: str = field(default="fp32", metadata={"help": "fp32 (for gates) or bf16 (autocast, screening)"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail, is_int = check.fail, check.is_int
        check.data_name("generated")
        if not (is_int(self.real_class) and self.real_class >= 0) and not (
                isinstance(self.real_class, str) and self.real_class.strip()):
            fail("real_class", "a class name or a non-negative class index")
        check_threat_model(check, "['1/255', '8/255']")
        if self.max_samples is not None and (not is_int(self.max_samples) or self.max_samples < 1):
            fail("max_samples", "an integer >= 1 or null")
        if self.batch_size is not None and (not is_int(self.batch_size) or self.batch_size < 1):
            fail("batch_size", "an integer >= 1 or null")
        if self.precision not in ("fp32", "bf16"):
            fail("precision", "'fp32' or 'bf16'")

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        lo, hi = subject.input_range
        real = real_class_index(subject.class_names, self.real_class, subject.num_classes)
        x, _ = load_labelled_inputs(ctx.input_path(self.data), input_range=(lo, hi),
                                    input_shape=subject.input_shape, need_labels=False)
        n_all = x.shape[0]
        if n_all == 0:
            raise InputError(f"{self.id}: the data input '{self.data}' holds no samples")
        notes: list[str] = []
        if self.max_samples is not None and n_all > self.max_samples:
            idx = torch.randperm(n_all, generator=ctx.rng("samples"))[:self.max_samples].sort().values
            x = x[idx]
            notes.append(f"a seeded subset of {self.max_samples} of the {n_all} samples was attacked (max_samples)")
        budgets = [parse_eps(e) for e in self.eps]
        for v, label in budgets:
            try:
                check_budget(v, self.norm, (lo, hi), x[0].numel())
            except SpecError as exc:
                raise SpecError(f"{self.id}: eps {label}: {exc}") from None
        curve = evasion_curve(
            subject, x, real, [v for v, _ in budgets], norm=self.norm, steps=self.steps, step_size=self.step_size,
            random_start=self.random_start, restarts=self.restarts, batch_size=self.batch_size or ctx.batch_size,
            device=getattr(subject, "device", None) or ctx.device, seed=ctx.child_seed("pgd"), dist=ctx.dist,
            autocast=torch.bfloat16 if self.precision == "bf16" else None)
        n = x.shape[0]
        detected = curve["detected"]
        n_det = int(detected.sum())
        real_name = subject.class_names[real] if subject.class_names else str(real)
        ev = {"real_class": real_name, "attack": "targeted pgd", "norm": self.norm, "steps": self.steps}
        out = [Finding(probe=self.id, metric="detection_rate", value=n_det / n, higher_is_better=True,
                       ci=wilson_interval(n_det, n), n=n, warnings=tuple(notes), evidence=ev)]
        points = []
        for (eps, label), fooled, max_pert in zip(budgets, curve["fooled"], curve["max_perturbation"]):
            s = {"eps": label}
            k_ev = int((fooled & detected).sum())
            still = int((~fooled & detected).sum())
            warn = [] if n_det else ["no sample was detected as generated to begin with: the evasion rate is nan"]
            out.append(Finding(probe=self.id, metric="evasion_rate", value=k_ev / n_det if n_det else math.nan,
                               higher_is_better=False, ci=wilson_interval(k_ev, n_det), n=n_det, slice=s,
                               warnings=(*notes, *warn), evidence={**ev, "over": "initially detected samples"}))
            out.append(Finding(probe=self.id, metric="detection_rate_under_attack", value=still / n,
                               higher_is_better=True, ci=wilson_interval(still, n), n=n, slice=s,
                               warnings=tuple(notes), evidence=ev))
            over = max_pert > eps * (1 + 1e-5) + 1e-7
            out.append(Finding(probe=self.id, metric="max_perturbation", value=max_pert, higher_is_better=False,
                               unit=f"{self.norm} input units", n=n, slice=s,
                               warnings=(f"the largest perturbation {max_pert:.6g} exceeds the budget {eps:.6g}",)
                               if over else (), evidence={"budget": eps, "within_budget": not over}))
            points.append({"eps": eps, "label": label, "evasion_rate": k_ev / n_det if n_det else None,
                           "detection_rate_under_attack": still / n})
        out[0] = replace(out[0], evidence={**ev, "curve": points})
        return out
