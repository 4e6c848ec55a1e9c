"""Benchmark: N variants cost N times one audit's model work plus the shared set-up, and no more.

Runs the same audit in one process with N = 0, 1, 2, 3 variants (``--variants``), ``--repeats``
times each, for two subjects built in code, and prints the min and median of two ratios per N:

- ``per_variant``: the marginal cost of a variant, ``(T_N - T_0) / N``, over one audit's model
  work ``W_0`` (the base's model load plus its probes' wall time in the N = 0 run, from the
  report's timings). Ideal: 1.0 where a variant shares nothing with the base (the text audit);
  ``(W_0 - R) / W_0`` where the probes' per-audit reading of shared data can be reused (``R``).
- ``overhead``: ``T_N / (T_0 + N * (W_0 - R))``, the whole audit against "one audit plus N
  times the variant-specific work". Ideal 1.0; over 1.0 is the cost the variants add beyond
  their own model work (repeated set-up, data read again, real-set features recomputed).

The audits:

- ``text``: a 4-layer Llama (random weights, the tests' byte-level tokenizer) through
  ``quality.perplexity`` and ``quality.text_diversity``; each variant is the same architecture
  with another seed (``options: {seed: K}``: the same cost, other weights). ``R = 0``.
- ``image``: a small torch decoder z -> 3x16x16 image through ``quality.image_fidelity`` against
  a folder of real PNG images; variants take another seed. The real set's features must be
  computed once per audit, whatever N: the feature network counts the images it sees, so the
  number of passes over the real set is ``(images seen - (N + 1) * n_generated) / n_real``
  (printed as ``real_set_passes``; 1 is right). ``R`` is the time of one pass over the real
  set (read + features), timed alone in the same process.

Beside them, per N: each variant's own work (its load and probes, from the report's timings)
over ``W_0`` (1.0: a variant costs what the base does), and the time outside the models (set-up,
deltas, closing the subjects, the reports). Measured here on 2026-12-06 (load 1.4-1.7):
``per_variant`` 1.03-1.04 (text) and 0.60 (image, ideal 0.62), ``overhead`` 1.01-1.03 and
0.98-0.99, one pass over the real set for every N. Before closing a subject skipped the full
garbage collection when nothing needed it, each variant cost 0.2-0.4 s more (``gc.collect()``
in a process with torch imported, printed as ``one gc.collect()``): ratios 1.2-1.4.

``energy.footprint`` (which the runner adds to an audit with variants) is listed in every
spec, N = 0 included, so that every N runs the same probes. Timings are wall-clock on a
shared machine: read them with the load average printed beside them.

    python bench/bench_variants.py                 # default sizes, < 2 min on a 2-core CPU
    python bench/bench_variants.py --quick         # a smoke run (the GPU suite's dry run)
    python bench/bench_variants.py --json-out variants.json
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this module, for the specs' factories

#: Images seen by the counting feature network of this process (the image audit's check).
SEEN = {"images": 0}


# -- the subjects and the feature network (``bench_variants:...`` in the specs) -----------------
def text_model(seed: int = 0, layers: int = 4, width: int = 64):
    """(model, tokenizer): a seeded random Llama on the tests' tiny tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.fakes import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval(), tok


def image_decoder(seed: int = 0, latent: int = 16, width: int = 256):
    """A seeded random MLP decoder: standard-normal latents [B, latent] -> images [B, 3, 16, 16] in [-1, 1]."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(latent, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3 * 16 * 16), nn.Tanh(), nn.Unflatten(1, (3, 16, 16))).eval()


def counting_features(seed: int = 0):
    """The tests' tiny feature CNN, counting the images it embeds into :data:`SEEN`."""
    from tests.image_fakes import tiny_feature_net

    net = tiny_feature_net(seed)
    inner = net.features

    def features(x):
        SEEN["images"] += int(x.shape[0])
        return inner(x)

    net.features = features
    return net


# -- the specs ----------------------------------------------------------------------------------
def _footprint(probes: list[dict]) -> list[dict]:
    from audit.probe import registry

    if "energy.footprint" in registry:
        probes.append({"id": "energy.footprint", "params": {"repeats": 2, "min_window_s": 0.1}})
    return probes


