"""What every meter shares: the reading, the meter protocol, the summary of a window.

A reading is ``measured`` when a hardware counter was read at both ends of the window,
``unavailable`` (with the reason) when none could be, and ``estimate`` only when a labelled
model produced it. Unknown energy is never reported as 0 and estimates are never added to
measurements (:func:`summarize`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from audit.energy.windows import IdleBaseline

__all__ = ["CPU_UNAVAILABLE_REASON", "EnergyReading", "Measurement", "Meter", "MeterBase", "summarize"]

Kind = Literal["measured", "estimate", "unavailable"]
_KINDS = ("measured", "estimate", "unavailable")

CPU_UNAVAILABLE_REASON = "no readable energy counter (RAPL not readable); CPU energy not measured"
"""The start of the reason of a CPU reading when no CPU counter could be read."""

NVML_CAVEAT = "NVML counts the whole device, including other processes"
RAPL_CAVEAT = "RAPL counts the whole CPU package, including other processes"

# Over a window this long, a counter that did not move is more likely stale than idle.
STALL_WINDOW_S = 1.0


@dataclass(frozen=True, slots=True)
class EnergyReading:
    """The energy one device used over one window.

    Attributes:
        joules: the energy, or None when unavailable (never 0 for unknown).
        kind: ``measured`` (a hardware counter), ``estimate`` (a labelled model) or
            ``unavailable``.
        source: the counter: ``nvml``, ``rapl``, or ``none`` when nothing was read.
        duration_s: the wall time of the window.
        device: what was measured, e.g. ``"GPU 0: NVIDIA H100 80GB HBM3"``, ``"CPU package 0"``.
        reason: why it is unavailable, or the caveats of a measurement.
        warnings: anything that makes the number doubtful.

    Example:
        >>> EnergyReading(joules=None, kind="unavailable", source="none", duration_s=1.0,
        ...               device="CPU", reason="no counter").to_dict()["joules"] is None
        True
    """

    joules: float | None
    kind: Kind
    source: str
    duration_s: float
    device: str
    reason: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"EnergyReading.kind must be one of {', '.join(_KINDS)}, got {self.kind!r}")
        if self.kind == "unavailable":
            if self.joules is not None:
                raise ValueError(f"an unavailable reading has joules=None, got {self.joules!r}")
            if not self.reason:
                raise ValueError("an unavailable reading must say why (reason)")
        else:
            if self.joules is None or not math.isfinite(self.joules) or self.joules < 0:
                raise ValueError(f"a {self.kind} reading needs finite joules >= 0, got {self.joules!r}")
            object.__setattr__(self, "joules", float(self.joules))
        object.__setattr__(self, "duration_s", float(self.duration_s))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    @property
    def watts(self) -> float | None:
        """Mean power over the window, or None."""
        if self.joules is None or self.duration_s <= 0:
            return None
        return self.joules / self.duration_s

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what reports store)."""
        return {
            "joules": self.joules,
            "kind": self.kind,
            "source": self.source,
            "duration_s": self.duration_s,
            "device": self.device,
            "reason": self.reason,
            "warnings": list(self.warnings),
        }


def unavailable_reading(device: str, reason: str, duration_s: float = 0.0, warnings: Sequence[str] = ()) -> EnergyReading:
    return EnergyReading(
        joules=None,
        kind="unavailable",
        source="none",
        duration_s=duration_s,
        device=device,
        reason=reason,
        warnings=tuple(warnings),
    )


def stall_warning(counter: str, duration_s: float) -> str:
    return (
        f"the {counter} energy counter did not advance over {duration_s:.1f} s; it may be unsupported or "
        "stale on this device, so 0 J is doubtful"
    )


# -- the meter protocol ---------------------------------------------------------------------


class Meter(Protocol):
    """Anything that measures a window: ``start()``, then ``stop()`` returns the readings."""

    def start(self) -> None: ...

    def stop(self) -> list[EnergyReading]: ...


@dataclass
class Measurement:
    """The handle :meth:`MeterBase.measure` yields; ``readings`` is filled when the block exits."""

    readings: list[EnergyReading] = field(default_factory=list)


class MeterBase:
    def start(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> list[EnergyReading]:  # pragma: no cover - abstract
        raise NotImplementedError

    @contextlib.contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Measure the ``with`` block; the handle's ``readings`` are set on exit (also when the
        block raises, so a failed probe still reports what it cost).

        Example:
            >>> with RaplMeter(root="/nonexistent").measure() as m:
            ...     pass
            >>> m.readings[0].kind
            'unavailable'
        """
        handle = Measurement()
        self.start()
        try:
            yield handle
        finally:
            handle.readings = self.stop()


# -- summaries ------------------------------------------------------------------------------


def summarize(readings: Sequence[EnergyReading], *, idle: IdleBaseline | None = None) -> dict[str, Any]:
    """One JSON-able summary of a window's readings.

    ``joules`` adds the measured readings only (None if none was measured); estimates are
    totalled apart in ``estimate_joules``. ``kind`` is ``measured`` when every reading was
    measured, ``partial`` when some were (``joules`` then leaves the others out; see
    ``unmeasured``), ``estimate`` when only estimates exist, else ``unavailable``.
    ``source`` and ``reason`` say the same in one line each (``"nvml+rapl"``; why each
    unmeasured device is not measured).

    With an ``idle`` baseline, also ``gross_joules`` (= ``joules``), ``net_joules`` (idle
    power x duration subtracted per device; None when unknown), ``idle_watts`` and
    ``net_warnings``.

    Example:
        >>> gpu = EnergyReading(joules=12.0, kind="measured", source="nvml", duration_s=1.0, device="GPU 0")
        >>> cpu = EnergyReading(joules=None, kind="unavailable", source="none", duration_s=1.0,
        ...                     device="CPU", reason="no counter")
        >>> s = summarize([gpu, cpu])
        >>> s["joules"], s["kind"], s["unmeasured"]
        (12.0, 'partial', ['CPU'])
    """
    measured = [r for r in readings if r.kind == "measured"]
    estimates = [r for r in readings if r.kind == "estimate"]
    if measured and len(measured) == len(readings):
        kind = "measured"
    elif measured:
        kind = "partial"
    elif estimates:
        kind = "estimate"
    else:
        kind = "unavailable"
    sources = sorted({r.source for r in readings if r.kind != "unavailable"})
    unmeasured = [r for r in readings if r.kind != "measured"]
    out = {
        "joules": math.fsum(r.joules for r in measured) if measured else None,  # type: ignore[misc]
        "kind": kind,
        "sources": sources,
        # One-line forms for renderers that show a single energy record.
        "source": "+".join(sources) or "none",
        "reason": "; ".join(f"{r.device}: {r.reason or r.kind}" for r in unmeasured) or None,
        "estimate_joules": math.fsum(r.joules for r in estimates) if estimates else None,  # type: ignore[misc]
        "unmeasured": [r.device for r in unmeasured],
        "duration_s": max((r.duration_s for r in readings), default=0.0),
        "readings": [r.to_dict() for r in readings],
    }
    if idle is not None:
        net = idle.net(readings)
        out.update(gross_joules=out["joules"], net_joules=net["joules"], idle_watts=dict(idle.watts),
                   net_warnings=net["warnings"])
    return out
