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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from audit.energy import IdleBaseline, Window, default_meter, measure_idle, measure_window
from audit.errors import SpecError
from audit.findings import Finding
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import bootstrap_ci, bootstrap_ratio_ci, wilson_interval
from probes.energy.functional import host_peak_rss_bytes, percentile_ci, psnr_db, reset_host_peak
from probes.energy.results import UNITS, Results

__all__ = ["InferenceEnergy", "host_peak_rss_bytes", "percentile_ci", "reset_host_peak"]

_DTYPES = ("float32", "bfloat16", "float16")
_OPERATIONS = {
    "text-generator": ("generate", "score"),
    "image-generator": ("generate",),
    "classifier": ("classify",),
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
        suffix, unit, _, _ = UNITS.get((kind, op), ("unit", "J/unit", 1.0, ""))
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
        return Results(self, kind, op, workload, windows, idle, device_peaks, host_peaks,
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

        exact = callable(getattr(subject, "generate_tokens", None))

        def generate(i: int) -> float:
            group = groups[i % len(groups)]
            if exact:  # the engine's own token ids: generation may stop early at EOS
                ids = subject.generate_tokens(group, max_new_tokens=probe.max_new_tokens, temperature=0.0, seed=0)
                return float(sum(len(t) for t in ids))
            # Otherwise re-encode the text (a partial UTF-8 character decodes to U+FFFD, which
            # re-encodes to several tokens, so this count is approximate).
            out = subject.generate(group, max_new_tokens=probe.max_new_tokens, temperature=0.0, seed=0)
            return float(sum(len(ids) for ids in subject.encode(out)))

        counted = "the generated token ids" if exact else "re-encoding the output"
        return _Workload(generate, probe.batch_size, f"greedy generation of up to {probe.max_new_tokens} tokens for "
                         f"{probe.batch_size} prompt(s) per call, batched; tokens counted from {counted}")
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
