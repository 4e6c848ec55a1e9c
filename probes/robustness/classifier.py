"""Probe ``robustness.classifier``: clean and robust accuracy of a classifier under FGSM and PGD.

For each budget eps and each attack it reports robust accuracy over all samples (a sample counts
as robust when it is classified correctly both clean and under attack) and, separately labelled,
over the initially correct ones; the attack success rate; per-class robust accuracy and the worst
class; the robust-accuracy-versus-eps curve (and its normalised area); the largest perturbation
actually applied (checked against the budget); and sanity flags: robust accuracy that does not
fall towards zero at a large eps (possible gradient masking), FGSM beating PGD, zero or
non-finite gradients, and a model that returns probabilities instead of logits.

Example (spec):
    data: {images: heldout.pt}          # torch.save({"x": float [N, C, H, W] in the range, "y": int64 [N]})
    probes:
      - id: robustness.classifier
        params: {eps: ["2/255", "4/255", "8/255"], attacks: [fgsm, pgd], steps: 10}
    gates:
      - {metric: "robustness.classifier/robust_accuracy[attack=pgd,eps=8/255]", min: 0.4, use: ci_low}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from audit.errors import InputError, SpecError
from audit.findings import Finding
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import bootstrap_ci, wilson_interval
from probes.robustness.attacks import (
    AttackResult,
    _check_budget,
    check_inputs,
    check_labels,
    fgsm,
    looks_like_probabilities,
    perturbation_norms,
    pgd,
    run_batched,
)

__all__ = ["RobustnessClassifier", "check_threat_model", "load_labelled_inputs", "parse_eps", "robust_accuracy_area"]

ATTACKS = ("fgsm", "pgd")
#: Robust accuracy above this at the sanity eps flags possible gradient masking.
MASKING_THRESHOLD = 0.1
#: FGSM "beats" PGD when it breaks this share of the samples more than PGD does (paired, same samples).
FGSM_BEATS_PGD_MARGIN = 0.02
_X_KEYS = ("x", "images", "inputs")
_Y_KEYS = ("y", "labels", "targets")


# -- pure helpers ----------------------------------------------------------------------------------
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


def robust_accuracy_area(eps: Sequence[float], correct: torch.Tensor) -> torch.Tensor:
    """Per-sample normalised area under the correct-versus-eps curve (trapezoids from eps 0).

    ``correct`` is bool [len(eps) + 1, N]: row 0 clean, then one row per eps (ascending). The mean
    over samples is the area under the robust-accuracy curve divided by the largest eps (1 for a
    model no attack in the range breaks).

    Example:
        >>> robust_accuracy_area([1.0, 2.0], torch.tensor([[True], [True], [False]]))
        tensor([0.7500])
    """
    grid = torch.tensor([0.0, *eps], dtype=torch.float64)
    c = correct.double()
    widths = (grid[1:] - grid[:-1])[:, None]
    return ((c[1:] + c[:-1]) / 2 * widths).sum(0) / grid[-1]


# -- the probe -------------------------------------------------------------------------------------
@register("robustness.classifier")
@dataclass(frozen=True)
class RobustnessClassifier:
    """Robust accuracy of a classifier under FGSM and PGD, per eps, with sanity checks.

    Findings (slices ``attack``, ``eps``, ``class``): ``clean_accuracy``; ``robust_accuracy``
    (over all samples) and ``robust_accuracy_on_correct`` (over the initially correct ones);
    ``attack_success_rate``; per-class ``robust_accuracy`` and ``worst_class_robust_accuracy``;
    ``robust_accuracy_area`` (normalised area under the robust-accuracy-versus-eps curve, the
    curve in its evidence); ``max_perturbation`` (must be within eps); ``large_eps_robust_accuracy``
    and the flags ``gradient_masking_suspected``, ``fgsm_beats_pgd``; ``zero_gradient_rate``.
    Intervals: Wilson for proportions, bootstrap over samples for the area.
    """

    id: ClassVar[str] = "robustness.classifier"
    applies_to: ClassVar[tuple[str, ...]] = ("classifier",)
    requires: ClassVar[tuple[str, ...]] = ("logits", "gradients")

    data: str = field(default="images", metadata={"help": "named data input: .pt/.npz/.safetensors with x (inputs in the subject's range, or uint8 images) and y (labels)"})
    eps: tuple[float | str, ...] = field(default=("1/255", "2/255", "4/255", "8/255"), metadata={"help": "budgets in input units, ascending; numbers or fractions such as '8/255'"})
    attacks: tuple[str, ...] = field(default=ATTACKS, metadata={"help": "attacks to run: fgsm, pgd"})
    norm: str = field(default="linf", metadata={"help": "threat model: linf or l2"})
    steps: int = field(default=10, metadata={"help": "PGD steps per restart"})
    step_size: float | None = field(default=None, metadata={"help": "PGD step as a fraction of eps (default 2.5 / steps)"})
    random_start: bool = field(default=True, metadata={"help": "PGD starts uniformly inside the eps ball"})
    restarts: int = field(default=1, metadata={"help": "PGD random restarts (a sample is broken if any breaks it)"})
    targeted: bool = field(default=False, metadata={"help": "targeted attacks towards a random other class per sample"})
    sanity_eps: float | None = field(default=None, metadata={"help": "large eps of the gradient-masking check (default: the input range's width for linf, its diameter for l2)"})
    per_class: bool = field(default=True, metadata={"help": "per-class robust accuracy findings (at most 50 classes)"})
    max_samples: int | None = field(default=1000, metadata={"help": "most samples to attack (a seeded subset); null for all"})
    batch_size: int | None = field(default=None, metadata={"help": "batch size (default: from free GPU memory, halved on out-of-memory)"})
    precision: str = field(default="fp32", metadata={"help": "fp32 (for gates) or bf16 (autocast, for screening)"})
    backend: str = field(default="torch", metadata={"help": "torch (this engine) or art (the same attacks through ART)"})
    n_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples for the area's interval"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail, is_int = check.fail, check.is_int
        check.data_name("images")
        check_threat_model(check, "['2/255', '8/255']")
        if not self.attacks or not all(a in ATTACKS for a in self.attacks) or len(set(self.attacks)) != len(self.attacks):
            fail("attacks", f"a non-empty list of distinct attacks from {list(ATTACKS)}")
        if not isinstance(self.targeted, bool):
            fail("targeted", "true or false")
        if self.sanity_eps is not None and (isinstance(self.sanity_eps, bool) or not isinstance(self.sanity_eps, (int, float))
                                            or not math.isfinite(self.sanity_eps) or self.sanity_eps <= 0):
            fail("sanity_eps", "a positive number or null")
        if self.max_samples is not None and (not is_int(self.max_samples) or self.max_samples < 1):
            fail("max_samples", "an integer >= 1 or null")
        if self.batch_size is not None and (not is_int(self.batch_size) or self.batch_size < 1):
            fail("batch_size", "an integer >= 1 or null")
        if self.precision not in ("fp32", "bf16"):
            fail("precision", "'fp32' or 'bf16'")
        if self.backend not in ("torch", "art"):
            fail("backend", "'torch' or 'art'")
        check.int_at_least("n_resamples", 100)

    # -- running ---------------------------------------------------------------------------------
    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        lo, hi = subject.input_range
        x, y = load_labelled_inputs(ctx.input_path(self.data), input_range=(lo, hi),
                                    input_shape=subject.input_shape)
        if y is None:  # pragma: no cover - need_labels=True raises first
            raise InputError(f"{self.id}: '{self.data}' has no labels")
        check_labels(y, subject.num_classes, what=f"{self.id}: labels of '{self.data}'")
        x, y, notes = _subsample(x, y, self.max_samples, ctx)
        dims = x[0].numel()
        budgets = [parse_eps(e) for e in self.eps]
        for v, label in budgets:
            try:
                _check_budget(v, self.norm, (lo, hi), dims)
            except SpecError as exc:
                raise SpecError(f"{self.id}: eps {label}: {exc}") from None
        sanity = self.sanity_eps if self.sanity_eps is not None else (
            (hi - lo) if self.norm == "linf" else (hi - lo) * math.sqrt(dims))
        _check_budget(sanity, self.norm, (lo, hi), dims)
        attacker = _Attacker(self, subject, ctx)

        clean_logits = attacker.clean_logits(x)
        if looks_like_probabilities(clean_logits):
            notes.append("the model's outputs look like probabilities (rows in [0, 1] summing to 1), not logits: "
                         "attack gradients through them saturate and robust accuracy is overstated; return logits")
        if self.precision == "bf16":
            notes.append("attacks ran under bf16 autocast (screening): gate on fp32 runs")
        if self.backend == "art":
            notes.append("backend: art (ART's FastGradientMethod / ProjectedGradientDescent)")
        names = subject.class_names or tuple(str(i) for i in range(subject.num_classes))
        n = x.shape[0]
        clean_correct = (clean_logits.argmax(1).cpu() == y)
        target = y
        if self.targeted:
            offset = torch.randint(1, subject.num_classes, (n,), generator=ctx.rng("targets"))
            target = (y + offset) % subject.num_classes

        results: dict[str, list[_Outcome]] = {}
        for attack in self.attacks:
            results[attack] = []
            for i, (eps, label) in enumerate(budgets):
                results[attack].append(attacker.outcome(attack, x, y, target, eps, label, seed_purpose=f"{attack}:{i}"))
        masking = attacker.outcome("pgd", x, y, y, sanity, f"{sanity:g}", seed_purpose="sanity", targeted=False)

        grad_outcome = results["pgd"][0] if "pgd" in results else results[self.attacks[0]][0]
        zero = grad_outcome.zero_grad | grad_outcome.nonfinite_grad
        if zero.any() and self.backend == "torch":
            notes.append(f"{int(zero.sum())} of {n} samples have a zero or non-finite input gradient: attacks "
                         "cannot move them, so their robustness is not measured (possible gradient masking)")
        return _Report(self, ctx, y, names, clean_correct, results, masking, zero, notes).findings()


@dataclass
class _Attacker:
    probe: RobustnessClassifier
    subject: Any
    ctx: ProbeContext

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.subject, "device", None) or self.ctx.device)

    def batch(self) -> int | None:
        return self.probe.batch_size or self.ctx.batch_size

    def clean_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every sample, on the host; under torchrun each rank computes its shard's."""
        size = self.batch() or 512
        mine = self.ctx.dist.shard(x.shape[0])
        out = []
        with torch.no_grad():
            for xb in x[mine.start:mine.stop].split(size):
                out.append(self.subject.logits(xb.to(self.device)).float())
        logits = torch.cat(out) if out else torch.zeros((0, self.subject.num_classes))
        if logits.ndim != 2 or logits.shape[1] != self.subject.num_classes:
            raise InputError(f"the classifier returned logits of shape {list(logits.shape)}; expected "
                             f"[N, {self.subject.num_classes}]")
        return self.ctx.dist.gather_tensor(logits.cpu(), mine)

    def shards(self, random: bool) -> bool:
        # ART draws its random starts from NumPy's global generator over its own batches: a shard's
        # draws would differ from a single process's, so with random starts every rank runs it all.
        return not (self.probe.backend == "art" and random)

    def outcome(self, attack: str, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, eps: float, label: str,
                *, seed_purpose: str, targeted: bool | None = None) -> _Outcome:
        """One attack at one eps over every sample: each rank attacks its shard (its samples' random
        starts seeded by their index), the per-sample outcomes are gathered in sample order."""
        n = x.shape[0]
        random = attack == "pgd" and self.probe.random_start
        mine = self.ctx.dist.shard(n) if self.shards(random) else range(n)
        sl = slice(mine.start, mine.stop)
        if len(mine):
            res = self.attack(attack, x[sl], target[sl], eps, seed_purpose=seed_purpose, targeted=targeted,
                              sample_ids=torch.arange(mine.start, mine.stop))
            cols = _Outcome.columns(res, x[sl], y[sl], self.probe.norm)
        else:
            cols = torch.zeros((0, 5), dtype=torch.float64)
        if self.shards(random) and self.ctx.dist.active:  # every rank joins, an empty shard too
            cols = self.ctx.dist.gather_tensor(cols, mine)
        return _Outcome.from_columns(cols, eps, label)

    def attack(self, attack: str, x: torch.Tensor, y: torch.Tensor, eps: float, *, seed_purpose: str,
               targeted: bool | None = None, sample_ids: torch.Tensor | None = None) -> AttackResult:
        p = self.probe
        targeted = p.targeted if targeted is None else targeted
        step = None if p.step_size is None else p.step_size * eps
        if p.backend == "art":
            from probes.robustness.art_backend import ART_DEFAULT_BATCH_SIZE, art_fgsm, art_pgd

            size = self.batch() or ART_DEFAULT_BATCH_SIZE
            xd, yd = x.to(self.device), y.to(self.device)
            if attack == "fgsm":
                return art_fgsm(self.subject, xd, yd, eps, num_classes=self.subject.num_classes, norm=p.norm,
                                targeted=targeted, batch_size=size)
            return art_pgd(self.subject, xd, yd, eps, num_classes=self.subject.num_classes, norm=p.norm,
                           steps=p.steps, step_size=step, random_start=p.random_start, restarts=p.restarts,
                           targeted=targeted, batch_size=size, seed=self.ctx.child_seed(seed_purpose))
        autocast = torch.bfloat16 if p.precision == "bf16" else None
        if attack == "fgsm":
            return run_batched(fgsm, self.subject, x, y, batch_size=self.batch(), device=self.device, eps=eps,
                               norm=p.norm, targeted=targeted, autocast=autocast)
        return run_batched(pgd, self.subject, x, y, batch_size=self.batch(), device=self.device, eps=eps,
                           norm=p.norm, steps=p.steps, step_size=step, random_start=p.random_start,
                           restarts=p.restarts, targeted=targeted, seed=self.ctx.child_seed(seed_purpose),
                           sample_ids=sample_ids, autocast=autocast)


