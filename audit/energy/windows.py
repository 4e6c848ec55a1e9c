"""Windows of work: the idle baseline (gross and idle-subtracted energy) and windows of at least
a second holding many calls, synchronised, so that a counter's resolution does not dominate."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audit.energy.base import EnergyReading, Meter, summarize

__all__ = ["IdleBaseline", "Window", "measure_idle", "measure_window"]

# -- idle baseline --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdleBaseline:
    """Each measured device's power while nothing runs, to subtract from a window's energy.

    Attributes:
        watts: device name -> idle power in W, for the devices whose counter was read.
        duration_s: how long the idle window was.
        readings: the idle window's readings (kept for the report).
        warnings: e.g. a counter that did not advance while idle.

    Example:
        >>> idle = IdleBaseline(watts={"GPU 0": 60.0}, duration_s=1.0)
        >>> busy = EnergyReading(joules=500.0, kind="measured", source="nvml", duration_s=2.0, device="GPU 0")
        >>> idle.net([busy])["joules"]   # 500 J - 60 W x 2 s
        380.0
    """

    watts: dict[str, float]
    duration_s: float
    readings: tuple[EnergyReading, ...] = ()
    warnings: tuple[str, ...] = ()

    def net(self, readings: Sequence[EnergyReading]) -> dict[str, Any]:
        """Idle-subtracted energy of a window: ``gross - idle_watts x duration`` per device.

        Returns:
            ``{"joules": float | None, "by_device": {device: J}, "warnings": [...]}``; ``joules`` is
            None when a measured device has no idle power (its net energy is unknown) or nothing
            was measured. A device below its idle power is clipped to 0 J with a warning.
        """
        by_device: dict[str, float] = {}
        warnings: list[str] = []
        missing = []
        for r in readings:
            if r.kind != "measured":
                continue
            idle_w = self.watts.get(r.device)
            if idle_w is None:
                missing.append(r.device)
                continue
            net = r.joules - idle_w * r.duration_s  # type: ignore[operator]
            if net < 0:
                warnings.append(
                    f"{r.device} used less than its idle power ({r.watts:.1f} W < {idle_w:.1f} W idle): "
                    "net energy clipped to 0 J; the idle baseline may be noisy, use longer windows"
                )
                net = 0.0
            by_device[r.device] = net
        if missing:
            warnings.append(f"no idle power for {', '.join(missing)}: net energy unknown")
        joules = math.fsum(by_device.values()) if by_device and not missing else None
        return {"joules": joules, "by_device": by_device, "warnings": warnings}

    def to_dict(self) -> dict[str, Any]:
        return {
            "watts": dict(self.watts),
            "duration_s": self.duration_s,
            "warnings": list(self.warnings),
            "readings": [r.to_dict() for r in self.readings],
        }


def measure_idle(
    meter: Meter, *, seconds: float = 1.0, synchronize: Any = None, sleep: Any = None
) -> IdleBaseline:
    """Measure each device's idle power: the meter over ``seconds`` of sleeping.

    Args:
        meter: the meter the work will be measured with (same devices).
        seconds: the idle window; at least 1 s, since counters update every few ms (NVML) to
            1 ms (RAPL) and the idle power is small.
        synchronize: called first (e.g. ``torch.cuda.synchronize``) so that no queued work
            runs in the idle window.
        sleep: replaces :func:`time.sleep` (tests).

    Example:
        >>> idle = measure_idle(RaplMeter(root="/nonexistent"), seconds=0.01)
        >>> idle.watts
        {}
    """
    if not seconds > 0:
        raise ValueError(f"the idle window must be > 0 s, got {seconds!r}")
    if synchronize is not None:
        synchronize()
    meter.start()
    (sleep or time.sleep)(seconds)
    readings = meter.stop()
    watts = {r.device: r.watts for r in readings if r.kind == "measured" and r.watts is not None}
    warnings = [w for r in readings for w in r.warnings]
    return IdleBaseline(watts=watts, duration_s=max((r.duration_s for r in readings), default=seconds),
                        readings=tuple(readings), warnings=tuple(dict.fromkeys(warnings)))


# -- windows of work ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """One measured window of repeated calls.

    Attributes:
        readings: the meter's readings over the window.
        calls: how many calls ran in it.
        units: the work done (tokens, images, classifications), summed over the calls.
        duration_s: the window's wall time (from the first call's start to the last's end).
        latencies_s: each call's wall time, synchronised.
        stalled: devices whose counter did not advance although the window was long enough.
    """

    readings: tuple[EnergyReading, ...]
    calls: int
    units: float
    duration_s: float
    latencies_s: tuple[float, ...]
    stalled: tuple[str, ...] = ()

    @property
    def summary(self) -> dict[str, Any]:
        return summarize(self.readings)


def measure_window(
    meter: Meter,
    work: Any,
    *,
    min_seconds: float = 1.0,
    min_calls: int = 1,
    max_calls: int | None = None,
    synchronize: Any = None,
) -> Window:
    """Run ``work()`` again and again inside one metered window of at least ``min_seconds``.

    Energy counters are coarse (NVML updates every few to 100 ms depending on the GPU): a
    window of one short call may see the counter not move at all. So each window holds many
    calls and lasts at least ``min_seconds``; per-unit energy is the window's energy over
    the units its calls did.

    Args:
        meter: started and stopped around the window.
        work: a callable doing one call of the operation and returning how many units it did.
        min_seconds: keep calling until this much time has passed.
        min_calls / max_calls: bounds on the number of calls (``max_calls`` wins over time).
        synchronize: called after each call (e.g. ``torch.cuda.synchronize``) so a call's
            latency includes its queued kernels and the window ends when the work does.

    Example:
        >>> w = measure_window(RaplMeter(root="/nonexistent"), lambda: 4, min_seconds=0.0, min_calls=3)
        >>> (w.calls, w.units, w.readings[0].kind)
        (3, 12.0, 'unavailable')
    """
    if min_calls < 1 or (max_calls is not None and max_calls < min_calls):
        raise ValueError(f"need 1 <= min_calls <= max_calls, got {min_calls}, {max_calls}")
    sync = synchronize or (lambda: None)
    sync()
    latencies: list[float] = []
    units = 0.0
    meter.start()
    try:
        t0 = time.perf_counter()
        now = t0
        while True:
            start = now
            units += float(work())
            sync()
            now = time.perf_counter()
            latencies.append(now - start)
            if max_calls is not None and len(latencies) >= max_calls:
                break
            if len(latencies) >= min_calls and now - t0 >= min_seconds:
                break
    finally:
        readings = meter.stop()
    stalled = tuple(r.device for r in readings if r.kind == "measured" and any("did not advance" in w for w in r.warnings))
    return Window(readings=tuple(readings), calls=len(latencies), units=units, duration_s=now - t0,
                  latencies_s=tuple(latencies), stalled=stalled)
