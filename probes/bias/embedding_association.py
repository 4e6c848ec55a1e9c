"""Probe ``bias.embedding_association``: WEAT / SEAT association tests on an encoder.

The Word Embedding Association Test (Caliskan, Bryson & Narayanan, *Science* 2017) asks
whether two target sets X, Y (e.g. male and female terms) are associated differently with
two attribute sets A, B (e.g. career and family words). With cosine similarity ``cos``:

    s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b)
    effect size d = (mean_{x in X} s(x, A, B) - mean_{y in Y} s(y, A, B)) / std_{w in X u Y} s(w, A, B)

and the one-sided permutation test of the statistic ``S = sum_x s(x) - sum_y s(y)`` over
the equal-size partitions (X_i, Y_i) of X u Y: ``p = P_i[S(X_i, Y_i) > S(X, Y)]`` (exact
when the partitions are few, else a seeded random sample of them). SEAT (May et al., NAACL
2019) is the same test on sentences: each word is put into "bleached" templates such as
"This is a {}.", which is how sentence encoders are meant to be used (``mode: sentence``).

The standard deviation uses ``ddof=1`` (the sample standard deviation, as in the SEAT code
of May et al.); Caliskan et al. write "std-dev" without saying which.

Example:
    >>> import torch
    >>> X = torch.tensor([[1.0, 0.0], [0.9, 0.1]]); Y = torch.tensor([[0.0, 1.0], [0.1, 0.9]])
    >>> A = torch.tensor([[1.0, 0.0]]); B = torch.tensor([[0.0, 1.0]])
    >>> r = weat(X, Y, A, B, n_permutations=1000)
    >>> round(r.effect_size, 3), r.p_value, r.exact
    (1.729, 0.0, True)
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from audit.errors import InputError
from audit.findings import Finding, Interval
from audit.probe import ParamCheck, ProbeContext, register
from probes.bias.engine import holm

__all__ = ["EmbeddingAssociation", "WeatResult", "association_scores", "load_weat_sets", "weat"]

WEAT_SETS = Path(__file__).parent / "data" / "weat_sets_en.json"
SEAT_TEMPLATES = ("This is {}.", "That is {}.", "There is {}.", "Here is {}.", "{} is here.", "{} is there.")


@dataclass(frozen=True)
class WeatResult:
    effect_size: float
    statistic: float
    p_value: float
    n_permutations: int
    exact: bool
    mean_s_x: float
    mean_s_y: float
    ci: Interval | None = None


def association_scores(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``s(w, A, B)`` for every row of W: mean cosine to A minus mean cosine to B.

    Example:
        >>> association_scores(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).tolist()
        [0.0]
    """
    n = torch.nn.functional.normalize
    W, A, B = n(W.double(), dim=-1), n(A.double(), dim=-1), n(B.double(), dim=-1)
    return (W @ A.T).mean(1) - (W @ B.T).mean(1)


