"""Text in, text out around the generation engine: prompts (raw or in the model's chat
template), per-sample seeds, stop strings, and the one call probes make to generate.

Probes call :func:`generate_texts` with one seed per sample. A subject that declares
``per_sample_seeds = True`` (every transformers or GGUF subject, and any user generator that
honours a list of seeds) receives whole lists of prompts with their seeds and batches them
itself; any other subject is called one prompt at a time with that prompt's seed when
sampling (its samples stay reproducible), and with whole lists when decoding greedily.

Example:
    >>> texts = generate_texts(lm, ["Q: 2+2?\\nA:", "Q: sky colour?\\nA:"], seeds=[11, 12],   # doctest: +SKIP
    ...                        max_new_tokens=16, temperature=1.0, what="quality.text_diversity")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from audit.errors import InputError, SpecError

__all__ = [
    "StopStrings",
    "encode_prompts",
    "generate_texts",
    "has_chat_template",
    "resolve_chat_template",
    "row_seeds",
]

#: Prompts handed to a batching subject per call (it batches within them; progress moves per call).
CHUNK = 128
_M64 = (1 << 64) - 1


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_chat_template(setting: bool | str, tokenizer: Any) -> bool:
    """Whether prompts go through the chat template: ``True``, ``False`` or ``"auto"`` (when
    the tokenizer has one).

    Raises:
        SpecError: ``setting`` is none of these.
        InputError: ``True`` for a tokenizer without a template.
    """
    if setting == "auto":
        return has_chat_template(tokenizer)
    if not isinstance(setting, bool):
        raise SpecError(f"subject.chat_template: expected true, false or auto, got {setting!r}")
    if setting and not has_chat_template(tokenizer):
        raise InputError("subject.chat_template is true but the model's tokenizer has no chat template "
                         "(tokenizer_config.json / chat_template.jinja); use false or auto")
    return setting


def chat_template_note(setting: bool | str, tokenizer: Any) -> str | None:
    """What the report's subject identity says about the chat template (None: nothing to say)."""
    used = resolve_chat_template(setting, tokenizer)
    if used:
        how = "auto: the tokenizer has one" if setting == "auto" else "true"
        return f"used for generation ({how}); perplexity and scoring read the raw text"
    if has_chat_template(tokenizer):
        return "not used: the tokenizer has one, but subject.chat_template is false (prompts are raw text)"
    return "not used: the tokenizer has none" if setting == "auto" else None


def encode_prompts(tokenizer: Any, prompts: Sequence[str], *, chat: bool, fallback_id: int | None,
                   max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of each prompt as the model reads it before generating.

    Raw prompts get the tokenizer's special tokens (e.g. BOS); with ``chat`` each prompt is a
    user turn of the chat template, with the generation prompt (the assistant's header). An
    empty prompt becomes ``[fallback_id]``; ``max_tokens`` keeps a prompt's last tokens.
    """
    out = []
    for p in prompts:
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=False)
            ids = list(tokenizer.encode(text, add_special_tokens=False))
        else:
            ids = list(tokenizer.encode(p, add_special_tokens=True))
        if not ids:
            if fallback_id is None:
                raise InputError("an empty prompt cannot be generated from: the tokenizer adds no BOS token")
            ids = [int(fallback_id)]
        if max_tokens is not None and len(ids) > max_tokens:
            ids = ids[len(ids) - max_tokens:]
        out.append(ids)
    return out


class StopStrings:
    """Ends a row once its decoded continuation contains one of ``stop``; cuts texts there.

    ``self(ids)`` decodes only the last tokens, enough to hold the longest stop string
    (a character is at most 4 bytes, a token at least one).
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]):
        self.stop = tuple(s for s in stop if s)
        self.tokenizer = tokenizer
        self.tail = 4 * max((len(s) for s in self.stop), default=0) + 2

    def __call__(self, ids: list[int]) -> bool:
        text = self.tokenizer.decode(ids[-self.tail:], skip_special_tokens=True)
        return any(s in text for s in self.stop)

    def cut(self, text: str) -> str:
        """``text`` up to (not including) its first stop string."""
        at = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return text[: min(at)] if at else text


