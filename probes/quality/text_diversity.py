"""Probe ``quality.text_diversity``: how varied a language model's generations are, and how
close they come to reference answers when a prompt has one.

The subject writes ``samples_per_prompt`` continuations of every prompt (sampled at
``temperature``, each round seeded from the audit seed). Per prompt, over its samples:
distinct-n (Li et al., 2016) and self-BLEU (Zhu et al., 2018), both from
:mod:`probes.quality.text_functional`; and, for prompts with a ``reference``, the mean
sentence-level BLEU, ROUGE-L F1 and chrF of the samples against it (torchmetrics). Each
finding is the mean over prompts, with a percentile bootstrap interval over prompts (the
unit that was sampled).

Example (spec):
    data: {prompts: prompts.jsonl}       # {"text": "...", "reference": "..."} per line
    probes:
      - id: quality.text_diversity
        params: {samples_per_prompt: 4, max_new_tokens: 48, temperature: 1.0}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from audit.errors import InputError
from audit.findings import Finding, Units
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import bootstrap_ci
from audit.subjects.textdata import read_documents
from audit.subjects.textgen import generate_texts
from probes.quality.text_functional import distinct_n, self_bleu, tokenize

__all__ = ["TextDiversity", "reference_scores"]

_SMALL = 20
_EXAMPLES = 3


def reference_scores(hypotheses: list[str], reference: str) -> dict[str, list[float]]:
    """Sentence-level BLEU (4-gram, smoothed), ROUGE-L F1 and chrF of each hypothesis against
    one reference, with torchmetrics' text metrics (their own tokenisation). Empty
    hypotheses score 0.

    Example:
        >>> s = reference_scores(["the cat sat on the mat"], "the cat sat on the mat")
        >>> [round(v[0], 4) for v in s.values()]
        [1.0, 1.0, 1.0]
    """
    from torchmetrics.functional.text import bleu_score, chrf_score, rouge_score

    out: dict[str, list[float]] = {"bleu": [], "rouge_l": [], "chrf": []}
    present = [h for h in hypotheses if h.strip()]
    chrf = iter(chrf_score(present, [[reference]] * len(present), return_sentence_level_score=True)[1].tolist()
                if present else [])
    for h in hypotheses:
        if not h.strip():
            for k in out:
                out[k].append(0.0)
            continue
        out["bleu"].append(float(bleu_score([h], [[reference]], n_gram=4, smooth=True)))
        out["rouge_l"].append(float(rouge_score(h, reference, rouge_keys="rougeL")["rougeL_fmeasure"]))
        out["chrf"].append(float(next(chrf)))
    return out


@register("quality.text_diversity")
@dataclass(frozen=True)
class TextDiversity:
    """Diversity of a language model's generations (distinct-n, self-BLEU) and BLEU / ROUGE-L / chrF against references.

    For every prompt of ``data`` the subject writes ``samples_per_prompt`` sampled
    continuations. Per prompt: distinct-n over its samples (word n-grams, lower-cased) and
    self-BLEU (each sample against the others); for prompts with a ``reference_field``, the
    samples' mean BLEU, ROUGE-L F1 and chrF against it. Findings are means over prompts with
    bootstrap intervals over prompts.
    """

    id: ClassVar[str] = "quality.text_diversity"
    applies_to: ClassVar[tuple[str, ...]] = ("text-generator",)
    requires: ClassVar[tuple[str, ...]] = ("generate",)

    data: str = field(default="prompts", metadata={"help": "named data input holding the prompts (.jsonl with text and an optional reference, .txt, ...)"})
    samples_per_prompt: int = field(default=4, metadata={"help": "generations per prompt (>= 2; self-BLEU compares them)"})
    max_new_tokens: int = field(default=48, metadata={"help": "length of each generation in tokens"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (> 0)"})
    prompt_template: str = field(default="{prompt}", metadata={"help": "how each prompt is shown to the model, e.g. 'Question: {prompt}\\nAnswer:'"})
    max_prompts: int | None = field(default=None, metadata={"help": "use at most this many prompts (the first ones); null: all"})
    ngram_orders: tuple[int, ...] = field(default=(1, 2, 3), metadata={"help": "n of the distinct-n findings"})
    bleu_max_n: int = field(default=4, metadata={"help": "highest n-gram order of self-BLEU"})
    reference_field: str = field(default="reference", metadata={"help": "prompt field holding a reference answer (prompts without one are not scored against references)"})
    n_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples (over prompts) for the intervals"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals, in (0, 1)"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail, is_int = check.fail, check.is_int
        check.data_name("prompts")
        if not is_int(self.samples_per_prompt) or self.samples_per_prompt < 2:
            fail("samples_per_prompt", "an integer >= 2 (self-BLEU compares samples with each other)")
        check.int_at_least("max_new_tokens", 1)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not 0 < self.temperature <= 10:
            fail("temperature", "a number in (0, 10] (greedy decoding makes every sample the same)")
        if not isinstance(self.prompt_template, str) or self.prompt_template.count("{prompt}") != 1:
            fail("prompt_template", "a string with exactly one '{prompt}'")
        if self.max_prompts is not None and (not is_int(self.max_prompts) or self.max_prompts < 2):
            fail("max_prompts", "null or an integer >= 2")
        if not isinstance(self.ngram_orders, tuple) or not self.ngram_orders \
                or not all(is_int(n) and 1 <= n <= 8 for n in self.ngram_orders) \
                or len(set(self.ngram_orders)) != len(self.ngram_orders):
            fail("ngram_orders", "a non-empty list of distinct integers in 1 .. 8, e.g. [1, 2, 3]")
        if not is_int(self.bleu_max_n) or not 1 <= self.bleu_max_n <= 8:
            fail("bleu_max_n", "an integer in 1 .. 8")
        if not isinstance(self.reference_field, str) or not self.reference_field.strip():
            fail("reference_field", "the name of a prompt field (e.g. 'reference')")
        if not is_int(self.n_resamples) or self.n_resamples < 100:
            fail("n_resamples", "an integer >= 100 (fewer gives unstable interval bounds)")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0 < self.confidence < 1:
            fail("confidence", "a number in (0, 1), e.g. 0.95")

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        docs = read_documents(ctx.input_path(self.data))
        if self.max_prompts is not None:
            docs = docs[: self.max_prompts]
        if len(docs) < 2:
            raise InputError(f"{self.id}: needs at least 2 prompts in '{self.data}' (intervals are over "
                             f"prompts), got {len(docs)}")
        prompts = [self.prompt_template.replace("{prompt}", d.text) for d in docs]

        # Each sample has its own seed (prompt index, round), so the samples do not depend on the
        # order of the calls; under torchrun each rank samples its share of the prompts and the
        # samples are gathered in prompt order.
        # The subject generates them in batches (audit.subjects.textgen).
        mine = ctx.dist.shard(len(prompts))
        k = self.samples_per_prompt
        flat = generate_texts(subject, [prompts[i] for i in mine for _ in range(k)],
                              [ctx.child_seed(f"sample-{i}-{j}") for i in mine for j in range(k)],
                              max_new_tokens=self.max_new_tokens, temperature=float(self.temperature), what=self.id,
                              progress=lambda calls: ctx.progress(calls, total=len(calls), desc=f"{self.id}: generating"))
        own = [flat[r * k:(r + 1) * k] for r in range(len(mine))]
        samples = ctx.dist.gather(own, mine)
        tokens = [[tokenize(s) for s in per] for per in samples]
        ctx.record_samples({"item": d.id, "metric": "n_tokens", "score": len(tokens[i][j]), "text": text,
                            "seed": ctx.child_seed(f"sample-{i}-{j}"), "round": j, "prompt": prompts[i][:500]}
                           for i, d in enumerate(docs) for j, text in enumerate(samples[i]))

        notes: list[str] = []
        empty = sum(1 for per in tokens for t in per if not t)
        if empty:
            notes.append(f"{empty} of {len(docs) * self.samples_per_prompt} generations are empty")
        if len(docs) < _SMALL:
            notes.append(f"only {len(docs)} prompts: the bootstrap interval over prompts is wide; "
                         f"use {_SMALL} or more")

        findings: list[Finding] = []
        for n in self.ngram_orders:
            per_prompt = np.array([distinct_n(t, n) for t in tokens])
            corpus = distinct_n([t for per in tokens for t in per], n)
            findings.append(self._finding(f"distinct_{n}", per_prompt, True, notes, [d.id for d in docs],
                                          ctx, {"corpus_distinct": corpus, "n": n}))
        # An empty generation is no hypothesis and no reference: self-BLEU compares the others.
        per_prompt_sb = np.array([self_bleu([x for x in t if x], max_n=self.bleu_max_n, smooth=True)
                                  for t in tokens])
        findings.append(self._finding("self_bleu", per_prompt_sb, False, notes, [d.id for d in docs], ctx,
                                      {"max_n": self.bleu_max_n, "smooth": True,
                                       "examples": [{"id": d.id, "prompt": d.text, "samples": s}
                                                    for d, s in zip(docs[:_EXAMPLES], samples)]}))

        with_ref = [(i, d.meta[self.reference_field]) for i, d in enumerate(docs)
                    if str(d.meta.get(self.reference_field, "")).strip()]
        if with_ref:
            per_metric: dict[str, list[float]] = {"bleu": [], "rouge_l": [], "chrf": []}
            for i, ref in with_ref:
                for k, v in reference_scores(samples[i], ref).items():
                    per_metric[k].append(float(np.mean(v)))
            ref_notes = list(notes)
            if len(with_ref) < len(docs):
                ref_notes.append(f"{len(with_ref)} of {len(docs)} prompts have a '{self.reference_field}'; "
                                 f"the others are not in these findings")
            ids = [docs[i].id for i, _ in with_ref]
            for k, values in per_metric.items():
                findings.append(self._finding(k, np.array(values), True, ref_notes, ids, ctx,
                                              {"sentence_level": True, "library": "torchmetrics"}))
        return findings

    def _finding(self, metric: str, per_prompt: np.ndarray, higher: bool, notes: list[str], ids: list[str],
                 ctx: ProbeContext, evidence: dict[str, Any]) -> Finding:
        warnings = list(notes)
        ok = np.isfinite(per_prompt)
        if not ok.all():
            bad = [i for i, good in zip(ids, ok) if not good]
            warnings.append(f"{len(bad)} prompts have no {metric} (too few n-grams or non-empty samples) and are "
                            f"left out: "
                            f"{', '.join(repr(b) for b in bad[:5])}")
        values = per_prompt[ok]
        value = float(values.mean()) if values.size else math.nan
        ci = bootstrap_ci(values, n_resamples=self.n_resamples, confidence=self.confidence,
                          seed=ctx.child_seed(f"bootstrap-{metric}")) if values.size else None
        if values.size == 1:
            warnings.append("only 1 prompt: no interval can be formed")
        # Per-prompt units (the finding is the mean over prompts): variants pair by prompt id.
        units = Units("mean", [i for i, good in zip(ids, ok) if good], {"x": values.tolist()}) if values.size else None
        return Finding(probe=self.id, metric=metric, value=value, higher_is_better=higher, ci=ci, n=int(values.size),
                       warnings=tuple(warnings), units=units,
                       evidence={**evidence, "per_prompt": [round(float(v), 6) for v in per_prompt[:200]],
                                 "prompt_ids": ids[:200]})