def text_spec(folder: Path, n_variants: int, size: dict[str, int]) -> dict[str, Any]:
    corpus = folder / "corpus.jsonl"
    if not corpus.exists():
        from tests.fakes import TRAIN_TEXT

        words = TRAIN_TEXT.split()
        rows = [{"id": f"d{i}", "text": " ".join(words[(7 * i) % len(words):] + words)[: size["doc_chars"]]}
                for i in range(size["docs"])]
        corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
        prompts = [{"id": f"p{i}", "text": f"Question {i}: what comes next?"} for i in range(size["prompts"])]
        (folder / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return {
        "name": f"bench-variants-text-{n_variants}",
        "subject": {"kind": "text-generator", "source": "python", "path": "bench_variants:text_model",
                    "options": {"seed": 0, "layers": size["layers"], "width": size["width"]}},
        "variants": [{"name": f"v{k}", "options": {"seed": k}} for k in range(1, n_variants + 1)],
        "data": {"texts": str(corpus), "prompts": str(folder / "prompts.jsonl")},
        "probes": _footprint([
            {"id": "quality.perplexity", "params": {"max_length": 128, "stride": 64, "slice_by": None,
                                                    "n_resamples": 200}},
            {"id": "quality.text_diversity", "params": {"max_prompts": size["prompts"], "samples_per_prompt": 2,
                                                        "max_new_tokens": 8, "bleu_max_n": 2}},
        ]),
        "settings": {"seed": 0, "progress": False},
    }


def image_spec(folder: Path, n_variants: int, size: dict[str, int]) -> dict[str, Any]:
    real = folder / "real"
    if not real.exists():
        from tests.image_fakes import write_image_folder

        write_image_folder(real, size["n_real"], size=16, seed=2)
    return {
        "name": f"bench-variants-image-{n_variants}",
        "subject": {"kind": "image-generator", "source": "torch", "path": "bench_variants:image_decoder",
                    "options": {"latent_shape": [16], "factory_kwargs": {"seed": 0}}},
        "variants": [{"name": f"v{k}", "options": {"factory_kwargs": {"seed": k}}} for k in range(1, n_variants + 1)],
        "data": {"reference": str(real)},
        "probes": _footprint([
            {"id": "quality.image_fidelity",
             "params": {"feature": "bench_variants:counting_features", "n_samples": size["n_gen"], "batch_size": 64,
                        "metrics": ["fid", "kid", "precision", "recall"], "kid_subsets": 10,
                        "kid_subset_size": 50, "n_resamples": 20}},
        ]),
        "settings": {"seed": 0, "progress": False},
    }


SPECS = {"text": text_spec, "image": image_spec}


# -- timing -------------------------------------------------------------------------------------
def _me():
    """This file as the importable module ``bench_variants`` (the specs' factories live there)."""
    import bench_variants

    return bench_variants


def run_one(kind: str, n_variants: int, work: Path, size: dict[str, int], device: str = "cpu") -> dict[str, Any]:
    """One audit with ``n_variants`` variants: wall time, the base's model work, real-set passes."""
    from audit.runner import run_audit
    from audit.spec import AuditSpec

    data = SPECS[kind](work, n_variants, size)
    spec = AuditSpec.model_validate(data)
    seen = _me().SEEN
    before = seen["images"]
    t0 = time.perf_counter()
    result = run_audit(spec, out_dir=work / f"out-{kind}-{n_variants}", use_store=False, show_progress=False,
                       cache_dir=work / "cache", device=device)
    wall = time.perf_counter() - t0
    report = result.report
    bad = [(v, pid, st.error) for v, sts in [(None, report.probes), *((r.name, r.probes) for r in report.variants)]
           for pid, st in sts.items() if st.status != "ok"]
    if bad:
        raise SystemExit(f"{kind} N={n_variants}: probes not ok: {bad}")
    if len(report.variants) != n_variants:
        raise SystemExit(f"{kind} N={n_variants}: the report has {len(report.variants)} variant records; this "
                         f"checkout's runner does not run spec.variants")
    work_s = float(report.timings.get("load_subject_s", 0.0)) + sum(st.wall_s or 0.0 for st in report.probes.values())
    variant_work = [float(report.timings.get(f"load_subject_s:{v.name}", 0.0))
                    + sum(st.wall_s or 0.0 for st in v.probes.values()) for v in report.variants]
    out = {"wall_s": wall, "base_model_work_s": work_s, "variant_model_work_s": sum(variant_work),
           # Everything but the subjects' loads and probes: set-up, deltas, closing, reports.
           "outside_models_s": wall - work_s - sum(variant_work), "n_variant_records": len(report.variants)}
    if kind == "image":
        out["real_set_passes"] = (seen["images"] - before - (n_variants + 1) * size["n_gen"]) / size["n_real"]
    return out


def real_pass_s(work: Path, size: dict[str, int], repeats: int, device: str = "cpu") -> float:
    """One pass over the real set alone (read the folder, embed it): the image audit's ``R``."""
    from probes.quality.features import build_extractor
    from probes.quality.image_fidelity import reference_from_folder

    fx = build_extractor("bench_variants:counting_features", {}, device=device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        reference_from_folder(work / "real", fx, batch_size=64, keep_features=10000)
        times.append(time.perf_counter() - t)
    return min(times)


def bench(kind: str, counts: list[int], repeats: int, work: Path, size: dict[str, int],
          device: str = "cpu") -> dict[str, Any]:
    """Every N of ``counts`` (0 first), ``repeats`` times, interleaved so drifting load hits all N alike."""
    run_one(kind, 0, work, size, device)  # warm-up: imports, tokenizer training, first-call kernels
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for _ in range(repeats):
        for n in counts:
            runs[n].append(run_one(kind, n, work, size, device))
    t0 = [r["wall_s"] for r in runs[0]]
    w0 = statistics.median(r["base_model_work_s"] for r in runs[0])
    shared = real_pass_s(work, size, repeats, device) if kind == "image" else 0.0
    rows = []
    for n in counts:
        walls = [r["wall_s"] for r in runs[n]]
        row: dict[str, Any] = {"variants": n, "wall_s_min": min(walls), "wall_s_median": statistics.median(walls)}
        if n:
            # Pair each repeat's T_N with the same repeat's T_0 (the load drifts between repeats).
            per = [(tn - t) / n / w0 for tn, t in zip(walls, t0)]
            over = [tn / (t + n * (w0 - shared)) for tn, t in zip(walls, t0)]
            row |= {"per_variant_min": min(per), "per_variant_median": statistics.median(per),
                    "overhead_min": min(over), "overhead_median": statistics.median(over),
                    # A variant's own loads and probes against the base's (1.0: they cost the same).
                    "variant_work_ratio_median": statistics.median(r["variant_model_work_s"] / n / w0
                                                                   for r in runs[n])}
        row["outside_models_s_median"] = statistics.median(r["outside_models_s"] for r in runs[n])
        if kind == "image":
            row["real_set_passes"] = sorted({r["real_set_passes"] for r in runs[n]})
        rows.append(row)
    import gc

    t = time.perf_counter()
    gc.collect()  # what closing each subject costs in a heap like the audits' (audit.variants_run)
    return {"kind": kind, "base_model_work_s": w0, "shared_real_pass_s": shared,
            "gc_collect_s": time.perf_counter() - t,
            "ideal_per_variant": (w0 - shared) / w0, "rows": rows}


SIZES = {
    "default": {"docs": 32, "doc_chars": 800, "prompts": 6, "layers": 4, "width": 128, "n_real": 1500, "n_gen": 500},
    "quick": {"docs": 6, "doc_chars": 200, "prompts": 2, "layers": 2, "width": 64, "n_real": 32, "n_gen": 32},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", type=int, nargs="+", default=[1, 2, 3], help="the N to time (0 is always timed)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--audits", nargs="+", choices=sorted(SPECS), default=sorted(SPECS))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, N in 0 and 2, one repeat (a smoke run)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a shared CPU)")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.variants, args.repeats = [2], 1
    size = SIZES["quick" if args.quick else "default"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    counts = sorted({0, *args.variants})
    result: dict[str, Any] = {"load_before": os.getloadavg(), "threads": args.threads, "device": args.device,
                              "sizes": size,
                              "repeats": args.repeats, "audits": {}}
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp:
        for kind in args.audits:
            work = Path(tmp) / kind
            work.mkdir()
            result["audits"][kind] = bench(kind, counts, args.repeats, work, size, args.device)
    result |= {"load_after": os.getloadavg(), "total_s": time.perf_counter() - t}
    _print(result)
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    passes = {p for a in result["audits"].values() for r in a["rows"] for p in r.get("real_set_passes", [1])}
    return 0 if passes == {1} else 1


def _print(result: dict[str, Any]) -> None:
    print(f"load {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after; "
          f"{result['repeats']} repeats; {result['total_s']:.0f} s")
    for kind, a in result["audits"].items():
        print(f"{kind}: one audit's model work W0 = {a['base_model_work_s']:.2f} s, shared per audit "
              f"R = {a['shared_real_pass_s']:.2f} s, ideal per-variant ratio (W0-R)/W0 = {a['ideal_per_variant']:.2f}; "
              f"one gc.collect() {a['gc_collect_s']:.2f} s")
        for r in a["rows"]:
            line = (f"  N={r['variants']}: wall {r['wall_s_min']:.2f} s min / {r['wall_s_median']:.2f} s median, "
                    f"outside the models {r['outside_models_s_median']:.2f} s")
            if r["variants"]:
                line += (f"; per variant {r['per_variant_min']:.2f} min / {r['per_variant_median']:.2f} median"
                         f" (its own work {r['variant_work_ratio_median']:.2f})"
                         f"; overhead {r['overhead_min']:.2f} / {r['overhead_median']:.2f}")
            if "real_set_passes" in r:
                line += f"; real-set passes {r['real_set_passes']}"
            print(line)


if __name__ == "__main__":
    raise SystemExit(main())
