"""Labelled estimates: codecarbon's offline CPU model (``kind="estimate"``, never added to a
measurement) and :class:`FallbackCpuMeter`, which uses it only when RAPL cannot be read."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

from audit.energy.base import EnergyReading, MeterBase, unavailable_reading
from audit.energy.rapl import RaplMeter

__all__ = ["ESTIMATE_LABEL", "CodecarbonCpuMeter", "FallbackCpuMeter"]

# -- labelled estimates ---------------------------------------------------------------------

ESTIMATE_LABEL = "ESTIMATE, not a measurement"


class CodecarbonCpuMeter(MeterBase):
    """The CPU energy that codecarbon's ``OfflineEmissionsTracker`` models: an *estimate*.

    codecarbon reads RAPL when it can; without it, it multiplies a TDP (from its CPU table,
    or a default per thread) by the CPU load. Its number is returned as ``kind="estimate"``
    with the model it used in ``reason``, so :func:`summarize` keeps it apart from
    measurements. Only the offline tracker is used: it makes no network call.

    The tracker is made on the first ``start()`` (codecarbon probes the hardware for about
    2 s) and each window is one of its tasks (``start_task``/``stop_task``, milliseconds);
    :meth:`close` ends it.

    Args:
        tracking_mode: codecarbon's ``"process"`` (this process's CPU load) or ``"machine"``.
        measure_power_secs: codecarbon's sampling interval.

    A missing codecarbon, or a tracker that fails, gives an ``unavailable`` reading.
    """

    def __init__(self, *, tracking_mode: str = "process", measure_power_secs: float = 1.0) -> None:
        if tracking_mode not in ("process", "machine"):
            raise ValueError(f"tracking_mode must be 'process' or 'machine', got {tracking_mode!r}")
        self.tracking_mode = tracking_mode
        self.measure_power_secs = float(measure_power_secs)
        self._tracker: Any = None
        self._failure: str | None = None
        self._t0: float | None = None
        self._in_task = False

    def _ensure_tracker(self) -> None:
        if self._tracker is not None or self._failure is not None:
            return
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError:
            self._failure = "codecarbon is not installed (pip install codecarbon); no CPU estimate"
            return
        try:
            with _quiet_codecarbon():
                # The country only matters for codecarbon's own emissions, which are not used.
                self._tracker = OfflineEmissionsTracker(
                    country_iso_code="USA", output_methods=[], log_level="error", gpu_ids=[],
                    tracking_mode=self.tracking_mode, measure_power_secs=self.measure_power_secs,
                    allow_multiple_runs=True,
                )
        except Exception as exc:  # noqa: BLE001 - an estimate must never break the work
            self._failure = f"codecarbon's OfflineEmissionsTracker failed ({type(exc).__name__}: {exc})"

    def start(self) -> None:
        self._ensure_tracker()
        self._in_task = False
        if self._tracker is not None:
            try:
                with _quiet_codecarbon():
                    self._tracker.start_task()
                self._in_task = True
            except Exception as exc:  # noqa: BLE001
                self._failure = f"codecarbon's OfflineEmissionsTracker failed to start ({type(exc).__name__}: {exc})"
        self._t0 = time.perf_counter()

    def stop(self) -> list[EnergyReading]:
        if self._t0 is None:
            raise RuntimeError("CodecarbonCpuMeter.stop() called before start()")
        duration = time.perf_counter() - self._t0
        self._t0 = None
        if not self._in_task:
            return [unavailable_reading("CPU", self._failure or "no estimate", duration)]
        self._in_task = False
        try:
            with _quiet_codecarbon():
                data = self._tracker.stop_task()
            kwh = float(data.cpu_energy)
        except Exception as exc:  # noqa: BLE001
            return [unavailable_reading("CPU", f"codecarbon's OfflineEmissionsTracker failed ({type(exc).__name__}: {exc})",
                                 duration)]
        if not math.isfinite(kwh) or kwh < 0:
            return [unavailable_reading("CPU", f"codecarbon gave no usable CPU energy ({kwh!r})", duration)]
        return [EnergyReading(
            joules=kwh * 3.6e6, kind="estimate", source="codecarbon-offline", duration_s=duration,
            device="CPU", reason=f"{ESTIMATE_LABEL}: {_codecarbon_model(self._tracker, data)}",
        )]

    def close(self) -> None:
        """End codecarbon's tracker (its sampling thread)."""
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            with contextlib.suppress(Exception), _quiet_codecarbon():
                tracker.stop()


@contextlib.contextmanager
def _quiet_codecarbon() -> Iterator[None]:
    # codecarbon warns about its own fallbacks (unknown CPU, no RAPL); the reading's reason
    # says what it used, so its log lines would only repeat that, on every window.
    import logging

    log = logging.getLogger("codecarbon")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        # Left at WARNING at least: the tracker's sampling thread logs at INFO between windows.
        log.setLevel(max(level, logging.WARNING) if level else logging.WARNING)


def _codecarbon_model(tracker: Any, data: Any) -> str:
    """What codecarbon's CPU number rests on, from its tracker (private fields, read defensively)."""
    version = getattr(data, "codecarbon_version", "?")
    cpu = next((h for h in getattr(tracker, "_hardware", []) if type(h).__name__ == "CPU"), None)
    mode = getattr(cpu, "_mode", None)
    tdp = getattr(cpu, "_tdp", None)
    model = getattr(data, "cpu_model", None) or "unknown CPU"
    if mode in ("intel_rapl", "intel_power_gadget", "apple_powermetrics"):
        how = f"codecarbon read the counters ({mode})"
    elif mode is not None:
        how = f"power model '{mode}' with TDP {tdp} W for {model}"
    else:
        how = f"power model of {model}"
    return (f"codecarbon {version} OfflineEmissionsTracker, {how}, tracking mode "
            f"{getattr(data, 'tracking_mode', '?')}")


class FallbackCpuMeter(MeterBase):
    """RAPL when it is readable; otherwise a labelled estimate (never both, never mixed).

    The estimate's reason starts with why RAPL could not be read. Used through
    ``default_meter(device, cpu_estimate=True)``.

    Example:
        >>> m = FallbackCpuMeter(RaplMeter(root="/nonexistent"), RaplMeter(root="/nonexistent"))
        >>> with m.measure() as h:
        ...     pass
        >>> h.readings[0].kind
        'unavailable'
    """

    def __init__(self, primary: RaplMeter, fallback: Any = None) -> None:
        self.primary = primary
        self.fallback = fallback if fallback is not None else CodecarbonCpuMeter()
        self._using_fallback = False
        self._primary_reason: str | None = None

    def start(self) -> None:
        self.primary.start()
        unreadable = self.primary._failure is not None or (
            bool(self.primary._windows) and all(w.error is not None for w in self.primary._windows)
        )
        self._using_fallback = unreadable
        if unreadable:
            self._primary_reason = self.primary._failure or "; ".join(
                w.error or "" for w in self.primary._windows
            )
            self.fallback.start()

    def stop(self) -> list[EnergyReading]:
        primary = self.primary.stop()
        if not self._using_fallback:
            return primary
        estimates = self.fallback.stop()
        out = []
        for r in estimates:
            reason = f"RAPL not readable ({self._primary_reason}); {r.reason or r.kind}"
            out.append(EnergyReading(joules=r.joules, kind=r.kind, source=r.source, duration_s=r.duration_s,
                                     device=r.device, reason=reason, warnings=r.warnings))
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.fallback.close()
