"""The CPU packages' RAPL energy counters under ``/sys/class/powercap`` (whole packages,
other processes too), with the counter's wrap-around handled."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from audit.energy.base import (
    CPU_UNAVAILABLE_REASON,
    RAPL_CAVEAT,
    STALL_WINDOW_S,
    EnergyReading,
    MeterBase,
    stall_warning,
    unavailable_reading,
)

__all__ = ["RaplMeter"]

# -- RAPL -----------------------------------------------------------------------------------

_PACKAGE_ZONE = re.compile(r"^intel-rapl:(\d+)$")


@dataclass
class _RaplWindow:
    zone: Path
    device: str
    max_range_uj: int | None = None
    start_uj: int | None = None
    error: str | None = None


class RaplMeter(MeterBase):
    """The CPU packages' RAPL energy counters (Intel, and AMD Zen through the same driver).

    Args:
        root: the powercap folder; tests pass a fake tree.

    Reads ``<root>/intel-rapl:N/energy_uj`` of each package zone (sub-zones such as DRAM and
    the ``psys`` platform zone are left out: they overlap the packages). A counter that wraps
    once during the window is corrected with ``max_energy_range_uj``. An unreadable counter
    (Linux 5.10+ makes ``energy_uj`` root-only) gives ``unavailable``, never zero.

    Example:
        >>> with RaplMeter(root="/nonexistent").measure() as m:
        ...     pass
        >>> m.readings[0].reason.startswith(CPU_UNAVAILABLE_REASON)
        True
    """

    def __init__(self, root: str | os.PathLike[str] = "/sys/class/powercap") -> None:
        self.root = Path(root)
        self._windows: list[_RaplWindow] = []
        self._failure: str | None = None
        self._t0: float | None = None

    def _zones(self) -> list[_RaplWindow]:
        try:
            entries = sorted(self.root.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            raise _RaplError(f"{self.root} cannot be listed ({exc.strerror or exc})") from None
        windows = []
        for zone in entries:
            m = _PACKAGE_ZONE.match(zone.name)
            if m is None:
                continue
            try:
                name = (zone / "name").read_text().strip()
            except OSError:
                name = f"package-{m.group(1)}"
            if not name.startswith("package"):
                continue  # psys: the whole platform, which includes the packages
            number = name.split("-", 1)[1] if "-" in name else m.group(1)
            windows.append(_RaplWindow(zone=zone, device=f"CPU package {number}"))
        if not windows:
            raise _RaplError(f"no RAPL package zone under {self.root}")
        return windows

    def start(self) -> None:
        self._failure = None
        self._windows = []
        try:
            self._windows = self._zones()
        except _RaplError as exc:
            self._failure = str(exc)
        for window in self._windows:
            try:
                window.max_range_uj = _read_int(window.zone / "max_energy_range_uj")
            except _RaplError:
                window.max_range_uj = None  # a wrap then cannot be corrected; stop() says so
        self._t0 = time.perf_counter()
        for window in self._windows:
            try:
                window.start_uj = _read_int(window.zone / "energy_uj")
            except _RaplError as exc:
                window.error = str(exc)

    def stop(self) -> list[EnergyReading]:
        if self._t0 is None:
            raise RuntimeError("RaplMeter.stop() called before start()")
        ends: list[int | None] = []
        for window in self._windows:
            end = None
            if window.error is None:
                try:
                    end = _read_int(window.zone / "energy_uj")
                except _RaplError as exc:
                    window.error = str(exc)
            ends.append(end)
        duration = time.perf_counter() - self._t0
        self._t0 = None
        if self._failure is not None:
            return [unavailable_reading("CPU", f"{CPU_UNAVAILABLE_REASON}: {self._failure}", duration)]
        readings = []
        for window, end in zip(self._windows, ends):
            if window.error is not None or window.start_uj is None or end is None:
                readings.append(
                    unavailable_reading(window.device, f"{CPU_UNAVAILABLE_REASON}: {window.error or 'no reading'}", duration)
                )
                continue
            warnings: list[str] = []
            delta = end - window.start_uj
            if delta < 0:
                if not window.max_range_uj:
                    readings.append(
                        unavailable_reading(
                            window.device,
                            f"{CPU_UNAVAILABLE_REASON}: the counter wrapped and max_energy_range_uj is not readable",
                            duration,
                        )
                    )
                    continue
                # One wrap: the counter ran to max_energy_range_uj and restarted at 0.
                delta += window.max_range_uj
            if window.max_range_uj:
                limit = _rapl_wrap_seconds(window.zone, window.max_range_uj)
                if limit is not None and duration > limit:
                    warnings.append(
                        f"the window ({duration:.0f} s) is longer than the RAPL counter takes to wrap at full "
                        f"power ({limit:.0f} s); energy may be under-counted"
                    )
            if delta == 0 and duration > STALL_WINDOW_S:
                warnings.append(stall_warning("RAPL", duration))
            readings.append(
                EnergyReading(
                    joules=delta / 1e6,  # RAPL counts microjoules
                    kind="measured",
                    source="rapl",
                    duration_s=duration,
                    device=window.device,
                    reason=RAPL_CAVEAT,
                    warnings=tuple(warnings),
                )
            )
        return readings


class _RaplError(Exception):
    pass


def _read_int(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except PermissionError:
        raise _RaplError(
            f"{path} is not readable (permission denied; since Linux 5.10 RAPL counters are root-only "
            "unless an administrator grants read access)"
        ) from None
    except OSError as exc:
        raise _RaplError(f"{path} cannot be read ({exc.strerror or exc})") from None
    try:
        return int(text)
    except ValueError:
        raise _RaplError(f"{path} does not hold an integer (got {text[:40]!r})") from None


def _rapl_wrap_seconds(zone: Path, max_range_uj: int) -> float | None:
    """How long the counter takes to wrap at the zone's power limit, when it is readable."""
    try:
        max_power_uw = _read_int(zone / "constraint_0_max_power_uw")
    except _RaplError:
        return None
    return max_range_uj / max_power_uw if max_power_uw > 0 else None
