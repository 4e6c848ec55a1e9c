"""The counts behind ``energy.footprint``: parameters, bytes, FLOPs and the peak of tensor memory.

Pure functions over torch modules (and one dispatch mode), tested against hand counts in
``tests/test_footprint.py``:

* :func:`torch_modules`: the torch modules a subject computes with (its ``model``, ``module``
  or a diffusers pipeline's components).
* :func:`count_parameters`: total parameters, the weights of torch dynamically quantized
  ``Linear`` layers included (they live in packed params, not in ``.parameters()``), and the
  trainable ones: a peft adapter's own parameters where there is one.
* :func:`memory_bytes`: bytes of parameters, buffers and packed quantized weights.
* :func:`count_flops`: FLOPs of a call from :class:`torch.utils.flop_counter.FlopCounterMode`,
  plus ``2 * in * out`` per row for the dynamically quantized ``Linear`` layers it cannot see.
* :class:`TensorPeak`: the peak bytes of tensors that torch ops allocated and held at once
  within a block (the CPU's honest counterpart of ``torch.cuda.max_memory_allocated``).
* :func:`disk_bytes`: bytes of the subject's files, weight files apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FlopCount",
    "MemoryBytes",
    "ParameterCount",
    "TensorPeak",
    "WEIGHT_SUFFIXES",
    "adapter_file_parameters",
    "count_flops",
    "count_parameters",
    "disk_bytes",
    "dynamic_quantized_linears",
    "memory_bytes",
    "quantized_copies_of_embeddings",
    "torch_modules",
]

#: File endings that hold weights (the rest of a model folder: tokenizer, configs, readme).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack")


# -- the modules ------------------------------------------------------------------------------


def torch_modules(subject: Any) -> dict[str, Any]:
    """The torch modules a subject computes with, by name (empty when it has none).

    A text generator or classifier has ``model``; a latent-to-image generator ``module``; a
    diffusers pipeline ``pipe`` whose components (UNet, VAE, text encoder) are modules. A
    server, a generations file or a folder of images has none. A wrapper that holds more than
    would be deployed (e.g. an int8 model with its float reference kept for straight-through
    gradients) names the deployed part as its ``footprint_module``; that part is counted.
    """
    import torch

    out: dict[str, Any] = {}
    for attr in ("model", "module"):
        m = getattr(subject, attr, None)
        if isinstance(m, torch.nn.Module):
            deployed = getattr(m, "footprint_module", None)
            if isinstance(deployed, torch.nn.Module):
                out[f"{attr}.footprint_module"] = deployed
            else:
                out[attr] = m
    pipe = getattr(subject, "pipe", None)
    components = getattr(pipe, "components", None)
    if isinstance(components, Mapping):
        out.update({f"pipe.{k}": v for k, v in components.items() if isinstance(v, torch.nn.Module)})
    return out


def dynamic_quantized_linears(modules: Iterable[Any]) -> list[tuple[str, Any]]:
    """``(name, layer)`` of every torch dynamically quantized ``Linear`` in the modules."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    seen: set[int] = set()
    out = []
    for root in modules:
        for name, m in root.named_modules():
            if isinstance(m, QLinear) and id(m) not in seen:
                seen.add(id(m))
                out.append((name, m))
    return out


def quantized_copies_of_embeddings(modules: Sequence[Any]) -> list[str]:
    """Dynamically quantized ``Linear`` layers shaped like a float embedding of the same model:
    most likely an output head that was tied to the embedding before quantization, now an int8
    copy held beside it (so the model stores, and this module counts, both)."""
    import torch

    out = []
    for root in modules:
        if getattr(getattr(root, "config", None), "tie_word_embeddings", None) is False:
            continue  # a transformers model that says its head is its own
        shapes = {tuple(m.weight.shape) for m in root.modules() if isinstance(m, torch.nn.Embedding)}
        out += [name for name, q in dynamic_quantized_linears([root]) if (q.out_features, q.in_features) in shapes]
    return out


