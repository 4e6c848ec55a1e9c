"""Evidence of ``deepfake.image_detectability``: the per-image sample rows (score, class,
decision, fold, split, seeds) and the detectability curves under post-processing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from audit.curves import curve, curves_evidence
from audit.probe import ProbeContext
from probes.deepfake.detectors import Detector
from probes.deepfake.metrics import DetectionSummary
from probes.deepfake.postprocess import PostProcess

__all__ = ["detectability_curves", "postprocess_curves", "score_rows"]


def score_rows(d: Detector, step: PostProcess, scores: np.ndarray, threshold: float, labels: np.ndarray,
                folds: np.ndarray, cal: np.ndarray, items: list[dict[str, Any]], ctx: ProbeContext
                ) -> list[dict[str, Any]]:
    """One sample row per image: its score, class, decision at the threshold, fold and split."""
    s = {"detector": d.name, "postprocess": step.label}
    step_seed = ctx.child_seed(f"postprocess-{step.label}") if step.kind in ("noise", "crop") else None
    name = ("real", "generated")
    return [{**items[i], "metric": "detector_score", "score": float(scores[i]), "label": name[labels[i]],
             "prediction": name[int(scores[i] >= threshold)], "slice": s,
             "fold": int(folds[i]) if d.name == "linear_probe" else None,
             "split": "calibration" if cal[i] else "test", "threshold": threshold,
             **({"postprocess_seed": step_seed} if step_seed is not None else {})}
            for i in range(len(labels))]


def postprocess_curves(name: str, by_step: dict[str, DetectionSummary], steps: Sequence[PostProcess],
                        confidence: float) -> dict[str, Any]:
    """Per transform kind, AUROC at ``none`` and at each level with its bootstrap band: the
    curves drawn as "detectability under post-processing", one line per detector."""
    kinds: dict[str, list[str]] = {}
    for step in steps:
        if step.kind != "none":
            kinds.setdefault(step.kind, ["none"]).append(step.label)
    out = []
    for kind, labels in kinds.items():
        ms = [by_step[label].metrics["auroc"] for label in labels]
        nan = math.nan
        out.append(curve(list(range(len(labels))), [m.value for m in ms],
                         y_low=[m.ci.low if m.ci else nan for m in ms], y_high=[m.ci.high if m.ci else nan for m in ms],
                         x_ticks=labels, series=name, chart=f"auroc_under_{kind}", x_label=f"post-processing: {kind}",
                         y_label="AUROC", y_range=(0.0, 1.0),
                         interval=f"bootstrap-{round(confidence * 100, 2):g}"))
    return curves_evidence(*out) if out else {}


def detectability_curves(by_step: dict[str, DetectionSummary], steps: Sequence[PostProcess]) -> dict[str, list[dict[str, Any]]]:
    """Per transform kind: AUROC (and interval) at ``none`` and at each level, in the order given."""
    def point(label: str) -> dict[str, Any]:
        m = by_step[label].metrics["auroc"]
        return {"postprocess": label, "auroc": m.value,
                "ci": [m.ci.low, m.ci.high] if m.ci is not None else None,
                "balanced_accuracy": by_step[label].metrics["balanced_accuracy"].value}

    curves: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        if step.kind != "none":
            curves.setdefault(step.kind, [point("none")]).append({"level": step.level, **point(step.label)})
    return curves
