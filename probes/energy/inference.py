"""Probe ``energy.inference``: energy per unit of the subject's main operation.

For a text generator it generates and scores tokens (J per 1k tokens), for an image
generator it generates images (J per image), for a classifier it classifies (J per 1k
classifications). After warm-up calls it runs ``repeats`` metered windows, each at least
``min_window_s`` long and holding many calls (energy counters are coarse), and reports:

* ``energy_j_per_<unit>``: measured energy per unit (hardware counters: NVML for the GPU, RAPL
  for the CPU), gross; ``energy_net_j_per_<unit>``: the same less the idle power measured
  before (``idle_s``). Where no counter can be read the value is nan with the reason, never a
  silent number; ``energy_estimate_j_per_<unit>`` then carries codecarbon's offline CPU model,
  labelled an estimate and never added to measurements.
* ``latency_p50_s`` / ``latency_p95_s`` per call, ``throughput_<unit>_per_s``, and the peak
  memory of the device (CUDA) and of the host process.
* ``emissions_g_co2e_per_<unit>`` when a country or a grid intensity is given
  (:mod:`audit.energy.emissions`; source, year and PUE in the finding's evidence).
* with ``variants`` (dtypes), each measurement per variant plus a quality number, for an
  energy-versus-quality comparison: NLL per token (text), top-1 agreement with the subject
  as loaded (classifier), PSNR against the subject as loaded (image generator).

Intervals: percentile bootstraps over windows (energy, throughput) and over calls
(latency); peak memory gives the range over windows.

Example (spec):
    probes:
      - id: energy.inference
        params: {repeats: 5, min_window_s: 1.0, country: FR, variants: [bfloat16]}
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from audit.energy import IdleBaseline, Window, default_meter, measure_idle, measure_window, summarize
from audit.errors import SpecError
from audit.findings import Finding, Interval
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import bootstrap_ci, bootstrap_ratio_ci, wilson_interval

__all__ = ["InferenceEnergy", "host_peak_rss_bytes", "percentile_ci", "reset_host_peak"]

_DTYPES = ("float32", "bfloat16", "float16")
_OPERATIONS = {
    "text-generator": ("generate", "score"),
    "image-generator": ("generate",),
    "classifier": ("classify",),
}
# (per-unit metric suffix, unit label, units per reported quantity, throughput metric)
_UNITS = {
    ("text-generator", "generate"): ("1k_tokens", "J/1k tokens", 1000.0, "tokens_per_s"),
    ("text-generator", "score"): ("1k_tokens", "J/1k tokens", 1000.0, "tokens_per_s"),
    ("image-generator", "generate"): ("image", "J/image", 1.0, "images_per_s"),
    ("classifier", "classify"): ("1k_classifications", "J/1k classifications", 1000.0, "classifications_per_s"),
}
_BUILTIN_PROMPTS = (
    "Write a short note explaining why the sky looks blue during the day.",
    "Summarise the plot of a story about a lighthouse keeper and a storm.",
    "List three ways to reduce the energy used by a data centre.",
    "Explain to a child how a bicycle stays upright while moving.",
    "Describe a quiet morning in a small mountain village.",
    "What are the advantages of walking to work instead of driving?",
    "Give advice to someone learning to cook their first meal.",
    "Compare trains and planes for a journey of five hundred kilometres.",
)
_IMAGE_PROMPTS = ("a red bicycle leaning on a wall", "a bowl of fruit on a table", "a lighthouse at dusk",
                  "a cat sleeping on a sofa")
_FEW_WINDOWS = 5


@register("energy.inference")
@dataclass(frozen=True)
class InferenceEnergy:
    """Energy per unit (J per 1k tokens, per image, per 1k classifications), latency, throughput, memory.

    See the module docstring for the findings. On a machine without readable counters the
    energy findings are nan with the reason (and a labelled codecarbon estimate beside them
    when ``cpu_estimate`` is on); nothing is guessed into a measurement.
    """

    id: ClassVar[str] = "energy.inference"
    applies_to: ClassVar[tuple[str, ...]] = ("text-generator", "image-generator", "classifier")

    operations: tuple[str, ...] = field(default=(), metadata={"help": "operations to measure: generate, score (text), generate (image), classify; empty: all of the subject's"})
    data: str | None = field(default=None, metadata={"help": "named data input with texts for a text generator (prompts and scored text); null: built-in prompts"})
    batch_size: int = field(default=8, metadata={"help": "items per call (prompts, sequences, images, inputs)"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens generated per prompt (greedy)"})
    max_length: int = field(default=128, metadata={"help": "tokens per scored sequence (texts are truncated)"})
    warmup_calls: int = field(default=2, metadata={"help": "unmeasured calls first (compilation, caches, clocks)"})
    repeats: int = field(default=5, metadata={"help": "measured windows per operation (the intervals are over them)"})
    min_window_s: float = field(default=1.0, metadata={"help": "each window runs calls until this long (energy counters are coarse)"})
    max_calls_per_window: int = field(default=1000, metadata={"help": "upper bound on calls in one window"})
    idle_s: float = field(default=1.0, metadata={"help": "idle window before the work, for the idle-subtracted energy (0: skip)"})
    cpu_estimate: bool = field(default=True, metadata={"help": "where RAPL is unreadable, add codecarbon's offline CPU estimate (labelled, never mixed with measurements)"})
    variants: tuple[str, ...] = field(default=(), metadata={"help": "dtypes to compare with the subject as loaded: float32, bfloat16, float16"})
    country: str | None = field(default=None, metadata={"help": "ISO country code for the grid carbon intensity (offline table, audit.energy.emissions)"})
    grid_intensity_g_per_kwh: float | None = field(default=None, metadata={"help": "grid carbon intensity in gCO2e/kWh (wins over country)"})
    grid_source: str | None = field(default=None, metadata={"help": "where grid_intensity_g_per_kwh comes from (stated in the finding)"})
    pue: float = field(default=1.0, metadata={"help": "power usage effectiveness of the facility (1.0: devices only)"})
    n_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples for the intervals"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals, in (0, 1)"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail, is_int = check.fail, check.is_int
        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        object.__setattr__(self, "operations", tuple(self.operations))
        object.__setattr__(self, "variants", tuple(self.variants))
        known_ops = sorted({op for ops in _OPERATIONS.values() for op in ops})
        if any(op not in known_ops for op in self.operations) or len(set(self.operations)) != len(self.operations):
            fail("operations", f"distinct names among {', '.join(known_ops)}")
        if self.data is not None and (not isinstance(self.data, str) or not self.data.strip()):
            fail("data", "the name of a data input of the spec, or null")
        for name, low in (("batch_size", 1), ("max_new_tokens", 1), ("max_length", 2), ("warmup_calls", 0),
                          ("repeats", 2), ("max_calls_per_window", 1)):
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                fail(name, f"an integer >= {low}" + (" (an interval needs 2 windows)" if name == "repeats" else ""))
        if not is_num(self.min_window_s) or not 0 <= self.min_window_s <= 600:
            fail("min_window_s", "a number of seconds in [0, 600] (1 or more lets coarse counters advance)")
        if not is_num(self.idle_s) or not 0 <= self.idle_s <= 600:
            fail("idle_s", "a number of seconds in [0, 600] (0 skips the idle baseline)")
        if not isinstance(self.cpu_estimate, bool):
            fail("cpu_estimate", "true or false")
        if any(v not in _DTYPES for v in self.variants) or len(set(self.variants)) != len(self.variants):
            fail("variants", f"distinct dtypes among {', '.join(_DTYPES)}")
        if self.grid_intensity_g_per_kwh is not None and (not is_num(self.grid_intensity_g_per_kwh)
                                                          or self.grid_intensity_g_per_kwh < 0):
            fail("grid_intensity_g_per_kwh", "a number of gCO2e/kWh >= 0, or null")
        if not is_num(self.pue) or self.pue < 1:
            fail("pue", "a number >= 1 (facility energy over IT energy; 1.0 counts the devices only)")
        if self.country is not None:
            from audit.energy.emissions import grid_intensity

            try:
                grid_intensity(self.country)
            except KeyError as exc:
                raise SpecError(f"{self.id}: country: {exc.args[0]}") from None
        check.int_at_least("n_resamples", 100)
        if not is_num(self.confidence) or not 0 < self.confidence < 1:
            fail("confidence", "a number in (0, 1), e.g. 0.95")

    # -- running -------------------------------------------------------------------------

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        import torch

        kind = subject.kind
        ops = self.operations or _OPERATIONS[kind]
        device = torch.device(getattr(subject, "device", None) or ctx.device)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        own_meter = ctx.meter is None
        meter = ctx.meter if not own_meter else default_meter(str(device), cpu_estimate=self.cpu_estimate)
        findings: list[Finding] = []
        try:
            idle = None
            if self.idle_s > 0:
                ctx.dist.barrier()  # every rank idles at the same time
                idle = _merge_idle(ctx.dist, measure_idle(meter, seconds=self.idle_s, synchronize=sync))
            variants: list[tuple[str | None, Any]] = [(None, subject)]
            for dtype in self.variants:
                variants.append((dtype, _cast_subject(subject, dtype)))
            reference: dict[str, Any] = {}
            for variant, subj in variants:
                slice_extra = {"variant": variant or "as-loaded"} if self.variants else {}
                for op in ops:
                    if op not in _OPERATIONS[kind]:
                        findings.append(self._nan(kind, op, slice_extra, f"operation '{op}' does not apply to a {kind}"))
                        continue
                    if subj is None:
                        findings.append(self._nan(kind, op, slice_extra,
                                                  f"variant {variant}: the subject has no torch module `model` to cast"))
                        continue
                    workload = _workload(self, subj, op, ctx, device)
                    findings += self._measure(kind, op, workload, meter, idle, sync, device, slice_extra, ctx.dist)
                if self.variants and subj is not None:
                    findings += self._quality(kind, subj, ctx, device, slice_extra, reference)
        finally:
            if own_meter:
                getattr(meter, "close", lambda: None)()
        return findings

    def _nan(self, kind: str, op: str, slice_extra: dict[str, str], why: str) -> Finding:
        suffix, unit, _, _ = _UNITS.get((kind, op), ("unit", "J/unit", 1.0, ""))
        return Finding(probe=self.id, metric=f"energy_j_per_{suffix}", value=math.nan, higher_is_better=False,
                       unit=unit, slice={"operation": op, **slice_extra}, warnings=(why,))

    def _measure(self, kind: str, op: str, workload: _Workload, meter: Any, idle: IdleBaseline | None,
                 sync: Callable[[], None] | None, device: Any, slice_extra: dict[str, str], dist: Any) -> list[Finding]:
        """Warm-up, then ``repeats`` windows. Under torchrun the ranks run each window together,
        each its share of the window's calls (call ``k`` of window ``w`` is global call
        ``w * max_calls_per_window + k`` on whichever rank runs it); a window's energy, calls and
        units are summed over ranks, its duration is the slowest rank's."""
        import torch

        for i in range(self.warmup_calls):
            workload.call(i)
        if sync is not None:
            sync()
        cuda = device.type == "cuda"
        windows: list[Window] = []
        device_peaks: list[float] = []
        host_peaks: list[float] = []
        share = dist.shard(self.max_calls_per_window)
        for w in range(self.repeats):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            host_reset = reset_host_peak()
            calls = iter(range(w * self.max_calls_per_window + share.start, w * self.max_calls_per_window + share.stop))
            dist.barrier()  # the ranks' windows overlap in time
            window = (measure_window(meter, lambda: workload.call(next(calls)), min_seconds=self.min_window_s,
                                     max_calls=len(share), synchronize=sync)
                      if len(share) else Window(readings=(), calls=0, units=0.0, duration_s=0.0, latencies_s=()))
            dev_peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
            peak = host_peak_rss_bytes()
            window, dev_peak, peak = _merge_window(dist, window, dev_peak, peak)
            windows.append(window)
            if dev_peak is not None:
                device_peaks.append(dev_peak)
            if peak is not None:
                host_peaks.append(peak / 2**20)
            workload.host_peak_is_lifetime = not host_reset
        return _Results(self, kind, op, workload, windows, idle, device_peaks, host_peaks,
                        {"operation": op, **slice_extra}).findings()

    def _quality(self, kind: str, subj: Any, ctx: ProbeContext, device: Any, slice_: dict[str, str],
                 reference: dict[str, Any]) -> list[Finding]:
        """One quality number per variant, against the subject as loaded where it needs a reference."""
        import torch

        if kind == "text-generator":
            seqs, mask = _score_batches(self, subj, ctx, device)
            nll, tokens = [], []
            for ids, m in zip(seqs, mask):
                lp = subj.token_logprobs(ids, attention_mask=m)
                keep = m[:, 1:].to(lp.device).bool()
                nll.append((-(lp.double() * keep)).sum(1).cpu())
                tokens.append(keep.sum(1).cpu().double())
            nll_t, tok_t = torch.cat(nll).numpy(), torch.cat(tokens).numpy()
            value = float(nll_t.sum() / tok_t.sum())
            ci = bootstrap_ratio_ci(nll_t, tok_t, n_resamples=self.n_resamples, confidence=self.confidence, seed=0)
            return [Finding(probe=self.id, metric="quality_nll_per_token", value=value, higher_is_better=False,
                            unit="nats/token", ci=ci, n=len(nll_t), slice=slice_,
                            evidence={"what": "mean NLL per token of the scored texts (lower is better)"})]
        if kind == "classifier":
            x = _classifier_inputs(self, subj, ctx, device, n=max(256, self.batch_size))
            with torch.inference_mode():
                pred = torch.cat([subj.logits(xb.to(_param_dtype(subj))).argmax(1) for xb in x.split(self.batch_size)])
            if "pred" not in reference:
                reference["pred"] = pred
            agree = int((pred == reference["pred"]).sum())
            n = int(pred.numel())
            return [Finding(probe=self.id, metric="quality_agreement_with_reference", value=agree / n,
                            higher_is_better=True, ci=wilson_interval(agree, n, confidence=self.confidence), n=n,
                            slice=slice_, evidence={"what": "top-1 agreement with the subject as loaded, on "
                                                    "uniform random inputs in its input range"})]
        images = torch.cat([b.cpu() for b in subj.generate(n=self.batch_size, seed=ctx.child_seed("quality"),
                                                          batch_size=self.batch_size)])
        if "images" not in reference:
            reference["images"] = images
        psnr = psnr_db(images, reference["images"])
        finite = psnr[np.isfinite(psnr)]
        value = float(np.mean(finite)) if finite.size else math.inf
        warnings = [] if finite.size == psnr.size else [f"{psnr.size - finite.size} of {psnr.size} images are "
                                                        "identical to the reference (infinite PSNR), left out of the mean"]
        ci = bootstrap_ci(finite, n_resamples=self.n_resamples, confidence=self.confidence, seed=0)
        return [Finding(probe=self.id, metric="quality_psnr_vs_reference_db", value=value, higher_is_better=True,
                        unit="dB", ci=ci, n=int(psnr.size), slice=slice_, warnings=tuple(warnings),
                        evidence={"what": "PSNR of each image against the subject as loaded, same seed"})]


