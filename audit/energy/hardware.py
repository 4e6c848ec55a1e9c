"""What the audit ran on (CPU model, GPUs, driver, whether RAPL is readable), for the report."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

from audit.energy.nvml import nvml_text
from audit.energy.rapl import RaplMeter

__all__ = ["hardware_info"]

# -- hardware -------------------------------------------------------------------------------


def hardware_info(*, cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo",
                  rapl_root: str | os.PathLike[str] = "/sys/class/powercap") -> dict[str, Any]:
    """What the audit ran on, for the report's environment.

    Returns:
        ``{"cpu": {"model", "logical_cores", "machine", "energy_counter"}, "gpus": [{"index",
        "name", "uuid", "power_limit_w", "memory_total_gb"}], "gpu_driver": str | None, "nvml":
        None or why NVML gave nothing}``; ``energy_counter`` is ``"readable"`` or why RAPL is not.

    Example:
        >>> sorted(hardware_info())
        ['cpu', 'gpu_driver', 'gpus', 'nvml']
    """
    info: dict[str, Any] = {
        "cpu": {"model": _cpu_model(Path(cpuinfo)), "logical_cores": os.cpu_count(), "machine": platform.machine(),
                "energy_counter": _rapl_status(Path(rapl_root))},
        "gpus": [],
        "gpu_driver": None,
        "nvml": None,
    }
    try:
        import pynvml
    except ImportError:
        info["nvml"] = "the package nvidia-ml-py is not installed"
        return info
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError or OSError: no GPU or driver
        info["nvml"] = f"cannot initialise NVML ({nvml_text(exc) or type(exc).__name__})"
        return info
    try:
        with contextlib.suppress(Exception):
            info["gpu_driver"] = nvml_text(pynvml.nvmlSystemGetDriverVersion())
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpu: dict[str, Any] = {"index": i, "name": nvml_text(pynvml.nvmlDeviceGetName(handle))}
            with contextlib.suppress(Exception):
                gpu["uuid"] = nvml_text(pynvml.nvmlDeviceGetUUID(handle))
            with contextlib.suppress(Exception):
                gpu["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0  # mW
            with contextlib.suppress(Exception):
                gpu["memory_total_gb"] = round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1e9, 2)
            info["gpus"].append(gpu)
    except Exception as exc:  # noqa: BLE001
        info["nvml"] = f"NVML error while listing GPUs ({nvml_text(exc) or type(exc).__name__})"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return info


def _cpu_model(cpuinfo: Path) -> str:
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _rapl_status(root: Path = Path("/sys/class/powercap")) -> str:
    """``"readable"`` or why RAPL cannot be read (for the hardware record)."""
    meter = RaplMeter(root=root)
    meter.start()
    readings = meter.stop()
    bad = [r for r in readings if r.kind != "measured"]
    return "readable" if not bad else bad[0].reason or "not readable"
