"""Energy: meters (NVML, RAPL, labelled estimates), measurement windows and emissions.

One module per part, ``audit.energy`` re-exports their public names:

* :mod:`~audit.energy.base`: :class:`EnergyReading`, the :class:`Meter` protocol, :func:`summarize`.
* :mod:`~audit.energy.nvml`, :mod:`~audit.energy.rapl`: the hardware counters (GPU, CPU package).
* :mod:`~audit.energy.estimate`: codecarbon's offline CPU model, a labelled estimate.
* :mod:`~audit.energy.meters`: :class:`CompositeMeter` and :func:`default_meter` for a device.
* :mod:`~audit.energy.windows`: the idle baseline and windows of work (:func:`measure_window`).
* :mod:`~audit.energy.power`: sampled power, the cross-check of the counter.
* :mod:`~audit.energy.hardware`: what the audit ran on; :mod:`~audit.energy.emissions`: gCO2e.
"""

from audit.energy.base import CPU_UNAVAILABLE_REASON, EnergyReading, Measurement, Meter, summarize
from audit.energy.estimate import ESTIMATE_LABEL, CodecarbonCpuMeter, FallbackCpuMeter
from audit.energy.hardware import hardware_info
from audit.energy.meters import CompositeMeter, default_meter
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