# -- workloads --------------------------------------------------------------------------------


@dataclass
class _Workload:
    call: Callable[[int], float]  # global call index -> units done
    batch: int
    note: str
    host_peak_is_lifetime: bool = False


def _workload(probe: InferenceEnergy, subject: Any, op: str, ctx: ProbeContext, device: Any) -> _Workload:
    import torch

    kind = subject.kind
    if kind == "text-generator" and op == "score":
        seqs, masks = _score_batches(probe, subject, ctx, device)
        batches = list(zip(seqs, masks))

        def score(i: int) -> float:
            ids, mask = batches[i % len(batches)]
            subject.token_logprobs(ids, attention_mask=mask)
            return float(mask[:, 1:].sum())  # tokens scored: all but the first of each row

        return _Workload(score, probe.batch_size, f"token_logprobs on batches of {probe.batch_size} sequences of up "
                         f"to {probe.max_length} tokens")
    if kind == "text-generator":
        prompts = _prompts(probe, subject, ctx)
        groups = [prompts[i:i + probe.batch_size] for i in range(0, len(prompts), probe.batch_size)]

        def generate(i: int) -> float:
            out = subject.generate(groups[i % len(groups)], max_new_tokens=probe.max_new_tokens, temperature=0.0, seed=0)
            # Tokens generated, counted by re-encoding the continuations (generation may stop early at EOS).
            return float(sum(len(ids) for ids in subject.encode(out)))

        return _Workload(generate, probe.batch_size, f"greedy generation of up to {probe.max_new_tokens} tokens for "
                         f"{probe.batch_size} prompt(s) per call; tokens counted by re-encoding the output")
    if kind == "image-generator":
        seed = ctx.child_seed("images")
        prompts = list(getattr(subject, "prompts", None) or _IMAGE_PROMPTS)
        takes_prompts = "prompts" in getattr(subject, "capabilities", ())

        def images(i: int) -> float:
            kwargs: dict[str, Any] = {"seed": seed + i, "batch_size": probe.batch_size}
            if takes_prompts:
                kwargs["prompts"] = list(itertools.islice(itertools.cycle(prompts), probe.batch_size))
            else:
                kwargs["n"] = probe.batch_size
            n = 0
            for batch in subject.generate(**kwargs):
                n += int(batch.shape[0])
            return float(n)

        note = f"{probe.batch_size} images per call"
        if getattr(subject, "num_images", None) is not None:
            note += "; the subject reads stored images (a folder), so this measures loading, not generation"
        return _Workload(images, probe.batch_size, note)
    x = _classifier_inputs(probe, subject, ctx, device, n=probe.batch_size)
    dtype = _param_dtype(subject)

    def classify(i: int) -> float:
        with torch.inference_mode():
            subject.logits(x.to(dtype))
        return float(x.shape[0])

    return _Workload(classify, probe.batch_size, f"logits of {probe.batch_size} inputs per call (uniform random in "
                     "the input range: a dense classifier's cost does not depend on the content)")


