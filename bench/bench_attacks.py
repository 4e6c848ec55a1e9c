"""Benchmark: our PGD engine vs ART (and torchattacks, if importable) vs a bare hand-written loop.

One run, the same model, data and attack parameters (L-inf PGD, eps 8/255, step 2/255,
``--steps`` steps, no random start: every contender starts at the clean image, so all of them
compute the same adversarial examples) for every contender. The contenders alternate within
each of ``--repeats`` rounds after a warm-up (a drift of the machine's load hits all alike);
each round gives one ratio per pair, and the min and median over the rounds are printed for
the ratios the issue sets goals for:

* ours / ART at ART's default batch size (32)   goal >= 10x
* ours / ART at the same batch size as ours      goal >= 3x
* ours / bare hand-written PGD loop              goal >= 0.9x (the engine adds no overhead)

The values are checked equal: each contender's adversarial examples against ours (the share of
pixels that differ by more than 1e-5, and the largest difference: a gradient component whose
sign flips with float rounding moves a pixel by 2 steps) and its robust accuracy, which must
be the same.

Run on a GPU (the reference: ResNet-18, 32x32, 10 steps, 1024-4096 images on an H100):
    python bench/bench_attacks.py --device cuda --n 4096 --batch 1024 --width 64
Small scale on a CPU:
    python bench/bench_attacks.py --device cpu --n 256 --batch 128 --width 16 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratios import alternate, load_avg, ratio_line, ratio_stats  # noqa: E402

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


def calibrate_batch_norm(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set the batch-norm statistics of a randomly initialised net from ``x``: with the default
    ones (mean 0, variance 1) activations collapse layer by layer and every input gets the same
    class, which no attack can change; calibrated, predictions vary and PGD flips many of them,
    so the robust accuracies compared below are not trivially 1."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batch
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


# -- contenders --------------------------------------------------------------------------------------
def bare_pgd(model, x, y, eps, alpha, steps):
    """The loop everyone writes: the floor for the engine's overhead (no random start, as every
    contender here)."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * g.sign()
        x_adv = (x + (x_adv.clamp(0, 1) - x).clamp(-eps, eps))
    with torch.no_grad():  # robust accuracy needs the predictions: the same work every contender does
        pred = model(x_adv).argmax(1)
    return x_adv, pred


def contenders(args, model, x, y, eps, alpha, steps):
    """name -> (call returning (x_adv, predictions), images per call)."""
    def ours():
        r = run_batched(pgd, model, x, y, batch_size=args.batch, eps=eps, steps=steps, eps_step=alpha,
                        random_start=False)
        return r.x_adv, r.logits.argmax(1)

    def bare():
        parts = [bare_pgd(model, xb, yb, eps, alpha, steps) for xb, yb in zip(x.split(args.batch), y.split(args.batch))]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    out = {"ours": (ours, args.n), "bare": (bare, args.n)}
    try:
        import torchattacks

        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)

        def run_ta():
            advs = [ta(xb, yb) for xb, yb in zip(x.split(args.batch), y.split(args.batch))]
            adv = torch.cat(advs)
            with torch.no_grad():
                return adv, torch.cat([model(a).argmax(1) for a in advs])

        out["torchattacks"] = (run_ta, args.n)
    except ImportError:
        pass
    if not args.skip_art:
        from probes.robustness.art_backend import ART_DEFAULT_BATCH_SIZE, art_pgd

        n_default = min(args.art_default_n or args.n, args.n)
        for label, bs, n in (("art_default_batch", ART_DEFAULT_BATCH_SIZE, n_default),
                             ("art_equal_batch", args.batch, args.n)):
            def run_art(bs=bs, n=n):
                r = art_pgd(model, x[:n], y[:n], eps, num_classes=10, steps=steps, eps_step=alpha,
                            random_start=False, restarts=1, batch_size=bs)
                return r.x_adv, r.logits.argmax(1)

            out[label] = (run_art, n)
    return out