def _unique(tensors: Iterable[Any]) -> list[Any]:
    """Tensors once each (a tied weight appears under several names; several roots may share one)."""
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _qtensor_bytes(w: Any) -> int:
    """Bytes of a (quantized) weight tensor with its quantization parameters: a per-tensor
    scale (float64) and zero point (int64), or one of each per channel."""
    import torch

    n = w.numel() * w.element_size()
    if w.is_quantized:
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                           torch.per_channel_affine_float_qparams):
            n += w.q_per_channel_scales().nbytes + w.q_per_channel_zero_points().nbytes
        else:
            n += 16
    return n


def _numel(p: Any) -> int:
    """Values a parameter stands for: a bitsandbytes 4-bit weight packs two in each uint8 and keeps
    the original shape in its ``quant_state``."""
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    if shape is not None:
        n = 1
        for d in shape:
            n *= int(d)
        return n
    return p.numel()


def _side_bytes(p: Any) -> int:
    """Bytes a bitsandbytes weight keeps beside its data: a 4-bit ``quant_state``'s absmax, code
    and offset (and those of its nested state), an 8-bit weight's row scales ``SCB``."""
    import torch

    out = 0
    states = [getattr(p, "quant_state", None)]
    states.append(getattr(states[0], "state2", None))
    for st in states:
        for name in ("absmax", "code", "offset"):
            t = getattr(st, name, None)
            if isinstance(t, torch.Tensor):
                out += t.nbytes
    scb = getattr(p, "SCB", None)
    return out + (scb.nbytes if isinstance(scb, torch.Tensor) else 0)


