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
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from audit.errors import InputError, SpecError
from audit.findings import Finding
from audit.probe import ParamCheck, ProbeContext, register
from probes.robustness.attacks import (
    AttackResult,
    check_labels,
    fgsm,
    looks_like_probabilities,
    pgd,
    run_batched,
)
from probes.robustness.checks import check_budget
from probes.robustness.classifier_findings import (
    FGSM_BEATS_PGD_MARGIN,
    MASKING_THRESHOLD,
    Outcome,
    Report,
    robust_accuracy_area,
)
from probes.robustness.inputs import check_threat_model, load_labelled_inputs, parse_eps, subsample

__all__ = ["FGSM_BEATS_PGD_MARGIN", "MASKING_THRESHOLD", "RobustnessClassifier", "check_threat_model",
           "load_labelled_inputs", "parse_eps", "robust_accuracy_area"]

ATTACKS = ("fgsm", "pgd")


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

    Evidence: ``clean_accuracy`` holds the clean confusion matrix (up to 50 classes);
    ``robust_accuracy_area[attack=...]`` holds the curves (robust accuracy and attack success
    against eps, Wilson bands) and the raw ``points``. Samples (``samples.parquet``): per sample
    ``clean_correct`` (label, clean prediction) and, per attack and eps, ``robust_correct`` with
    the adversarial prediction, the attack's seed (PGD with random starts), ``attack_success``
    and ``perturbation`` in ``extra``.
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
        x, y, data_index, notes = subsample(x, y, self.max_samples, ctx)
        dims = x[0].numel()
        budgets = [parse_eps(e) for e in self.eps]
        for v, label in budgets:
            try:
                check_budget(v, self.norm, (lo, hi), dims)
            except SpecError as exc:
                raise SpecError(f"{self.id}: eps {label}: {exc}") from None
        sanity = self.sanity_eps if self.sanity_eps is not None else (
            (hi - lo) if self.norm == "linf" else (hi - lo) * math.sqrt(dims))
        check_budget(sanity, self.norm, (lo, hi), dims)
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
        clean_prediction = clean_logits.argmax(1).cpu()
        clean_correct = clean_prediction == y
        target = y
        if self.targeted:
            offset = torch.randint(1, subject.num_classes, (n,), generator=ctx.rng("targets"))
            target = (y + offset) % subject.num_classes

        results: dict[str, list[Outcome]] = {}
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
        report = Report(self, ctx, y, names, clean_correct, results, masking, zero, notes,
                        clean_prediction=clean_prediction, data_index=data_index, target=target)
        ctx.record_samples(report.samples())
        return report.findings()


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
                *, seed_purpose: str, targeted: bool | None = None) -> Outcome:
        """One attack at one eps over every sample: each rank attacks its shard (its samples' random
        starts seeded by their index), the per-sample outcomes are gathered in sample order."""
        n = x.shape[0]
        random = attack == "pgd" and self.probe.random_start
        mine = self.ctx.dist.shard(n) if self.shards(random) else range(n)
        sl = slice(mine.start, mine.stop)
        if len(mine):
            res = self.attack(attack, x[sl], target[sl], eps, seed_purpose=seed_purpose, targeted=targeted,
                              sample_ids=torch.arange(mine.start, mine.stop))
            cols = Outcome.columns(res, x[sl], y[sl], self.probe.norm)
        else:
            cols = torch.zeros((0, Outcome.N_COLUMNS), dtype=torch.float64)
        if self.shards(random) and self.ctx.dist.active:  # every rank joins, an empty shard too
            cols = self.ctx.dist.gather_tensor(cols, mine)
        return Outcome.from_columns(cols, eps, label)

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
                           steps=p.steps, eps_step=step, random_start=p.random_start, restarts=p.restarts,
                           targeted=targeted, batch_size=size, seed=self.ctx.child_seed(seed_purpose))
        autocast = torch.bfloat16 if p.precision == "bf16" else None
        if attack == "fgsm":
            return run_batched(fgsm, self.subject, x, y, batch_size=self.batch(), device=self.device, eps=eps,
                               norm=p.norm, targeted=targeted, autocast=autocast)
        return run_batched(pgd, self.subject, x, y, batch_size=self.batch(), device=self.device, eps=eps,
                           norm=p.norm, steps=p.steps, eps_step=step, random_start=p.random_start,
                           restarts=p.restarts, targeted=targeted, seed=self.ctx.child_seed(seed_purpose),
                           sample_ids=sample_ids, autocast=autocast)


