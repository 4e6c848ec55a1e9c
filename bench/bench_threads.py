"""Benchmark: which ``settings.threads`` is fastest on this machine, for perplexity and PGD.

One process; for each thread count (``--threads``, default 1, 2 and torch's default) it times
the perplexity engine on SmolLM2-135M (offline bundle; windows of 256 tokens, stride 128,
batches of 8) and PGD on a small ResNet-18 (``bench_attacks.resnet18``, width 16, 32x32,
10 steps), interleaved over ``--repeats`` rounds, and prints min and median tokens/s and
images/s. On a shared machine the figures are noisy: give the load beside them.

Usage::

    .venv/bin/python bench/bench_threads.py --tokens 2048 --images 128 --repeats 3
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from audit.demo import CORPUS  # noqa: E402
from audit.demo.text import smollm2_gguf  # noqa: E402
from audit.spec import SubjectSpec  # noqa: E402
from audit.subjects.classifier import InputSpaceModel  # noqa: E402
from audit.subjects.loading import load_subject  # noqa: E402
from audit.subjects.textdata import read_documents  # noqa: E402
from audit.threads import intra_op_threads  # noqa: E402
from bench_attacks import resnet18  # noqa: E402
from probes.quality.functional import causal_lm_scorer, windowed_token_logprobs  # noqa: E402
from probes.robustness.attacks import pgd, run_batched  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1, 2, default)")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "genai-audit"))
    args = ap.parse_args(argv)
    default = torch.get_num_threads()
    counts = args.threads or sorted({1, 2, default})

    lm = load_subject(SubjectSpec(kind="text-generator", source="gguf", path=str(smollm2_gguf())), device="cpu",
                      cache_dir=Path(args.cache_dir))
    text = "\n\n".join(d.text for d in read_documents(CORPUS))
    base = lm.encode([text])[0]
    ids = [lm.bos_token_id, *(base * (args.tokens // len(base) + 1))[: args.tokens - 1]]
    scorer = causal_lm_scorer(lm.model)
    torch.manual_seed(0)
    model = InputSpaceModel(resnet18(16).eval(), input_range=(0.0, 1.0), mean=[0.5] * 3, std=[0.25] * 3)
    x = torch.rand(args.images, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)

    def perplexity():
        windowed_token_logprobs(scorer, [ids], max_length=256, stride=128, batch_size=8, pad_id=lm.pad_token_id,
                                device="cpu", selective=True)

    def attack():
        run_batched(pgd, model, x, y, batch_size=64, eps=8 / 255, steps=10, step_size=2 / 255, random_start=True)

    work = {"perplexity_tokens_per_s": (perplexity, len(ids)), "pgd_images_per_s": (attack, args.images)}
    times = {(k, n): [] for k in work for n in counts}
    for fn, _ in work.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for n in counts:
            with intra_op_threads(n):
                for k, (fn, _) in work.items():
                    t0 = time.perf_counter()
                    fn()
                    times[(k, n)].append(time.perf_counter() - t0)
    load = os.getloadavg()[0]
    result = {"default_threads": default, "cpu_count": os.cpu_count(), "load_avg_1min": load, "repeats": args.repeats}
    print(f"torch default: {default} threads; {os.cpu_count()} CPUs; load {load:.1f} (noisy on a shared machine)")
    for k, (_, units) in work.items():
        for n in counts:
            ts = times[(k, n)]
            result[f"{k}[threads={n}]"] = {"best": units / min(ts), "median": units / statistics.median(ts)}
            print(f"  {k:26s} threads {n}: {units / min(ts):9.1f} best, {units / statistics.median(ts):9.1f} median")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
