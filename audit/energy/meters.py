"""Energy meters: hardware counters read around a window of work.

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
import math
import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

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

Kind = Literal["measured", "estimate", "unavailable"]
_KINDS = ("measured", "estimate", "unavailable")

CPU_UNAVAILABLE_REASON = "no readable energy counter (RAPL not readable); CPU energy not measured"
"""The start of the reason of a CPU reading when no CPU counter could be read."""

NVML_CAVEAT = "NVML counts the whole device, including other processes"
RAPL_CAVEAT = "RAPL counts the whole CPU package, including other processes"

# Over a window this long, a counter that did not move is more likely stale than idle.
_STALL_WINDOW_S = 1.0


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


def _unavailable(device: str, reason: str, duration_s: float = 0.0, warnings: Sequence[str] = ()) -> EnergyReading:
    return EnergyReading(
        joules=None,
        kind="unavailable",
        source="none",
        duration_s=duration_s,
        device=device,
        reason=reason,
        warnings=tuple(warnings),
    )


def _stall_warning(counter: str, duration_s: float) -> str:
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
    """The handle :meth:`_MeterBase.measure` yields; ``readings`` is filled when the block exits."""

    readings: list[EnergyReading] = field(default_factory=list)


class _MeterBase:
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


# -- NVML -----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _cuda_initialized() -> bool:
    # Only look at torch if the program already imported it: importing it here costs seconds.
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a broken torch must not break metering
        return False


def _cuda_synchronize(ordinals: Sequence[int] | None) -> None:
    """Wait for queued kernels, so the window holds the work launched inside it."""
    if not _cuda_initialized():
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


class NvmlMeter(_MeterBase):
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
            self._failure = f"NVML: cannot initialise ({_text(exc) or type(exc).__name__}); no NVIDIA GPU or driver"
            self._t0 = time.perf_counter()
            return
        self._nvml = pynvml
        try:
            indices, warnings = self._nvml_indices(pynvml)
        except Exception as exc:  # noqa: BLE001 - an NVMLError while listing devices
            indices, warnings = [], []
            self._failure = f"NVML: cannot list the GPUs ({_text(exc) or type(exc).__name__})"
        self._warnings.extend(warnings)
        if not indices and self._failure is None:
            why = "; ".join(warnings) or "none visible, or CUDA_VISIBLE_DEVICES hides them all"
            self._failure = f"NVML: no GPU of this process to measure ({why})"
        for index in indices:
            window = _GpuWindow(nvml_index=index, device=f"GPU {index}")
            try:
                window.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                window.device = f"GPU {index}: {_text(pynvml.nvmlDeviceGetName(window.handle))}"
            except Exception as exc:  # noqa: BLE001
                window.error = f"NVML: cannot open GPU {index} ({_text(exc)})"
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
            window.error = f"NVML: cannot read the energy counter of {window.device} ({_text(exc)})"
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
            return [_unavailable("GPU", self._failure, duration, self._warnings)]
        readings = []
        for window, end in zip(self._windows, end_mj):
            if window.error is not None or window.start_mj is None or end is None:
                readings.append(_unavailable(window.device, window.error or "NVML: no reading", duration, self._warnings))
                continue
            delta_mj = end - window.start_mj
            if delta_mj < 0:
                readings.append(
                    _unavailable(
                        window.device,
                        f"NVML: the energy counter of {window.device} went backwards (driver reload or GPU reset?)",
                        duration,
                        self._warnings,
                    )
                )
                continue
            warnings = list(self._warnings)
            if delta_mj == 0 and duration > _STALL_WINDOW_S:
                warnings.append(_stall_warning("NVML", duration))
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
                names.add(_text(pynvml.nvmlDeviceGetName(handle)))
                uuids.append(_normalise_uuid(_text(pynvml.nvmlDeviceGetUUID(handle))))
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


# -- RAPL -----------------------------------------------------------------------------------

_PACKAGE_ZONE = re.compile(r"^intel-rapl:(\d+)$")


@dataclass
class _RaplWindow:
    zone: Path
    device: str
    max_range_uj: int | None = None
    start_uj: int | None = None
    error: str | None = None


class RaplMeter(_MeterBase):
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
            return [_unavailable("CPU", f"{CPU_UNAVAILABLE_REASON}: {self._failure}", duration)]
        readings = []
        for window, end in zip(self._windows, ends):
            if window.error is not None or window.start_uj is None or end is None:
                readings.append(
                    _unavailable(window.device, f"{CPU_UNAVAILABLE_REASON}: {window.error or 'no reading'}", duration)
                )
                continue
            warnings: list[str] = []
            delta = end - window.start_uj
            if delta < 0:
                if not window.max_range_uj:
                    readings.append(
                        _unavailable(
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
            if delta == 0 and duration > _STALL_WINDOW_S:
                warnings.append(_stall_warning("RAPL", duration))
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


# -- composition ----------------------------------------------------------------------------


class CompositeMeter(_MeterBase):
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
                readings.append(_unavailable(_meter_device(meter), error or "not started"))
                continue
            try:
                readings.extend(meter.stop())
            except Exception as exc:  # noqa: BLE001 - see class docstring
                readings.append(_unavailable(_meter_device(meter), f"{type(meter).__name__}.stop() failed: {exc}"))
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
    if _cuda_initialized():
        with contextlib.suppress(Exception):
            return int(sys.modules["torch"].cuda.current_device())
    return 0


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
        info["nvml"] = f"cannot initialise NVML ({_text(exc) or type(exc).__name__})"
        return info
    try:
        with contextlib.suppress(Exception):
            info["gpu_driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpu: dict[str, Any] = {"index": i, "name": _text(pynvml.nvmlDeviceGetName(handle))}
            with contextlib.suppress(Exception):
                gpu["uuid"] = _text(pynvml.nvmlDeviceGetUUID(handle))
            with contextlib.suppress(Exception):
                gpu["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0  # mW
            with contextlib.suppress(Exception):
                gpu["memory_total_gb"] = round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1e9, 2)
            info["gpus"].append(gpu)
    except Exception as exc:  # noqa: BLE001
        info["nvml"] = f"NVML error while listing GPUs ({_text(exc) or type(exc).__name__})"
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


# -- labelled estimates ---------------------------------------------------------------------

ESTIMATE_LABEL = "ESTIMATE, not a measurement"


class CodecarbonCpuMeter(_MeterBase):
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
            return [_unavailable("CPU", self._failure or "no estimate", duration)]
        self._in_task = False
        try:
            with _quiet_codecarbon():
                data = self._tracker.stop_task()
            kwh = float(data.cpu_energy)
        except Exception as exc:  # noqa: BLE001
            return [_unavailable("CPU", f"codecarbon's OfflineEmissionsTracker failed ({type(exc).__name__}: {exc})",
                                 duration)]
        if not math.isfinite(kwh) or kwh < 0:
            return [_unavailable("CPU", f"codecarbon gave no usable CPU energy ({kwh!r})", duration)]
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


class FallbackCpuMeter(_MeterBase):
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
                    self._error = _text(exc)
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