@dataclass
class _Outcome:
    """One attack at one eps, on the host: per-sample correctness and the applied perturbation."""

    eps: float
    label: str
    correct: torch.Tensor
    success: torch.Tensor
    max_perturbation: float
    zero_grad: torch.Tensor
    nonfinite_grad: torch.Tensor

    @staticmethod
    def columns(res: AttackResult, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
        """Per sample, float64 on the host: correct, success, zero_grad, nonfinite_grad, perturbation norm."""
        norms = perturbation_norms(res.x_adv - x.to(res.x_adv.device), norm)
        correct = res.logits.argmax(1) == y.to(res.logits.device)
        return torch.stack([correct, res.success, res.zero_grad, res.nonfinite_grad, norms], 1).double().cpu()

    @staticmethod
    def from_columns(cols: torch.Tensor, eps: float, label: str) -> _Outcome:
        flag = cols[:, :4] > 0.5
        return _Outcome(eps, label, flag[:, 0], flag[:, 1], float(cols[:, 4].max()) if len(cols) else 0.0,
                        flag[:, 2], flag[:, 3])


@dataclass
class _Report:
    probe: RobustnessClassifier
    ctx: ProbeContext
    y: torch.Tensor
    names: Sequence[str]
    clean_correct: torch.Tensor
    results: dict[str, list[_Outcome]]
    masking: _Outcome
    gradient_problem: torch.Tensor
    notes: list[str]

    def rate(self, metric: str, k: int, n: int, hib: bool, slice_: dict[str, str], warnings: Sequence[str] = (),
             evidence: dict[str, Any] | None = None) -> Finding:
        value = k / n if n else math.nan
        extra = [] if n else ["no sample in this group: the value is nan"]
        return Finding(probe=self.probe.id, metric=metric, value=value, higher_is_better=hib,
                       ci=wilson_interval(k, n), n=n, slice=slice_, warnings=(*warnings, *extra),
                       evidence=evidence or {})

    def findings(self) -> list[Finding]:
        p, n = self.probe, int(self.y.shape[0])
        notes = tuple(self.notes)
        cc = self.clean_correct
        n_correct = int(cc.sum())
        out = [self.rate("clean_accuracy", n_correct, n, True, {}, notes)]
        strongest = "pgd" if "pgd" in self.results else p.attacks[0]
        curves: dict[str, list[dict[str, Any]]] = {}
        for attack, outcomes in self.results.items():
            curves[attack] = [{"eps": 0.0, "label": "0", "robust_accuracy": n_correct / n}]
            for o in outcomes:
                s = {"attack": attack, "eps": o.label}
                robust = cc & o.correct
                k = int(robust.sum())
                out.append(self.rate("robust_accuracy", k, n, True, s, notes))
                out.append(self.rate("robust_accuracy_on_correct", k, n_correct, True, s, notes,
                                     {"over": "initially correct samples"}))
                broken = int((o.success & cc).sum())
                out.append(self.rate("attack_success_rate", broken, n_correct, False, s, notes,
                                     {"over": "initially correct samples",
                                      "objective": "classified as the target" if p.targeted else "misclassified"}))
                over = o.max_perturbation > o.eps * (1 + 1e-5) + 1e-7
                out.append(Finding(
                    probe=p.id, metric="max_perturbation", value=o.max_perturbation, higher_is_better=False,
                    unit=f"{p.norm} input units", n=n, slice=s,
                    warnings=(f"the largest perturbation {o.max_perturbation:.6g} exceeds the budget {o.eps:.6g}",)
                    if over else (), evidence={"budget": o.eps, "within_budget": not over}))
                curves[attack].append({"eps": o.eps, "label": o.label, "robust_accuracy": k / n})
                if attack == strongest:
                    out += self.per_class(robust, s)
            area = robust_accuracy_area([o.eps for o in outcomes],
                                        torch.stack([cc] + [cc & o.correct for o in outcomes])).numpy()
            out.append(Finding(
                probe=p.id, metric="robust_accuracy_area", value=float(area.mean()), higher_is_better=True,
                ci=bootstrap_ci(area, n_resamples=p.n_resamples, seed=self.ctx.child_seed(f"area:{attack}")),
                n=n, slice={"attack": attack}, warnings=notes,
                evidence={"curve": curves[attack], "norm": p.norm,
                          "definition": "area under robust accuracy vs eps from 0 to the largest eps, divided by it"}))
        out += self.sanity(curves)
        return out

    def per_class(self, robust: torch.Tensor, s: dict[str, str]) -> list[Finding]:
        out, worst = [], None
        for c, name in enumerate(self.names):
            mask = self.y == c
            nc = int(mask.sum())
            if nc == 0:
                continue
            k = int((robust & mask).sum())
            if self.probe.per_class and len(self.names) <= 50:
                out.append(self.rate("robust_accuracy", k, nc, True, {**s, "class": name}))
            if worst is None or k / nc < worst[0] / worst[1]:
                worst = (k, nc, name)
        if worst is not None:
            out.append(self.rate("worst_class_robust_accuracy", worst[0], worst[1], True, s,
                                 evidence={"class": worst[2]}))
        return out

    def sanity(self, curves: dict[str, list[dict[str, Any]]]) -> list[Finding]:
        p, n = self.probe, int(self.y.shape[0])
        m = self.masking
        k = int((self.clean_correct & m.correct).sum())
        masked = k / n > MASKING_THRESHOLD
        warn = (f"robust accuracy is still {k / n:.3f} under PGD at eps {m.label} ({p.norm}), a budget that can "
                "turn any input into any other: possible gradient masking, robust accuracy is not trustworthy",) \
            if masked else ()
        out = [
            self.rate("large_eps_robust_accuracy", k, n, False, {"eps": m.label}, warn,
                      {"threshold": MASKING_THRESHOLD, "attack": "pgd"}),
            Finding(probe=p.id, metric="gradient_masking_suspected", value=float(masked), higher_is_better=False,
                    n=n, warnings=warn, evidence={"large_eps": m.eps, "robust_accuracy": k / n,
                                                  "threshold": MASKING_THRESHOLD}),
        ]
        if "fgsm" in self.results and "pgd" in self.results:
            beaten = []
            for f, g in zip(self.results["fgsm"], self.results["pgd"]):
                kf = int((self.clean_correct & f.correct).sum())
                kg = int((self.clean_correct & g.correct).sum())
                if kg - kf > FGSM_BEATS_PGD_MARGIN * n:
                    beaten.append({"eps": f.label, "fgsm_robust_accuracy": kf / n, "pgd_robust_accuracy": kg / n})
            warn = (f"FGSM breaks more samples than PGD at eps {', '.join(b['eps'] for b in beaten)}: PGD is not "
                    "converging (too few steps or too small a step size) or gradients are masked",) if beaten else ()
            out.append(Finding(probe=p.id, metric="fgsm_beats_pgd", value=float(bool(beaten)), higher_is_better=False,
                               n=n, warnings=warn, evidence={"where": beaten, "margin": FGSM_BEATS_PGD_MARGIN}))
        if p.backend == "torch":
            k = int(self.gradient_problem.sum())
            out.append(self.rate("zero_gradient_rate", k, n, False, {},
                                 evidence={"meaning": "share of samples whose input gradient was all zero or "
                                           "non-finite at the first PGD step"}))
        return out


def _subsample(x: torch.Tensor, y: torch.Tensor, max_samples: int | None, ctx: ProbeContext
               ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    n = x.shape[0]
    if n == 0:
        raise InputError("no samples to attack: the data input is empty")
    if max_samples is None or n <= max_samples:
        return x, y, []
    idx = torch.randperm(n, generator=ctx.rng("samples"))[:max_samples].sort().values
    return x[idx], y[idx], [f"a seeded subset of {max_samples} of the {n} samples was attacked (max_samples)"]
