"""Batched text generation whose samples do not depend on the batch they are in.

The engine runs a transformers causal LM over left-padded batches with a KV cache
(:class:`transformers.DynamicCache`), stops each row on its own (EOS, stop strings,
``max_new_tokens``), drops finished rows from the batch and halves the batch size when the
device runs out of memory.

Randomness is per sample: sampling is Gumbel-max, ``argmax(logits / T + g)``, where the Gumbel
noise ``g[v]`` of vocabulary entry ``v`` at generation step ``t`` is a hash of (the sample's
seed, ``t``, ``v``), a counter-based generator computed with integer tensor ops on the device.
No generator state is shared between rows, so a sample's tokens are the same whatever else is
in its batch, in whatever order, and whatever the batch size. Greedy decoding has no noise.
What can still differ between batch sizes is float rounding in the model (matmul shapes,
padding): the engine gives each row exact position ids and an attention mask over its padding,
and takes logits in float32, so that a flip needs two logits within rounding of each other.

Example:
    >>> from tests.fakes import tiny_causal_lm                     # doctest: +SKIP
    >>> model = tiny_causal_lm()                                   # doctest: +SKIP
    >>> cfg = SamplingConfig(max_new_tokens=8, temperature=1.0)    # doctest: +SKIP
    >>> generate_ids(model, [[1, 5, 6], [1, 7]], sample_keys([3, 4]), cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "SamplingConfig",
    "counter_uniform",
    "generate_ids",
    "is_out_of_memory",
    "next_tokens",
    "restrict_logits",
    "sample_keys",
]

log = logging.getLogger(__name__)

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens: greedy when ``temperature`` is 0, else Gumbel-max sampling from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and to the
    nucleus of mass ``top_p`` (applied in this order, as transformers' logits warpers do).

    ``eos_token_ids`` end a row (the EOS token is not part of the output); ``stop`` strings end
    it once the decoded continuation contains one.
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    eos_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()


# -- the counter-based generator -----------------------------------------------------------------
def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in [0, 2**32) without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash (Wellons' lowbias32) on int64 tensors in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_keys(seeds: Sequence[int], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """The key [N, 2] (int64 holding 32-bit words) of each sample's noise, from its seed.

    Seeds are any Python integers (taken modulo 2**64); equal seeds give equal noise.
    """
    words = [(int(s) & _M32, (int(s) >> 32) & _M32) for s in seeds]
    w = torch.tensor(words, dtype=torch.int64, device=device).reshape(-1, 2)
    k0 = _hash32(w[:, 0] ^ _hash32(w[:, 1] ^ 0x5BD1E995))
    k1 = _hash32(k0 ^ 0x27D4EB2F)
    return torch.stack([k0, k1], dim=1)


def counter_uniform(keys: torch.Tensor, step: int, vocab_size: int) -> torch.Tensor:
    """Uniforms in (0, 1), float32 [N, vocab_size]: a pure function of (key, step, column).

    Each value has 23 random bits, so it is exact in float32 and never 0 or 1.
    """
    k0, k1 = keys[:, :1], keys[:, 1:]
    ks = _hash32(k0 ^ _hash32(k1 ^ (step & _M32)))
    col = _mul32(torch.arange(vocab_size, dtype=torch.int64, device=keys.device), _GOLDEN)
    x = _hash32(_hash32(ks ^ col) ^ k1)
    return ((x >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


# -- choosing tokens -----------------------------------------------------------------------------
def restrict_logits(scores: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """``scores`` with every token outside the top-k and outside the top-p nucleus at -inf.

    The nucleus follows transformers' ``TopPLogitsWarper``: drop the least likely tokens
    whose total mass is at most ``1 - top_p``; the most likely token always stays.
    """
    if top_k is not None and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum <= 1.0 - top_p
        drop_sorted[..., -1] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def next_tokens(logits: torch.Tensor, keys: torch.Tensor, step: int, cfg: SamplingConfig) -> torch.Tensor:
    """The next token [N] of each row from its logits [N, V] (float32) and noise key."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    scores = restrict_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    gumbel = -torch.log(-torch.log(counter_uniform(keys, step, logits.shape[-1])))
    return (scores + gumbel).argmax(dim=-1)


