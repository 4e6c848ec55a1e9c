"""The evasion part of ``deepfake.image_detectability``: targeted PGD towards "real" against each
detector at its calibrated threshold (:func:`probes.robustness.detector_evasion.evasion_curve`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from audit.curves import curves_evidence, proportion_curve
from audit.findings import Finding
from audit.probe import ProbeContext
from audit.stats import wilson_interval
from probes.deepfake.detectors import Detector, no_gradient

__all__ = ["evasion_findings", "evasion_nan"]


def evasion_findings(probe: Any, d: Detector, fake: torch.Tensor, threshold: float, ctx: ProbeContext,
                     notes: list[str]) -> list[Finding]:
    """Targeted PGD towards "real" against detector ``d`` at its calibrated ``threshold``, on (a
    seeded subset of) the generated images: evasion and detection rates per eps, the applied
    perturbation, the curves against eps (Wilson bands), and one sample row per image and eps."""
    from probes.robustness.attacks import NotDifferentiableError
    from probes.robustness.classifier import parse_eps
    from probes.robustness.detector_evasion import evasion_curve

    budgets = [parse_eps(e) for e in probe.eps]
    n_all = fake.shape[0]
    idx = np.arange(n_all)
    warn = list(notes)
    if n_all > probe.attack_samples:
        g = np.random.default_rng(ctx.child_seed("attack-subset"))
        idx = np.sort(g.choice(n_all, probe.attack_samples, replace=False))
        warn.append(f"a seeded subset of {probe.attack_samples} of the {n_all} generated images was attacked")
    x = fake[torch.from_numpy(idx)].float() / 255.0
    parts = d.attack(threshold)
    reason = no_gradient(parts[0][0], x[:2])
    if reason is not None:
        return evasion_nan(probe, d.name, [*warn, f"no evasion attack on {d.name}: {reason}"])
    detected, fooled, max_pert, ids = [], [[] for _ in budgets], [0.0 for _ in budgets], []
    try:
        for module, mask in parts:
            sel = np.ones(idx.size, bool) if mask is None else mask[idx]
            if not sel.any():
                continue
            # Each rank attacks its shard of this part; an image's random start is seeded by its index.
            curve = evasion_curve(module, x[torch.from_numpy(sel)], 0, [v for v, _ in budgets],
                                  steps=probe.attack_steps, batch_size=probe.batch_size, device=module.device,
                                  seed=ctx.child_seed(f"pgd-{d.name}"),
                                  sample_ids=torch.from_numpy(np.flatnonzero(sel)), dist=ctx.dist)
            detected.append(curve["detected"])
            ids.append(np.flatnonzero(sel))
            for j in range(len(budgets)):
                fooled[j].append(curve["fooled"][j])
                max_pert[j] = max(max_pert[j], curve["max_perturbation"][j])
    except NotDifferentiableError as exc:
        return evasion_nan(probe, d.name, [*warn, f"no evasion attack on {d.name}: {exc}"])
    det_all = torch.cat(detected)
    n = det_all.numel()
    n_det = int(det_all.sum())
    ev = {"attack": "targeted pgd towards real at the calibrated threshold", "norm": "linf",
          "steps": probe.attack_steps, "threshold": threshold, "eps_unit": "fraction of the pixel range",
          "perturbed": "the audited images (before each detector's own resizing), not re-quantised to uint8"}
    points, out, counts = [], [], []
    for (eps, label), fl, mp in zip(budgets, fooled, max_pert):
        f = torch.cat(fl)
        k_ev = int((f & det_all).sum())
        still = int((~f & det_all).sum())
        s = {"detector": d.name, "eps": label}
        extra = [] if n_det else ["no attacked image was detected to begin with: the evasion rate is nan"]
        out.append(Finding(probe=probe.id, metric="evasion_rate", value=k_ev / n_det if n_det else math.nan,
                           higher_is_better=False, ci=wilson_interval(k_ev, n_det, confidence=probe.confidence),
                           n=n_det, slice=s, warnings=(*warn, *extra),
                           evidence={**ev, "over": "initially detected images"}))
        out.append(Finding(probe=probe.id, metric="detection_rate_under_attack", value=still / n,
                           higher_is_better=True, ci=wilson_interval(still, n, confidence=probe.confidence),
                           n=n, slice=s, warnings=tuple(warn), evidence=ev))
        over = mp > eps * (1 + 1e-5) + 1e-7
        out.append(Finding(probe=probe.id, metric="max_perturbation", value=mp, higher_is_better=False,
                           unit="linf, fraction of the pixel range", n=n, slice=s,
                           warnings=(f"the largest perturbation {mp:.6g} exceeds the budget {eps:.6g}",)
                           if over else (), evidence={"budget": eps, "within_budget": not over}))
        counts.append((k_ev, still))
        points.append({"eps": eps, "label": label, "evasion_rate": k_ev / n_det if n_det else None,
                       "detection_rate_under_attack": still / n})
    x_eps = [0.0, *(v for v, _ in budgets)]
    common = {"series": d.name, "x_label": "eps (linf, fraction of the pixel range)",
              "x_ticks": ["0", *(label for _, label in budgets)], "confidence": probe.confidence}
    curves = curves_evidence(
        proportion_curve(x_eps, [0, *(k for k, _ in counts)], [n_det] * len(x_eps), chart="evasion_rate_vs_eps",
                         y_label="evasion rate (of the detected images)", **common),
        proportion_curve(x_eps, [n_det, *(s for _, s in counts)], [n] * len(x_eps),
                         chart="detection_rate_under_attack_vs_eps", y_label="detection rate under attack", **common))
    first = Finding(probe=probe.id, metric="detection_rate", value=n_det / n, higher_is_better=True,
                    ci=wilson_interval(n_det, n, confidence=probe.confidence), n=n,
                    slice={"detector": d.name}, warnings=tuple(warn),
                    evidence={**ev, "over": "attacked generated images, clean", "points": points, **curves})
    order = idx[np.concatenate(ids)] if ids else np.zeros(0, np.int64)
    seed = ctx.child_seed(f"pgd-{d.name}")
    det_list = det_all.tolist()
    for (_, label), fl in zip(budgets, fooled):
        f = torch.cat(fl).tolist()
        ctx.record_samples({"item": f"generated[{int(j)}]", "metric": "evaded", "score": float(f[i] and det_list[i]),
                            "label": "generated", "seed": seed, "slice": {"detector": d.name, "eps": label},
                            "detected_clean": bool(det_list[i]), "generated_index": int(j)}
                           for i, j in enumerate(order.tolist()))
    return [first, *out]

def evasion_nan(probe: Any, name: str, warnings: list[str]) -> list[Finding]:
    """The evasion findings as NaN with the reason, when the detector cannot be attacked."""
    from probes.robustness.classifier import parse_eps

    out = [Finding(probe=probe.id, metric="detection_rate", value=math.nan, higher_is_better=True,
                   slice={"detector": name}, warnings=tuple(warnings), n=0)]
    for e in probe.eps:
        s = {"detector": name, "eps": parse_eps(e)[1]}
        out += [Finding(probe=probe.id, metric=m, value=math.nan, higher_is_better=h, slice=s,
                        warnings=tuple(warnings), n=0)
                for m, h in (("evasion_rate", False), ("detection_rate_under_attack", True),
                             ("max_perturbation", False))]
    return out


