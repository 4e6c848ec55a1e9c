"""Every GPU claim in one run: the benchmarks side by side with their peer tools, and the GPU tests.

``bash bench/gpu_suite.sh`` calls this on a machine with a CUDA device (at most about 8
minutes on one H100) and writes one JSON file with every ratio and value check:

- PGD against ART at its default batch and at an equal batch, and against a bare loop
  (``bench_attacks.py``);
- FID against torchmetrics on 10k images (``bench_fid.py``);
- perplexity against the transformers stride recipe, at 1024/512 and at the small
  128/64 window (``bench_perplexity.py --random-weights``: SmolLM2's architecture, since the
  98 MB GGUF bundle does not travel to the GPU machine);
- generation against transformers one prompt at a time and batched (``bench_generation.py``,
  when present);
- NVML energy against sampled power x time (``bench_energy.py``);
- an audit with N = 0..3 variants against one audit, and the real set's features computed once
  whatever N (``bench_variants.py``);
- the ``@pytest.mark.gpu`` tests.

A step that fails is recorded with its exit code and the end of its output; the others still
run. ``--dry-run`` runs the same steps on the CPU at tiny sizes, so that CI notices when a
benchmark's flags or output drift (``tests/test_gpu_suite.py``).

Usage::

    python bench/gpu_suite.py --out gpu-out            # on the GPU machine
    python bench/gpu_suite.py --dry-run --out /tmp/x   # here, on the CPU, about a minute
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def steps(dry_run: bool, out: Path) -> list[tuple[str, list[str], int]]:
    """(name, argv after the script, timeout in seconds) of every benchmark step."""
    dev = "cpu" if dry_run else "cuda"
    if dry_run:
        plan = [
            ("attacks", ["bench_attacks.py", "--device", dev, "--n", "8", "--batch", "8", "--steps", "1",
                         "--width", "4", "--size", "8", "--repeats", "1", "--threads", "1"], 300),
            ("fid", ["bench_fid.py", "--device", dev, "--n", "4", "--size", "8", "--batch-size", "4",
                     "--repeats", "1"], 300),
            ("perplexity", ["bench_perplexity.py", "--device", dev, "--random-weights", "--layers", "2",
                            "--tokens", "160", "--max-length", "64", "--stride", "32", "--batch-size", "4",
                            "--repeats", "1", "--threads", "1"], 300),
            ("perplexity_small_window", ["bench_perplexity.py", "--device", dev, "--random-weights",
                                         "--layers", "2", "--small-window", "--tokens", "200", "--batch-size", "4",
                                         "--repeats", "1", "--threads", "1"], 300),
            ("energy", ["bench_energy.py", "--device", dev, "--seconds", "0.5", "--warmup", "0"], 120),
            ("variants", ["bench_variants.py", "--device", dev, "--quick"], 180),
        ]
    else:
        plan = [
            ("attacks", ["bench_attacks.py", "--device", dev, "--n", "4096", "--batch", "1024",
                         "--art-default-n", "1024"], 150),
            ("fid", ["bench_fid.py", "--device", dev, "--n", "10000", "--batch-size", "500"], 120),
            ("perplexity", ["bench_perplexity.py", "--device", dev, "--random-weights", "--tokens", "65536",
                            "--max-length", "1024", "--stride", "512", "--batch-size", "32"], 90),
            ("perplexity_small_window", ["bench_perplexity.py", "--device", dev, "--random-weights",
                                         "--small-window", "--tokens", "32768", "--batch-size", "64"], 60),
            ("energy", ["bench_energy.py", "--device", dev, "--seconds", "20"], 60),
            ("variants", ["bench_variants.py", "--device", dev], 180),
        ]
    if (REPO / "bench" / "bench_generation.py").exists():
        gen = (["--device", dev, "--random-weights", "--layers", "2", "--n", "4", "--tokens", "4", "--repeats", "1",
                "--threads", "1"]
               if dry_run else ["--device", dev, "--random-weights", "--n", "64", "--tokens", "64"])
        plan.append(("generation", ["bench_generation.py", *gen], 300 if dry_run else 120))
    out_flag = {"energy": "--json"}
    return [(name, [args[0], *args[1:], out_flag.get(name, "--json-out"), str(out / f"{name}.json")], t)
            for name, args, t in plan]


def run_step(name: str, argv: list[str], timeout_s: int, out: Path) -> dict[str, Any]:
    """Run one benchmark script; its JSON result, or its exit code and the end of its output."""
    start = time.perf_counter()
    cmd = [sys.executable, str(REPO / "bench" / argv[0]), *argv[1:]]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONPATH": _pythonpath()})
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired as exc:
        rc, tail = 124, f"timed out after {timeout_s} s: {str(exc.stdout or '')[-1000:]}"
    record: dict[str, Any] = {"command": " ".join(argv), "rc": rc,
                              "seconds": round(time.perf_counter() - start, 2)}
    result_file = out / f"{name}.json"
    if rc == 0 and result_file.exists():
        record["result"] = json.loads(result_file.read_text())
    else:
        record["output_tail"] = tail
    return record


def run_gpu_tests(out: Path, timeout_s: int) -> dict[str, Any]:
    """The ``@pytest.mark.gpu`` tests, counted from their JUnit XML."""
    import xml.etree.ElementTree as ET

    junit = out / "gpu-tests.xml"
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", f"--junitxml={junit}", "-p",
                               "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONPATH": _pythonpath()})
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired:
        rc, tail = 124, f"timed out after {timeout_s} s"
    counts: dict[str, int] = {}
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {"rc": rc, "seconds": round(time.perf_counter() - start, 2), "counts": counts,
            **({"output_tail": tail} if rc not in (0, 5) else {})}


def summary(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline ratios and value checks of every step that produced a result."""
    r = {k: v.get("result") or {} for k, v in records.items()}
    out: dict[str, Any] = {}
    if r.get("attacks"):
        out.update({f"pgd {k}": v for k, v in r["attacks"].get("ratios", {}).items()})
        out.update({f"pgd {k} min": v for k, v in r["attacks"].get("ratios_min", {}).items()})
        if "values_equal" in r["attacks"]:
            out["pgd values equal"] = r["attacks"]["values_equal"]
    if r.get("fid"):
        out |= {"fid ours/torchmetrics": r["fid"].get("ratio"), "fid ours/torchmetrics min": r["fid"].get("ratio_min"),
                "fid equal": r["fid"].get("equal_within_1e-3")}
    for key in ("perplexity", "perplexity_small_window"):
        if r.get(key):
            out |= {f"{key} ours/recipe": r[key].get("speedup"), f"{key} ours/recipe min": r[key].get("speedup_min"),
                    f"{key} equal": r[key].get("equal_within_1e-4")}
    if r.get("generation"):
        out |= {f"generation {k}": v for k, v in (r["generation"].get("ratios") or {}).items()}
        out["generation outputs equal"] = r["generation"].get("outputs_equal")
    if r.get("variants"):
        audits = r["variants"].get("audits") or {}
        out["variants per-variant cost / one audit (median, largest N)"] = {
            k: a["rows"][-1].get("per_variant_median") for k, a in audits.items()}
        out["variants real-set passes"] = sorted({p for r_ in (audits.get("image") or {}).get("rows", [])
                                                  for p in r_.get("real_set_passes", [])})
    if r.get("energy"):
        check = r["energy"].get("counter_vs_sampled") or {}
        out["energy nvml vs sampled power"] = ({k: check.get(k) for k in ("relative_difference", "within_10_percent")}
                                               if check else "no GPU counter: see the step's result")
    return out


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-suite-out"))
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    ap.add_argument("--only", nargs="*", default=None, help="run only these steps (names as in the JSON)")
    ap.add_argument("--skip-tests", action="store_true", help="skip the @pytest.mark.gpu tests")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run for the CPU check", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else "cpu",
        "torch": torch.__version__, "steps": {},
    }
    for name, step_argv, timeout_s in steps(args.dry_run, args.out):
        if args.only is not None and name not in args.only:
            continue
        print(f"[gpu-suite] {name}: {' '.join(step_argv)}", flush=True)
        report["steps"][name] = run_step(name, step_argv, timeout_s, args.out)
        print(f"[gpu-suite] {name}: rc {report['steps'][name]['rc']} in {report['steps'][name]['seconds']} s",
              flush=True)
    if not args.skip_tests:
        report["gpu_tests"] = run_gpu_tests(args.out, 120 if args.dry_run else 180)
    report["summary"] = summary(report["steps"])
    report["failed_steps"] = sorted(k for k, v in report["steps"].items() if v["rc"] != 0)
    (args.out / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report["summary"], indent=2, default=str))
    return 1 if report["failed_steps"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