# -- parameters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a model.

    Attributes:
        total: every parameter, the packed weights (and biases) of dynamically quantized
            ``Linear`` layers included.
        trainable: the adapter's parameters for a peft model, else those with ``requires_grad``.
        trainable_what: how ``trainable`` was counted (one sentence).
        adapted_modules: the modules a peft adapter wraps (empty without one).
        packed: how many of ``total`` sit in quantized packed params.
    """

    total: int
    trainable: int
    trainable_what: str
    adapted_modules: tuple[str, ...] = ()
    packed: int = 0


def _peft_adapter(root: Any) -> tuple[int, list[str]]:
    """The parameters of a peft model's adapter layers (LoRA's ``lora_A``/``lora_B``, ...), and
    the names of the modules they adapt; ``(0, [])`` without peft layers.

    Counted from the tuner layers' ``adapter_layer_names``, not from ``requires_grad``: an
    adapter loaded for inference (``is_trainable=False``) is frozen, yet it is what was trained.
    """
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:
        return 0, []
    params: list[Any] = []
    names: list[str] = []
    for name, m in root.named_modules():
        if isinstance(m, BaseTunerLayer):
            names.append(name)
            for layer_name in m.adapter_layer_names:
                part = getattr(m, layer_name, None)
                if part is not None and hasattr(part, "parameters"):
                    params += list(part.parameters())
        elif isinstance(m, ModulesToSaveWrapper):
            names.append(name)
            params += list(m.modules_to_save.parameters())
    return sum(p.numel() for p in _unique(params)), names


def adapter_file_parameters(folder: str | Path) -> int | None:
    """Parameters stored in a peft adapter folder's ``adapter_model.safetensors`` (read from its
    header, no tensor loaded), or None when there is none."""
    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= int(d)
            total += n
    return total


def count_parameters(modules: Sequence[Any]) -> ParameterCount:
    """Total and trainable parameters of the modules (shared parameters once).

    Example:
        >>> import torch
        >>> count_parameters([torch.nn.Linear(3, 2)]).total   # 3*2 weights + 2 biases
        8
    """
    params = _unique(p for m in modules for p in m.parameters())
    packed = 0
    for _, q in dynamic_quantized_linears(modules):
        w, b = q._weight_bias()
        packed += w.numel() + (b.numel() if b is not None else 0)
    total = sum(_numel(p) for p in params) + packed
    adapter, names = 0, []
    for m in modules:
        a, n = _peft_adapter(m)
        adapter, names = adapter + a, names + n
    if names:
        return ParameterCount(total, adapter, "the peft adapter's parameters (its layers, trainable or frozen for "
                              "inference), not the base model's", tuple(names), packed)
    trainable = sum(_numel(p) for p in params if p.requires_grad)
    what = "parameters with requires_grad (a full fine-tune would train them)"
    if packed:
        what += "; quantized packed weights are not trainable"
    return ParameterCount(total, trainable, what, (), packed)


# -- bytes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryBytes:
    """Bytes the model's weights take in memory.

    Attributes:
        total: parameters + buffers + packed quantized weights.
        parameters / buffers / packed: the parts (parameters: bitsandbytes weights with their
            quantization state, under the weight's type; packed: dynamically quantized
            ``Linear`` weights with their scales and zero points, and their float biases).
        by_dtype: bytes per element type over all parts.
    """

    total: int
    parameters: int
    buffers: int
    packed: int
    by_dtype: dict[str, int] = field(default_factory=dict)


def memory_bytes(modules: Sequence[Any]) -> MemoryBytes:
    """Bytes of the modules' parameters, buffers and quantized packed weights (each tensor once).

    ``nbytes`` of each tensor (elements x element size); a dynamically quantized ``Linear``
    counts its int8 weight, its quantization parameters and its bias as unpacked (fbgemm's
    packed layout adds a little: column offsets, not counted).

    Example:
        >>> import torch
        >>> memory_bytes([torch.nn.Linear(3, 2).to(torch.bfloat16)]).total   # 8 values x 2 bytes
        16
    """
    by_dtype: dict[str, int] = {}

    def add(dtype: Any, n: int) -> int:
        key = str(dtype).replace("torch.", "")
        by_dtype[key] = by_dtype.get(key, 0) + n
        return n

    params = sum(add(p.dtype, p.nbytes + _side_bytes(p)) for p in _unique(p for m in modules for p in m.parameters()))
    buffers = sum(add(b.dtype, b.nbytes) for b in _unique(b for m in modules for b in m.buffers()))
    packed = 0
    for _, q in dynamic_quantized_linears(modules):
        w, b = q._weight_bias()
        packed += add(w.dtype, _qtensor_bytes(w))
        if b is not None:
            packed += add(b.dtype, b.nbytes)
    return MemoryBytes(params + buffers + packed, params, buffers, packed, by_dtype)


def disk_bytes(files: Sequence[Any]) -> tuple[int, int, list[dict[str, Any]]]:
    """``(weight bytes, all bytes, per-file rows)`` of a subject identity's files (``FileHash``:
    ``path``, ``bytes``); weight files are those ending in :data:`WEIGHT_SUFFIXES`.

    Example:
        >>> from audit.findings import FileHash
        >>> disk_bytes([FileHash("model.safetensors", "0" * 64, 100), FileHash("tokenizer.json", "0" * 64, 7)])[:2]
        (100, 107)
    """
    rows = [{"path": f.path, "bytes": int(f.bytes), "weights": str(f.path).lower().endswith(WEIGHT_SUFFIXES)}
            for f in files]
    return sum(r["bytes"] for r in rows if r["weights"]), sum(r["bytes"] for r in rows), rows


# -- FLOPs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one call.

    Attributes:
        total: ``counted + quantized``.
        counted: what :class:`~torch.utils.flop_counter.FlopCounterMode` counted (matrix
            multiplications, convolutions, attention; elementwise ops, norms and softmax are not).
        quantized: ``2 * in_features * out_features`` per row through each dynamically
            quantized ``Linear`` (forward hooks: FlopCounterMode has no formula for their op).
        quantized_layers: how many such layers ran.
        by_op: FlopCounterMode's FLOPs per operator.
    """

    total: int
    counted: int
    quantized: int = 0
    quantized_layers: int = 0
    by_op: dict[str, int] = dataclasses.field(default_factory=dict)


