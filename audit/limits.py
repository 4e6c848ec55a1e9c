"""Upper bounds on probe parameters whose memory or time grows with their value.

A spec is input: ``n_resamples: 1000000000000`` must be a spec error in a second, not a
``MemoryError`` an hour into the audit. :meth:`audit.probe.ParamCheck.upper_bounds` checks
every integer parameter named here when the probe is built (before any model loads). The
bounds are generous (ten to a hundred times what any audit needs); a probe with a reason
for another bound declares ``param_limits = {"name": bound}`` as a class attribute.

Example:
    >>> PARAM_LIMITS["n_resamples"]
    100000
"""

from __future__ import annotations

from typing import Any

__all__ = ["PARAM_LIMITS", "limits_for"]

#: Parameter name -> the largest value accepted (by every probe that has the parameter).
PARAM_LIMITS: dict[str, int] = {
    # resampling: each resample is a pass over the findings' data (memory B x n for some probes)
    "n_resamples": 100_000,
    "n_permutations": 1_000_000,
    # attacks: time is steps x restarts x samples forward-and-backward passes
    "steps": 10_000,
    "attack_steps": 10_000,
    "restarts": 100,
    # generation: samples per prompt multiply the generation time
    "samples": 1_000,
    "samples_per_prompt": 1_000,
    "images_per_prompt": 1_000,
    "max_new_tokens": 32_768,
    "continuation_tokens": 32_768,
    "prompt_tokens": 32_768,
    "max_length": 1_048_576,
    # images or rows held in memory
    "n_samples": 10_000_000,
    "max_samples": 10_000_000,
    "attack_samples": 10_000_000,
    "max_features": 10_000_000,
    "kid_subsets": 100_000,
    "kid_subset_size": 1_000_000,
    "is_splits": 10_000,
    "folds": 1_000,
    "batch_size": 1_048_576,
    # energy measurement: calls made
    "repeats": 10_000,
    "warmup_calls": 10_000,
    "max_calls_per_window": 10_000_000,
}


def limits_for(probe: Any) -> dict[str, int]:
    """The bounds that apply to ``probe`` (an instance or class): the shared table, overridden
    by the probe's ``param_limits``, restricted to the parameters it has."""
    import dataclasses

    own = dict(getattr(probe, "param_limits", None) or {})
    names = {f.name for f in dataclasses.fields(probe)} if dataclasses.is_dataclass(probe) else set()
    return {n: b for n, b in {**PARAM_LIMITS, **own}.items() if n in names}
