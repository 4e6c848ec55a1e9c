"""Benchmark: our FID pipeline against torchmetrics' FrechetInceptionDistance, same extractor, one run.

Both use the FID InceptionV3 of torch-fidelity (pool3, 2048-d, TF1-compatible bilinear
resize, no antialias). Weights: ``--inception-weights PATH`` (the real ones), else random
weights built in code (the speed and the agreement of the two values do not depend on them).
Images: uint8 noise fields generated in memory ahead of timing (``--size``), fed in
``--batch-size`` batches to both; each side's images/s covers features + statistics + the
final distance. The two alternate in each of ``--repeats`` rounds; prints both values, their
relative difference (equal within 1e-3), the size, the load, and the min and median over the
rounds of the speed ratio.

    .venv/bin/python bench/bench_fid.py --device cuda --n 10000 --batch-size 500   # H100 (the goal: >= 2x)
    .venv/bin/python bench/bench_fid.py --device cpu --n 64 --batch-size 32        # a CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratios import alternate, load_avg, ratio_line, ratio_stats  # noqa: E402


def _random_inception_weights(folder: Path) -> Path:
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    original, orig_load = tfi.load_state_dict_from_url, tfi.FeatureExtractorInceptionV3.load_state_dict
    tfi.load_state_dict_from_url = lambda *a, **k: None
    tfi.FeatureExtractorInceptionV3.load_state_dict = lambda self, sd, *a, **k: None
    try:
        torch.manual_seed(0)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        tfi.load_state_dict_from_url, tfi.FeatureExtractorInceptionV3.load_state_dict = original, orig_load
    # Random convolutions shrink activations layer by layer (features ~1e-6 after ~90 layers);
    # calibrate the batch-norm statistics on random images so features have unit scale and
    # the two FIDs are compared on a meaningful number.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batch
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (8, 3, 64, 64), generator=torch.Generator().manual_seed(1), dtype=torch.uint8))
    net.eval()
    path = folder / "inception-random.pth"
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, path)
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=None, help="images per side (default 10000 on cuda, 64 on cpu)")
    ap.add_argument("--size", type=int, default=64, help="side of the generated images")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--inception-weights", default=None)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (min and median reported)")
    ap.add_argument("--json-out", type=Path, default=None, help="also write the result as JSON here")
    args = ap.parse_args()
    device = torch.device(args.device)
    n = args.n or (10000 if device.type == "cuda" else 64)
    bs = args.batch_size or (500 if device.type == "cuda" else 32)
    torch.backends.cudnn.benchmark = True

    from torchmetrics.image.fid import FrechetInceptionDistance

    from probes.quality.features import inception_extractor
    from probes.quality.image_fidelity import collect_features
    from probes.quality.image_functional import frechet_distance

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(args.inception_weights) if args.inception_weights else _random_inception_weights(Path(tmp))
        g = torch.Generator().manual_seed(0)
        real = torch.randint(0, 256, (n, 3, args.size, args.size), generator=g, dtype=torch.uint8)
        # The generated side: smoother and darker images (a visibly different distribution).
        fake = torch.nn.functional.avg_pool2d(real.float(), 5, stride=1, padding=2).mul(0.7).to(torch.uint8)
        real_b, fake_b = list(real.split(bs)), list(fake.split(bs))
        if device.type == "cuda":  # both sides read the same pinned host batches
            real_b, fake_b = [b.pin_memory() for b in real_b], [b.pin_memory() for b in fake_b]

        fx = inception_extractor(weights, device=device)
        tm = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights),
                                      antialias=False).to(device)
        # Warm-up both (cuDNN autotuning, lazy init) on one batch, outside the timings.
        fx(real_b[0][:8])
        tm.update(real_b[0][:8].to(device), real=True)
        tm.reset()
        _sync(device)

        def run_ours() -> float:
            with torch.inference_mode():
                a = collect_features(real_b, fx, keep_features=0)
                b = collect_features(fake_b, fx, keep_features=0)
                return float(frechet_distance(a.moments.mean, a.moments.cov, b.moments.mean, b.moments.cov))

        def run_tm() -> float:
            tm.reset()
            for xb in real_b:
                tm.update(xb.to(device, non_blocking=True), real=True)
            for xb in fake_b:
                tm.update(xb.to(device, non_blocking=True), real=False)
            return float(tm.compute())

        # The two alternate in each round: a busy machine's noise hits both alike.
        times, values = alternate({"ours": run_ours, "tm": run_tm}, repeats=args.repeats, warmup=False,
                                  sync=lambda: _sync(device))
        ours, theirs = values["ours"], values["tm"]
        t_ours, t_tm = min(times["ours"]), min(times["tm"])

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    ips_ours, ips_tm = 2 * n / t_ours, 2 * n / t_tm
    ratio = ratio_stats(times["ours"], times["tm"])
    rel = abs(ours - theirs) / max(abs(theirs), 1e-12)
    equal = rel <= 1e-3
    print(f"device: {name}; {n} images per side, {args.size}x{args.size} -> 299x299, batch {bs}; "
          f"load {load_avg()}")
    print(f"ours         FID {ours:.6e}  {t_ours:8.2f} s  {ips_ours:9.1f} images/s (best of {args.repeats})")
    print(f"torchmetrics FID {theirs:.6e}  {t_tm:8.2f} s  {ips_tm:9.1f} images/s (best of {args.repeats})")
    print(ratio_line("ours / torchmetrics", ratio, 2.0))
    print(f"  relative difference {rel:.2e}: values {'equal' if equal else 'NOT equal'} within 1e-3")
    if args.json_out:
        import json

        args.json_out.write_text(json.dumps({
            "device": name, "n": n, "size": args.size, "batch_size": bs, "repeats": args.repeats,
            "fid_ours": ours, "fid_torchmetrics": theirs, "rel_diff": rel, "equal_within_1e-3": equal,
            "values_equal": equal, "images_per_s": {"ours": ips_ours, "torchmetrics": ips_tm},
            "ratio": ratio["median"], "ratio_median": ratio["median"], "ratio_min": ratio["min"],
            "ratio_rounds": ratio["per_round"], "seconds": times, "load_avg": load_avg(),
            "load_1min": (load_avg() or [None])[0], "goal": 2.0}, indent=2))

if __name__ == "__main__":
    main()