def count_flops(call: Callable[[], Any], modules: Sequence[Any] = ()) -> FlopCount:
    """FLOPs of ``call()`` (run once, for real) with the dynamically quantized ``Linear`` layers
    of ``modules`` counted by hooks.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(4, 3)
        >>> count_flops(lambda: lin(torch.ones(5, 4)), [lin]).total   # 2 * 4 * 3 per row, 5 rows
        120
    """
    from torch.utils.flop_counter import FlopCounterMode

    quantized = [0]
    ran: set[int] = set()

    def hook(layer: Any, inputs: tuple[Any, ...], _: Any) -> None:
        x = inputs[0]
        rows = x.numel() // layer.in_features
        quantized[0] += 2 * layer.in_features * layer.out_features * rows
        ran.add(id(layer))

    handles = [q.register_forward_hook(hook) for _, q in dynamic_quantized_linears(modules)]
    try:
        with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            call()
    finally:
        for h in handles:
            h.remove()
    counted = int(counter.get_total_flops())
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(counted + quantized[0], counted, quantized[0], len(ran), by_op)


def _extra_formulas() -> dict[Any, Any]:
    """Formulas FlopCounterMode lacks: the CPU flash-attention kernel (the GPU kernels' formula)."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def cpu_sdpa(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    return {op: cpu_sdpa}


# -- peak tensor memory -------------------------------------------------------------------------


class TensorPeak:
    """Peak bytes of the tensors that torch ops allocated inside the ``with`` block and held at
    the same time (a :class:`~torch.utils._python_dispatch.TorchDispatchMode`).

    Each op's new output storages are added when they appear and subtracted when they are
    freed (checked at every op), so ``peak`` is the most activation memory live at once.
    Storages that existed before (weights, inputs) and views of them are not counted;
    kernels' internal scratch buffers and the Python heap are not seen. Works on any device;
    on CUDA ``torch.cuda.max_memory_allocated`` is the allocator's own, fuller figure.

    Example:
        >>> import torch
        >>> x = torch.ones(256)
        >>> with TensorPeak() as tp:
        ...     y = (x * 2) + 1            # two 1 KiB results alive at once, at most
        >>> tp.peak
        2048
    """

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.ops = 0
        self._mode: Any = None

    def __enter__(self) -> TensorPeak:
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        import torch

        tracked: dict[int, tuple[Any, int]] = {}   # storage key -> (weak ref, bytes)
        known: dict[int, Any] = {}                  # storages that existed before: never counted
        owner = self

        def storages(obj: Any) -> list[Any]:
            out = []
            for t in tree_flatten(obj)[0]:
                if isinstance(t, torch.Tensor):
                    try:
                        out.append(t.untyped_storage())
                    except (RuntimeError, NotImplementedError):  # quantized, sparse, meta-only
                        pass
            return out

        def key(s: Any) -> int:
            return int(s._cdata)

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                for k in [k for k, (ref, _) in tracked.items() if ref.expired()]:
                    owner.current -= tracked.pop(k)[1]
                for k in [k for k, ref in known.items() if ref.expired()]:
                    del known[k]
                for s in storages((args, kwargs)):
                    if key(s) not in tracked and key(s) not in known:
                        known[key(s)] = StorageWeakRef(s)
                out = func(*args, **(kwargs or {}))
                for s in storages(out):
                    k = key(s)
                    if k not in tracked and k not in known:
                        n = int(s.nbytes())
                        tracked[k] = (StorageWeakRef(s), n)
                        owner.current += n
                owner.peak = max(owner.peak, owner.current)
                owner.ops += 1
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)
