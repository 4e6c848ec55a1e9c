"""Probe ``deepfake.text_detectability``: can a zero-shot detector tell the subject's text
from human text written for the same prompt?

For each human document, its first ``prompt_tokens`` tokens are the prompt; the human
continuation is the next ``continuation_tokens`` tokens, and the subject writes its own
continuation of the same prompt. Both continuations are cut to the same number of tokens,
then scored by a scoring language model (the subject by default) given the prompt:

- ``log_likelihood``: mean log-probability of the continuation's tokens (higher: generated);
- ``log_rank``: mean log of each token's rank under the model (lower: generated);
- ``entropy``: mean entropy of the model's next-token distribution (lower: generated);
- ``binoculars`` (with a second ``observer`` model on the same tokenizer): the scorer's log
  perplexity divided by the cross-perplexity ``-sum_v p_observer(v) log p_scorer(v)``
  (Hans et al., 2024; lower: generated).

Each score is oriented so that higher means "generated" and then measured with
:mod:`probes.deepfake.metrics`: AUROC, average precision, EER, TPR at FPR 1e-2 and 1e-3
on all pairs, and real / generated / balanced accuracy on a test split at a threshold fixed
on a calibration split of the prompts.

Example (spec):
    data: {texts: corpus.jsonl}
    probes:
      - id: deepfake.text_detectability
        params: {prompt_tokens: 24, continuation_tokens: 32, observer: HuggingFaceTB/SmolLM2-360M}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from audit.errors import InputError
from audit.findings import Finding, Units
from audit.probe import ParamCheck, ProbeContext, register
from audit.subjects.textdata import read_documents
from audit.subjects.textgen import generate_texts
from probes.deepfake.metrics import (
    MIN_PER_CLASS,
    calibration_split,
    detection_findings,
    summarize_detection,
)

__all__ = ["TextDetectability", "cross_entropy_between", "token_statistics"]

_EXAMPLES = 3


def token_statistics(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probability, log-rank and predictive entropy.

    Args:
        logits: ``[N, V]`` next-token logits.
        targets: ``[N]`` the tokens that came.

    Returns:
        ``(log_prob, log_rank, entropy)``, each ``[N]`` float32 on the logits' device; the rank
        is 1 + the number of tokens with a strictly higher logit (ties favour the target).

    Example:
        >>> lp, lr, h = token_statistics(torch.log(torch.tensor([[0.5, 0.25, 0.25]])), torch.tensor([1]))
        >>> round(float(lp), 4), round(float(lr), 4), round(float(h), 4)   # log .25, log 2, 1.5 ln 2
        (-1.3863, 0.6931, 1.0397)
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    target_logp = logp.gather(-1, targets[:, None])[:, 0]
    rank = (logp > target_logp[:, None]).sum(-1) + 1
    entropy = -(logp.exp() * logp).sum(-1)
    return target_logp, torch.log(rank.float()), entropy


def cross_entropy_between(observer_logits: torch.Tensor, scorer_logits: torch.Tensor) -> torch.Tensor:
    """``-sum_v p_observer(v) log p_scorer(v)`` per position (``[N, V]`` each -> ``[N]``): the
    per-token cross-perplexity (in nats) of Binoculars.

    Example:
        >>> p = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> round(float(cross_entropy_between(p, p)), 4)   # = the entropy, ln 2
        0.6931
    """
    p_obs = torch.softmax(observer_logits.float(), dim=-1)
    return -(p_obs * torch.log_softmax(scorer_logits.float(), dim=-1)).sum(-1)


def _segment_mean(values: torch.Tensor, segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    total = torch.zeros(n_segments, dtype=torch.float64, device=values.device).index_add_(0, segment, values.double())
    count = torch.zeros(n_segments, dtype=torch.float64, device=values.device).index_add_(
        0, segment, torch.ones_like(values, dtype=torch.float64))
    return total / count


def _selected_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     select: torch.Tensor) -> torch.Tensor:
    """Logits ``[select.sum(), V]`` of a transformers causal LM at the selected positions only."""
    keep = torch.nn.functional.pad(select, (0, 1))
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       logits_to_keep=keep).logits
    if logits.dim() == 3:  # a model that ignored the boolean logits_to_keep
        logits = logits[:, :-1][select]
    return logits


@dataclass
class _Scorer:
    """A loaded scoring model: its subject and whether it exposes full distributions."""

    subject: Any
    label: str

    @property
    def has_logits(self) -> bool:
        model = getattr(self.subject, "model", None)
        return model is not None and callable(model)


@register("deepfake.text_detectability")
@dataclass(frozen=True)
class TextDetectability:
    """Zero-shot detectability of the subject's text against human text for the same prompts.

    Human documents (``data``) give the prompts (their first ``prompt_tokens`` tokens) and the
    human continuations; the subject continues each prompt (sampled at ``temperature``,
    seeded). A scoring model (the subject unless ``scorer`` is given) scores both
    continuations, cut to equal length: mean log-likelihood, log-rank and entropy, and the
    Binoculars ratio when an ``observer`` model is given. Findings per score (slice
    ``score``): AUROC, average precision, EER, TPR at FPR 1e-2 / 1e-3 (stratified bootstrap
    intervals over all pairs) and real / generated / balanced accuracy on a test split at a
    threshold fixed on a calibration split of the prompts (Wilson / bootstrap intervals).
    Directions are the detector's: a higher AUROC means the text is easier to detect.
    """

    id: ClassVar[str] = "deepfake.text_detectability"
    applies_to: ClassVar[tuple[str, ...]] = ("text-generator",)
    requires: ClassVar[tuple[str, ...]] = ("tokenize", "token_logprobs", "generate")

    data: str = field(default="texts", metadata={"help": "named data input holding the human-written texts"})
    prompt_tokens: int = field(default=32, metadata={"help": "tokens of each human text used as the prompt"})
    continuation_tokens: int = field(default=64, metadata={"help": "tokens generated and compared with the human continuation"})
    min_continuation_tokens: int = field(default=8, metadata={"help": "pairs whose shorter continuation has fewer tokens are dropped"})
    max_documents: int | None = field(default=None, metadata={"help": "use at most this many texts (the first ones); null: all"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the subject's continuations (0: greedy)"})
    scorer: str | None = field(default=None, metadata={"help": "scoring model (hub id, folder, .gguf or module:callable); null: the subject"})
    scorer_source: str = field(default="hf", metadata={"help": "loader of `scorer`: hf, gguf or python"})
    observer: str | None = field(default=None, metadata={"help": "second model on the scorer's tokenizer for the Binoculars ratio; null: none"})
    observer_source: str = field(default="hf", metadata={"help": "loader of `observer`: hf, gguf or python"})
    calibration_fraction: float = field(default=1 / 3, metadata={"help": "share of prompts whose pairs fix the decision threshold"})
    batch_size: int = field(default=8, metadata={"help": "texts per scoring forward pass"})
    n_resamples: int = field(default=1000, metadata={"help": "bootstrap resamples for the intervals"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals, in (0, 1)"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail, is_int, is_num = check.fail, check.is_int, check.is_num
        check.data_name("texts")
        check.int_at_least("prompt_tokens", 1)
        check.int_at_least("continuation_tokens", 2)
        if not is_int(self.min_continuation_tokens) or not 1 <= self.min_continuation_tokens <= self.continuation_tokens:
            fail("min_continuation_tokens", f"an integer in 1 .. continuation_tokens ({self.continuation_tokens})")
        if self.max_documents is not None and (not is_int(self.max_documents) or self.max_documents < MIN_PER_CLASS):
            fail("max_documents", f"null or an integer >= {MIN_PER_CLASS} (at least {MIN_PER_CLASS} pairs are needed)")
        if not is_num(self.temperature) or not 0 <= self.temperature <= 10:
            fail("temperature", "a number in [0, 10]")
        for name in ("scorer", "observer"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                fail(name, "null or a model path, hub id or module:callable")
        for name in ("scorer_source", "observer_source"):
            if getattr(self, name) not in ("hf", "gguf", "python"):
                fail(name, "one of hf, gguf, python")
        if not is_num(self.calibration_fraction) or not 0.1 <= self.calibration_fraction <= 0.9:
            fail("calibration_fraction", "a number in [0.1, 0.9]")
        check.int_at_least("batch_size", 1)
        if not is_int(self.n_resamples) or self.n_resamples < 100:
            fail("n_resamples", "an integer >= 100 (fewer gives unstable interval bounds)")
        if not is_num(self.confidence) or not 0 < self.confidence < 1:
            fail("confidence", "a number in (0, 1), e.g. 0.95")

    # -- run -------------------------------------------------------------------------------
    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        docs = read_documents(ctx.input_path(self.data))
        if self.max_documents is not None:
            docs = docs[: self.max_documents]
        notes: list[str] = []

        # Prompts and human continuations, in the subject's tokens.
        need = self.prompt_tokens + self.min_continuation_tokens
        ids = subject.encode([d.text for d in docs])
        usable = [(d, t) for d, t in zip(docs, ids) if len(t) >= need]
        if len(usable) < len(docs):
            notes.append(f"{len(docs) - len(usable)} of {len(docs)} texts have fewer than {need} tokens "
                         f"(prompt + minimum continuation) and were left out")
        self._check_count(len(usable), "texts long enough to give a prompt and a continuation")
        prompts = [subject.decode(t[: self.prompt_tokens]) for _, t in usable]
        human_ids = [t[self.prompt_tokens: self.prompt_tokens + self.continuation_tokens] for _, t in usable]

        # Each continuation has its own seed (by text index), so it does not depend on the other
        # prompts; under torchrun each rank generates its share, gathered in text order.
        mine = ctx.dist.shard(len(prompts))
        generated = ctx.dist.gather(
            generate_texts(subject, [prompts[i] for i in mine], [ctx.child_seed(f"generate-{i}") for i in mine],
                           max_new_tokens=self.continuation_tokens, temperature=float(self.temperature),
                           what=self.id), mine)
        gen_ids = subject.encode(generated)

        pairs = []  # (doc id, prompt, human continuation, generated continuation), equal token counts
        short = 0
        for (doc, _), prompt, h, g in zip(usable, prompts, human_ids, gen_ids):
            n = min(len(h), len(g))
            if n < self.min_continuation_tokens:
                short += 1
                continue
            pairs.append((doc.id, prompt, subject.decode(h[:n]), subject.decode(g[:n])))
        if short:
            notes.append(f"{short} of {len(usable)} generated continuations had fewer than "
                         f"{self.min_continuation_tokens} tokens (the model stopped early) and were left out")
        self._check_count(len(pairs), "pairs of human and generated continuations")

        scorer, observer = self._models(subject, ctx)
        prompts_ = [p for _, p, _, _ in pairs] * 2
        continuations = [h for *_, h, _ in pairs] + [g for *_, g in pairs]
        labels = np.r_[np.zeros(len(pairs), int), np.ones(len(pairs), int)]
        groups = [i for i in range(len(pairs))] * 2
        scores, score_notes = self._scores(scorer.subject, observer.subject if observer else None,
                                           prompts_, continuations, ctx)
        notes += score_notes
        rng = np.random.default_rng(ctx.child_seed("calibration"))
        calibration = calibration_split(groups, self.calibration_fraction, rng)

        examples = [{"id": str(i), "prompt": p, "human": h, "generated": g} for i, p, h, g in pairs[:_EXAMPLES]]
        findings: list[Finding] = []
        # The seed each kept generated continuation was sampled with (pairs keep the texts' order).
        seeds = [ctx.child_seed(f"generate-{i}") for i, (h, g) in enumerate(zip(human_ids, gen_ids))
                 if min(len(h), len(g)) >= self.min_continuation_tokens]
        for k, (name, values) in enumerate(scores.items()):
            ctx.record_samples({"item": pairs[i % len(pairs)][0], "metric": name, "score": float(values[i]),
                                "label": ("human", "generated")[labels[i]], "slice": {"score": name},
                                "seed": seeds[i % len(pairs)] if labels[i] else None, "text": continuations[i],
                                "split": "calibration" if calibration[i] else "test", "prompt": prompts_[i][:500]}
                               for i in range(len(continuations)))
            warnings = list(notes)
            finite = np.isfinite(values)
            if not finite.all():
                warnings.append(f"{int((~finite).sum())} texts got a non-finite {name} score and were left out")
            try:
                summary = summarize_detection(
                    labels[finite], values[finite], calibration[finite], n_resamples=self.n_resamples,
                    confidence=self.confidence, seed=ctx.child_seed(f"bootstrap-{name}"), what=self.id,
                )
            except InputError as exc:
                if finite.all():
                    raise
                findings += self._nan_findings(name, [*warnings, str(exc)])
                continue
            evidence = {"score": name, "orientation": _ORIENTATION[name], "scorer": scorer.label,
                        "observer": observer.label if observer else None,
                        "mean_real": float(np.mean(values[finite & (labels == 0)])),
                        "mean_generated": float(np.mean(values[finite & (labels == 1)])),
                        "prompt_tokens": self.prompt_tokens, "continuation_tokens": self.continuation_tokens,
                        "temperature": float(self.temperature)}
            if k == 0:
                evidence["examples"] = examples
            findings += [_with_pair_units(f, pairs, values) for f in detection_findings(
                self.id, summary, slice={"score": name}, warnings=warnings, evidence=evidence)]
        return findings

    # -- helpers ---------------------------------------------------------------------------
    def _check_count(self, n: int, what: str) -> None:
        if n < MIN_PER_CLASS:
            raise InputError(
                f"{self.id}: needs at least {MIN_PER_CLASS} {what} (one real and one generated sample each), "
                f"got {n}; give more or longer texts, or lower prompt_tokens / min_continuation_tokens"
            )

    def _nan_findings(self, name: str, warnings: list[str]) -> list[Finding]:
        metrics = {"auroc": True, "average_precision": True, "eer": False, "tpr_at_fpr_1e-02": True,
                   "tpr_at_fpr_1e-03": True, "balanced_accuracy": True, "real_accuracy": True,
                   "fake_accuracy": True}
        return [Finding(probe=self.id, metric=m, value=math.nan, higher_is_better=h, slice={"score": name},
                        warnings=tuple(warnings), n=0) for m, h in metrics.items()]

    def _models(self, subject: Any, ctx: ProbeContext) -> tuple[_Scorer, _Scorer | None]:
        scorer = _Scorer(subject, "subject") if self.scorer is None else \
            _Scorer(_load(self.scorer, self.scorer_source, ctx), self.scorer)
        observer = None if self.observer is None else _Scorer(_load(self.observer, self.observer_source, ctx),
                                                                self.observer)
        if observer is not None and not (scorer.has_logits and observer.has_logits):
            raise InputError(f"{self.id}: the Binoculars ratio needs next-token distributions from both the "
                             f"scorer and the observer (transformers models); one of them gives only token "
                             f"log-probabilities")
        return scorer, observer

    def _scores(self, scorer: Any, observer: Any, prompts: Sequence[str], continuations: Sequence[str],
                ctx: ProbeContext) -> tuple[dict[str, np.ndarray], list[str]]:
        """Each text's scores, oriented so that higher means generated."""
        notes: list[str] = []
        sequences, n_prefix = _sequences(scorer, prompts, continuations)
        if observer is not None:
            obs_sequences, _ = _sequences(observer, prompts, continuations)
            if obs_sequences != sequences:
                raise InputError(f"{self.id}: the observer tokenizes the texts differently from the scorer; "
                                 f"the Binoculars ratio needs two models with the same tokenizer")
        n = len(sequences)
        device = torch.device(getattr(scorer, "device", None) or ctx.device)
        stats = {k: torch.full((n,), math.nan, dtype=torch.float64) for k in ("lp", "lr", "h", "x")}
        full = _Scorer(scorer, "").has_logits
        order = sorted(range(n), key=lambda i: -len(sequences[i]))
        # Under torchrun each rank scores whole batches of this order (the batches a single
        # process makes); the per-text statistics are gathered in text order.
        mine = ctx.dist.shard(n, block=self.batch_size)
        for start in range(mine.start, mine.stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = [sequences[i] for i in idx]
            t = max(len(s) for s in batch)
            input_ids = torch.full((len(batch), t), int(scorer.pad_token_id), dtype=torch.long)
            mask = torch.zeros((len(batch), t), dtype=torch.long)
            select = torch.zeros((len(batch), t - 1), dtype=torch.bool)
            for r, (i, s) in enumerate(zip(idx, batch)):
                input_ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
                select[r, n_prefix[i] - 1: len(s) - 1] = True  # outputs predicting the continuation
            row = select.nonzero()[:, 0]
            input_ids, mask, select, row = (x.to(device) for x in (input_ids, mask, select, row))
            targets = input_ids[:, 1:][select]
            if full:
                logits = _selected_logits(scorer.model, input_ids, mask, select)
                lp, lr, h = token_statistics(logits, targets)
                parts = {"lp": lp, "lr": lr, "h": h}
                if observer is not None:
                    obs_logits = _selected_logits(observer.model, input_ids.to(observer.device),
                                                  mask.to(observer.device), select.to(observer.device))
                    parts["x"] = cross_entropy_between(obs_logits.to(device), logits)
            else:
                parts = {"lp": scorer.token_logprobs(input_ids, mask)[select].to(device)}
            for key, values in parts.items():
                means = _segment_mean(values, row, len(batch)).cpu()  # one transfer per batch
                stats[key][idx] = means
        if ctx.dist.active:
            own = [order[j] for j in mine]
            table = torch.stack([stats[k][own] for k in stats], 1) if own else torch.zeros((0, len(stats)),
                                                                                           dtype=torch.float64)
            table = ctx.dist.gather_tensor(table, own)
            stats = {k: table[:, c].contiguous() for c, k in enumerate(stats)}
        scores = {"log_likelihood": stats["lp"].numpy()}
        if full:
            scores["log_rank"] = -stats["lr"].numpy()
            scores["entropy"] = -stats["h"].numpy()
            if observer is not None:
                # Binoculars: log-perplexity over cross-perplexity; low means machine-written.
                scores["binoculars"] = -((-stats["lp"]) / stats["x"]).numpy()
        else:
            notes.append("the scoring model gives token log-probabilities only (not a transformers model): "
                         "log_rank and entropy were not computed")
        return scores, notes


def _with_pair_units(f: Finding, pairs: Sequence[tuple[Any, ...]], values: np.ndarray) -> Finding:
    """The AUROC finding with one unit per prompt (its human and its generated continuation's
    scores), so that a variant's AUROC pairs with the base's by prompt; other findings as they are."""
    if f.metric != "auroc":
        return f
    n = len(pairs)
    units = Units("auroc_pairs", [str(p[0]) for p in pairs],
                  {"negative": values[:n].tolist(), "positive": values[n:].tolist()})
    return replace(f, units=units)


_ORIENTATION = {
    "log_likelihood": "mean token log-probability (higher: generated)",
    "log_rank": "minus the mean log-rank (higher: generated)",
    "entropy": "minus the mean predictive entropy in nats (higher: generated)",
    "binoculars": "minus log-perplexity / cross-perplexity (higher: generated)",
}


def _sequences(model: Any, prompts: Sequence[str], continuations: Sequence[str]) -> tuple[list[list[int]], list[int]]:
    """``[bos] + prompt + continuation`` token ids and the length of the part before the continuation."""
    bos = getattr(model, "bos_token_id", None)
    head = [] if bos is None else [int(bos)]
    p_ids = model.encode(list(prompts))
    c_ids = model.encode(list(continuations))
    seqs = [head + list(p) + list(c) for p, c in zip(p_ids, c_ids)]
    return seqs, [len(head) + len(p) for p in p_ids]


def _load(path: str, source: str, ctx: ProbeContext) -> Any:
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    spec = SubjectSpec(kind="text-generator", source=source, path=path)
    device = str(ctx.device) if ctx.device is not None else "auto"
    return load_subject(spec, base_dir=Path("."), device=device, cache_dir=Path(ctx.cache_dir))
