"""Probe ``human.ratings``: human judgements of generated images, read back into the audit.

The raters' CSVs come from the page ``genai-audit rate`` writes (or its ``template.csv`` filled
by hand): columns ``rater, item_id, response``. The truth per item is in that page's
``key.csv`` (in the ratings folder, or the data input ``rating_key``). Findings:

* ``2afc`` / ``hype``: ``hype_error_rate``, the share of wrong real/generated judgements
  (HYPE-infinity, Zhou et al. 2019; 0.5 is chance: the raters cannot tell), with a Wilson
  interval; for ``hype`` also ``fake_error_rate`` (generated judged real) and
  ``real_error_rate`` (real judged generated).
* ``likert``: ``mos``, the mean opinion score of the generated images (1-5), and ``mos_real``
  of the real controls, with bootstrap intervals over items.
* Agreement: ``krippendorff_alpha`` (nominal for judgements; ordinal and interval for
  ratings, as slices ``level=``) with a bootstrap interval over items, and ``cohen_kappa``
  when exactly two raters rated (quadratic weights for ratings).

Example (spec):
    data: {ratings: rating/}     # index.html's CSVs saved here, beside key.csv
    probes:
      - id: human.ratings
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from audit.errors import InputError
from audit.findings import Finding, Interval
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import bootstrap_ratio_ci, wilson_interval
from probes.human.agreement import cohen_kappa, krippendorff_alpha

__all__ = ["HumanRatings", "read_key", "read_responses"]

_RESPONSES = {"2afc": ("left", "right"), "hype": ("real", "generated")}
_SKIP = {"key.csv", "template.csv"}
_MAX_NAMED = 10


def _named(rows: list[str]) -> str:
    more = f" and {len(rows) - _MAX_NAMED} more" if len(rows) > _MAX_NAMED else ""
    return "; ".join(rows[:_MAX_NAMED]) + more


def read_key(path: Path) -> dict[str, dict[str, str]]:
    """``key.csv`` of a rating page: item id -> its row (task, truth, images, prompt)."""
    if not path.is_file():
        raise InputError(f"human.ratings: no rating key at {path}; expected the key.csv `genai-audit rate` wrote "
                         "(put it in the ratings folder or give it as the data input `rating_key`)")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"item_id", "task", "truth"} <= set(rows[0]):
        raise InputError(f"human.ratings: {path} is not a rating key: expected columns item_id, task, truth")
    tasks = {r["task"] for r in rows}
    if len(tasks) != 1 or not tasks <= {"2afc", "hype", "likert"}:
        raise InputError(f"human.ratings: {path} mixes or names unknown tasks {sorted(tasks)}; expected one of "
                         "2afc, hype, likert")
    return {r["item_id"]: r for r in rows}


def read_responses(files: list[Path], key: dict[str, dict[str, str]], task: str, *,
                   scale: tuple[int, int] = (1, 5)) -> tuple[list[tuple[str, str, Any]], int]:
    """All answered ``(rater, item_id, response)`` rows of ``files``, checked against ``key``.

    Returns the rows and the number of unanswered rows (empty response) skipped.

    Raises:
        InputError: a file lacks the columns; rows name unknown items, give responses outside
            the task's range, or repeat a rater's item (every such row is named, file:line).
    """
    rows: list[tuple[str, str, Any]] = []
    unknown, bad, dup = [], [], []
    seen: dict[tuple[str, str], str] = {}
    skipped = 0
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"rater", "item_id", "response"} <= set(reader.fieldnames):
                raise InputError(f"human.ratings: {f} has columns {reader.fieldnames}; expected rater, item_id, "
                                 "response (the page's CSV or template.csv)")
            for line, r in enumerate(reader, start=2):
                where = f"{f.name}:{line}"
                item, resp, rater = (r.get("item_id") or "").strip(), (r.get("response") or "").strip(), \
                    (r.get("rater") or "").strip()
                if not resp:
                    skipped += 1
                    continue
                if item not in key:
                    unknown.append(f"{where} item_id {item!r}")
                    continue
                value: Any = resp
                if task == "likert":
                    try:
                        value = int(resp)
                    except ValueError:
                        value = None
                    if value is None or not scale[0] <= value <= scale[1]:
                        bad.append(f"{where} response {resp!r}")
                        continue
                elif resp not in _RESPONSES[task]:
                    bad.append(f"{where} response {resp!r}")
                    continue
                rater = rater or f.stem
                if (rater, item) in seen:
                    dup.append(f"{where} rater {rater!r} item {item!r} (also {seen[(rater, item)]})")
                    continue
                seen[(rater, item)] = where
                rows.append((rater, item, value))
    if unknown:
        raise InputError(f"human.ratings: {len(unknown)} row(s) name items that are not in the rating key: "
                         f"{_named(unknown)}")
    if bad:
        allowed = (f"an integer {scale[0]}-{scale[1]}" if task == "likert" else " or ".join(_RESPONSES[task]))
        raise InputError(f"human.ratings: {len(bad)} row(s) with responses out of range for a {task} task "
                         f"(expected {allowed}): {_named(bad)}")
    if dup:
        raise InputError(f"human.ratings: {len(dup)} repeated rating(s): {_named(dup)}")
    return rows, skipped


@register("human.ratings")
@dataclass(frozen=True)
class HumanRatings:
    """Human ratings of generated images: HYPE error rate, mean opinion scores and inter-rater agreement.

    Reads the CSVs of a `genai-audit rate` page (data input ``ratings``: a folder or one file)
    against its key.csv. Judgements give ``hype_error_rate`` (Wilson interval); 1-5 ratings
    give ``mos`` (bootstrap over items). Krippendorff's alpha and, for two raters, Cohen's kappa.
    """

    id: ClassVar[str] = "human.ratings"
    applies_to: ClassVar[tuple[str, ...]] = ("image-generator",)
    requires: ClassVar[tuple[str, ...]] = ()

    ratings: str = field(default="ratings", metadata={"help": "data input: a folder of rating CSVs (with key.csv), or one CSV"})
    key: str = field(default="rating_key", metadata={"help": "data input with key.csv (default: key.csv beside the ratings)"})
    n_resamples: int = field(default=1000, metadata={"help": "bootstrap resamples (MOS, alpha)"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        for name in ("ratings", "key"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                check.fail(name, "the name of a data input")
        if isinstance(self.n_resamples, bool) or not isinstance(self.n_resamples, int) or self.n_resamples < 20:
            check.fail("n_resamples", "an integer >= 20")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0 < self.confidence < 1:
            check.fail("confidence", "a number in (0, 1), e.g. 0.95")

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        src = ctx.input_path(self.ratings)
        if src.is_dir():
            files = sorted(p for p in src.glob("*.csv") if p.name not in _SKIP)
            key_path = ctx.input_path(self.key) if self.key in ctx.data else src / "key.csv"
        else:
            files = [src]
            key_path = ctx.input_path(self.key) if self.key in ctx.data else src.parent / "key.csv"
        if not files:
            raise InputError(f"{self.id}: no rating CSVs in {src} (key.csv and template.csv are not ratings); save "
                             "the raters' CSVs from the rating page there")
        key = read_key(key_path)
        task = next(iter(key.values()))["task"]
        rows, skipped = read_responses(files, key, task)
        if not rows:
            raise InputError(f"{self.id}: the CSVs in {src} hold no answered rows ({skipped} empty)")
        raters = sorted({r for r, _, _ in rows})
        common = {"task": task, "raters": len(raters), "files": [f.name for f in files], "judgements": len(rows),
                  "unanswered_rows": skipped, "items_in_key": len(key)}
        warns = [f"{skipped} unanswered row(s) skipped"] if skipped else []
        if task == "likert":
            findings = self._mos(rows, key, common, warns)
        else:
            findings = self._errors(rows, key, task, common, warns)
        return findings + self._agreement(rows, raters, task, warns)

    def _errors(self, rows: list, key: dict, task: str, common: dict, warns: list[str]) -> list[Finding]:
        def wrong(item: str, resp: str) -> bool:  # 2afc: truth is the real image's side; hype: real/generated
            return resp != key[item]["truth"]

        out = []
        groups = [("hype_error_rate", rows)]
        if task == "hype":
            groups += [("fake_error_rate", [r for r in rows if key[r[1]]["truth"] == "generated"]),
                       ("real_error_rate", [r for r in rows if key[r[1]]["truth"] == "real"])]
        for metric, group in groups:
            n, k = len(group), sum(wrong(item, resp) for _, item, resp in group)
            if n == 0:
                continue
            out.append(Finding(probe=self.id, metric=metric, value=k / n, higher_is_better=True,
                               ci=wilson_interval(k, n, confidence=self.confidence), n=n, warnings=tuple(warns),
                               evidence={**common, "wrong": k, "chance": 0.5} if not out else {"wrong": k}))
        return out

    def _mos(self, rows: list, key: dict, common: dict, warns: list[str]) -> list[Finding]:
        out = []
        for metric, truth in (("mos", "generated"), ("mos_real", "real")):
            per_item: dict[str, list[int]] = defaultdict(list)
            for _, item, v in rows:
                if key[item]["truth"] == truth:
                    per_item[item].append(v)
            if not per_item:
                continue
            sums = np.array([sum(v) for v in per_item.values()], dtype=float)
            counts = np.array([len(v) for v in per_item.values()], dtype=float)
            n_ratings = int(counts.sum())
            value = float(sums.sum() / counts.sum())  # the mean of all ratings
            # Resampling items keeps each item's ratings together (the ratio of sums is the MOS).
            ci = bootstrap_ratio_ci(sums, counts, n_resamples=self.n_resamples, confidence=self.confidence)
            out.append(Finding(probe=self.id, metric=metric, value=value, higher_is_better=True, unit="1-5",
                               ci=ci, n=n_ratings, warnings=tuple(warns),
                               evidence={**(common if not out else {}), "items": len(per_item),
                                         "ratings": n_ratings}))
        return out

    def _agreement(self, rows: list, raters: list[str], task: str, warns: list[str]) -> list[Finding]:
        items = sorted({i for _, i, _ in rows})
        if len(raters) < 2:
            return [Finding(probe=self.id, metric="krippendorff_alpha", value=math.nan, higher_is_better=True,
                            n=len(items), warnings=tuple(warns) + ("one rater: agreement needs at least two",))]
        codes = {v: i for i, v in enumerate(sorted({v for *_, v in rows}))} if task != "likert" else None
        table = np.full((len(raters), len(items)), np.nan)
        ri, ii = {r: i for i, r in enumerate(raters)}, {it: j for j, it in enumerate(items)}
        for r, it, v in rows:
            table[ri[r], ii[it]] = codes[v] if codes else v
        levels = ("nominal",) if task != "likert" else ("ordinal", "interval")
        out = []
        rng = np.random.default_rng(0)
        for level in levels:
            alpha = krippendorff_alpha(table, level=level)
            boot = [krippendorff_alpha(table[:, rng.integers(0, len(items), len(items))], level=level)
                    for _ in range(min(self.n_resamples, 200))]
            boot = np.array([b for b in boot if math.isfinite(b)])
            ci = None
            if boot.size >= 2 and math.isfinite(alpha):
                a = (1 - self.confidence) / 2
                lo, hi = np.quantile(boot, [a, 1 - a])
                ci = Interval(float(lo), float(hi), f"bootstrap-percentile-{round(self.confidence * 100, 2):g}")
            out.append(Finding(probe=self.id, metric="krippendorff_alpha", value=alpha, higher_is_better=True,
                               ci=ci, n=len(items), slice={"level": level}, warnings=tuple(warns),
                               evidence={"raters": len(raters), "items": len(items)}))
        if len(raters) == 2:
            both = ~np.isnan(table).any(axis=0)
            if both.sum() >= 2:
                weights = "quadratic" if task == "likert" else None
                kappa = cohen_kappa(list(table[0, both]), list(table[1, both]), weights=weights)
                out.append(Finding(probe=self.id, metric="cohen_kappa", value=kappa, higher_is_better=True,
                                   n=int(both.sum()), warnings=tuple(warns),
                                   evidence={"raters": raters, "weights": weights or "none",
                                             "items_rated_by_both": int(both.sum())}))
        return out
