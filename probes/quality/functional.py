"""The maths of the text quality probes, as pure functions (tensors in, tensors out).

Perplexity of long documents is computed with overlapping windows, as in the
transformers perplexity guide (https://huggingface.co/docs/transformers/perplexity):
windows of at most ``max_length`` tokens start every ``stride`` tokens, and each window
scores only the tokens that the previous window did not, so that every token is scored
exactly once with up to ``max_length - 1`` tokens of context.

Example:
    >>> sliding_windows(10, max_length=4, stride=2)
    [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    >>> float(corpus_perplexity(torch.tensor(6.0), 3))   # exp(2)
    7.38905609893065
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "bits_per_byte",
    "causal_lm_scorer",
    "corpus_perplexity",
    "sliding_windows",
    "windowed_token_logprobs",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``fn(input_ids [B, T], attention_mask [B, T] or None, select [B, T-1] bool) -> [select.sum()]``:
#: the log-probabilities of the targets ``input_ids[b, c+1]`` at the selected output positions
#: ``(b, c)`` only, flattened in row-major order (as ``tensor[select]`` flattens).
SelectiveScoreFn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]
_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


def sliding_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows that score a sequence of ``n_tokens`` tokens, as ``(begin, end, score_from)``.

    The window ``tokens[begin:end]`` (at most ``max_length`` long) is fed to the model and
    the tokens at positions ``score_from .. end - 1`` are scored, each predicted from the
    tokens before it inside the window. Together the windows score every position
    ``1 .. n_tokens - 1`` exactly once; position 0 has no context and is never scored.

    This is the stride-by-stride loop of the transformers perplexity guide, with one
    correction: there, ``stride == max_length`` leaves the first token of every window after
    the first unscored (the model shifts labels inside the window, so a window's first token
    is never a target). Here the step is ``min(stride, max_length - 1)``, which is identical
    to the guide for every ``stride < max_length`` and, for ``stride == max_length``, gives
    windows that overlap by the one token of context the next window's first target needs.

    Args:
        n_tokens: length of the sequence (a sequence shorter than 2 has nothing to score).
        max_length: most tokens per window (>= 2).
        stride: tokens between the starts of consecutive windows (1 .. max_length).

    Example:
        >>> sliding_windows(7, max_length=3, stride=3)   # non-overlapping: step 2
        [(0, 3, 1), (2, 5, 3), (4, 7, 5)]
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one token of context and one target), got {max_length!r}")
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in 1 .. max_length ({max_length}), got {stride!r}")
    if n_tokens < 2:
        return []
    step = min(stride, max_length - 1)
    windows: list[tuple[int, int, int]] = []
    prev_end = 0
    for begin in range(0, n_tokens, step):
        end = min(begin + max_length, n_tokens)
        # trg_len = end - prev_end in the guide; position `begin` itself is never a target.
        windows.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def windowed_token_logprobs(
    score_fn: ScoreFn,
    sequences: Sequence[Sequence[int]],
    *,
    max_length: int,
    stride: int,
    batch_size: int,
    pad_id: int,
    device: Any = "cpu",
    progress: Callable[..., Iterable[Any]] | None = None,
    selective: bool = False,
) -> list[torch.Tensor]:
    """Log-probability of every scored token of every sequence, many windows per forward pass.

    All windows of all sequences (see :func:`sliding_windows`) are gathered, sorted by
    length (longest first, so that batches hold windows of similar length and an
    out-of-memory error shows in the first batch), right-padded with ``pad_id`` under an
    attention mask and scored ``batch_size`` windows at a time. The scored positions are
    scattered into one buffer on ``device``; nothing is copied to the host.

    On a CUDA out-of-memory error the batch is retried in halves, and later batches keep
    the smaller size.

    With ``selective=True`` the scorer is asked only for the positions a window scores (a
    window after the first scores its last ``stride`` tokens; the rest is context): for a
    transformers model (:func:`causal_lm_scorer`) the vocabulary projection and the
    softmax, a fifth of a 135M model's compute and most of its memory traffic, then run on
    those positions only, and a batch without padding gets no attention mask (so SDPA can
    take its causal fast path). The numbers are the same: the hidden states of a position do
    not depend on which logits are projected afterwards.

    Args:
        score_fn: ``score_fn(input_ids [B, T], attention_mask [B, T]) -> [B, T-1]`` with
            ``out[b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1])``
            (e.g. :meth:`audit.subjects.TextGenerator.token_logprobs`); with ``selective``,
            a :data:`SelectiveScoreFn` (e.g. :func:`causal_lm_scorer`).
        sequences: token ids, one list per sequence.
        max_length, stride: the windowing (see :func:`sliding_windows`).
        batch_size: windows per forward pass.
        pad_id: token id used for padding (masked out, never scored).
        device: where inputs are sent and the result is kept.
        progress: optional ``progress(iterable, total=...)`` wrapper (e.g. ``ctx.progress``).
        selective: whether ``score_fn`` is a :data:`SelectiveScoreFn`.

    Returns:
        One float32 tensor per sequence on ``device``, of length ``len(seq) - 1`` (empty for
        sequences shorter than 2): ``out[i][p - 1] = log p(seq[p] | context)``.

    Example:
        >>> uniform = lambda ids, mask: torch.full((ids.shape[0], ids.shape[1] - 1), -math.log(4.0))
        >>> lp = windowed_token_logprobs(uniform, [[5, 6, 7, 8, 9], [5]], max_length=3, stride=2,
        ...                              batch_size=2, pad_id=0)
        >>> [t.shape[0] for t in lp], round(float(lp[0].sum()), 4)
        ([4, 0], -5.5452)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    device = torch.device(device)
    lengths = [len(s) for s in sequences]
    n_scored = [max(n - 1, 0) for n in lengths]
    offsets = [0]
    for k in n_scored[:-1]:
        offsets.append(offsets[-1] + k)

    # (length, sequence index, begin, end, score_from) for every window of every sequence.
    windows = [
        (end - begin, i, begin, end, score_from)
        for i, n in enumerate(lengths)
        for begin, end, score_from in sliding_windows(n, max_length, stride)
    ]
    windows.sort(key=lambda w: -w[0])
    tensors = [torch.as_tensor(list(s), dtype=torch.long) for s in sequences]

    flat = torch.full((sum(n_scored),), math.nan, dtype=torch.float32, device=device)
    batches = [windows[k:k + batch_size] for k in range(0, len(windows), batch_size)]
    if progress is not None:
        batches = progress(batches, total=len(batches))
    cap = batch_size
    with torch.inference_mode():
        for batch in batches:
            todo = [batch]
            while todo:
                chunk = todo.pop()
                if len(chunk) > cap:  # a previous batch ran out of memory
                    todo.extend(reversed([chunk[k:k + cap] for k in range(0, len(chunk), cap)]))
                    continue
                try:
                    _score_batch(score_fn, chunk, tensors, offsets, flat, pad_id, device, selective)
                except _OOM_ERRORS:
                    if len(chunk) == 1:
                        raise
                    cap = max(1, len(chunk) // 2)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    todo.append(chunk)
    return list(torch.split(flat, n_scored))


def _score_batch(
    score_fn: ScoreFn,
    batch: list[tuple[int, int, int, int, int]],
    tensors: list[torch.Tensor],
    offsets: list[int],
    flat: torch.Tensor,
    pad_id: int,
    device: torch.device,
    selective: bool = False,
) -> None:
    """Score one batch of windows and write the scored positions into ``flat`` (no host sync)."""
    lens = torch.tensor([w[0] for w in batch], dtype=torch.long)
    seq_idx = [w[1] for w in batch]
    begin = torch.tensor([w[2] for w in batch], dtype=torch.long)
    end = torch.tensor([w[3] for w in batch], dtype=torch.long)
    score_from = torch.tensor([w[4] for w in batch], dtype=torch.long)
    b, t = len(batch), int(lens.max())

    input_ids = torch.nn.utils.rnn.pad_sequence(
        [tensors[i][s:e] for i, s, e in zip(seq_idx, begin.tolist(), end.tolist())],
        batch_first=True, padding_value=pad_id,
    )
    attention_mask = (torch.arange(t)[None, :] < lens[:, None]).long()

    # Scored positions p in [score_from, end) of each window: read from the output at
    # row r, column p - begin - 1; write to the sequence's slot offset + p - 1.
    counts = end - score_from
    row = torch.repeat_interleave(torch.arange(b), counts)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.repeat_interleave(score_from, counts) + torch.arange(int(counts.sum())) - torch.repeat_interleave(starts, counts)
    src = row * (t - 1) + pos - torch.repeat_interleave(begin, counts) - 1
    dst = torch.repeat_interleave(torch.tensor([offsets[i] for i in seq_idx], dtype=torch.long), counts) + pos - 1

    pin = device.type == "cuda"
    if selective:
        # Output column of each scored token, row-major like `dst`: the flattened order of select.
        select = torch.zeros(b, t - 1, dtype=torch.bool)
        select.view(-1)[src] = True
        full = bool((lens == t).all())  # decided on the host: no sync on the device
        input_ids, select, dst = (
            (x.pin_memory() if pin else x).to(device, non_blocking=pin) for x in (input_ids, select, dst)
        )
        mask = None if full else attention_mask.to(device, non_blocking=pin)
        out = score_fn(input_ids, mask, select)
        if tuple(out.shape) != (int(counts.sum()),):
            raise ValueError(f"selective score_fn returned shape {tuple(out.shape)} for {int(counts.sum())} "
                             f"selected positions; expected ({int(counts.sum())},)")
        flat[dst] = out.to(device=device, dtype=torch.float32)
        return
    input_ids, attention_mask, src, dst = (
        (x.pin_memory() if pin else x).to(device, non_blocking=pin) for x in (input_ids, attention_mask, src, dst)
    )
    out = score_fn(input_ids, attention_mask)
    if tuple(out.shape) != (b, t - 1):
        raise ValueError(f"score_fn returned shape {tuple(out.shape)} for input {(b, t)}; expected {(b, t - 1)}")
    flat[dst] = out.reshape(-1).to(device=device, dtype=torch.float32)[src]


def causal_lm_scorer(model: Any, *, autocast: str | None = None) -> SelectiveScoreFn | None:
    """A :data:`SelectiveScoreFn` for a transformers causal LM, or None if the model cannot take it.

    The model is run without a KV cache (nothing is generated) and asked, through
    transformers' ``logits_to_keep`` boolean mask, for the logits of the selected positions
    only; the log-probabilities come from a fused float32 ``cross_entropy`` on those rows.
    Models whose ``forward`` has no ``logits_to_keep`` give None (use the subject's
    ``token_logprobs`` instead).

    Args:
        model: a transformers ``*ForCausalLM`` (eval mode, on its device).
        autocast: ``None`` (run in the model's dtype), ``"bfloat16"`` or ``"float16"``: run the
            forward pass under ``torch.autocast`` (faster on GPUs, ~1e-2 relative error in
            perplexity; the float32 path is the reference).

    Example:
        >>> from tests.fakes import tiny_causal_lm                          # doctest: +SKIP
        >>> score = causal_lm_scorer(tiny_causal_lm())                       # doctest: +SKIP
        >>> ids = torch.tensor([[1, 5, 6, 7]])                               # doctest: +SKIP
        >>> score(ids, None, torch.tensor([[False, True, True]])).shape      # doctest: +SKIP
        torch.Size([2])
    """
    import inspect

    if autocast not in (None, "bfloat16", "float16"):
        raise ValueError(f"autocast must be None, 'bfloat16' or 'float16', got {autocast!r}")
    forward = getattr(model, "forward", None)
    try:
        if forward is None or "logits_to_keep" not in inspect.signature(forward).parameters:
            return None
    except (TypeError, ValueError):
        return None
    amp_dtype = getattr(torch, autocast) if autocast else None

    def score(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, select: torch.Tensor) -> torch.Tensor:
        import contextlib

        import torch.nn.functional as F

        keep = F.pad(select, (0, 1))  # [B, T]: the last position predicts past the window
        amp = (torch.autocast(input_ids.device.type, dtype=amp_dtype) if amp_dtype is not None
               else contextlib.nullcontext())
        with torch.inference_mode(), amp:
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                           logits_to_keep=keep).logits
        if logits.dim() == 3:  # an architecture that ignores a boolean logits_to_keep: all positions
            if logits.shape[:2] != input_ids.shape:
                raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} for inputs "
                                 f"{tuple(input_ids.shape)} and a boolean logits_to_keep")
            logits = logits[:, :-1][select]
        return -F.cross_entropy(logits.float(), input_ids[:, 1:][select], reduction="none")

    return score


