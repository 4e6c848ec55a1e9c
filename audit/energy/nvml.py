"""The GPU's own energy counter through NVML (``nvmlDeviceGetTotalEnergyConsumption``, Volta
and newer), for the GPUs this process uses; it counts the whole device, other processes too."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audit.energy.base import (
    NVML_CAVEAT,
    STALL_WINDOW_S,
    EnergyReading,
    MeterBase,
    stall_warning,
    unavailable_reading,
)

__all__ = ["NvmlMeter", "cuda_initialized", "nvml_text"]

# -- NVML -----------------------------------------------------------------------------------


def nvml_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def cuda_initialized() -> bool:
    # Only look at torch if the program already imported it: importing it here costs seconds.
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a broken torch must not break metering
        return False


def _cuda_synchronize(ordinals: Sequence[int] | None) -> None:
    """Wait for queued kernels, so the window holds the work launched inside it."""
    if not cuda_initialized():
        return
    torch = sys.modules["torch"]
    try:
        for i in ordinals if ordinals is not None else range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)
    except Exception:  # noqa: BLE001 - e.g. an ordinal torch does not see; metering goes on
        pass


def _normalise_uuid(text: str) -> str:
    text = text.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


@dataclass
class _GpuWindow:
    nvml_index: int
    device: str
    handle: Any = None
    start_mj: int | None = None
    error: str | None = None


class NvmlMeter(MeterBase):
    """The energy counter of NVIDIA GPUs, read through NVML (``pip install 'genai-audit[gpu]'``).

    Args:
        device_indices: CUDA device ordinals as this process numbers them (``cuda:1`` is 1),
            mapped to NVML's numbering through ``CUDA_VISIBLE_DEVICES``. None means every
            GPU this process can see.

    ``stop()`` returns one ``measured`` reading per GPU (the counter is in mJ), or
    ``unavailable`` readings with the reason (pynvml missing, no GPU, NVML error, a counter
    the GPU does not have). Readings carry the caveat that NVML counts the whole device.

    Example:
        >>> with NvmlMeter().measure() as m:   # on a machine without an NVIDIA GPU
        ...     pass
        >>> m.readings[0].kind in ("measured", "unavailable")
        True
    """

    def __init__(self, device_indices: Sequence[int] | None = None) -> None:
        if device_indices is not None:
            device_indices = [int(i) for i in device_indices]
            if any(i < 0 for i in device_indices):
                raise ValueError(f"device_indices must be >= 0, got {device_indices}")
        self.device_indices = device_indices
        self._nvml: Any = None
        self._windows: list[_GpuWindow] = []
        self._failure: str | None = None
        self._warnings: list[str] = []
        self._t0: float | None = None

    def start(self) -> None:
        self._windows, self._failure, self._warnings = [], None, []
        self._nvml = None
        try:
            import pynvml
        except ImportError:
            self._failure = "NVML: the package nvidia-ml-py is not installed (pip install 'genai-audit[gpu]')"
            self._t0 = time.perf_counter()
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError (no driver, no GPU) or OSError (no libnvidia-ml)
            self._failure = f"NVML: cannot initialise ({nvml_text(exc) or type(exc).__name__}); no NVIDIA GPU or driver"
            self._t0 = time.perf_counter()
            return
        self._nvml = pynvml
        try:
            indices, warnings = self._nvml_indices(pynvml)
        except Exception as exc:  # noqa: BLE001 - an NVMLError while listing devices
            indices, warnings = [], []
            self._failure = f"NVML: cannot list the GPUs ({nvml_text(exc) or type(exc).__name__})"
        self._warnings.extend(warnings)
        if not indices and self._failure is None:
            why = "; ".join(warnings) or "none visible, or CUDA_VISIBLE_DEVICES hides them all"
            self._failure = f"NVML: no GPU of this process to measure ({why})"
        for index in indices:
            window = _GpuWindow(nvml_index=index, device=f"GPU {index}")
            try:
                window.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                window.device = f"GPU {index}: {nvml_text(pynvml.nvmlDeviceGetName(window.handle))}"
            except Exception as exc:  # noqa: BLE001
                window.error = f"NVML: cannot open GPU {index} ({nvml_text(exc)})"
            self._windows.append(window)
        _cuda_synchronize(self.device_indices)
        self._t0 = time.perf_counter()
        for window in self._windows:
            if window.error is None:
                window.start_mj = self._read_mj(window)

    def _read_mj(self, window: _GpuWindow) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(window.handle))
        except Exception as exc:  # noqa: BLE001 - NVMLError_NotSupported before Volta, among others
            window.error = f"NVML: cannot read the energy counter of {window.device} ({nvml_text(exc)})"
            return None

    def stop(self) -> list[EnergyReading]:
        if self._t0 is None:
            raise RuntimeError("NvmlMeter.stop() called before start()")
        _cuda_synchronize(self.device_indices)
        end_mj = [self._read_mj(w) if w.error is None else None for w in self._windows]
        duration = time.perf_counter() - self._t0
        self._t0 = None
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        if self._failure is not None:
            return [unavailable_reading("GPU", self._failure, duration, self._warnings)]
        readings = []
        for window, end in zip(self._windows, end_mj):
            if window.error is not None or window.start_mj is None or end is None:
                readings.append(unavailable_reading(window.device, window.error or "NVML: no reading", duration, self._warnings))
                continue
            delta_mj = end - window.start_mj
            if delta_mj < 0:
                readings.append(
                    unavailable_reading(
                        window.device,
                        f"NVML: the energy counter of {window.device} went backwards (driver reload or GPU reset?)",
                        duration,
                        self._warnings,
                    )
                )
                continue
            warnings = list(self._warnings)
            if delta_mj == 0 and duration > STALL_WINDOW_S:
                warnings.append(stall_warning("NVML", duration))
            readings.append(
                EnergyReading(
                    joules=delta_mj / 1000.0,  # NVML counts millijoules
                    kind="measured",
                    source="nvml",
                    duration_s=duration,
                    device=window.device,
                    reason=NVML_CAVEAT,
                    warnings=tuple(warnings),
                )
            )
        return readings

    def _nvml_indices(self, pynvml: Any) -> tuple[list[int], list[str]]:
        """NVML indices of the GPUs this process uses, and warnings about the mapping."""
        count = int(pynvml.nvmlDeviceGetCount())
        uuids: list[str] = []
        names: set[str] = set()
        for i in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                names.add(nvml_text(pynvml.nvmlDeviceGetName(handle)))
                uuids.append(_normalise_uuid(nvml_text(pynvml.nvmlDeviceGetUUID(handle))))
            except Exception:  # noqa: BLE001 - without a UUID the device only matches by index
                uuids.append("")
        visible, warnings = _visible_nvml_indices(
            os.environ.get("CUDA_VISIBLE_DEVICES"), uuids, mixed_models=len(names) > 1
        )
        if self.device_indices is None:
            return visible, warnings
        chosen = []
        for ordinal in self.device_indices:
            if ordinal >= len(visible):
                warnings.append(
                    f"cuda:{ordinal} is not among the {len(visible)} GPU(s) this process sees "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); not measured"
                )
                continue
            chosen.append(visible[ordinal])
        return chosen, warnings


def _visible_nvml_indices(
    env: str | None, uuids: Sequence[str], *, mixed_models: bool = False
) -> tuple[list[int], list[str]]:
    """Map ``CUDA_VISIBLE_DEVICES`` to NVML indices, in CUDA's order.

    Follows CUDA's rules: unset means every GPU; entries are integers or (prefixes of) GPU
    UUIDs; the list ends at the first entry that names no GPU (so ``-1`` or an empty string
    hides them all). ``uuids`` are the NVML devices' UUIDs, without the ``GPU-`` prefix.

    Integer entries are CUDA ordinals, which follow NVML's PCI order unless
    ``CUDA_DEVICE_ORDER`` is left at ``FASTEST_FIRST`` on a machine with mixed GPU models.
    """
    count = len(uuids)
    warnings: list[str] = []
    if env is None:
        return list(range(count)), warnings
    chosen: list[int] = []
    for raw in env.split(","):
        entry = raw.strip()
        if not entry:
            break
        index: int | None = None
        if re.fullmatch(r"[+-]?\d+", entry):
            value = int(entry)
            index = value if 0 <= value < count else None
        elif entry.lower().startswith("mig-"):
            warnings.append(
                f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}); NVML's energy counter covers the "
                "whole GPU, not the instance, so it is not read"
            )
            break
        else:
            wanted = _normalise_uuid(entry)
            matches = [i for i, u in enumerate(uuids) if u and u.startswith(wanted)]
            index = matches[0] if len(matches) == 1 else None
        if index is None:
            # CUDA ignores this entry and every one after it.
            warnings.append(f"CUDA_VISIBLE_DEVICES entry {entry!r} names no GPU NVML knows; it and later entries are ignored")
            break
        if index in chosen:
            break  # CUDA also stops at a repeated device
        chosen.append(index)
    uses_integers = any(re.fullmatch(r"\s*\d+\s*", e) for e in env.split(","))
    if mixed_models and uses_integers and os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST") != "PCI_BUS_ID":
        warnings.append(
            "CUDA_VISIBLE_DEVICES uses indices on a machine with mixed GPU models while CUDA_DEVICE_ORDER "
            "is not PCI_BUS_ID: CUDA's numbering may differ from NVML's; set CUDA_DEVICE_ORDER=PCI_BUS_ID"
        )
    return chosen, warnings
