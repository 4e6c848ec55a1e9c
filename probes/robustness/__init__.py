"""Adversarial robustness: a plain-torch FGSM / PGD engine, an ART backend that cross-checks it,
and probes for classifiers, detectors (real vs generated) and text generators.

Example:
    >>> from probes.robustness.attacks import pgd   # doctest: +SKIP
    >>> res = pgd(model, x, y, eps=8 / 255, steps=10, input_range=(0.0, 1.0))   # doctest: +SKIP
    >>> robust_accuracy = (res.logits.argmax(1) == y).float().mean()             # doctest: +SKIP
"""
