"""Energy: meters (NVML, RAPL, labelled estimates), measurement windows and emissions.

``audit.energy`` re-exports the meters' public names; :mod:`audit.energy.emissions` turns
joules into gCO2e.
"""

from audit.energy.meters import (
    CPU_UNAVAILABLE_REASON,
    ESTIMATE_LABEL,
    CodecarbonCpuMeter,
    CompositeMeter,
    EnergyReading,
    FallbackCpuMeter,
    IdleBaseline,
    Measurement,
    Meter,
    NvmlMeter,
    NvmlPowerSampler,
    PowerTrace,
    RaplMeter,
    Window,
    default_meter,
    hardware_info,
    integrate_power,
    measure_idle,
    measure_window,
    summarize,
)

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