def _texts(probe: InferenceEnergy, ctx: ProbeContext) -> list[str]:
    if probe.data is None:
        return list(_BUILTIN_PROMPTS)
    from audit.subjects.textdata import read_documents

    return [d.text for d in read_documents(ctx.input_path(probe.data))]


def _prompts(probe: InferenceEnergy, subject: Any, ctx: ProbeContext) -> list[str]:
    texts = _texts(probe, ctx)
    if probe.data is None:
        return texts
    # A document's opening (up to 32 tokens) is a prompt of realistic length.
    return [subject.decode(ids[:32]) for ids in subject.encode(texts) if ids]


def _score_batches(probe: InferenceEnergy, subject: Any, ctx: ProbeContext, device: Any) -> tuple[list[Any], list[Any]]:
    import torch

    bos = getattr(subject, "bos_token_id", None)
    limit = min(probe.max_length, getattr(subject, "max_context", None) or probe.max_length)
    seqs = [([bos] if bos is not None else []) + list(ids) for ids in subject.encode(_texts(probe, ctx))]
    seqs = [s[:limit] for s in seqs if len(s) >= 2]
    if not seqs:
        from audit.errors import InputError

        raise InputError(f"{probe.id}: no text with 2 or more tokens to score")
    ids_b, mask_b = [], []
    for i in range(0, len(seqs), probe.batch_size):
        group = seqs[i:i + probe.batch_size]
        width = max(len(s) for s in group)
        ids = torch.full((len(group), width), int(subject.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        ids_b.append(ids.to(device))
        mask_b.append(mask.to(device))
    return ids_b, mask_b


def _classifier_inputs(probe: InferenceEnergy, subject: Any, ctx: ProbeContext, device: Any, *, n: int) -> Any:
    import torch

    low, high = subject.input_range
    x = torch.rand((n, *subject.input_shape), generator=ctx.rng("inputs"))
    return (x * (high - low) + low).to(device)


def _param_dtype(subject: Any) -> Any:
    import torch

    model = getattr(subject, "model", None)
    try:
        return next(model.parameters()).dtype
    except (AttributeError, StopIteration, TypeError):
        return torch.float32


def _cast_subject(subject: Any, dtype: str) -> Any:
    """A copy of the subject whose torch module is cast to ``dtype``; None when it has none."""
    import torch

    model = getattr(subject, "model", None)
    if not isinstance(model, torch.nn.Module):
        return None
    twin = copy.copy(subject)
    twin.model = copy.deepcopy(model).to(getattr(torch, dtype))
    return twin


# -- ranks ------------------------------------------------------------------------------------


def _label(rank: int, local_rank: int, readings: Sequence[Any]) -> list[Any]:
    """A rank's readings named by rank; a machine's CPU counter is kept from its first local rank
    only (its ranks all read the same counter), as the runner does for a probe's energy."""
    return [dataclasses.replace(r, device=f"rank {rank}: {r.device}") for r in readings if _kept(r.device, local_rank)]


def _kept(device: str, local_rank: int) -> bool:
    return str(device).startswith("GPU") or local_rank == 0


def _merge_idle(dist: Any, idle: IdleBaseline) -> IdleBaseline:
    """Every rank's idle baseline as one: idle power per labelled device."""
    if not dist.active:
        return idle
    every = dist.all_gather_object((dist.local_rank, idle))
    watts: dict[str, float] = {}
    readings: list[Any] = []
    for rank, (local, b) in enumerate(every):
        watts.update({f"rank {rank}: {d}": w for d, w in b.watts.items() if _kept(d, local)})
        readings += _label(rank, local, b.readings)
    return IdleBaseline(watts=watts, duration_s=max(b.duration_s for _, b in every), readings=tuple(readings),
                        warnings=tuple(dict.fromkeys(w for _, b in every for w in b.warnings)))


def _merge_window(dist: Any, window: Window, device_peak: float | None, host_peak: int | None
                  ) -> tuple[Window, float | None, int | None]:
    """One window over every rank: readings of all ranks, calls and units summed, the slowest
    rank's duration, every call's latency; the peaks are the largest rank's."""
    if not dist.active:
        return window, device_peak, host_peak
    every = dist.all_gather_object((dist.local_rank, window, device_peak, host_peak))
    merged = Window(
        readings=tuple(r for rank, (local, w, _, _) in enumerate(every) for r in _label(rank, local, w.readings)),
        calls=sum(w.calls for _, w, _, _ in every), units=sum(w.units for _, w, _, _ in every),
        duration_s=max(w.duration_s for _, w, _, _ in every),
        latencies_s=tuple(t for _, w, _, _ in every for t in w.latencies_s),
        stalled=tuple(f"rank {rank}: {d}" for rank, (_, w, _, _) in enumerate(every) for d in w.stalled))
    dev = [p for _, _, p, _ in every if p is not None]
    host = [p for _, _, _, p in every if p is not None]
    return merged, max(dev) if dev else None, max(host) if host else None


# -- memory -----------------------------------------------------------------------------------


def reset_host_peak() -> bool:
    """Reset this process's peak resident memory (Linux: ``/proc/self/clear_refs``); False if it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def host_peak_rss_bytes() -> int | None:
    """Peak resident memory of this process since the last reset (``VmHWM``), else its lifetime peak."""
    try:
        m = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
        if m:
            return int(m.group(1)) * 1024
    except OSError:
        pass
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kB on Linux
    except (ImportError, OSError):
        return None


# -- maths ----------------------------------------------------------------------------------


def percentile_ci(values: Sequence[float], q: float, *, n_resamples: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> tuple[float, Interval | None]:
    """The ``q``-th percentile of ``values`` (linear interpolation, NumPy's default) and its
    percentile-bootstrap interval.

    Example:
        >>> value, ci = percentile_ci([1.0, 2.0, 3.0, 4.0, 5.0], 50)
        >>> value, ci.low <= value <= ci.high
        (3.0, True)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, None
    value = float(np.percentile(x, q))
    ci = bootstrap_ci(x, lambda s, axis=-1: np.percentile(s, q, axis=axis), n_resamples=n_resamples,
                      confidence=confidence, seed=seed)
    return value, ci


def psnr_db(images: Any, reference: Any) -> np.ndarray:
    """PSNR in dB of each uint8 image against the reference (inf where identical).

    Example:
        >>> import torch
        >>> a = torch.zeros(1, 1, 2, 2, dtype=torch.uint8); b = a.clone(); b[0, 0, 0, 0] = 255
        >>> round(float(psnr_db(b, a)[0]), 2)    # MSE = 255^2 / 4
        6.02
    """
    a = np.asarray(images, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images and reference differ in shape: {a.shape} != {b.shape}")
    mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


# -- findings -------------------------------------------------------------------------------


@dataclass
class _Results:
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
                 warnings: Sequence[str] = (), evidence: dict[str, Any] | None = None) -> Finding:
        return Finding(probe=self.probe.id, metric=metric, value=value, higher_is_better=higher, unit=unit, ci=ci,
                       n=n, slice=self.slice_, warnings=tuple(dict.fromkeys(warnings)), evidence=evidence or {})

    def _ratio(self, num: np.ndarray, den: np.ndarray, scale: float) -> tuple[float, Interval | None]:
        if den.sum() <= 0 or not np.all(np.isfinite(num)):
            return math.nan, None
        value = float(num.sum() / den.sum() * scale)
        ci = bootstrap_ratio_ci(num, den, transform=lambda r: r * scale, n_resamples=self.probe.n_resamples,
                                confidence=self.probe.confidence, seed=0)
        return value, ci

    def findings(self) -> list[Finding]:
        suffix, unit, scale, tput = _UNITS[(self.kind, self.op)]
        w = self.windows
        n = len(w)
        units = np.array([x.units for x in w], dtype=np.float64)
        durations = np.array([x.duration_s for x in w], dtype=np.float64)
        summaries = [summarize(x.readings, idle=self.idle) for x in w]
        common: list[str] = []
        if n < _FEW_WINDOWS:
            common.append(f"only {n} windows: the intervals over windows are rough; use repeats >= {_FEW_WINDOWS}")
        if units.sum() <= 0:
            common.append(f"no {unit.split('/')[1]} were produced in any window: per-unit values are nan")
        evidence = {
            "workload": self.workload.note, "windows": n, "calls": int(sum(x.calls for x in w)),
            "units": float(units.sum()), "seconds": float(durations.sum()),
            "per_window": [{"units": float(x.units), "calls": x.calls, "duration_s": x.duration_s,
                            "energy": {k: s[k] for k in ("joules", "kind", "source", "estimate_joules", "net_joules")
                                       if k in s}} for x, s in zip(w, summaries)],
        }
        out: list[Finding] = []

        # Measured energy (gross and idle-subtracted). Never silently a number: nan with the reason.
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
        out.append(self._finding(f"energy_j_per_{suffix}", value, higher=False, unit=unit, ci=ci, n=n,
                                 warnings=energy_warnings, evidence=measured_evidence))

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
                                           "method": "window energy minus idle power x window duration, per device"}))

        # A labelled estimate, only ever in its own finding.
        est = [s["estimate_joules"] for s in summaries]
        if any(e is not None for e in est):
            est_arr = np.array([e if e is not None else math.nan for e in est])
            labels = sorted({r.reason for x in w for r in x.readings if r.kind == "estimate" and r.reason})
            est_value, est_ci = self._ratio(est_arr, units, scale) if np.all(np.isfinite(est_arr)) else (math.nan, None)
            out.append(self._finding(
                f"energy_estimate_j_per_{suffix}", est_value, higher=False, unit=unit, ci=est_ci, n=n,
                warnings=[*common, "ESTIMATE, not a measurement: " + " | ".join(labels)],
                evidence={"label": "estimate", "models": labels,
                          "devices": sorted({r.device for x in w for r in x.readings if r.kind == "estimate"})},
            ))

        # Emissions, from the measured gross energy (or, labelled, from the estimate).
        factor = self._factor()
        if factor is not None:
            basis, e_val, e_ci, metric = "measured gross energy", value, ci, f"emissions_g_co2e_per_{suffix}"
            e_warn = list(energy_warnings)
            if not measured_ok and any(e is not None for e in est):
                basis, metric = "ESTIMATED energy (codecarbon), not measured", f"emissions_estimate_g_co2e_per_{suffix}"
                e_val, e_ci = est_value, est_ci
                e_warn = [*common, "ESTIMATE: from estimated, not measured, energy"]
            g = factor.grams(e_val) if math.isfinite(e_val) else math.nan
            g_ci = Interval(factor.grams(e_ci.low), factor.grams(e_ci.high), e_ci.method) if e_ci else None
            out.append(self._finding(metric, g, higher=False, unit=f"gCO2e/{unit.split('/', 1)[1]}", ci=g_ci, n=n,
                                     warnings=e_warn, evidence={"factor": factor.to_dict(), "stated": factor.describe(),
                                                                "basis": basis}))

        # Latency and throughput.
        lat = np.array([t for x in w for t in x.latencies_s], dtype=np.float64)
        lat_unit = f"s/call ({self.workload.batch} per call)"
        for q in (50, 95):
            v, c = percentile_ci(lat, q, n_resamples=self.probe.n_resamples, confidence=self.probe.confidence)
            out.append(self._finding(f"latency_p{q}_s", v, higher=False, unit=lat_unit, ci=c, n=int(lat.size),
                                     warnings=common if q == 50 else ()))
        t_val, t_ci = self._ratio(units, durations, 1.0)
        out.append(self._finding(f"throughput_{tput}", t_val, higher=True, unit=tput.replace("_per_", "/"), ci=t_ci,
                                 n=n, warnings=common))

        # Peak memory: the largest window, with the range over windows.
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


