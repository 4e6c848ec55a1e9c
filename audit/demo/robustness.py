"""Demo part: adversarial robustness of the shared digits classifier (robust accuracy vs eps).

The classifier (:mod:`audit.demo.digits`, trained here in seconds and cached) is loaded as a
``classifier`` subject from ``audit.demo.digits:digits_classifier`` with its safetensors weights;
the held-out digits (the split it never trained on) are written to ``workdir`` as a ``.pt`` file of
plain tensors (read back with ``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from audit.demo.digits import digits_split, load_digits_tensors, train_digits_classifier

__all__ = ["DIGITS_EPS", "digits_robustness_spec", "write_heldout_digits"]

#: Budgets for 8x8 digits in [0, 1]: each pixel is a coarse 1/16 grey level, so budgets are larger
#: than the 8/255 usual for natural images.
DIGITS_EPS = (0.02, 0.05, 0.1, 0.2)


def write_heldout_digits(workdir: str | Path, *, seed: int = 0) -> Path:
    """Write the held-out digits as ``{"x": float [N, 1, 8, 8] in [0, 1], "y": int64 [N]}``; cached."""
    path = Path(workdir) / f"digits-heldout-seed{seed}.pt"
    if path.is_file():
        return path
    x, y = load_digits_tensors()
    _train, test = digits_split(len(y), seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"x": (x[test].float() / 255.0).contiguous(), "y": y[test].contiguous()}, tmp)
    tmp.replace(path)
    return path


def digits_robustness_spec(workdir: Path) -> dict:
    """The robustness audit of the demo's digits classifier (trains it once into ``workdir``)."""
    weights = train_digits_classifier(workdir)
    data = write_heldout_digits(workdir)
    pgd = "robustness.classifier/robust_accuracy[attack=pgd,eps={}]"
    return {
        "name": "digits-classifier-robustness-demo",
        "subject": {
            "kind": "classifier",
            "source": "python",
            "path": "audit.demo.digits:digits_classifier",
            "name": "digits CNN (sklearn digits, 8x8)",
            "options": {
                "weights": str(weights),
                "input_shape": [1, 8, 8],
                "input_range": [0.0, 1.0],
                "class_names": [str(i) for i in range(10)],
            },
        },
        # The same attacks on torch's dynamic int8 quantization of its Linear layers (the convolutions
        # stay float32): does quantizing change robust accuracy? Paired over the same digits and starts.
        "variants": [{"name": "int8", "quantization": "int8-dynamic"}],
        "data": {"images": str(data)},
        "probes": [
            {"id": "robustness.classifier",
             "params": {"eps": list(DIGITS_EPS), "attacks": ["fgsm", "pgd"], "norm": "linf", "steps": 10,
                        "restarts": 1, "max_samples": None}},
        ],
        "gates": [
            # Measured here (539 held-out digits): clean 0.989 [0.976, 0.995]; PGD robust accuracy
            # 0.957 at eps 0.02, 0.865 at 0.05, 0.560 at 0.1, 0.017 at 0.2 (FGSM: 0.957, 0.868, 0.594,
            # 0.065). The bounds catch a regression of the model or of the engine.
            {"metric": "robustness.classifier/clean_accuracy", "min": 0.9, "use": "ci_low"},
            {"metric": pgd.format("0.02"), "min": 0.7, "use": "ci_low"},
            # The attack must work: at a large budget robust accuracy falls towards zero...
            {"metric": "robustness.classifier/gradient_masking_suspected", "max": 0},
            {"metric": "robustness.classifier/fgsm_beats_pgd", "max": 0},
            # ...and never step outside its budget (0.05 as float32 is 0.05 + 7e-10: allow rounding).
            {"metric": "robustness.classifier/max_perturbation[attack=pgd,eps=0.05]", "max": 0.05 * (1 + 1e-5)},
            {"metric": pgd.format("0.05"), "max_drop": 0.05, "significant_only": True},
        ],
        "settings": {"seed": 0},
    }