def value_checks(outputs, y, tol: float = 1e-5) -> dict:
    """Each contender's adversarial examples and robust accuracy against ours (on the images it attacked)."""
    x_ours, pred_ours = outputs["ours"]
    checks = {}
    for name, (x_adv, pred) in outputs.items():
        n = x_adv.shape[0]
        diff = (x_adv.float() - x_ours[:n]).abs()
        acc, acc_ours = (pred == y[:n]).float().mean().item(), (pred_ours[:n] == y[:n]).float().mean().item()
        checks[name] = {"n": n, "robust_accuracy": acc, "robust_accuracy_ours": acc_ours,
                        "max_abs_diff": diff.max().item(), "share_pixels_differing": (diff > tol).float().mean().item(),
                        "predictions_differing": int((pred != pred_ours[:n]).sum())}
    return checks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=4096, help="images attacked per run")
    ap.add_argument("--batch", type=int, default=1024, help="batch size of ours, the bare loop and 'ART equal'")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 width (64 = the standard model)")
    ap.add_argument("--size", type=int, default=32, help="image side")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds; min and median of the ratios")
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
    net = resnet18(args.width).to(device)
    model = InputSpaceModel(net, input_range=(0.0, 1.0), mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26]).to(device)
    x = torch.rand(args.n, 3, args.size, args.size, device=device)
    calibrate_batch_norm(model, x[:256])
    with torch.no_grad():
        y = torch.cat([model(xb).argmax(1) for xb in x.split(args.batch)])
    eps, alpha, steps = 8 / 255, 2 / 255, args.steps
    cont = contenders(args, model, x, y, eps, alpha, steps)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    times, outputs = alternate({k: fn for k, (fn, _n) in cont.items()}, repeats=args.repeats, sync=sync)
    images_per_s = {k: cont[k][1] / min(ts) for k, ts in times.items()}
    ratios = {f"ours/{k}": ratio_stats(times["ours"], times[k], ours_n=args.n, other_n=cont[k][1])
              for k in cont if k != "ours"}
    checks = value_checks(outputs, y)
    # Equal: the same robust accuracy for every contender, and adversarial examples that differ
    # only where float rounding flipped a gradient sign (under 1% of the pixels).
    equal = all(c["robust_accuracy"] == c["robust_accuracy_ours"] and c["share_pixels_differing"] < 0.01
                for c in checks.values())
    goals = {"ours/art_default_batch": 10, "ours/art_equal_batch": 3, "ours/bare": 0.9}
    info = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "threads": torch.get_num_threads(), "n": args.n, "batch": args.batch, "steps": steps,
            "width": args.width, "size": args.size, "repeats": args.repeats, "random_start": False,
            "images_per_s": images_per_s, "seconds": times,
            "ratios": {k: v["median"] for k, v in ratios.items()},
            "ratios_min": {k: v["min"] for k, v in ratios.items()}, "ratio_rounds": ratios,
            "value_checks": checks, "values_equal": equal, "goals": goals, "load_avg": load_avg(),
            "load_1min": load_avg()[0] if load_avg() else None}
    if args.json_out:
        args.json_out.write_text(json.dumps(info, indent=2))
    if args.json:
        print(json.dumps(info, indent=2))
        return info
    print(f"PGD L-inf eps 8/255, {steps} steps, no random start, {args.n} images {args.size}x{args.size}, "
          f"ResNet-18 width {args.width}, batch {args.batch}, on {info['gpu'] or device} "
          f"({info['threads']} threads); load {info['load_avg']}")
    for k, v in images_per_s.items():
        print(f"  {k:<20} {v:10.1f} images/s (best of {args.repeats}, {cont[k][1]} images)")
    for k, v in ratios.items():
        print(ratio_line(k, v, goals.get(k)))
    for k, c in checks.items():
        if k != "ours":
            print(f"  {k:<20} robust accuracy {c['robust_accuracy']:.4f} (ours {c['robust_accuracy_ours']:.4f}), "
                  f"{c['share_pixels_differing']:.2e} of pixels differ (max {c['max_abs_diff']:.2e}), "
                  f"{c['predictions_differing']} predictions differ")
    print(f"  values equal: {'yes' if equal else 'NO'}")
    return info


if __name__ == "__main__":
    main()