def weat(X: torch.Tensor, Y: torch.Tensor, A: torch.Tensor, B: torch.Tensor, *, n_permutations: int = 10000,
         n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> WeatResult:
    """WEAT effect size, permutation p-value and a bootstrap interval of the effect size.

    The permutation test is exact when the number of equal-size partitions of X u Y is at
    most ``n_permutations`` (|X| = |Y| is required for a partition test; with unequal sizes
    the partitions keep |X| items on the X side). The interval resamples the items of X and
    Y (each set within itself) and recomputes d: it says how much d depends on the
    particular words chosen.
    """
    if min(len(X), len(Y)) < 2 or min(len(A), len(B)) < 1:
        raise InputError(f"WEAT needs at least 2 targets per side and 1 attribute per side, got "
                         f"|X|={len(X)}, |Y|={len(Y)}, |A|={len(A)}, |B|={len(B)}")
    s = association_scores(torch.cat([X, Y]), A, B)  # [nx + ny], float64
    nx, n = len(X), len(X) + len(Y)
    sx, sy = s[:nx], s[nx:]
    sd = s.std(unbiased=True)
    effect = float((sx.mean() - sy.mean()) / sd) if sd > 0 else math.nan
    stat = float(sx.sum() - sy.sum())

    total = math.comb(n, nx)
    g = torch.Generator().manual_seed(seed)
    if total <= n_permutations:
        # Every partition: S_i = 2 * sum(s[X_i]) - sum(s).
        combos = torch.tensor(list(itertools.combinations(range(n), nx)), dtype=torch.long)
        exact = True
    else:
        combos = torch.argsort(torch.rand(n_permutations, n, generator=g), dim=1)[:, :nx]
        exact = False
    perm_stats = 2 * s[combos].sum(1) - s.sum()
    # Ties count as not greater (Caliskan's strict '>'); a tiny tolerance absorbs float noise.
    greater = (perm_stats > stat + 1e-12).sum().item()
    p = greater / len(combos) if exact else (greater + 1) / (len(combos) + 1)

    ci = None
    if n_resamples > 0 and math.isfinite(effect):
        ix = torch.randint(0, nx, (n_resamples, nx), generator=g)
        iy = torch.randint(0, n - nx, (n_resamples, n - nx), generator=g)
        bx, by = sx[ix], sy[iy]
        both = torch.cat([bx, by], 1)
        d = (bx.mean(1) - by.mean(1)) / both.std(1, unbiased=True)
        d = d[torch.isfinite(d)]
        if d.numel() >= 2:
            alpha = (1 - confidence) / 2
            lo, hi = torch.quantile(d, torch.tensor([alpha, 1 - alpha], dtype=d.dtype)).tolist()
            ci = Interval(lo, hi, f"bootstrap-percentile-{round(confidence * 100, 2):g}")
    return WeatResult(effect, stat, float(round(p, 4)) if exact else float(p), len(combos), exact,
                      float(sx.mean()), float(sy.mean()), ci)


def load_weat_sets(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Tests from a JSON file: ``{name: {X: [...], Y: [...], A: [...], B: [...], labels?: {...}}}``.

    Raises:
        InputError: the file is unreadable, or a test lacks a set or has an empty one (named).
    """
    p = Path(path) if path is not None else WEAT_SETS
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{p}: cannot read the WEAT sets: {exc}") from None
    tests = data.get("tests", data) if isinstance(data, dict) else None
    if not isinstance(tests, dict) or not tests:
        raise InputError(f"{p}: expected {{\"tests\": {{name: {{X, Y, A, B}}}}}}, got {type(data).__name__}")
    bad = []
    for name, t in tests.items():
        if not isinstance(t, dict):
            bad.append(f"{name}: not a mapping")
            continue
        for key in ("X", "Y", "A", "B"):
            v = t.get(key)
            if not isinstance(v, list) or not v or not all(isinstance(w, str) and w.strip() for w in v):
                bad.append(f"{name}.{key}: missing or empty" if not v else f"{name}.{key}: needs non-empty strings")
    if bad:
        raise InputError(f"{p}: bad WEAT sets: {'; '.join(bad)}")
    return tests


@register("bias.embedding_association")
@dataclass(frozen=True)
class EmbeddingAssociation:
    """WEAT/SEAT effect sizes of an encoder, with permutation-test p-values.

    Findings per test: ``effect_size`` (Cohen's-d-like, in [-2, 2]; 0 means no differential
    association; positive means X goes with A and Y with B), with a bootstrap interval over
    the words and, in the evidence, the permutation p-value and its Holm-adjusted value
    over all the tests run.
    """

    id: ClassVar[str] = "bias.embedding_association"
    applies_to: ClassVar[tuple[str, ...]] = ("encoder",)
    requires: ClassVar[tuple[str, ...]] = ("embed_text",)

    data: str | None = field(default=None, metadata={"help": "named data input with WEAT sets (JSON); default: the project's sets"})
    tests: tuple[str, ...] | None = field(default=None, metadata={"help": "names of the tests to run (default: all in the file)"})
    mode: str = field(default="sentence", metadata={"help": "'sentence' (SEAT: words in bleached templates) or 'word' (WEAT)"})
    templates: tuple[str, ...] = field(default=SEAT_TEMPLATES, metadata={"help": "SEAT templates, each with one {}"})
    n_permutations: int = field(default=10000, metadata={"help": "partitions sampled (exact enumeration when fewer exist)"})
    n_resamples: int = field(default=1000, metadata={"help": "bootstrap resamples for the effect-size interval"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level"})
    alpha: float = field(default=0.05, metadata={"help": "significance level (Holm over the tests)"})
    batch_size: int = field(default=64, metadata={"help": "texts per embedding batch"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail = check.fail
        if self.mode not in ("sentence", "word"):
            fail("mode", "'sentence' or 'word'")
        if self.mode == "sentence" and (not self.templates or any(t.count("{}") != 1 for t in self.templates)):
            fail("templates", "a non-empty list of strings with exactly one {} each")
        if not isinstance(self.n_permutations, int) or self.n_permutations < 100:
            fail("n_permutations", "an integer >= 100")
        if not isinstance(self.n_resamples, int) or not (self.n_resamples == 0 or self.n_resamples >= 100):
            fail("n_resamples", "0 or an integer >= 100")
        for name in ("confidence", "alpha"):
            if not 0 < getattr(self, name) < 1:
                fail(name, "a number in (0, 1)")
        if self.tests is not None and not self.tests:
            fail("tests", "a non-empty list of test names, or null for all")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            fail("batch_size", "an integer >= 1")

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        path = ctx.input_path(self.data) if self.data else WEAT_SETS
        sets = load_weat_sets(path)
        names = list(self.tests) if self.tests else list(sets)
        unknown = [n for n in names if n not in sets]
        if unknown:
            raise InputError(f"{self.id}: tests {unknown} are not in {path} (it has {', '.join(sets)})")

        items = {}
        for name in names:
            for key in "XYAB":
                items[(name, key)] = self._texts(sets[name][key])
        unique = list(dict.fromkeys(t for texts in items.values() for t in texts))
        # Under torchrun each rank embeds its share (whole batches); the permutation tests then run
        # on every rank from the gathered embeddings with the same seed.
        mine = ctx.dist.shard(len(unique), block=self.batch_size)
        own = subject.embed_text(unique[mine.start:mine.stop], batch_size=self.batch_size).float().cpu() \
            if len(mine) else None
        if ctx.dist.active:
            dims = ctx.dist.all_gather_object(None if own is None else int(own.shape[1]))
            width = next(d for d in dims if d is not None)
            own = own if own is not None else torch.zeros((0, width))
            emb = ctx.dist.gather_tensor(own, mine)
        else:
            emb = own
        row = {t: i for i, t in enumerate(unique)}

        results = []
        for name in names:
            X, Y, A, B = (emb[[row[t] for t in items[(name, k)]]].cpu() for k in "XYAB")
            results.append(weat(X, Y, A, B, n_permutations=self.n_permutations, n_resamples=self.n_resamples,
                                confidence=self.confidence, seed=ctx.child_seed(name)))
        adjusted = holm([r.p_value for r in results])
        out = []
        for name, r, p_holm in zip(names, results, adjusted):
            t = sets[name]
            w = []
            if self.mode == "sentence":
                w.append("SEAT: items are words in bleached templates, so the permutation test treats the "
                         f"{len(self.templates)} sentences of a word as separate items (p is optimistic)")
            if not math.isfinite(r.effect_size):
                w.append("every association score is equal: the effect size is undefined (nan)")
            out.append(Finding(
                probe=self.id, metric="effect_size", value=r.effect_size, higher_is_better=False, ci=r.ci,
                n=len(items[(name, "X")]) + len(items[(name, "Y")]), slice={"test": name}, warnings=tuple(w),
                evidence={
                    "p_value": r.p_value, "p_holm": float(p_holm), "significant": bool(p_holm < self.alpha),
                    "permutations": r.n_permutations, "exact": r.exact, "statistic": r.statistic,
                    "mean_s_X": r.mean_s_x, "mean_s_Y": r.mean_s_y, "mode": self.mode,
                    "labels": t.get("labels", {}), "sizes": {k: len(t[k]) for k in "XYAB"},
                    "reading": "positive: X is closer to A and Y to B; |d| 0.2 small, 0.5 medium, 0.8 large",
                },
            ))
        return out

    def _texts(self, words: Sequence[str]) -> list[str]:
        if self.mode == "word":
            return list(words)
        return [tpl.format(w) for w in words for tpl in self.templates]