def corpus_perplexity(nll_sum: Any, n_tokens: Any) -> torch.Tensor:
    """``exp(nll_sum / n_tokens)``: perplexity from a summed negative log-likelihood in nats.

    Works elementwise on tensors (e.g. per-document sums and counts); float64. Zero tokens
    give ``nan`` (or ``inf``), never an exception.

    Example:
        >>> corpus_perplexity(torch.tensor([0.0, 6.0]), torch.tensor([4, 3])).tolist()   # [1, e^2]
        [1.0, 7.38905609893065]
    """
    nll = torch.as_tensor(nll_sum, dtype=torch.float64)
    n = torch.as_tensor(n_tokens, dtype=torch.float64, device=nll.device)
    return torch.exp(nll / n)


def bits_per_byte(nll_sum_nats: Any, n_bytes: Any) -> torch.Tensor:
    """``nll / (ln 2 * bytes)``: negative log-likelihood in bits per UTF-8 byte of scored text.

    Unlike perplexity it does not depend on the tokenizer, so models with different
    vocabularies can be compared on the same text. Float64, elementwise.

    Example:
        >>> float(bits_per_byte(math.log(2) * 12, 8))
        1.5
    """
    nll = torch.as_tensor(nll_sum_nats, dtype=torch.float64)
    n = torch.as_tensor(n_bytes, dtype=torch.float64, device=nll.device)
    return nll / (math.log(2) * n)
