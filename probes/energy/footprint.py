"""Probe ``energy.footprint``: the memory and computation footprint of a subject (or a variant).

For a text generator, an image generator or a classifier that runs a torch module in this
process, one finding each (all lower-is-better):

* ``parameters_total`` and ``parameters_trainable`` (a peft adapter's own parameters, the
  adapted modules named in the evidence; a merged adapter's counted from its file);
* ``weight_bytes_disk`` (the weight files of the subject's identity, every file listed in the
  evidence) and ``weight_bytes_memory`` (parameters, buffers and the packed int8 weights of
  torch dynamically quantized ``Linear`` layers);
* ``flops_per_token`` / ``flops_per_image`` / ``flops_per_input``: one forward of a fixed-size
  input (``batch_size`` x ``seq_len`` tokens, ``batch_size`` images or inputs) under
  :class:`torch.utils.flop_counter.FlopCounterMode`, plus the quantized ``Linear`` layers it
  cannot see, counted by hooks (``2 * in * out`` per row);
* ``peak_memory_bytes`` over that forward: the CUDA allocator's peak on a GPU; on a CPU the
  weights plus the peak of tensors torch ops held at once (:class:`TensorPeak`), labelled;
* ``latency_s_per_<unit>`` (median over timed calls, bootstrap interval) and
  ``energy_j_per_<unit>`` from the energy meters over ``repeats`` windows, with the labelled
  ``energy_estimate_j_per_<unit>`` where no counter is readable (as ``energy.inference``).

A subject without a torch module here (a server, a generations file, a folder of images) is
skipped with the reason. The runner appends this probe with its defaults (cheap: seconds on a
135M model on a CPU) when the spec has ``variants``.

Example (spec):
    probes:
      - id: energy.footprint
        params: {batch_size: 1, seq_len: 128, repeats: 10, min_window_s: 0.5}
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from audit.energy import default_meter, measure_window
from audit.errors import InputError
from audit.findings import Finding
from audit.probe import ParamCheck, ProbeContext, register
from probes.energy.footprint_functional import (
    TensorPeak,
    adapter_file_parameters,
    count_flops,
    count_parameters,
    disk_bytes,
    memory_bytes,
    quantized_copies_of_embeddings,
    torch_modules,
)
from probes.energy.functional import percentile_ci, reset_host_peak, host_peak_rss_bytes
from probes.energy.inference import (
    _BUILTIN_PROMPTS,
    _IMAGE_PROMPTS,
    _classifier_inputs,
    _param_dtype,
    _Workload,
)
from probes.energy.results import UNITS, Results

__all__ = ["Footprint"]

# kind -> (operation in results.UNITS, FLOPs metric, unit word)
_KINDS = {
    "text-generator": ("score", "flops_per_token", "token"),
    "image-generator": ("generate", "flops_per_image", "image"),
    "classifier": ("classify", "flops_per_input", "input"),
}
_NEEDS = {"text-generator": "token_logprobs", "image-generator": "generate_images", "classifier": "logits"}


@register("energy.footprint")
@dataclass(frozen=True)
class Footprint:
    """Parameters, weight bytes (disk, memory), FLOPs per unit, peak memory, latency and J per unit.

    See the module docstring for the findings and what each measures.
    """

    id: ClassVar[str] = "energy.footprint"
    applies_to: ClassVar[tuple[str, ...]] = ("text-generator", "image-generator", "classifier")
    param_limits: ClassVar[dict[str, int]] = {"seq_len": 1_048_576}

    batch_size: int = field(default=1, metadata={"help": "sequences, images or inputs in the fixed-size forward"})
    seq_len: int = field(default=32, metadata={"help": "tokens per sequence in a text generator's forward"})
    warmup_calls: int = field(default=1, metadata={"help": "unmeasured forwards before the timed windows"})
    repeats: int = field(default=5, metadata={"help": "metered windows (the energy interval is over them)"})
    min_window_s: float = field(default=0.2, metadata={"help": "each window runs forwards until this long"})
    max_calls_per_window: int = field(default=1000, metadata={"help": "upper bound on forwards in one window"})
    cpu_estimate: bool = field(default=True, metadata={"help": "where RAPL is unreadable, add codecarbon's offline CPU estimate (labelled)"})
    n_resamples: int = field(default=1000, metadata={"help": "bootstrap resamples for the intervals"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals, in (0, 1)"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        for name, low in (("batch_size", 1), ("seq_len", 2), ("warmup_calls", 0), ("repeats", 2),
                          ("max_calls_per_window", 1)):
            check.int_at_least(name, low)
        if not check.is_num(self.min_window_s) or not 0 <= self.min_window_s <= 600:
            check.fail("min_window_s", "a number of seconds in [0, 600]")
        if not isinstance(self.cpu_estimate, bool):
            check.fail("cpu_estimate", "true or false")
        check.int_at_least("n_resamples", 100)
        if not check.is_num(self.confidence) or not 0 < self.confidence < 1:
            check.fail("confidence", "a number in (0, 1), e.g. 0.95")

    def not_applicable(self, subject: Any) -> str | None:
        """Why the footprint cannot be taken of ``subject`` (no torch module here), or None."""
        kind = getattr(subject, "kind", "")
        if kind not in _KINDS:
            return None  # applies_to says so
        if not torch_modules(subject):
            return (f"needs the subject's torch module in this process to count, time and meter; this {kind} "
                    f"({type(subject).__name__}) has none (a model behind a server, a file of generations or a "
                    "folder of images is not run here)")
        need = _NEEDS[kind]
        if need not in getattr(subject, "capabilities", ()):
            return f"needs the subject capability {need}, which this {kind} does not offer"
        return None

    # -- running -------------------------------------------------------------------------

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        import torch

        reason = self.not_applicable(subject)
        if reason is not None:
            raise InputError(f"{self.id}: {reason}")
        kind = subject.kind
        op, flops_metric, word = _KINDS[kind]
        modules = torch_modules(subject)
        mods = list(modules.values())
        device = torch.device(getattr(subject, "device", None) or ctx.device)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        forward, per_call, note = _forward(self, subject, ctx, device)
        caveats = _caveats(subject, mods)

        out = self._parameters(subject, mods, modules, caveats) + self._bytes(subject, mods, caveats)
        weights = memory_bytes(mods).total
        flops = count_flops(forward, mods)
        evidence = {"forward": note, "units_in_forward": per_call, "total_flops": flops.total,
                    "counted_by_flop_counter": flops.counted, "by_op": flops.by_op,
                    "what": "FlopCounterMode's formulas: matrix multiplications, convolutions and attention (its "
                            "full square: causal masking is not discounted); elementwise ops, norms and softmax "
                            "are not counted"}
        warn = list(caveats.get("flops", ()))
        if flops.quantized_layers:
            evidence["quantized_linear_flops"] = flops.quantized
            warn.append(f"{flops.quantized_layers} torch dynamically quantized Linear layers are not seen by "
                        "FlopCounterMode: counted by forward hooks as 2 x in_features x out_features per row")
        out.append(self._f(flops_metric, flops.total / per_call, f"FLOPs/{word}", n=int(per_call), warnings=warn,
                           evidence=evidence))
        out.append(self._peak(forward, device, weights, sync))
        out += self._timed(kind, op, forward, note, ctx, device, sync)
        return out

    def _f(self, metric: str, value: float, unit: str, *, n: int | None = None, ci: Any = None,
           warnings: Any = (), evidence: dict[str, Any] | None = None) -> Finding:
        return Finding(probe=self.id, metric=metric, value=float(value), higher_is_better=False, unit=unit, ci=ci,
                       n=n, warnings=tuple(dict.fromkeys(warnings)), evidence=evidence or {})

    def _parameters(self, subject: Any, mods: list[Any], modules: dict[str, Any],
                    caveats: dict[str, list[str]]) -> list[Finding]:
        count = count_parameters(mods)
        details = getattr(getattr(subject, "identity", None), "details", None) or {}
        trainable, what, warn = count.trainable, count.trainable_what, []
        if not count.adapted_modules and details.get("adapter_merged") and details.get("adapter"):
            in_file = adapter_file_parameters(details["adapter"])
            if in_file is not None:
                trainable = in_file
                what = "the adapter's parameters, read from its adapter_model.safetensors"
                warn.append("the adapter is merged into the weights: its parameters are counted from its file")
        total_ev = {"modules": {k: count_parameters([m]).total for k, m in modules.items()},
                    "quantized_packed": count.packed}
        if count.packed:
            total_ev["what"] = ("parameters, plus the weights and biases of dynamically quantized Linear layers "
                                "(packed params, not in .parameters())")
        shown = list(count.adapted_modules[:50])
        return [
            self._f("parameters_total", count.total, "parameters", warnings=caveats.get("parameters", ()),
                    evidence=total_ev),
            self._f("parameters_trainable", trainable, "parameters", warnings=warn,
                    evidence={"what": what, "adapted_modules": shown,
                              "adapted_modules_count": len(count.adapted_modules),
                              "adapter": {k: details[k] for k in ("adapter", "adapter_type", "adapter_rank",
                                                                  "adapter_merged") if k in details}}),
        ]

    def _bytes(self, subject: Any, mods: list[Any], caveats: dict[str, list[str]]) -> list[Finding]:
        files = tuple(getattr(getattr(subject, "identity", None), "files", ()) or ())
        weights, every, rows = disk_bytes(files)
        warn: list[str] = []
        if not files:
            disk = math.nan
            warn.append("the subject has no files (a module built in code): nothing on disk to count")
        elif not any(r["weights"] for r in rows):
            disk = float(every)
            warn.append("none of the subject's files has a weight-file ending: every file is counted")
        else:
            disk = float(weights)
        mem = memory_bytes(mods)
        return [
            self._f("weight_bytes_disk", disk, "bytes", warnings=warn,
                    evidence={"what": "bytes of the subject's weight files (its identity's hashed files)",
                              "all_files_bytes": every, "files": rows[:50]}),
            self._f("weight_bytes_memory", mem.total, "bytes", warnings=caveats.get("memory", ()),
                    evidence={"what": "nbytes of parameters, buffers and dynamically quantized Linear weights "
                                      "(int8, with scales, zero points and biases; fbgemm's packing not counted)",
                              "parameters": mem.parameters, "buffers": mem.buffers, "quantized_packed": mem.packed,
                              "by_dtype": mem.by_dtype}),
        ]

    def _peak(self, forward: Callable[[], float], device: Any, weights: int, sync: Any) -> Finding:
        import torch

        if device.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            forward()
            sync()
            peak = torch.cuda.max_memory_allocated(device)
            return self._f("peak_memory_bytes", peak, "bytes", n=1, evidence={
                "what": "torch.cuda.max_memory_allocated over one forward after a reset: every tensor of the "
                        "process on the GPU at its highest, weights included",
                "allocated_before": before, "activations_peak": peak - before})
        rss_reset = reset_host_peak()
        rss0 = _vm_rss()
        with TensorPeak() as tp:
            forward()
        hwm = host_peak_rss_bytes()
        rss_delta = hwm - rss0 if rss_reset and hwm is not None and rss0 is not None else None
        return self._f("peak_memory_bytes", weights + tp.peak, "bytes", n=1, evidence={
            "what": "the weights in memory plus the peak of tensors torch ops held at once during one forward "
                    "(a dispatch mode following each op's outputs until freed); kernels' scratch buffers and the "
                    "Python heap are not counted",
            "weights": weights, "activations_peak": tp.peak, "ops": tp.ops,
            "process_rss_peak_rise": rss_delta,
            "process_rss_note": "rise of the process's resident high-water mark (VmHWM after a reset) over the "
                                "same forward: it can read 0 where the allocator reuses freed memory"})

    def _timed(self, kind: str, op: str, forward: Callable[[], float], note: str, ctx: ProbeContext, device: Any,
               sync: Any) -> list[Finding]:
        suffix, unit, scale, _ = UNITS[(kind, op)]
        own = ctx.meter is None
        meter = default_meter(str(device), cpu_estimate=self.cpu_estimate) if own else ctx.meter
        try:
            for _ in range(self.warmup_calls):
                forward()
            if sync is not None:
                sync()
            windows = [measure_window(meter, forward, min_seconds=self.min_window_s,
                                      max_calls=self.max_calls_per_window, synchronize=sync)
                       for _ in range(self.repeats)]
        finally:
            if own:
                getattr(meter, "close", lambda: None)()
        lat = np.array([t * scale * w.calls / w.units if w.units > 0 else math.nan
                        for w in windows for t in w.latencies_s], dtype=np.float64)
        warn = []
        if not np.all(np.isfinite(lat)):
            warn.append(f"some forwards produced no {unit.split('/', 1)[1]}: latency per unit is nan")
            value, ci = math.nan, None
        else:
            value, ci = percentile_ci(lat, 50, n_resamples=self.n_resamples, confidence=self.confidence)
        contention = [] if not ctx.dist.active else [
            "under torchrun each rank times its own forwards while the others run theirs: latency and energy "
            "include their contention"]
        evidence = {"what": "median over timed forwards of the call's wall time per unit", "forward": note,
                    "windows": len(windows), "calls": int(sum(w.calls for w in windows)),
                    "units": float(sum(w.units for w in windows))}
        out = [self._f(f"latency_s_per_{suffix}", value, f"s/{unit.split('/', 1)[1]}", n=int(lat.size), ci=ci,
                       warnings=warn + contention, evidence=evidence)]
        workload = _Workload(call=lambda i: forward(), batch=self.batch_size, note=note)
        results = Results(self, kind, op, workload, windows, None, [], [], {})  # type: ignore[arg-type]
        energy = results.energy_findings()
        return out + [_with_warnings(f, contention) if contention else f for f in energy]


def _with_warnings(f: Finding, extra: list[str]) -> Finding:
    import dataclasses

    return dataclasses.replace(f, warnings=tuple(dict.fromkeys((*f.warnings, *extra))))


def _vm_rss() -> int | None:
    try:
        m = re.search(r"^VmRSS:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _caveats(subject: Any, mods: list[Any]) -> dict[str, list[str]]:
    """What the counts cannot see for this subject, by finding."""
    out: dict[str, list[str]] = {"memory": [], "flops": []}
    identity = getattr(subject, "identity", None)
    if getattr(identity, "source", "") == "gguf":
        out["memory"].append("GGUF weights are dequantized on load: this is the dequantized model's memory, not "
                             "a GGUF runtime's (the quantization error is measured, the runtime memory is not)")
    copies = quantized_copies_of_embeddings(mods)
    if copies:
        note = (f"{', '.join(copies[:3])}: quantized Linear shaped like the embedding (an output head tied to it "
                "before quantization?): its int8 copy is held, and counted, beside the float embedding")
        out["parameters"] = [note]
        out["memory"].append(note)
    bnb = sorted({type(m).__name__ for root in mods for m in root.modules()
                  if type(m).__name__ in ("Linear8bitLt", "Linear4bit", "LinearNF4", "LinearFP4")})
    if bnb:
        out["memory"].append(f"bitsandbytes layers ({', '.join(bnb)}): 4-bit weights counted as the values "
                             "they pack, with their quantization state (absmax, code); 8-bit with their row scales; "
                             "outlier buffers made during a forward are not weights")
        out["flops"].append(f"bitsandbytes layers ({', '.join(bnb)}): FlopCounterMode may not count their "
                            "int8/4-bit matmuls")
    return out


# -- the fixed-size forward ------------------------------------------------------------------


def _forward(probe: Footprint, subject: Any, ctx: ProbeContext, device: Any) -> tuple[Callable[[], float], int, str]:
    """One call of the subject's forward on a fixed-size input, returning its units; units per call; a note."""
    import torch

    b = probe.batch_size
    if subject.kind == "text-generator":
        ids = _token_ids(probe, subject, device)
        mask = torch.ones_like(ids)

        def score() -> float:
            subject.token_logprobs(ids, attention_mask=mask)
            return float(ids.numel())

        return score, int(ids.numel()), (f"token_logprobs of {b} x {ids.shape[1]} tokens (a prefill forward; per "
                                         "token, attention's share grows with the context)")
    if subject.kind == "image-generator":
        kwargs: dict[str, Any] = {"seed": ctx.child_seed("images"), "batch_size": b}
        if "prompts" in getattr(subject, "capabilities", ()):
            prompts = list(getattr(subject, "prompts", None) or _IMAGE_PROMPTS)
            kwargs["prompts"] = list(itertools.islice(itertools.cycle(prompts), b))
        else:
            kwargs["n"] = b

        def images() -> float:
            with torch.inference_mode():
                return float(sum(int(x.shape[0]) for x in subject.generate(**kwargs)))

        return images, b, f"generate {b} image(s) per call (the subject's whole generation, e.g. every denoising step)"
    x = _classifier_inputs(probe, subject, ctx, device, n=b).to(_param_dtype(subject))

    def classify() -> float:
        with torch.inference_mode():
            subject.logits(x)
        return float(b)

    return classify, b, f"logits of {b} input(s) of shape {list(subject.input_shape)} (uniform in the input range)"


def _token_ids(probe: Footprint, subject: Any, device: Any) -> Any:
    """``batch_size`` rows of ``seq_len`` real tokens (the built-in prompts, cycled)."""
    import torch

    stream = [t for ids in subject.encode(list(_BUILTIN_PROMPTS)) for t in ids]
    if not stream:
        raise InputError(f"{probe.id}: the subject's tokenizer gave no tokens for the built-in prompts")
    limit = getattr(subject, "max_context", None) or probe.seq_len
    t = min(probe.seq_len, limit)
    rows = [[stream[(r * t + i) % len(stream)] for i in range(t)] for r in range(probe.batch_size)]
    return torch.tensor(rows, dtype=torch.long, device=device)
