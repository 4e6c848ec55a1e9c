"""How much the demo's text detectability AUROC moves with the seed alone.

The demo's ``deepfake.text_detectability`` (SmolLM2-135M-Instruct from the offline bundle,
12 corpus texts, 24-token prompts, 12-token continuations, scored by itself) is run once per
``settings.seed``, with nothing else in the spec, and the AUROC of each score is printed per
seed with its interval, then the mean and spread over the seeds. A change of the value that
stays inside this spread is draw noise (a different sample), not a change of the method.

    .venv/bin/python bench/detectability_seeds.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.demo.text import smollm2_spec  # noqa: E402
from audit.runner import run_audit  # noqa: E402
from audit.spec import AuditSpec  # noqa: E402


def detectability_spec(seed: int, threads: int | None) -> AuditSpec:
    """The demo's text spec with only its detectability probe, at ``seed``."""
    data = smollm2_spec(Path("."))
    probe = next(p for p in data["probes"] if p["id"] == "deepfake.text_detectability")
    settings = {"seed": seed, **({"threads": threads} if threads else {})}
    return AuditSpec.model_validate({**data, "name": f"detectability-seed-{seed}", "probes": [probe],
                                     "gates": [], "settings": settings})


def _top_k_loader(top_k: int):
    """A loader whose text generators sample from the ``top_k`` most likely tokens only."""
    def load(*args, **kwargs):
        from audit.subjects.loading import load_subject

        subject = load_subject(*args, **kwargs)
        subject.top_k = top_k
        return subject
    return load


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top-k", type=int, default=None,
                    help="sample from the K most likely tokens (default: the whole softmax, as the probes do; "
                         "50 reproduces an earlier version of the engine)")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)
    loader = _top_k_loader(args.top_k) if args.top_k else None
    per_seed: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = run_audit(detectability_spec(seed, args.threads), out_dir=tmp, use_store=False,
                               show_progress=False, subject_loader=loader)
        rows = {}
        for f in result.report.findings:
            if f.metric == "auroc":
                rows[f.slice.get("score", "?")] = {"auroc": f.value, "ci": [f.ci.low, f.ci.high] if f.ci else None,
                                                   "n": f.n}
        per_seed[seed] = rows
        wall = time.perf_counter() - t0
        print(f"seed {seed}: " + "; ".join(f"{k} {v['auroc']:.3f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]"
                                           if v["ci"] else f"{k} {v['auroc']:.3f}" for k, v in rows.items())
              + f"   ({wall:.0f} s, load {os.getloadavg()[0]:.2f})", flush=True)
    summary = {}
    for score in sorted({k for r in per_seed.values() for k in r}):
        vals = [r[score]["auroc"] for r in per_seed.values() if score in r]
        summary[score] = {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                          "min": min(vals), "max": max(vals), "seeds": len(vals)}
        s = summary[score]
        print(f"{score}: mean {s['mean']:.3f}, sd {s['sd']:.3f}, range [{s['min']:.3f}, {s['max']:.3f}] "
              f"over {s['seeds']} seeds")
    out = {"top_k": args.top_k, "per_seed": per_seed, "summary": summary, "load_1min": os.getloadavg()[0]}
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
