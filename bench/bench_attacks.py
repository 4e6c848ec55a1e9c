"""Benchmark: our PGD engine vs ART (and torchattacks, if importable) vs a bare hand-written loop.

One run, the same model, data and attack parameters (L-inf PGD, eps 8/255, step 2/255, random
start, ``--steps`` steps) for every contender; throughput in images per second (best of
``--repeats`` after a warm-up), then the ratios the issue sets goals for:

* ours / ART at ART's default batch size (32)   goal >= 10x
* ours / ART at the same batch size as ours      goal >= 3x
* ours / bare hand-written PGD loop              goal >= 0.9x (the engine adds no overhead)

Run on a GPU (the reference: ResNet-18, 32x32, 10 steps, 1024-4096 images on an H100):
    python bench/bench_attacks.py --device cuda --n 4096 --batch 1024 --width 64
Small scale on a CPU:
    python bench/bench_attacks.py --device cpu --n 256 --batch 128 --width 16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.subjects.classifier import InputSpaceModel  # noqa: E402
from probes.robustness.attacks import pgd, run_batched  # noqa: E402


# -- a ResNet-18 layout with a width knob (width 64 is ResNet-18 for 32x32 inputs) --------------------
class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(out)) + self.skip(x))


def resnet18(width: int = 64, num_classes: int = 10) -> nn.Module:
    w = width
    layers = [nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
    cin = w
    for cout, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


# -- contenders --------------------------------------------------------------------------------------
def bare_pgd(model, x, y, eps, alpha, steps):
    """The loop everyone writes: the floor for the engine's overhead."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * g.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    with torch.no_grad():  # robust accuracy needs the predictions: the same work every contender does
        pred = model(x_adv).argmax(1)
    return x_adv, pred


def timed_round_robin(contenders, device, repeats):
    """Best wall time of each contender; the contenders take turns within each repeat, so a change
    of machine load during the run biases none of them."""
    def once(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for fn, _n in contenders.values():
        fn()  # warm-up (cuDNN autotune, allocator)
    best = {k: float("inf") for k in contenders}
    for _ in range(repeats):
        for k, (fn, _n) in contenders.items():
            best[k] = min(best[k], once(fn))
    return {k: contenders[k][1] / best[k] for k in contenders}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=4096, help="images attacked per run")
    ap.add_argument("--batch", type=int, default=1024, help="batch size of ours, the bare loop and 'ART equal'")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 width (64 = the standard model)")
    ap.add_argument("--size", type=int, default=32, help="image side")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--art-default-n", type=int, default=None,
                    help="images for ART at batch 32 (default: --n; it is the slowest contender)")
    ap.add_argument("--skip-art", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = resnet18(args.width).to(device).eval()
    model = InputSpaceModel(net, input_range=(0.0, 1.0), mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26]).to(device)
    x = torch.rand(args.n, 3, args.size, args.size, device=device)
    with torch.no_grad():
        y = torch.cat([model(xb).argmax(1) for xb in x.split(args.batch)])
    eps, alpha, steps = 8 / 255, 2 / 255, args.steps
    results: dict[str, float] = {}

    def ours():
        return run_batched(pgd, model, x, y, batch_size=args.batch, eps=eps, steps=steps, eps_step=alpha,
                           random_start=True)

    def bare():
        for xb, yb in zip(x.split(args.batch), y.split(args.batch)):
            bare_pgd(model, xb, yb, eps, alpha, steps)

    contenders = {"ours": (ours, args.n), "bare": (bare, args.n)}

    try:
        import torchattacks

        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)

        def run_ta():
            for xb, yb in zip(x.split(args.batch), y.split(args.batch)):
                adv = ta(xb, yb)
                with torch.no_grad():
                    model(adv).argmax(1)

        contenders["torchattacks"] = (run_ta, args.n)
    except ImportError:
        pass

    if not args.skip_art:
        from probes.robustness.art_backend import ART_DEFAULT_BATCH_SIZE, art_pgd

        n_default = args.art_default_n or args.n
        for label, bs, n in (("art_default_batch", ART_DEFAULT_BATCH_SIZE, n_default), ("art_equal_batch", args.batch, args.n)):
            def run_art(bs=bs, n=n):
                art_pgd(model, x[:n], y[:n], eps, num_classes=10, steps=steps, eps_step=alpha, random_start=True,
                        restarts=1, batch_size=bs)

            contenders[label] = (run_art, n)
    results.update(timed_round_robin(contenders, device, args.repeats))

    ratios = {"ours/bare": results["ours"] / results["bare"]}
    if "art_default_batch" in results:
        ratios["ours/art_default_batch"] = results["ours"] / results["art_default_batch"]
        ratios["ours/art_equal_batch"] = results["ours"] / results["art_equal_batch"]
    if "torchattacks" in results:
        ratios["ours/torchattacks"] = results["ours"] / results["torchattacks"]
    info = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "threads": torch.get_num_threads(), "n": args.n, "batch": args.batch, "steps": steps,
            "width": args.width, "size": args.size, "images_per_s": results, "ratios": ratios,
            "goals": {"ours/art_default_batch": 10, "ours/art_equal_batch": 3, "ours/bare": 0.9},
            "cpu_count": os.cpu_count()}
    if args.json_out:
        args.json_out.write_text(json.dumps({**info, "load_1min": os.getloadavg()[0]}, indent=2))
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"PGD L-inf eps 8/255, {steps} steps, {args.n} images {args.size}x{args.size}, ResNet-18 width "
          f"{args.width}, batch {args.batch}, on {info['gpu'] or device}")
    for k, v in results.items():
        print(f"  {k:<20} {v:10.1f} images/s")
    for k, v in ratios.items():
        goal = info["goals"].get(k)
        print(f"  {k:<24} {v:6.2f}x" + (f"   (goal >= {goal}x)" if goal else ""))


if __name__ == "__main__":
    main()
