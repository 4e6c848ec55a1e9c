"""The findings of ``energy.inference`` from its metered windows (:class:`Results`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from audit.energy import IdleBaseline, Window, summarize
from audit.findings import Finding, Interval, Units
from audit.stats import bootstrap_ratio_ci
from probes.energy.functional import percentile_ci

if TYPE_CHECKING:
    from probes.energy.inference import InferenceEnergy, _Workload

__all__ = ["FEW_WINDOWS", "UNITS", "Results"]

# (per-unit metric suffix, unit label, units per reported quantity, throughput metric)
UNITS = {
    ("text-generator", "generate"): ("1k_tokens", "J/1k tokens", 1000.0, "tokens_per_s"),
    ("text-generator", "score"): ("1k_tokens", "J/1k tokens", 1000.0, "tokens_per_s"),
    ("image-generator", "generate"): ("image", "J/image", 1.0, "images_per_s"),
    ("classifier", "classify"): ("1k_classifications", "J/1k classifications", 1000.0, "classifications_per_s"),
}
#: Fewer windows than this make the intervals over windows rough (a warning says so).
FEW_WINDOWS = 5

class _Measured(NamedTuple):
    """The measured gross energy per unit, its warnings, and whether every window was measured."""

    value: float
    ci: Interval | None
    warnings: list[str]
    ok: bool


# -- findings -------------------------------------------------------------------------------


@dataclass
class Results:
    probe: InferenceEnergy
    kind: str
    op: str
    workload: _Workload
    windows: list[Window]
    idle: IdleBaseline | None
    device_peaks: list[float]
    host_peaks: list[float]
    slice_: dict[str, str]

    def _finding(self, metric: str, value: float, *, higher: bool, unit: str, ci: Interval | None, n: int,
                 warnings: Sequence[str] = (), evidence: dict[str, Any] | None = None,
                 units: Units | None = None) -> Finding:
        return Finding(probe=self.probe.id, metric=metric, value=value, higher_is_better=higher, unit=unit, ci=ci,
                       n=n, slice=self.slice_, warnings=tuple(dict.fromkeys(warnings)), evidence=evidence or {},
                       units=units if math.isfinite(value) else None)

    def _window_units(self, num: np.ndarray, den: np.ndarray, scale: float) -> Units:
        """Per-window units of a ratio over windows. Windows of two variants are not the same unit
        (nothing pairs window 3 of one run with window 3 of another), so the statistic is the
        unpairable ``window_ratio``: a variant's delta gets an unpaired interval."""
        return Units("window_ratio", [f"window-{i}" for i in range(len(num))],
                     {"num": (np.asarray(num, dtype=np.float64) * scale).tolist(),
                      "den": np.asarray(den, dtype=np.float64).tolist()})

    def _ratio(self, num: np.ndarray, den: np.ndarray, scale: float) -> tuple[float, Interval | None]:
        if den.sum() <= 0 or not np.all(np.isfinite(num)):
            return math.nan, None
        value = float(num.sum() / den.sum() * scale)
        ci = bootstrap_ratio_ci(num, den, transform=lambda r: r * scale, n_resamples=self.probe.n_resamples,
                                confidence=self.probe.confidence, seed=0)
        return value, ci

    def findings(self) -> list[Finding]:
        suffix, unit, scale, tput = UNITS[(self.kind, self.op)]
        summaries = [summarize(x.readings, idle=self.idle) for x in self.windows]
        common = self._common_warnings(unit)
        measured, out = self._measured(summaries, common, suffix, unit, scale)
        estimate, est_findings = self._estimate(summaries, common, suffix, unit, scale)
        out += est_findings
        out += self._emissions(measured, estimate, common, suffix, unit)
        out += self._latency_throughput(common, tput)
        out += self._peak_memory()
        return out

    def energy_findings(self) -> list[Finding]:
        """The gross measured energy per unit and, where a meter estimated, the labelled estimate
        beside it: what ``energy.footprint`` reports (no idle baseline, emissions or throughput)."""
        suffix, unit, scale, _ = UNITS[(self.kind, self.op)]
        summaries = [summarize(x.readings) for x in self.windows]
        common = self._common_warnings(unit)
        _, measured = self._measured(summaries, common, suffix, unit, scale)
        _, estimated = self._estimate(summaries, common, suffix, unit, scale)
        return [measured[0], *estimated]

    def _common_warnings(self, unit: str) -> list[str]:
        n = len(self.windows)
        common: list[str] = []
        if n < FEW_WINDOWS:
            common.append(f"only {n} windows: the intervals over windows are rough; use repeats >= {FEW_WINDOWS}")
        if sum(x.units for x in self.windows) <= 0:
            common.append(f"no {unit.split('/')[1]} were produced in any window: per-unit values are nan")
        return common

    def _units(self) -> np.ndarray:
        return np.array([x.units for x in self.windows], dtype=np.float64)

    def _measured(self, summaries: list[dict[str, Any]], common: list[str], suffix: str, unit: str,
                  scale: float) -> tuple[_Measured, list[Finding]]:
        """Measured energy per unit, gross and idle-subtracted; never silently a number: nan with the reason."""
        w, n, units = self.windows, len(self.windows), self._units()
        evidence = {
            "workload": self.workload.note, "windows": n, "calls": int(sum(x.calls for x in w)),
            "units": float(units.sum()), "seconds": float(sum(x.duration_s for x in w)),
            "per_window": [{"units": float(x.units), "calls": x.calls, "duration_s": x.duration_s,
                            "energy": {k: s[k] for k in ("joules", "kind", "source", "estimate_joules", "net_joules")
                                       if k in s}} for x, s in zip(w, summaries)],
        }
        kinds = {s["kind"] for s in summaries}
        measured_ok = all(s["joules"] is not None for s in summaries)
        gross = np.array([s["joules"] if s["joules"] is not None else math.nan for s in summaries])
        energy_warnings = list(common)
        if not measured_ok:
            reasons = "; ".join(dict.fromkeys(s["reason"] or s["kind"] for s in summaries if s["joules"] is None))
            energy_warnings.append(f"energy unavailable: no hardware counter could be read ({reasons})")
        elif "partial" in kinds:
            unmeasured = sorted({d for s in summaries for d in s["unmeasured"]})
            why = "; ".join(dict.fromkeys(s["reason"] for s in summaries if s["reason"]))
            energy_warnings.append(f"partial: {', '.join(unmeasured)} not measured and not included ({why})")
        stalled = sorted({d for x in w for d in x.stalled})
        if stalled:
            k = sum(1 for x in w if x.stalled)
            energy_warnings.append(
                f"approximate: the energy counter of {', '.join(stalled)} did not advance in {k} of {n} windows; "
                "the counter is coarser than the work, so these values are approximate; raise min_window_s"
            )
        caveats = sorted({r.reason for x in w for r in x.readings if r.kind == "measured" and r.reason})
        value, ci = self._ratio(gross, units, scale) if measured_ok else (math.nan, None)
        measured_evidence = {**evidence, "caveats": caveats, "approximate": bool(stalled),
                             "sources": sorted({src for s in summaries for src in s["sources"]})}
        out = [self._finding(f"energy_j_per_{suffix}", value, higher=False, unit=unit, ci=ci, n=n,
                             warnings=energy_warnings, evidence=measured_evidence,
                             units=self._window_units(gross, units, scale))]

        net_warnings = list(energy_warnings)
        if self.idle is None:
            net_warnings.append("no idle baseline (idle_s is 0): net energy not computed")
            net = np.full(n, math.nan)
        else:
            net = np.array([s["net_joules"] if s.get("net_joules") is not None else math.nan for s in summaries])
            net_warnings += [m for s in summaries for m in s.get("net_warnings", [])]
            if measured_ok and not np.all(np.isfinite(net)):
                net_warnings.append("the idle power of a measured device is unknown: net energy not computed")
        net_value, net_ci = self._ratio(net, units, scale) if np.all(np.isfinite(net)) else (math.nan, None)
        out.append(self._finding(f"energy_net_j_per_{suffix}", net_value, higher=False, unit=unit, ci=net_ci, n=n,
                                 warnings=net_warnings,
                                 evidence={"idle": self.idle.to_dict() if self.idle else None,
                                           "method": "window energy minus idle power x window duration, per device"},
                                 units=self._window_units(net, units, scale)))
        return _Measured(value, ci, energy_warnings, measured_ok), out

    def _estimate(self, summaries: list[dict[str, Any]], common: list[str], suffix: str, unit: str,
                  scale: float) -> tuple[tuple[float, Interval | None] | None, list[Finding]]:
        """A labelled estimate, only ever in its own finding (None when no meter estimated)."""
        w, n = self.windows, len(self.windows)
        est = [s["estimate_joules"] for s in summaries]
        if all(e is None for e in est):
            return None, []
        est_arr = np.array([e if e is not None else math.nan for e in est])
        labels = sorted({r.reason for x in w for r in x.readings if r.kind == "estimate" and r.reason})
        est_value, est_ci = (self._ratio(est_arr, self._units(), scale) if np.all(np.isfinite(est_arr))
                             else (math.nan, None))
        finding = self._finding(
            f"energy_estimate_j_per_{suffix}", est_value, higher=False, unit=unit, ci=est_ci, n=n,
            warnings=[*common, "ESTIMATE, not a measurement: " + " | ".join(labels)],
            evidence={"label": "estimate", "models": labels,
                      "devices": sorted({r.device for x in w for r in x.readings if r.kind == "estimate"})},
            units=self._window_units(est_arr, self._units(), scale),
        )
        return (est_value, est_ci), [finding]

    def _emissions(self, measured: _Measured, estimate: tuple[float, Interval | None] | None, common: list[str],
                   suffix: str, unit: str) -> list[Finding]:
        """Emissions from the measured gross energy (or, labelled, from the estimate)."""
        factor = self._factor()
        if factor is None:
            return []
        basis, e_val, e_ci, metric = "measured gross energy", measured.value, measured.ci, f"emissions_g_co2e_per_{suffix}"
        e_warn = list(measured.warnings)
        if not measured.ok and estimate is not None:
            basis, metric = "ESTIMATED energy (codecarbon), not measured", f"emissions_estimate_g_co2e_per_{suffix}"
            e_val, e_ci = estimate
            e_warn = [*common, "ESTIMATE: from estimated, not measured, energy"]
        g = factor.grams(e_val) if math.isfinite(e_val) else math.nan
        g_ci = Interval(factor.grams(e_ci.low), factor.grams(e_ci.high), e_ci.method) if e_ci else None
        return [self._finding(metric, g, higher=False, unit=f"gCO2e/{unit.split('/', 1)[1]}", ci=g_ci,
                              n=len(self.windows), warnings=e_warn,
                              evidence={"factor": factor.to_dict(), "stated": factor.describe(), "basis": basis})]

    def _latency_throughput(self, common: list[str], tput: str) -> list[Finding]:
        w = self.windows
        lat = np.array([t for x in w for t in x.latencies_s], dtype=np.float64)
        lat_unit = f"s/call ({self.workload.batch} per call)"
        out = []
        for q in (50, 95):
            v, c = percentile_ci(lat, q, n_resamples=self.probe.n_resamples, confidence=self.probe.confidence)
            out.append(self._finding(f"latency_p{q}_s", v, higher=False, unit=lat_unit, ci=c, n=int(lat.size),
                                     warnings=common if q == 50 else ()))
        durations = np.array([x.duration_s for x in w], dtype=np.float64)
        t_val, t_ci = self._ratio(self._units(), durations, 1.0)
        out.append(self._finding(f"throughput_{tput}", t_val, higher=True, unit=tput.replace("_per_", "/"), ci=t_ci,
                                 n=len(w), warnings=common, units=self._window_units(self._units(), durations, 1.0)))
        return out

    def _peak_memory(self) -> list[Finding]:
        """Peak memory: the largest window, with the range over windows."""
        n = len(self.windows)
        out = []
        if self.device_peaks:
            p = np.array(self.device_peaks)
            out.append(self._finding("peak_device_memory_mib", float(p.max()), higher=False, unit="MiB",
                                     ci=Interval(p.min(), p.max(), "range-over-windows"), n=n,
                                     evidence={"what": "torch.cuda.max_memory_allocated per window"}))
        if self.host_peaks:
            p = np.array(self.host_peaks)
            hw = ["the host peak could not be reset between windows: it is the process's lifetime peak"] \
                if self.workload.host_peak_is_lifetime else []
            out.append(self._finding("peak_host_memory_mib", float(p.max()), higher=False, unit="MiB",
                                     ci=Interval(p.min(), p.max(), "range-over-windows"), n=n, warnings=hw,
                                     evidence={"what": "peak resident memory of the process per window (VmHWM)"}))
        return out

    def _factor(self) -> Any:
        p = self.probe
        if p.country is None and p.grid_intensity_g_per_kwh is None:
            return None
        from audit.energy.emissions import emissions_factor

        return emissions_factor(country=p.country, g_per_kwh=p.grid_intensity_g_per_kwh, source=p.grid_source,
                                pue=p.pue)