# -- the decoding loop ---------------------------------------------------------------------------
def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device (or host) out-of-memory error."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _cache_keyword(model: torch.nn.Module) -> str:
    """The forward argument naming the KV cache: ``cache`` (transformers >= 5.25) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model: torch.nn.Module):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers take no config
        return DynamicCache()


def _forward(model, ids, mask, pos, cache, cache_kw: str, keep_kw: bool) -> torch.Tensor:
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, cache_kw: cache, "use_cache": True}
    if keep_kw:
        kwargs["logits_to_keep"] = 1  # the prompt's other positions need no [T, V] logits
    return model(**kwargs).logits[:, -1].float()


def _decode_batch(model: torch.nn.Module, rows: Sequence[Sequence[int]], keys: torch.Tensor, cfg: SamplingConfig,
                  *, pad_id: int, device: torch.device, stopped: Callable[[list[int]], bool] | None
                  ) -> list[list[int]]:
    """Generate for one left-padded batch; finished rows leave the batch (and the cache)."""
    n, width = len(rows), max(len(r) for r in rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    ids, mask, keys = ids.to(device), mask.to(device), keys.to(device)
    # Position ids count real tokens only, so a left-padded row sees the positions it would alone.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache_kw = _cache_keyword(model)
    keep_kw = "logits_to_keep" in inspect.signature(model.forward).parameters
    cache = _new_cache(model)
    eos = set(cfg.eos_token_ids)
    out: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))
    with torch.inference_mode():
        logits = _forward(model, ids, mask, pos, cache, cache_kw, keep_kw)
        pos = pos[:, -1:] + 1
        for step in range(cfg.max_new_tokens):
            tok = next_tokens(logits, keys, step, cfg)
            keep: list[int] = []
            for j, t in enumerate(tok.tolist()):  # one host sync per step: each row's stop decision
                row = active[j]
                if t in eos:
                    continue
                out[row].append(t)
                if len(out[row]) < cfg.max_new_tokens and not (stopped is not None and stopped(out[row])):
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                tok, mask, pos, keys = tok[sel], mask[sel], pos[sel], keys[sel]
                active = [active[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            logits = _forward(model, tok[:, None], mask, pos, cache, cache_kw, keep_kw)
            pos = pos + 1
    return out


def generate_ids(model: torch.nn.Module, prompts: Sequence[Sequence[int]], keys: torch.Tensor, cfg: SamplingConfig,
                 *, batch_size: int = 32, pad_id: int = 0, device: torch.device | str | None = None,
                 stopped: Callable[[list[int]], bool] | None = None) -> tuple[list[list[int]], int]:
    """Continuations (token ids, EOS excluded) of ``prompts`` (token ids), in their order.

    Args:
        model: a transformers causal LM (``DynamicCache``, ``attention_mask``, ``position_ids``).
        prompts: token ids of each prompt, special tokens included (at least one token each).
        keys: [N, 2] noise keys from :func:`sample_keys`, one row per prompt.
        cfg: the decoding settings.
        batch_size: rows per forward; halved (and kept halved) when the device runs out of memory.
        pad_id: id filling the left padding (masked out; any valid id).
        device: where to run (default: the model's).
        stopped: ``stopped(ids)`` is True once a row's continuation must end (stop strings).

    Returns:
        The continuations and the batch size that worked.

    Raises:
        ValueError: a prompt is empty or ``keys`` does not have one row per prompt.
    """
    if len(keys) != len(prompts):
        raise ValueError(f"generate_ids: {len(prompts)} prompts but {len(keys)} noise keys")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate_ids: every prompt needs at least one token (e.g. BOS)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    # Longest first: the batch most likely to run out of memory comes first; similar lengths
    # share a batch, so there is little padding.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    bs, start = max(1, int(batch_size)), 0
    while start < len(order):
        chunk = order[start:start + bs]
        try:
            got = _decode_batch(model, [prompts[i] for i in chunk], keys[chunk], cfg, pad_id=pad_id,
                                device=device, stopped=stopped)
        except Exception as exc:
            if not is_out_of_memory(exc) or bs == 1:
                raise
            bs = max(1, bs // 2)
            log.warning("generation ran out of memory; retrying with batches of %d", bs)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        for i, ids in zip(chunk, got):
            out[i] = ids
        start += len(chunk)
    return out, bs