def row_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per row: a sequence gives each row its own; an int seeds row ``i`` with a hash
    of (seed, i), row 0 with the seed itself (so ``seed=s`` and ``seed=[s]`` agree)."""
    if isinstance(seed, bool):
        raise TypeError("seed must be an integer or a sequence of integers, got a bool")
    if isinstance(seed, int):
        return [seed if i == 0 else (seed ^ ((i * 0x9E3779B97F4A7C15) & _M64)) for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{n} prompts but {len(seeds)} seeds")
    return seeds


def generate_texts(subject: Any, prompts: Sequence[str], seeds: Sequence[int], *, max_new_tokens: int,
                   temperature: float, what: str,
                   progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None) -> list[str]:
    """The subject's continuation of each prompt, prompt ``i`` sampled with ``seeds[i]``.

    Args:
        subject: a text generator (``generate(prompts, *, max_new_tokens, temperature, seed)``).
        prompts: the prompts, in order.
        seeds: one seed per prompt (the sample's own randomness).
        max_new_tokens: the longest continuation.
        temperature: 0 for greedy decoding.
        what: the probe id, for error messages.
        progress: wraps the iterable of calls (e.g. ``ctx.progress``).

    Raises:
        InputError: the subject returned another number of continuations than prompts.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"{what}: {len(prompts)} prompts but {len(seeds)} seeds")
    if getattr(subject, "per_sample_seeds", False):
        calls = [(list(range(i, min(i + CHUNK, len(prompts)))), True) for i in range(0, len(prompts), CHUNK)]
    elif temperature == 0:  # greedy: no randomness to keep apart, so the subject keeps its batching
        calls = [(list(range(i, min(i + CHUNK, len(prompts)))), False) for i in range(0, len(prompts), CHUNK)]
    else:
        calls = [([i], False) for i in range(len(prompts))]
    out: list[str] = []
    for idx, per_sample in (progress(calls) if progress is not None else calls):
        seed = [int(seeds[i]) for i in idx] if per_sample else int(seeds[idx[0]])
        got = list(subject.generate([prompts[i] for i in idx], max_new_tokens=max_new_tokens,
                                    temperature=float(temperature), seed=seed))
        if len(got) != len(idx):
            raise InputError(f"{what}: the subject returned {len(got)} continuations for {len(idx)} prompt(s)")
        out.extend(str(g) for g in got)
    return out


def eos_token_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    """The ids that end a generation: the model's ``generation_config.eos_token_id`` (an id or a
    list, as transformers' ``generate`` reads it) and the tokenizer's EOS."""
    ids: list[int] = []
    for value in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                  getattr(tokenizer, "eos_token_id", None)):
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and int(v) not in ids:
                ids.append(int(v))
    return tuple(ids)


def hf_generate(lm: Any, prompts: Sequence[str], *, max_new_tokens: int, temperature: float,
                seed: int | Sequence[int], stop: Sequence[str] = ()) -> tuple[list[list[int]], list[str]]:
    """Token ids and texts of the continuations of ``prompts`` by an
    :class:`~audit.subjects.HFTextGenerator` ``lm``, through the batched engine.

    Raises:
        ValueError: a negative temperature, or not one seed per prompt.
    """
    from audit.subjects.generation import SamplingConfig, generate_ids, sample_keys

    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    seeds = row_seeds(seed, len(prompts))
    if not prompts:
        return [], []
    room = lm.max_context - max_new_tokens if lm.max_context else None
    fallback = lm.bos_token_id if lm.bos_token_id is not None else getattr(lm.tokenizer, "eos_token_id", None)
    rows = encode_prompts(lm.tokenizer, prompts, chat=lm.chat_template, fallback_id=fallback,
                          max_tokens=max(1, room) if room is not None else None)
    cfg = SamplingConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=lm.top_k,
                         top_p=lm.top_p, eos_token_ids=lm.eos_token_ids, stop=tuple(stop))
    stopper = StopStrings(lm.tokenizer, stop) if any(stop) else None
    ids, lm.batch_size = generate_ids(lm.model, rows, sample_keys(seeds), cfg, batch_size=lm.batch_size,
                                      pad_id=lm.pad_token_id, device=lm.device, stopped=stopper)
    texts = [lm.tokenizer.decode(x, skip_special_tokens=True) for x in ids]
    if stopper is not None:
        texts = [stopper.cut(t) for t in texts]
    return ids, texts
