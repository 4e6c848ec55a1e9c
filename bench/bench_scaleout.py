"""Benchmark: the image-fidelity probe at 1 and N processes (torchrun), images/s and equal values.

Writes ``--n`` generated and ``--n`` reference PNG images (``--size`` pixels, seeded noise fields)
into a temporary folder, then runs the same audit spec (``quality.image_fidelity`` on a folder
subject against the reference folder) through ``genai-audit run --nproc K`` for each K of
``--nproc``. Reports the probe's wall time (the slowest rank's), images/s over both sides, and
the FID of each run with its relative difference to the 1-process run (they must agree: the
ranks shard whole batches and the statistics are reduced exactly).

    .venv/bin/python bench/bench_scaleout.py --device cuda --nproc 1 --n 10000 --feature inception \
        --inception-weights pt_inception-2015-12-05.pth              # the lent GPU machine
    .venv/bin/python bench/bench_scaleout.py --device cpu --nproc 1 2 --n 512   # a CPU stand-in

On a CPU the processes share the machine's cores, so N processes measure the overhead of the
distributed path (start-up, the process group, the reductions), not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_images(folder: Path, n: int, size: int, seed: int, shift: float) -> None:
    from tests.image_fakes import write_image_folder

    write_image_folder(folder, n, size=size, seed=seed, shift=shift)


def run_once(spec: Path, out: Path, nproc: int, device: str, threads: int | None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    if threads:
        # torchrun sets OMP_NUM_THREADS=1 in its workers when nproc > 1; give every run the
        # same intra-op threads so the comparison is of the process count alone.
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "audit", "run", str(spec), "--out", str(out), "--no-store", "-q",
           "--device", device, "--nproc", str(nproc)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"nproc {nproc}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    st = report["probes"]["quality.image_fidelity"]
    fid = next(f for f in report["findings"] if f["metric"] == "fid")
    return {"nproc": nproc, "probe_wall_s": st["wall_s"], "command_wall_s": total, "fid": fid["value"],
            "n": fid["n"], "world": report["environment"].get("distributed", {}).get("world_size", 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="generated images (and as many reference images)")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels")
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    ap.add_argument("--feature", default="tests.image_fakes:tiny_feature_net",
                    help="inception, clip or module:factory (default: a small random CNN built in code)")
    ap.add_argument("--inception-weights", default=None, help="FID Inception weights for --feature inception")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads per process (OMP_NUM_THREADS); default 1 on cpu, unset on cuda")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_images(root / "gen", args.n, args.size, seed=1, shift=0.3)
        write_images(root / "ref", args.n, args.size, seed=2, shift=0.0)
        print(f"wrote 2 x {args.n} images of {args.size}x{args.size} in {time.perf_counter() - t0:.1f} s")
        params = {"feature": args.feature, "batch_size": args.batch_size, "n_samples": args.n,
                  "n_resamples": 50, "kid_subsets": 10, "kid_subset_size": min(100, args.n // 2)}
        if args.inception_weights:
            params["inception_weights"] = str(Path(args.inception_weights).resolve())
        spec = {"name": "bench-scaleout",
                "subject": {"kind": "image-generator", "source": "folder", "path": str(root / "gen")},
                "data": {"reference": str(root / "ref")},
                "probes": [{"id": "quality.image_fidelity", "params": params}],
                "settings": {"device": args.device, "progress": False}}
        spec_path = root / "audit.json"
        spec_path.write_text(json.dumps(spec))
        threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
        rows = [run_once(spec_path, root / f"out-{k}", k, args.device, threads) for k in args.nproc]

    base = rows[0]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; device {args.device}; "
          f"feature {args.feature}; OMP_NUM_THREADS {threads or 'unset'}")
    for r in rows:
        ips = 2 * args.n / r["probe_wall_s"]
        rel = abs(r["fid"] - base["fid"]) / max(abs(base["fid"]), 1e-12)
        print(f"nproc {r['nproc']} (world {r['world']}): probe {r['probe_wall_s']:.2f} s, {ips:,.0f} images/s "
              f"(both sides), command {r['command_wall_s']:.1f} s; FID {r['fid']:.6f} (rel. diff. to "
              f"nproc {base['nproc']}: {rel:.1e}); speed ratio {base['probe_wall_s'] / r['probe_wall_s']:.2f}x")


if __name__ == "__main__":
    main()
