"""The findings of ``robustness.classifier`` from the attacks' per-sample outcomes: rates with
Wilson intervals, the robust-accuracy and attack-success curves against eps (:mod:`audit.curves`),
the clean confusion matrix, sanity flags, and the per-sample rows for ``samples.parquet``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from audit.curves import confusion_matrix_evidence, curves_evidence, proportion_curve
from audit.findings import Finding, Units
from audit.probe import ProbeContext
from audit.stats import bootstrap_ci, wilson_interval
from probes.robustness.attacks import AttackResult, perturbation_norms

__all__ = ["FGSM_BEATS_PGD_MARGIN", "MASKING_THRESHOLD", "MAX_MATRIX_CLASSES", "Outcome", "Report",
           "robust_accuracy_area"]

#: Robust accuracy above this at the sanity eps flags possible gradient masking.
MASKING_THRESHOLD = 0.1
#: FGSM "beats" PGD when it breaks this share of the samples more than PGD does (paired, same samples).
FGSM_BEATS_PGD_MARGIN = 0.02
#: Classes up to which the clean confusion matrix is kept in the evidence.
MAX_MATRIX_CLASSES = 50


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


@dataclass
class Outcome:
    """One attack at one eps, on the host: per-sample correctness, prediction and perturbation."""

    eps: float
    label: str
    correct: torch.Tensor
    success: torch.Tensor
    max_perturbation: float
    zero_grad: torch.Tensor
    nonfinite_grad: torch.Tensor
    prediction: torch.Tensor | None = None
    perturbation: torch.Tensor | None = None

    #: How many columns :meth:`columns` gives (an empty shard sends a [0, N_COLUMNS] block).
    N_COLUMNS = 6

    @staticmethod
    def columns(res: AttackResult, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
        """Per sample, float64 on the host: correct, success, zero_grad, nonfinite_grad, perturbation
        norm, predicted class under attack."""
        norms = perturbation_norms(res.x_adv - x.to(res.x_adv.device), norm)
        pred = res.logits.argmax(1)
        correct = pred == y.to(res.logits.device)
        return torch.stack([correct, res.success, res.zero_grad, res.nonfinite_grad, norms, pred], 1).double().cpu()

    @staticmethod
    def from_columns(cols: torch.Tensor, eps: float, label: str) -> Outcome:
        flag = cols[:, :4] > 0.5
        return Outcome(eps, label, flag[:, 0], flag[:, 1], float(cols[:, 4].max()) if len(cols) else 0.0,
                       flag[:, 2], flag[:, 3], cols[:, 5].long(), cols[:, 4])


@dataclass
class Report:
    """The findings (and per-sample records) of one run of ``robustness.classifier``."""

    probe: Any
    ctx: ProbeContext
    y: torch.Tensor
    names: Sequence[str]
    clean_correct: torch.Tensor
    results: dict[str, list[Outcome]]
    masking: Outcome
    gradient_problem: torch.Tensor
    notes: list[str]
    clean_prediction: torch.Tensor | None = None
    data_index: torch.Tensor | None = None
    target: torch.Tensor | None = None

    def rate(self, metric: str, k: int, n: int, hib: bool, slice_: dict[str, str], warnings: Sequence[str] = (),
             evidence: dict[str, Any] | None = None, units: Units | None = None) -> Finding:
        value = k / n if n else math.nan
        extra = [] if n else ["no sample in this group: the value is nan"]
        return Finding(probe=self.probe.id, metric=metric, value=value, higher_is_better=hib,
                       ci=wilson_interval(k, n), n=n, slice=slice_, warnings=(*warnings, *extra),
                       evidence=evidence or {}, units=units if n else None)

    def units(self, x: torch.Tensor, over: torch.Tensor | None = None, among: torch.Tensor | None = None) -> Units:
        """Per-image units named by the image's index in the data (equal on every variant, which
        sees the same images and attack starts): the mean of ``x`` over the images in ``among``
        (all by default), or, with ``over``, the rate ``sum(x) / sum(over)`` over all images
        (a rate among the initially correct images, whose set differs between variants)."""
        index = self.data_index.tolist() if self.data_index is not None else list(range(int(self.y.shape[0])))
        ids = [f"{self.probe.data}[{i}]" for i in index]
        if over is not None:
            return Units("ratio", ids, {"num": x.double().tolist(), "den": over.double().tolist()})
        keep = torch.ones_like(x, dtype=torch.bool) if among is None else among
        return Units("mean", [i for i, k in zip(ids, keep.tolist()) if k], {"x": x[keep].double().tolist()})

    def findings(self) -> list[Finding]:
        p, n = self.probe, int(self.y.shape[0])
        notes = tuple(self.notes)
        cc = self.clean_correct
        n_correct = int(cc.sum())
        cm = (confusion_matrix_evidence(self.y.tolist(), self.clean_prediction.tolist(), self.names)
              if self.clean_prediction is not None and len(self.names) <= MAX_MATRIX_CLASSES else {})
        out = [self.rate("clean_accuracy", n_correct, n, True, {}, notes, cm, self.units(cc))]
        strongest = "pgd" if "pgd" in self.results else p.attacks[0]
        curves: dict[str, list[dict[str, Any]]] = {}
        for attack, outcomes in self.results.items():
            curves[attack] = [{"eps": 0.0, "label": "0", "robust_accuracy": n_correct / n}]
            for o in outcomes:
                s = {"attack": attack, "eps": o.label}
                robust = cc & o.correct
                k = int(robust.sum())
                out.append(self.rate("robust_accuracy", k, n, True, s, notes, units=self.units(robust)))
                out.append(self.rate("robust_accuracy_on_correct", k, n_correct, True, s, notes,
                                     {"over": "initially correct samples"}, self.units(robust, over=cc)))
                broken = int((o.success & cc).sum())
                out.append(self.rate("attack_success_rate", broken, n_correct, False, s, notes,
                                     {"over": "initially correct samples",
                                      "objective": "classified as the target" if p.targeted else "misclassified"},
                                     self.units(o.success & cc, over=cc)))
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
                evidence={"points": curves[attack], "norm": p.norm, **self.curves(attack, outcomes),
                          "definition": "area under robust accuracy vs eps from 0 to the largest eps, divided by it"},
                units=self.units(torch.from_numpy(area))))
        out += self.sanity(curves)
        return out

    def curves(self, attack: str, outcomes: Sequence[Outcome]) -> dict[str, Any]:
        """Robust accuracy (over all samples) and attack success (over the initially correct ones)
        against eps, from eps 0 (clean), with Wilson bands: one line per attack in the report."""
        cc, n = self.clean_correct, int(self.y.shape[0])
        n_correct = int(cc.sum())
        x = [0.0, *(o.eps for o in outcomes)]
        common = {"series": attack, "x_label": f"eps ({self.probe.norm})",
                  "x_ticks": ["0", *(o.label for o in outcomes)]}
        robust = proportion_curve(x, [n_correct, *(int((cc & o.correct).sum()) for o in outcomes)],
                                  [n] * len(x), chart="robust_accuracy_vs_eps", y_label="robust accuracy",
                                  **common)
        success = proportion_curve(x, [0, *(int((o.success & cc).sum()) for o in outcomes)],
                                   [n_correct] * len(x), chart="attack_success_vs_eps",
                                   y_label="attack success rate", **common)
        return curves_evidence(robust, success)

    def samples(self) -> list[dict[str, Any]]:
        """One row per sample clean, and one per sample, attack and eps (see the probe's docstring)."""
        p = self.probe
        names = list(self.names)
        y = self.y.tolist()
        index = self.data_index.tolist() if self.data_index is not None else list(range(len(y)))
        clean = self.clean_correct.tolist()
        pred = self.clean_prediction.tolist() if self.clean_prediction is not None else [None] * len(y)
        item = [f"{p.data}[{i}]" for i in index]
        rows: list[dict[str, Any]] = [
            {"item": item[i], "metric": "clean_correct", "score": float(clean[i]), "label": names[y[i]],
             "prediction": None if pred[i] is None else names[pred[i]], "data_index": index[i]}
            for i in range(len(y))]
        target = self.target.tolist() if self.target is not None and p.targeted else None
        for attack, outcomes in self.results.items():
            for j, o in enumerate(outcomes):
                seed = self.ctx.child_seed(f"{attack}:{j}") if attack == "pgd" and p.random_start else None
                ok = (self.clean_correct & o.correct).tolist()
                adv = o.prediction.tolist() if o.prediction is not None else [None] * len(y)
                pert = o.perturbation.tolist() if o.perturbation is not None else [None] * len(y)
                success = o.success.tolist()
                s = {"attack": attack, "eps": o.label}
                for i in range(len(y)):
                    row = {"item": item[i], "metric": "robust_correct", "score": float(ok[i]), "label": names[y[i]],
                           "prediction": None if adv[i] is None else names[adv[i]], "seed": seed, "slice": s,
                           "data_index": index[i], "sample_id": i, "attack_success": bool(success[i]),
                           "perturbation": pert[i]}
                    if target is not None:
                        row["target"] = names[target[i]]
                    rows.append(row)
        return rows

    def per_class(self, robust: torch.Tensor, s: dict[str, str]) -> list[Finding]:
        out, worst = [], None
        for c, name in enumerate(self.names):
            mask = self.y == c
            nc = int(mask.sum())
            if nc == 0:
                continue
            k = int((robust & mask).sum())
            if self.probe.per_class and len(self.names) <= 50:
                out.append(self.rate("robust_accuracy", k, nc, True, {**s, "class": name},
                                     units=self.units(robust, among=mask)))
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
                      {"threshold": MASKING_THRESHOLD, "attack": "pgd"}, self.units(self.clean_correct & m.correct)),
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
                                           "non-finite at the first PGD step"},
                                 units=self.units(self.gradient_problem)))
        return out


