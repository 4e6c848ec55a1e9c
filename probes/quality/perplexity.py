"""Probe ``quality.perplexity``: how well a language model predicts a held-out corpus.

The maths (windowing, batching, perplexity and bits per byte) lives in
:mod:`probes.quality.functional`; this module reads the corpus, calls it, and turns the
per-document sums into findings with bootstrap intervals over documents.

Example (spec):
    probes:
      - id: quality.perplexity
        params: {max_length: 1024, stride: 512, slice_by: genre}
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from audit.findings import Finding, Interval, Units
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import bootstrap_ratio_ci
from audit.subjects.textdata import read_documents
from probes.quality.functional import bits_per_byte, corpus_perplexity, windowed_token_logprobs

_DEFAULT_SLICE_BY = "genre"

__all__ = ["Perplexity"]

_LN2 = math.log(2.0)
_SMALL_CORPUS = 20
_MAX_EVIDENCE = 1000


@register("quality.perplexity")
@dataclass(frozen=True)
class Perplexity:
    """Perplexity and bits per byte of a language model on a held-out corpus.

    Each document is scored on its own (optionally after the model's BOS token), in
    overlapping windows of ``max_length`` tokens that start every ``stride`` tokens, so that
    every token is scored once with up to ``max_length - 1`` tokens of context. Corpus
    perplexity is ``exp(total NLL / total scored tokens)``; bits per byte divides the NLL (in
    bits) by the UTF-8 bytes of the scored text instead, which compares models with
    different tokenizers. Intervals are percentile bootstraps over documents.

    Findings: ``perplexity``, ``bits_per_byte``, ``nll_per_token`` (nats), and
    lm-evaluation-harness's wikitext conventions ``word_perplexity`` (``exp(NLL / words)``,
    words as ``re.split(r"\\s+", text)`` counts them) and ``byte_perplexity`` (``exp(NLL /
    UTF-8 bytes)``) for the corpus; ``perplexity`` / ``bits_per_byte`` per value of the
    ``slice_by`` metadata field. Every corpus value is token-weighted over the whole corpus
    (total NLL over total units), not a mean of per-document values.
    """

    id: ClassVar[str] = "quality.perplexity"
    applies_to: ClassVar[tuple[str, ...]] = ("text-generator",)
    requires: ClassVar[tuple[str, ...]] = ("tokenize", "token_logprobs")

    data: str = field(default="texts", metadata={"help": "named data input of the spec holding the corpus (.txt, .jsonl, .json or a folder)"})
    max_length: int = field(default=1024, metadata={"help": "most tokens per window (clamped to the model's context)"})
    stride: int = field(default=512, metadata={"help": "tokens between window starts; smaller gives more context per token, more compute"})
    batch_size: int = field(default=8, metadata={"help": "windows per forward pass (halved automatically on out-of-memory)"})
    add_bos: bool = field(default=True, metadata={"help": "prepend the model's BOS token so each document's first token is scored too"})
    slice_by: str | None = field(default=_DEFAULT_SLICE_BY, metadata={"help": "document metadata field to report per-slice findings by (none: null)"})
    selective_logits: bool = field(default=True, metadata={"help": "transformers subjects: project to the vocabulary only at scored positions (same numbers, faster); false uses the subject's token_logprobs"})
    autocast: str | None = field(default=None, metadata={"help": "null (the model's dtype, the reference), 'bfloat16' or 'float16': run forward passes under torch.autocast (faster on GPUs, ~1e-2 relative error)"})
    n_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples (over documents) for the intervals"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals, in (0, 1)"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail, is_int = check.fail, check.is_int
        check.data_name("texts")
        if not is_int(self.max_length) or self.max_length < 2:
            fail("max_length", "an integer >= 2 (one token of context and one to score)")
        if not is_int(self.stride) or not 0 < self.stride <= self.max_length:
            fail("stride", f"an integer in 1 .. max_length ({self.max_length})")
        check.int_at_least("batch_size", 1)
        if not isinstance(self.add_bos, bool):
            fail("add_bos", "true or false")
        if self.slice_by is not None and (not isinstance(self.slice_by, str) or not self.slice_by.strip()):
            fail("slice_by", "the name of a metadata field (e.g. 'genre') or null")
        if not isinstance(self.selective_logits, bool):
            fail("selective_logits", "true or false")
        if self.autocast not in (None, "bfloat16", "float16"):
            fail("autocast", "null, 'bfloat16' or 'float16'")
        if not is_int(self.n_resamples) or self.n_resamples < 100:
            fail("n_resamples", "an integer >= 100 (fewer gives unstable interval bounds)")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0 < self.confidence < 1:
            fail("confidence", "a number in (0, 1), e.g. 0.95")

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        import torch

        docs = read_documents(ctx.input_path(self.data))
        notes: list[str] = []

        max_length, stride = self.max_length, self.stride
        limit = getattr(subject, "max_context", None)
        if limit is not None and max_length > limit:
            notes.append(f"max_length {max_length} exceeds the model's context of {limit} tokens; "
                         f"clamped to {limit}")
            max_length, stride = limit, min(stride, limit)

        bos = subject.bos_token_id if self.add_bos else None
        if self.add_bos and bos is None:
            notes.append("the model has no BOS token: the first token of each document is not scored")
        token_ids = subject.encode([d.text for d in docs])
        sequences = [([bos] if bos is not None else []) + list(ids) for ids in token_ids]

        keep = [i for i, s in enumerate(sequences) if len(s) >= 2]
        if len(keep) < len(docs):
            skipped = [docs[i].id for i in range(len(docs)) if len(sequences[i]) < 2]
            notes.append(f"{len(skipped)} of {len(docs)} documents have fewer than 2 tokens (nothing to "
                         f"score) and were skipped: {_some(skipped)}")
        docs = [docs[i] for i in keep]
        sequences = [sequences[i] for i in keep]

        tokens = np.array([len(s) - 1 for s in sequences], dtype=np.float64)
        n_bytes = np.array([len(d.text.encode("utf-8")) for d in docs], dtype=np.float64)
        n_words = np.array([len(re.split(r"\s+", d.text)) for d in docs], dtype=np.float64)
        if bos is None:
            # The first token is context only: count the bytes of the text that was scored.
            n_bytes -= [len(subject.decode([s[0]]).encode("utf-8")) for s in sequences]
            n_bytes = np.maximum(n_bytes, 0.0)

        nll, selective = self._score_documents(subject, ctx, sequences, tokens, max_length, stride, notes)

        ctx.record_samples({"item": d.id, "metric": "nll", "score": float(nll[i]), "tokens": int(tokens[i]),
                            "bytes": int(n_bytes[i]), "slice": {self.slice_by: str(d.meta[self.slice_by])}
                            if self.slice_by and d.meta.get(self.slice_by) is not None else {}}
                           for i, d in enumerate(docs))
        group = _Group(self, ctx, nll, tokens, n_bytes, n_words, [d.id for d in docs])
        everything = np.ones(len(docs), dtype=bool)
        findings = group.findings(everything, {}, notes, metrics=(
            "perplexity", "bits_per_byte", "nll_per_token", "word_perplexity", "byte_perplexity"))
        per_doc = corpus_perplexity(torch.from_numpy(nll), torch.from_numpy(tokens)).tolist()
        shown = min(len(docs), _MAX_EVIDENCE)
        findings[0] = replace(findings[0], evidence={
            "per_document": per_doc[:shown],
            "document_ids": [d.id for d in docs[:shown]],
            "documents": len(docs),
            "tokens": int(tokens.sum()),
            "bytes": int(n_bytes.sum()),
            "words": int(n_words.sum()),
            "max_length": max_length,
            "stride": stride,
            "bos": bos is not None,
            "scorer": "selective-logits" if selective else "token_logprobs",
            "autocast": self.autocast,
            **({"per_document_truncated": True} if shown < len(docs) else {}),
        })

        if self.slice_by:
            findings = self._slice_findings(findings, group, docs)
        return findings

    def _score_documents(self, subject: Any, ctx: ProbeContext, sequences: list[list[int]], tokens: np.ndarray,
                         max_length: int, stride: int, notes: list[str]) -> tuple[np.ndarray, bool]:
        """The summed NLL (nats) of each document, and whether the selective scorer ran."""
        import torch

        nll = np.zeros(len(sequences), dtype=np.float64)
        if not sequences:
            return nll, False
        device = getattr(subject, "device", None) or ctx.device
        score_fn, selective = self._score_fn(subject, notes)
        # Under torchrun each rank scores its own documents; the per-document sums are
        # gathered in document order, so every rank computes the same findings.
        mine = ctx.dist.shard(len(sequences))
        nll_mine = np.zeros(len(mine), dtype=np.float64)
        if len(mine):
            logprobs = windowed_token_logprobs(
                score_fn, sequences[mine.start:mine.stop], max_length=max_length, stride=stride,
                batch_size=self.batch_size, pad_id=subject.pad_token_id, device=device,
                progress=lambda it, total: ctx.progress(it, total=total, desc=f"{self.id}: windows"),
                selective=selective,
            )
            flat = torch.cat(logprobs).double()
            doc_of_token = torch.repeat_interleave(
                torch.arange(len(mine), device=flat.device),
                torch.as_tensor(tokens[mine.start:mine.stop], dtype=torch.long).to(flat.device),
            )
            nll_t = torch.zeros(len(mine), dtype=torch.float64, device=flat.device).index_add_(
                0, doc_of_token, -flat)
            nll_mine = nll_t.cpu().numpy()  # the one transfer to the host
        return np.asarray(ctx.dist.gather(nll_mine.tolist(), mine), dtype=np.float64), selective

    def _slice_findings(self, findings: list[Finding], group: _Group, docs: Sequence[Any]) -> list[Finding]:
        """``findings`` with ``perplexity`` / ``bits_per_byte`` per value of ``slice_by`` added."""
        values = [d.meta.get(self.slice_by) for d in docs]
        present = sorted({v for v in values if v is not None})
        slice_notes = []
        missing = sum(v is None for v in values)
        if present and missing:
            slice_notes.append(f"{missing} of {len(docs)} documents have no '{self.slice_by}' and are in no slice")
        for value in present:
            mask = np.array([v == value for v in values])
            findings += group.findings(mask, {self.slice_by: value}, slice_notes,
                                       metrics=("perplexity", "bits_per_byte"))
        missing_field = _no_slice_field(self.slice_by, docs, explicit=self.slice_by != _DEFAULT_SLICE_BY)
        if not present and missing_field:
            findings[0] = replace(findings[0], warnings=(*findings[0].warnings, missing_field))
        return findings

    def _score_fn(self, subject: Any, notes: list[str]) -> tuple[Any, bool]:
        """The fastest honest scorer for ``subject``: the selective transformers path when
        the subject is a transformers model that supports it, else its ``token_logprobs``."""
        from audit.subjects import HFTextGenerator
        from probes.quality.functional import causal_lm_scorer

        if isinstance(subject, HFTextGenerator) and (self.selective_logits or self.autocast):
            scorer = causal_lm_scorer(subject.model, autocast=self.autocast)
            if scorer is not None:
                if not self.selective_logits:
                    sel = scorer
                    return (lambda ids, mask: _full_from_selective(sel, ids, mask)), False
                return scorer, True
        if self.autocast:
            notes.append(f"autocast {self.autocast!r} needs a transformers subject; ran in the model's dtype")
        return subject.token_logprobs, False


def _no_slice_field(field_name: str, docs: list[Any], *, explicit: bool) -> str | None:
    """The warning for a ``slice_by`` field that no document has (so no slice is reported):
    always when the field was chosen in the spec, and for the default field only when the
    documents carry other metadata (a corpus without any metadata is plainly unsliced)."""
    from audit.probe import did_you_mean

    fields = sorted({k for d in docs for k in d.meta})
    if not explicit and not fields:
        return None
    have = f"the fields they have: {', '.join(fields[:10])}" if fields else "they have no metadata fields"
    return (f"slice_by: no document has the metadata field '{field_name}' ({have}), so no per-slice findings "
            f"were made.{did_you_mean(field_name, fields)}")


def _full_from_selective(score: Any, input_ids: Any, attention_mask: Any) -> Any:
    """A ``[B, T-1]`` score function from a selective one (every position selected)."""
    import torch

    b, t = input_ids.shape
    select = torch.ones(b, t - 1, dtype=torch.bool, device=input_ids.device)
    return score(input_ids, attention_mask, select).view(b, t - 1)


@dataclass
class _Group:
    """Per-document sums of one run, turned into findings for any subset of documents."""

    probe: Perplexity
    ctx: ProbeContext
    nll: np.ndarray
    tokens: np.ndarray
    n_bytes: np.ndarray
    n_words: np.ndarray
    ids: Sequence[str]

    def findings(self, mask: np.ndarray, slice_: dict[str, str], notes: list[str],
                 metrics: Sequence[str]) -> list[Finding]:
        nll, tokens, n_bytes, n_words = self.nll[mask], self.tokens[mask], self.n_bytes[mask], self.n_words[mask]
        n = int(mask.sum())
        warnings = list(notes)
        bad = ~np.isfinite(nll)
        if n == 0:
            warnings.append("no document to score: the value is nan")
        elif bad.any():
            bad_ids = [i for i, b in zip(np.asarray(self.ids)[mask], bad) if b]
            warnings.append(f"{int(bad.sum())} of {n} documents have a non-finite NLL (the model returned NaN "
                            f"or infinite log-probabilities): {_some(bad_ids)}; the value is nan")
        elif n < 2:
            warnings.append("only 1 document: no interval can be formed")
        elif n < _SMALL_CORPUS:
            warnings.append(f"only {n} documents: the bootstrap interval over documents is wide; "
                            f"use {_SMALL_CORPUS} or more")
        ok = n > 0 and not bad.any()

        total_nll, total_tok, total_bytes, total_words = nll.sum(), tokens.sum(), n_bytes.sum(), n_words.sum()
        specs = {
            "perplexity": (lambda: float(corpus_perplexity(total_nll, total_tok)), nll, tokens, np.exp, ""),
            "bits_per_byte": (lambda: float(bits_per_byte(total_nll, total_bytes)), nll / _LN2, n_bytes, None,
                              "bits/byte"),
            "nll_per_token": (lambda: float(total_nll / total_tok), nll, tokens, None, "nats/token"),
            "word_perplexity": (lambda: float(np.exp(total_nll / total_words)), nll, n_words, np.exp, ""),
            "byte_perplexity": (lambda: float(np.exp(total_nll / total_bytes)), nll, n_bytes, np.exp, ""),
        }
        out = []
        ids = [str(i) for i in np.asarray(self.ids, dtype=object)[mask]]
        for metric in metrics:
            value_fn, num, den, transform, unit = specs[metric]
            value, ci, units = math.nan, None, None
            if ok:
                value = value_fn()
                ci = self._interval(num, den, transform)
                # Per-document sums, so that a variant's finding pairs with this one by document id.
                units = Units("exp_ratio" if transform is np.exp else "ratio", ids,
                              {"num": num.tolist(), "den": den.tolist()})
            out.append(Finding(
                probe=self.probe.id, metric=metric, value=value, higher_is_better=False, unit=unit,
                ci=ci, n=n, slice=slice_, warnings=tuple(warnings),
                evidence={"tokens": int(total_tok), "bytes": int(total_bytes)} if slice_ else {},
                units=units,
            ))
        return out

    def _interval(self, num: np.ndarray, den: np.ndarray, transform: Any) -> Interval | None:
        return bootstrap_ratio_ci(
            num, den, transform=transform, n_resamples=self.probe.n_resamples,
            confidence=self.probe.confidence, seed=self.ctx.child_seed("bootstrap"),
        )


def _some(ids: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(repr(str(i)) for i in ids[:k])
    return shown + (f" and {len(ids) - k} more" if len(ids) > k else "")
