"""Benchmark / check: the energy counters against independent evidence, in one run.

GPU (the check of issue 7, item 5): over a steady load (back-to-back bfloat16 matmuls after a
warm-up), NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, read by
:class:`audit.energy.NvmlMeter`) must agree with sampled power x time
(``nvmlDeviceGetPowerUsage`` every 20 ms, trapezoid rule) within 10%. (The probe's J per image on
a real model comes from ``genai-audit demo --device cuda``: the digits generator's part.)

CPU (this machine): what is measurable. RAPL when readable (it is compared with codecarbon's
offline estimate, which is printed as an *estimate*); otherwise the report says that no CPU
counter is readable and prints codecarbon's estimate, labelled, beside the measured wall time.

Usage::

    .venv/bin/python bench/bench_energy.py                      # CPU, a few seconds
    .venv/bin/python bench/bench_energy.py --device cuda --seconds 20 --json out.json

Prints one JSON object (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.energy import (  # noqa: E402
    CodecarbonCpuMeter,
    NvmlMeter,
    NvmlPowerSampler,
    RaplMeter,
    hardware_info,
    integrate_power,
    measure_idle,
    summarize,
)


def _steady_gpu_load(device: int, seconds: float, size: int = 8192) -> int:
    import torch

    a = torch.randn(size, size, device=f"cuda:{device}", dtype=torch.bfloat16)
    b = torch.randn(size, size, device=f"cuda:{device}", dtype=torch.bfloat16)
    calls = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(8):
            a = (a @ b).clamp_(-1, 1)
        torch.cuda.synchronize(device)
        calls += 8
    return calls


def counter_vs_sampled(*, seconds: float = 20.0, warmup_s: float = 5.0, device: int = 0,
                       interval_s: float = 0.02) -> dict[str, Any]:
    """NVML's energy counter and the integral of sampled power over the same steady window.

    Returns ``counter_j``, ``sampled_j``, ``relative_difference`` ((counter - sampled) /
    sampled), the mean power of both, the number of samples and the window length.
    """
    import torch

    _steady_gpu_load(device, warmup_s)  # clocks and power settle before the window
    sampler = NvmlPowerSampler(device, interval_s=interval_s)
    meter = NvmlMeter(device_indices=[device])
    sampler.start()
    time.sleep(1.0)  # the sampler runs before and after the window: the trace covers it
    meter.start()
    t_start = time.perf_counter()
    calls = _steady_gpu_load(device, seconds)
    torch.cuda.synchronize(device)
    (reading,) = meter.stop()
    t_end = time.perf_counter()
    time.sleep(1.0)
    trace = sampler.stop()
    if reading.kind != "measured":
        return {"error": reading.reason, "reading": reading.to_dict()}
    # The samples inside the counter's window, plus the edge pieces at the nearest sample's power.
    start_rel, end_rel = t_start - sampler.t0, t_end - sampler.t0
    inside = [(t, w) for t, w in zip(trace.times_s, trace.watts) if start_rel <= t <= end_rel]
    if len(inside) < 2:
        return {"error": f"only {len(inside)} power samples in the window", "reading": reading.to_dict()}
    times, watts = [t for t, _ in inside], [w for _, w in inside]
    sampled = (integrate_power(times, watts) + watts[0] * (times[0] - start_rel)
               + watts[-1] * (end_rel - times[-1]))
    return {
        "counter_j": reading.joules,
        "sampled_j": sampled,
        "relative_difference": (reading.joules - sampled) / sampled,
        "counter_mean_w": reading.watts,
        "sampled_mean_w": sum(watts) / len(watts),
        "samples": len(watts),
        "window_s": t_end - t_start,
        "matmul_calls": calls,
        "note": "NVML counts the whole GPU, including other processes",
    }


def cpu_report(seconds: float) -> dict[str, Any]:
    """What can be measured on a CPU-only machine: RAPL if readable, and codecarbon's estimate."""
    rapl = RaplMeter()
    estimate = CodecarbonCpuMeter()
    idle = measure_idle(rapl, seconds=1.0)
    rapl.start()
    estimate.start()
    t0 = time.perf_counter()
    x = 0
    while time.perf_counter() - t0 < seconds:  # a steady single-thread load
        x += sum(range(10_000))
    est = estimate.stop()
    readings = rapl.stop()
    estimate.close()
    s = summarize(readings, idle=idle)
    out: dict[str, Any] = {
        "window_s": time.perf_counter() - t0,
        "rapl": {"kind": s["kind"], "joules": s["joules"], "net_joules": s.get("net_joules"),
                 "reason": s["reason"], "idle_watts": idle.watts},
        "codecarbon_estimate": {"kind": est[0].kind, "joules": est[0].joules, "reason": est[0].reason},
    }
    if s["joules"] is not None and est[0].joules:
        out["estimate_over_measured"] = est[0].joules / s["joules"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the measured window")
    ap.add_argument("--warmup", type=float, default=5.0, help="GPU warm-up before the window (s)")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)
    result: dict[str, Any] = {"hardware": hardware_info(), "device": args.device}
    if args.device.startswith("cuda"):
        index = int(args.device.partition(":")[2] or 0)
        check = counter_vs_sampled(seconds=args.seconds, warmup_s=args.warmup, device=index)
        check["within_10_percent"] = abs(check.get("relative_difference", 1.0)) <= 0.10
        result["counter_vs_sampled"] = check
    result["cpu"] = cpu_report(min(args.seconds, 5.0))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if result.get("counter_vs_sampled", {}).get("within_10_percent", True) else 1


if __name__ == "__main__":
    sys.exit(main())
