"""``subject.quantization`` (and a variant's): a quantized copy of the model under audit.

==============  =============================================================================
quantization    how
==============  =============================================================================
int8-dynamic    ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (int8 weights,
                activations quantized per batch), applied after loading, on the CPU only (torch
                has no CUDA kernels for it). Text generators (log-probs and generation keep
                working) and classifiers.
bnb-8bit        bitsandbytes LLM.int8() through transformers ``BitsAndBytesConfig`` at load
bnb-nf4         bitsandbytes 4-bit NF4 (double quantization, compute in bfloat16), the QLoRA base
==============  =============================================================================

bitsandbytes needs a CUDA device and the ``quantization`` extra, and works for the ``hf`` and
``gguf`` sources (models loaded by transformers); every other case is a clear
:class:`~audit.errors.SpecError` before the model loads (:func:`check_quantization`).

A quantized classifier is not differentiable (the int8 kernels have no backward), so
:func:`quantize_classifier` gives it gradients by a straight-through estimator
(:class:`StraightThroughLogits`, BPDA): the forward pass returns the int8 model's logits,
the backward pass the float model's gradient. Its identity says so (``details.gradients``),
and so do the variant's notes, so that a robustness finding on it reads as "attacked with the
float model's gradients".
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from audit.errors import SpecError, require

__all__ = ["BNB_QUANTIZATIONS", "STE_NOTE", "StraightThroughLogits", "apply_quantization", "bnb_config",
           "check_quantization", "quantize_classifier", "quantize_dynamic_int8"]

BNB_QUANTIZATIONS = ("bnb-8bit", "bnb-nf4")
STE_NOTE = ("straight-through (BPDA): the forward pass is the int8 model's logits, the backward pass the float "
            "model's gradient, so attacks on this model use float gradients")
_KINDS = {"int8-dynamic": ("text-generator", "classifier"), "bnb-8bit": ("text-generator",),
          "bnb-nf4": ("text-generator",)}


def _device_type(device: Any) -> str:
    text = str(device or "cpu")
    if text == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return text.split(":")[0]


def check_quantization(quantization: str, *, kind: str, source: str, device: Any) -> None:
    """Refuse a quantization the subject or the device cannot take, before anything loads.

    Raises:
        SpecError: the kind, source or device does not fit (the message says what would).
        MissingDependencyError: bitsandbytes is not installed (names the ``quantization`` extra).

    Example:
        >>> check_quantization("int8-dynamic", kind="text-generator", source="hf", device="cpu")
        >>> check_quantization("int8-dynamic", kind="text-generator", source="hf", device="cuda:0")
        Traceback (most recent call last):
        audit.errors.SpecError: quantization int8-dynamic runs on the CPU only (torch has no CUDA kernels for dynamic int8); the device is cuda:0: set `device: cpu` on the subject or variant, or use bnb-8bit on a GPU
    """
    kinds = _KINDS.get(quantization)
    if kinds is None:
        raise SpecError(f"quantization {quantization!r} is unknown; expected one of {', '.join(_KINDS)}")
    if kind not in kinds:
        raise SpecError(f"quantization {quantization} applies to {' and '.join(kinds)} subjects; this is a {kind}")
    dev = _device_type(device)
    if quantization == "int8-dynamic":
        if dev != "cpu":
            raise SpecError(f"quantization int8-dynamic runs on the CPU only (torch has no CUDA kernels for dynamic "
                            f"int8); the device is {device}: set `device: cpu` on the subject or variant, or use "
                            f"bnb-8bit on a GPU")
        if source in ("openai-compatible", "generations", "torchscript"):
            raise SpecError(f"quantization int8-dynamic needs the model as a torch module; source '{source}' has "
                            f"none (use hf, gguf or python)")
        return
    if source not in ("hf", "gguf"):
        raise SpecError(f"quantization {quantization} (bitsandbytes) quantizes while transformers loads the model: "
                        f"sources hf and gguf; this subject's source is '{source}'")
    if dev != "cuda":
        raise SpecError(f"quantization {quantization} (bitsandbytes) needs a CUDA device; the device is {device}. "
                        f"On a CPU use int8-dynamic")
    require("bitsandbytes", extra="quantization", purpose=f"quantization {quantization}")


def bnb_config(quantization: str) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``bnb-8bit`` / ``bnb-nf4`` (the QLoRA recipe)."""
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def quantize_dynamic_int8(model: Any) -> Any:
    """``model`` with every ``nn.Linear`` replaced by torch's dynamic int8 Linear (in place).

    Raises:
        SpecError: the model is not a float32 torch module (dynamic int8 takes float32 weights).
    """
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise SpecError(f"quantization int8-dynamic needs a torch nn.Module, got {type(model).__name__}")
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        raise SpecError(f"quantization int8-dynamic quantizes float32 weights; this model has "
                        f"{sorted(str(d).removeprefix('torch.') for d in dtypes)}: set `dtype: float32`")
    with warnings.catch_warnings():  # torch warns that quantized tensors are deprecated; they still work
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def _int8_details(model: Any) -> dict[str, Any]:
    import torch

    n = sum(1 for m in model.modules() if type(m).__name__ == "DynamicQuantizedLinear"
            or isinstance(m, getattr(torch.ao.nn.quantized.dynamic, "Linear", ())))
    return {"quantization": "int8-dynamic", "quantized_linear_layers": n}


