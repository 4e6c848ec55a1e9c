"""Energy meters composed for a device: :class:`CompositeMeter` and :func:`default_meter`.

The counters live one module each (:mod:`~audit.energy.nvml`, :mod:`~audit.energy.rapl`,
:mod:`~audit.energy.estimate`); this module keeps re-exporting their public names.

Honest energy: a reading is ``measured`` when a hardware counter was read at both ends of
the window, ``unavailable`` (with the reason) when none could be, and ``estimate`` only
when a labelled model produced it. Unknown energy is never reported as 0 and estimates are
never added to measurements.

* :class:`NvmlMeter`: the GPU's own energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
  Volta and newer), for the GPUs this process uses.
* :class:`RaplMeter`: the CPU packages' RAPL counters under ``/sys/class/powercap``.
* :class:`CompositeMeter` runs several; :func:`default_meter` picks them for a device.
* :class:`CodecarbonCpuMeter`: codecarbon's offline CPU model, an ``estimate`` (labelled, kept
  apart); :class:`FallbackCpuMeter` uses it only when RAPL cannot be read.
* :func:`measure_idle` (the idle baseline: gross and idle-subtracted energy) and
  :func:`measure_window` (windows of at least a second holding many calls, synchronised).
* :class:`NvmlPowerSampler` and :func:`integrate_power`: sampled power x time, to
  cross-check the counter (``bench/bench_energy.py``).

Both counters see the whole device, including other processes: on a shared machine the
joules are an upper bound of what the audited work used. Readings say so in ``reason``.

Example:
    >>> meter = default_meter("cpu")
    >>> with meter.measure() as m:
    ...     _ = sum(range(1000))
    >>> summarize(m.readings)["kind"] in ("measured", "partial", "unavailable")
    True
"""


from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from audit.energy import nvml as _nvml
from audit.energy.base import (
    CPU_UNAVAILABLE_REASON,
    EnergyReading,
    Measurement,
    Meter,
    MeterBase,
    summarize,
    unavailable_reading,
)
from audit.energy.estimate import ESTIMATE_LABEL, CodecarbonCpuMeter, FallbackCpuMeter
from audit.energy.hardware import hardware_info
from audit.energy.nvml import NvmlMeter
from audit.energy.power import NvmlPowerSampler, PowerTrace, integrate_power
from audit.energy.rapl import RaplMeter
from audit.energy.windows import IdleBaseline, Window, measure_idle, measure_window

__all__ = [
    "CPU_UNAVAILABLE_REASON",
    "ESTIMATE_LABEL",
    "CodecarbonCpuMeter",
    "CompositeMeter",
    "EnergyReading",
    "FallbackCpuMeter",
    "IdleBaseline",
    "Measurement",
    "Meter",
    "NvmlMeter",
    "NvmlPowerSampler",
    "PowerTrace",
    "RaplMeter",
    "Window",
    "default_meter",
    "hardware_info",
    "integrate_power",
    "measure_idle",
    "measure_window",
    "summarize",
]


# -- composition ----------------------------------------------------------------------------


class CompositeMeter(MeterBase):
    """Several meters over the same window; their readings side by side.

    A meter that raises degrades to one ``unavailable`` reading naming the error; it never
    stops the others or the work being measured.

    Example:
        >>> with CompositeMeter([RaplMeter(root="/nonexistent")]).measure() as m:
        ...     pass
        >>> len(m.readings)
        1
    """

    def __init__(self, meters: Sequence[Meter]) -> None:
        self.meters = list(meters)
        self._started: list[bool] = []
        self._errors: list[str | None] = []
        self._running = False

    def start(self) -> None:
        self._started, self._errors, self._running = [], [], True
        for meter in self.meters:
            try:
                meter.start()
                self._started.append(True)
                self._errors.append(None)
            except Exception as exc:  # noqa: BLE001 - see class docstring
                self._started.append(False)
                self._errors.append(f"{type(meter).__name__}.start() failed: {exc}")

    def stop(self) -> list[EnergyReading]:
        if not self._running:
            raise RuntimeError("CompositeMeter.stop() called before start()")
        readings: list[EnergyReading] = []
        for meter, started, error in zip(self.meters, self._started, self._errors):
            if not started:
                readings.append(unavailable_reading(_meter_device(meter), error or "not started"))
                continue
            try:
                readings.extend(meter.stop())
            except Exception as exc:  # noqa: BLE001 - see class docstring
                readings.append(unavailable_reading(_meter_device(meter), f"{type(meter).__name__}.stop() failed: {exc}"))
        self._started, self._errors, self._running = [], [], False
        return readings

    def close(self) -> None:
        """Release what the meters hold between windows (e.g. codecarbon's tracker)."""
        for meter in self.meters:
            close = getattr(meter, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()


def _meter_device(meter: Meter) -> str:
    if isinstance(meter, NvmlMeter):
        return "GPU"
    if isinstance(meter, (RaplMeter, FallbackCpuMeter, CodecarbonCpuMeter)):
        return "CPU"
    return type(meter).__name__


def default_meter(device: str, *, rapl_root: str | os.PathLike[str] = "/sys/class/powercap",
                  cpu_estimate: bool = False) -> CompositeMeter:
    """The meters for work on ``device``: NVML for a CUDA device, RAPL always.

    Args:
        device: a torch device string: ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        rapl_root: the powercap folder RAPL is read from.
        cpu_estimate: when RAPL cannot be read, give codecarbon's offline estimate for the
            CPU (``kind="estimate"``, labelled) instead of an ``unavailable`` reading.

    Returns:
        A meter whose CPU reading is ``unavailable`` (reason starting with
        :data:`CPU_UNAVAILABLE_REASON`) when RAPL cannot be read.

    Example:
        >>> [type(m).__name__ for m in default_meter("cuda:0").meters]
        ['NvmlMeter', 'RaplMeter']
    """
    text = str(device).strip().lower()
    meters: list[Meter] = []
    if text.startswith("cuda"):
        _, _, index = text.partition(":")
        if index:
            try:
                ordinal = int(index)
            except ValueError:
                raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
        else:
            ordinal = _current_cuda_device()
        meters.append(NvmlMeter(device_indices=[ordinal]))
    rapl = RaplMeter(root=rapl_root)
    meters.append(FallbackCpuMeter(rapl) if cpu_estimate else rapl)
    return CompositeMeter(meters)


def _current_cuda_device() -> int:
    # "cuda" means torch's current device; without CUDA started that is device 0.
    if _nvml.cuda_initialized():  # through the module: tests replace it there
        with contextlib.suppress(Exception):
            return int(sys.modules["torch"].cuda.current_device())
    return 0
