"""Probe ``privacy.membership_inference``: can an attacker tell the training documents from
others by the model's scores?

Members (documents in the training data) and non-members (documents of the same kind that
were not) are scored by the model, each score oriented so that higher means "member":

- ``loss``: the mean token log-probability, minus the loss (Yeom et al. 2018);
- ``zlib``: that divided by the text's zlib entropy in bits (Carlini et al. 2021);
- ``min_k``: the mean of the lowest ``min_k`` share of token log-probabilities (Min-K% Prob,
  Shi et al. 2023);
- ``loss_ratio`` (with ``reference:``, a second model on the same tokenizer, e.g. the base
  model of a fine-tune): minus the subject's loss over the reference's (Carlini et al. 2021).

Each score's AUROC and TPR at 1% and 0.1% FPR (the low-FPR operating points are the ones
that matter for privacy, Carlini et al. 2022) come from :mod:`probes.deepfake.metrics`, with stratified
bootstrap intervals. An AUROC near 0.5 means the attack cannot tell the sets apart.

The known confound of this attack is a difference between the two sets other than
membership (Duan et al. 2024; Das et al. 2024): the probe warns when their length
distributions differ (two-sample KS test), or their dates when both sets carry a
``date_field`` (e.g. ``"date": "2024-03-01"`` in the JSONL records).

Example (spec):
    data: {members: train_sample.jsonl, nonmembers: heldout.jsonl}
    probes:
      - id: privacy.membership_inference
        params: {min_k: 0.2, reference: {source: hf, path: HuggingFaceTB/SmolLM2-135M}}
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from audit.errors import InputError
from audit.findings import Finding, Units
from audit.probe import ParamCheck, ProbeContext, register
from audit.subjects.textdata import Document
from probes.deepfake.metrics import FPR_TARGETS, auroc, roc_curve, stratified_bootstrap, tpr_at_fpr
from probes.privacy.common import (
    check_disjoint,
    load_reference,
    read_set,
    same_tokenizer,
    sequence_logprobs,
    with_bos,
)
from probes.privacy.functional import loss_ratio_score, loss_score, min_k_score, zlib_score

__all__ = ["MembershipInference"]

SCORES = ("loss", "zlib", "min_k")
_CONFOUND_P = 0.05


@register("privacy.membership_inference")
@dataclass(frozen=True)
class MembershipInference:
    """How well loss-based attacks tell training documents from others (AUROC, TPR at low FPR).

    Findings per score (slice ``score``: loss, zlib, min_k, and loss_ratio with a
    ``reference``): ``auroc``, ``tpr_at_fpr_1e-02`` and ``tpr_at_fpr_1e-03`` with stratified
    bootstrap intervals over documents. Lower is better (less membership leakage).
    """

    id: ClassVar[str] = "privacy.membership_inference"
    applies_to: ClassVar[tuple[str, ...]] = ("text-generator",)
    requires: ClassVar[tuple[str, ...]] = ("tokenize", "token_logprobs")

    members: str = field(default="members", metadata={"help": "named data input holding documents in the training data"})
    nonmembers: str = field(default="nonmembers", metadata={"help": "named data input holding documents of the same kind not trained on"})
    min_k: float = field(default=0.2, metadata={"help": "share of lowest-probability tokens averaged by Min-K% Prob, in (0, 1]"})
    reference: Any = field(default=None, metadata={"help": "reference model for the loss ratio: a subject spec {source, path, ...} or a path; null: none"})
    max_tokens: int = field(default=512, metadata={"help": "score at most this many tokens of each document (the first)"})
    max_documents: int | None = field(default=None, metadata={"help": "use at most this many documents of each set (the first); null: all"})
    date_field: str = field(default="date", metadata={"help": "record field holding a document's date (checked for a member/non-member shift)"})
    batch_size: int = field(default=16, metadata={"help": "documents per scoring forward pass"})
    n_resamples: int = field(default=1000, metadata={"help": "bootstrap resamples for the intervals"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals, in (0, 1)"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        for name in ("members", "nonmembers"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                check.fail(name, f"the name of a data input of the spec (e.g. '{name}')")
        if self.members == self.nonmembers:
            check.fail("nonmembers", f"another data input than members ({self.members!r})")
        if not check.is_num(self.min_k) or not 0 < self.min_k <= 1:
            check.fail("min_k", "a number in (0, 1], e.g. 0.2")
        ref = self.reference
        if ref is not None and not (isinstance(ref, str) and ref.strip()) and not (
                isinstance(ref, Mapping) and isinstance(ref.get("path"), str) and isinstance(ref.get("source"), str)):
            check.fail("reference", "null, a model path, or a subject spec with source and path")
        check.int_at_least("max_tokens", 1)
        if self.max_documents is not None and (not check.is_int(self.max_documents) or self.max_documents < 2):
            check.fail("max_documents", "null or an integer >= 2")
        if not isinstance(self.date_field, str):
            check.fail("date_field", "a record field name")
        check.int_at_least("batch_size", 1)
        check.int_at_least("n_resamples", 100)
        if not check.is_num(self.confidence) or not 0 < self.confidence < 1:
            check.fail("confidence", "a number in (0, 1), e.g. 0.95")

    def __hash__(self) -> int:  # the reference may be a dict
        return hash((self.id, repr(self)))

    # -- inputs ----------------------------------------------------------------------------
    def check_inputs(self, ctx: ProbeContext) -> None:
        """Read both sets and check they are disjoint before the model loads."""
        self._sets(ctx)

    def _sets(self, ctx: ProbeContext) -> tuple[list[Document], list[Document]]:
        members = read_set(ctx, self.members, "members")
        nonmembers = read_set(ctx, self.nonmembers, "non-members")
        check_disjoint(members, nonmembers, self.id)
        if self.max_documents is not None:
            members, nonmembers = members[: self.max_documents], nonmembers[: self.max_documents]
        for what, docs in (("members", members), ("non-members", nonmembers)):
            if len(docs) < 2:
                raise InputError(f"{self.id}: the {what} set holds {len(docs)} document(s); an AUROC and its "
                                 f"interval need at least 2 members and 2 non-members (20+ each for a usable one)")
        return members, nonmembers

    # -- run -------------------------------------------------------------------------------
    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        members, nonmembers = self._sets(ctx)
        docs = members + nonmembers
        labels = np.array([1] * len(members) + [0] * len(nonmembers))
        texts = [d.text for d in docs]
        ids = [t[: self.max_tokens] for t in subject.encode(texts)]
        seqs = with_bos(subject, ids)
        empty = [d.id for d, s in zip(docs, seqs) if len(s) < 2]
        if empty:
            raise InputError(f"{self.id}: documents {empty[:5]} have no token to score (the subject has no BOS "
                             f"token and they are one token long)")
        lps = sequence_logprobs(subject, seqs, batch_size=self.batch_size)
        scored = [subject.decode(t) for t in ids]  # the text actually scored (after max_tokens)
        scores: dict[str, np.ndarray] = {
            "loss": np.array([loss_score(lp) for lp in lps]),
            "zlib": np.array([zlib_score(lp, t) for lp, t in zip(lps, scored)]),
            "min_k": np.array([min_k_score(lp, self.min_k) for lp in lps]),
        }
        if self.reference is not None:
            ref = load_reference(self.reference, ctx, self.id)
            try:
                same_tokenizer(subject, ref, texts, self.id)
                ref_lps = sequence_logprobs(ref, with_bos(ref, ids), batch_size=self.batch_size)
            finally:
                ref.close()
            scores["loss_ratio"] = np.array([loss_ratio_score(a, b) for a, b in zip(lps, ref_lps)])
        warnings = self._confounds(members, nonmembers, [len(t) for t in ids])
        n_non = len(nonmembers)
        for target in FPR_TARGETS:
            if n_non * target < 1:
                warnings.append(f"{n_non} non-members cannot resolve an FPR of {target:g} (needs "
                                f"{math.ceil(1 / target)}): tpr_at_fpr_{target:.0e} is the TPR with no non-member flagged")
        for w in warnings:
            ctx.logger.warning("%s: %s", self.id, w)
        ctx.record_samples({"item": d.id, "metric": name, "score": float(s[i]),
                            "label": "member" if labels[i] else "nonmember", "tokens": len(ids[i])}
                           for name, s in scores.items() for i, d in enumerate(docs))
        # Unit ids for paired deltas: the same documents on every variant (the two sets may reuse ids).
        unit_ids = np.array([f"{'member' if y else 'nonmember'}:{d.id}" for d, y in zip(docs, labels)], dtype=object)
        return self._findings(labels, scores, warnings, ctx, unit_ids)

    def _findings(self, labels: np.ndarray, scores: dict[str, np.ndarray], warnings: list[str],
                  ctx: ProbeContext, unit_ids: np.ndarray) -> list[Finding]:
        stats = {"auroc": auroc, **{f"tpr_at_fpr_{t:.0e}": (lambda y, s, t=t: tpr_at_fpr(y, s, t)) for t in FPR_TARGETS}}
        out: list[Finding] = []
        for k, (name, s) in enumerate(scores.items()):
            finite = np.isfinite(s)
            y, s = labels[finite], s[finite]
            units = Units("auroc", unit_ids[finite].tolist(), {"score": s.tolist(), "label": y.tolist()})
            notes = list(warnings)
            if not finite.all():
                notes.append(f"{int((~finite).sum())} documents have no finite {name} score and were left out")
            for j, (metric, fn) in enumerate(stats.items()):
                ev: dict[str, Any] = {}
                if j == 0:
                    fpr, tpr, _ = roc_curve(y, s)
                    keep = np.unique(np.linspace(0, fpr.size - 1, min(fpr.size, 51)).round().astype(int))
                    ev = {"roc": {"fpr": fpr[keep].round(6).tolist(), "tpr": tpr[keep].round(6).tolist()},
                          "n_members": int(y.sum()), "n_nonmembers": int((y == 0).sum()),
                          "mean_score_members": float(s[y == 1].mean()),
                          "mean_score_nonmembers": float(s[y == 0].mean())}
                    if name == "min_k":
                        ev["min_k"] = float(self.min_k)
                ci = stratified_bootstrap(y, s, fn, n_resamples=self.n_resamples, confidence=self.confidence,
                                          seed=ctx.child_seed(f"{name}/{metric}"))
                out.append(Finding(probe=self.id, metric=metric, value=float(fn(y, s)), higher_is_better=False,
                                   ci=ci, n=int(y.size), slice={"score": name}, warnings=tuple(notes), evidence=ev,
                                   units=units if metric == "auroc" else None))
        return out

    def _confounds(self, members: Sequence[Document], nonmembers: Sequence[Document], lengths: Sequence[int]) -> list[str]:
        """Warnings when the two sets differ in length or date distribution (KS test)."""
        from scipy.stats import ks_2samp

        out = []
        m = len(members)
        a, b = np.asarray(lengths[:m]), np.asarray(lengths[m:])
        p = float(ks_2samp(a, b).pvalue)
        if p < _CONFOUND_P:
            out.append(f"members and non-members differ in length (median {np.median(a):g} vs {np.median(b):g} "
                       f"tokens, KS p = {p:.2g}): the scores may separate lengths, not membership; compare sets "
                       f"of matched length")
        da, db = _dates(members, self.date_field), _dates(nonmembers, self.date_field)
        if da is not None and db is not None:
            p = float(ks_2samp(da, db).pvalue)
            if p < _CONFOUND_P:
                out.append(f"members and non-members differ in date (median {_iso(np.median(da))} vs "
                           f"{_iso(np.median(db))}, KS p = {p:.2g}): a date shift alone lets an attack "
                           f"'detect' membership; compare sets from the same period")
        return out


def _dates(docs: Sequence[Document], name: str) -> np.ndarray | None:
    """Day numbers of the documents' ``name`` field (ISO dates or years), or None unless all have one."""
    out = []
    for d in docs:
        raw = d.meta.get(name)
        if raw is None:
            return None
        try:
            day = dt.date.fromisoformat(raw[:10]) if len(raw) >= 10 else dt.date(int(raw[:4]), 1, 1)
        except ValueError:
            return None
        out.append(day.toordinal())
    return np.asarray(out, dtype=np.float64)


def _iso(ordinal: float) -> str:
    return dt.date.fromordinal(int(round(ordinal))).isoformat()