def _straight_through() -> Any:
    import torch

    class _Through(torch.autograd.Function):
        """Forward: the int8 logits, exactly; backward: the gradient goes to the float logits."""

        @staticmethod
        def forward(ctx: Any, float_logits: Any, int8_logits: Any) -> Any:
            return int8_logits.clone()

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return grad, None

    return _Through


class _Module:  # a namespace; the nn.Module subclass is made on first use (torch imports lazily)
    cls: Any = None


def StraightThroughLogits(quantized: Any, reference: Any) -> Any:  # noqa: N802 - a class factory
    """A module whose forward is ``quantized(x)`` and whose gradient is ``reference``'s (BPDA).

    When no gradient is asked for (``x`` does not require it, or under ``no_grad``), only the
    quantized model runs.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(4, 2)
        >>> ste = StraightThroughLogits(quantize_dynamic_int8(copy.deepcopy(lin)), lin)
        >>> x = torch.rand(3, 4, requires_grad=True)
        >>> ste(x).sum().backward(); torch.allclose(x.grad, lin.weight.sum(0).expand(3, 4))
        True
    """
    import torch

    if _Module.cls is None:
        through = _straight_through()

        class _STE(torch.nn.Module):
            def __init__(self, quantized: Any, reference: Any):
                super().__init__()
                self.quantized = quantized
                self.reference = reference

            @property
            def footprint_module(self) -> Any:
                """What would be deployed (energy.footprint counts it): the int8 model, not the float
                reference kept for gradients."""
                return self.quantized

            def forward(self, x: Any) -> Any:
                if not (torch.is_grad_enabled() and x.requires_grad):
                    return self.quantized(x)
                with torch.no_grad():
                    q = self.quantized(x)
                return through.apply(self.reference(x), q)

        _Module.cls = _STE
    return _Module.cls(quantized, reference)


def quantize_classifier(subject: Any) -> Any:
    """The classifier with int8-dynamic logits and straight-through gradients (see module doc)."""
    import torch

    model = getattr(subject, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise SpecError(f"quantization int8-dynamic: this classifier ({type(subject).__name__}) exposes no torch "
                        f"module (`model`) to quantize")
    reference = model.eval()
    for p in reference.parameters():
        p.requires_grad_(False)  # only the input's gradient is asked for
    quantized = quantize_dynamic_int8(copy.deepcopy(reference))
    subject.model = StraightThroughLogits(quantized, reference).eval()
    subject.identity = dataclasses.replace(
        subject.identity, details={**subject.identity.details, **_int8_details(quantized), "gradients": STE_NOTE})
    return subject


def apply_quantization(subject: Any, spec: Any) -> Any:
    """``subject`` quantized as ``spec.quantization`` says (int8-dynamic: here, after loading;
    bitsandbytes: already at load, recorded in the identity).

    Raises:
        SpecError: the subject cannot be quantized so (see :func:`check_quantization`).
    """
    q = spec.quantization
    check_quantization(q, kind=spec.kind, source=spec.source, device=getattr(subject, "device", "cpu"))
    if q in BNB_QUANTIZATIONS:
        subject.identity = dataclasses.replace(subject.identity,
                                               details={**subject.identity.details, "quantization": q})
        return subject
    if spec.kind == "classifier":
        return quantize_classifier(subject)
    model = getattr(subject, "model", None)
    if model is None:
        raise SpecError(f"quantization int8-dynamic: this {spec.kind} ({type(subject).__name__}) exposes no torch "
                        f"model (`model`) to quantize")
    subject.model = quantize_dynamic_int8(model).eval()
    subject.identity = dataclasses.replace(
        subject.identity, details={**subject.identity.details, **_int8_details(subject.model)})
    return subject
