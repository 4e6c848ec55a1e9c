"""Sampled power x time (:class:`NvmlPowerSampler`, :func:`integrate_power`): the cross-check of
the NVML counter (``bench/bench_energy.py``)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audit.energy.nvml import NvmlMeter, nvml_text

__all__ = ["NvmlPowerSampler", "PowerTrace", "integrate_power"]

# -- sampled power (the cross-check of the counter) -----------------------------------------


@dataclass(frozen=True, slots=True)
class PowerTrace:
    """Power samples: ``times_s`` (seconds from the start) and ``watts``."""

    times_s: tuple[float, ...]
    watts: tuple[float, ...]

    @property
    def joules(self) -> float:
        return integrate_power(self.times_s, self.watts)


def integrate_power(times_s: Sequence[float], watts: Sequence[float]) -> float:
    """Energy from power samples by the trapezoid rule, in J.

    Example:
        >>> integrate_power([0.0, 1.0, 3.0], [100.0, 100.0, 200.0])   # 100 J + 300 J
        400.0
    """
    if len(times_s) != len(watts):
        raise ValueError(f"times and watts differ in length: {len(times_s)} != {len(watts)}")
    total = 0.0
    for i in range(1, len(times_s)):
        dt = times_s[i] - times_s[i - 1]
        if dt < 0:
            raise ValueError("sample times must not decrease")
        total += 0.5 * (watts[i] + watts[i - 1]) * dt
    return total


class NvmlPowerSampler:
    """Samples a GPU's power draw (``nvmlDeviceGetPowerUsage``, mW) in a background thread.

    For cross-checking the energy counter: over a steady load, the integral of the samples
    and the counter's delta should agree within a few percent. (On recent GPUs the power
    reading is itself a ~1 s average, so ramps at the window's ends blur; warm up first.)

    Args:
        device_index: the CUDA ordinal (mapped to NVML through ``CUDA_VISIBLE_DEVICES``).
        interval_s: time between samples.
    """

    def __init__(self, device_index: int = 0, *, interval_s: float = 0.05) -> None:
        self.device_index = int(device_index)
        self.interval_s = float(interval_s)
        self._thread: Any = None
        self._stop: Any = None
        self._samples: list[tuple[float, float]] = []
        self._error: str | None = None
        self.t0: float | None = None

    def start(self) -> None:
        import threading

        import pynvml

        pynvml.nvmlInit()
        indices, warnings = NvmlMeter(device_indices=[self.device_index])._nvml_indices(pynvml)
        if not indices:
            pynvml.nvmlShutdown()
            raise RuntimeError(f"NVML: cuda:{self.device_index} not found ({'; '.join(warnings)})")
        handle = pynvml.nvmlDeviceGetHandleByIndex(indices[0])
        self._samples, self._error = [], None
        self._stop = threading.Event()
        t0 = self.t0 = time.perf_counter()  # sample times are seconds after this perf_counter()

        def loop() -> None:
            while True:
                try:
                    mw = pynvml.nvmlDeviceGetPowerUsage(handle)
                except Exception as exc:  # noqa: BLE001
                    self._error = nvml_text(exc)
                    return
                self._samples.append((time.perf_counter() - t0, mw / 1000.0))
                if self._stop.wait(self.interval_s):
                    return

        self._thread = threading.Thread(target=loop, name="nvml-power-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> PowerTrace:
        if self._thread is None:
            raise RuntimeError("NvmlPowerSampler.stop() called before start()")
        self._stop.set()
        self._thread.join()
        self._thread = None
        with contextlib.suppress(Exception):
            sys.modules["pynvml"].nvmlShutdown()
        if self._error is not None:
            raise RuntimeError(f"NVML: power reading failed ({self._error})")
        return PowerTrace(times_s=tuple(t for t, _ in self._samples), watts=tuple(w for _, w in self._samples))
