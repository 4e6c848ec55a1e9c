"""Probe ``bias.classifier``: does a classifier treat groups of people differently?

It reads a labelled table (CSV or Parquet) with sensitive columns, runs the classifier on
it (or reads its stored predictions), and disaggregates selection rate, accuracy, TPR and
FPR by each sensitive column and by their intersection, with the gaps Fairlearn defines
(demographic parity difference and ratio, equalized odds difference and ratio). The
values equal Fairlearn's own functions on the same data (tests check this); intervals,
small-group flags, Holm-corrected group-vs-rest tests and threshold policies come from
:mod:`probes.bias.engine`. Safety filters and deepfake detectors are classifiers too:
say which label is the positive one (``positive_label``) and which output class
(``positive_class``).

Example (spec):
    data: {table: adult_test.parquet}
    probes:
      - id: bias.classifier
        params: {label_column: income, positive_label: ">50K", sensitive_columns: [sex, race]}
    gates:
      - {metric: "bias.classifier/demographic_parity_ratio[attribute=sex]", min: 0.8, use: ci_low}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from audit.errors import InputError, SpecError
from audit.findings import Finding, SubjectIdentity
from audit.probe import ParamCheck, ProbeContext, did_you_mean, register
from audit.subjects import Classifier
from probes.bias.engine import (
    POLICIES,
    RATE_METRICS,
    Disaggregation,
    Gap,
    binary_labels,
    disaggregate,
    evaluate_policy,
    holm,
    policy_from_dict,
)

__all__ = ["ClassifierBias", "TabularClassifier", "read_table"]

_MISSING = "(missing)"


def read_table(path: str | Path) -> Any:
    """A pandas DataFrame from a ``.csv`` (also ``.csv.gz``, ``.tsv``) or ``.parquet`` file.

    Raises:
        InputError: the format is not one of these, or the file cannot be parsed.
    """
    import pandas as pd

    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(p)
        if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
            return pd.read_csv(p, sep="\t" if ".tsv" in name else ",")
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
        raise InputError(f"{p}: cannot read the table: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    raise InputError(f"{p}: expected a table as .csv, .tsv or .parquet, got '{p.suffix or p.name}'")


class TabularClassifier(Classifier):
    """A torch model over the columns of a table, as a :class:`~audit.subjects.Classifier`.

    Numeric columns are standardised with the training ``mean``/``std``; each categorical
    column is one-hot encoded over its training ``categories`` (an unseen value encodes as
    all zeros). ``table_inputs(frame)`` builds the float tensor ``[N, F]`` that ``logits``
    takes, so probes that read tables (``bias.classifier``) can feed it raw rows.

    Example:
        >>> import torch, pandas as pd
        >>> clf = TabularClassifier(torch.nn.Linear(3, 2), numeric={"age": (40.0, 10.0)},
        ...                         categorical={"sex": ["Female", "Male"]}, class_names=("<=50K", ">50K"))
        >>> clf.table_inputs(pd.DataFrame({"age": [50], "sex": ["Male"]})).tolist()
        [[1.0, 0.0, 1.0]]
    """

    def __init__(self, model: Any, *, numeric: Mapping[str, tuple[float, float]],
                 categorical: Mapping[str, Sequence[str]], class_names: Sequence[str] | None = None,
                 identity: SubjectIdentity | None = None, device: Any = "cpu"):
        import torch

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.numeric = {k: (float(m), float(s) if s else 1.0) for k, (m, s) in numeric.items()}
        self.categorical = {k: [str(c) for c in cats] for k, cats in categorical.items()}
        n_features = len(self.numeric) + sum(len(c) for c in self.categorical.values())
        self.input_shape = (n_features,)
        self.input_range = (-math.inf, math.inf)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.num_classes = len(self.class_names) if self.class_names else 0
        self.identity = identity or SubjectIdentity(name="tabular-classifier", kind="classifier", source="python")

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def table_inputs(self, frame: Any) -> Any:
        """Float tensor [N, F] on the subject's device from the table's columns."""
        import torch

        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise InputError(f"the table lacks the classifier's input columns {missing}; "
                             f"it has {list(frame.columns)}")
        parts = []
        for col, (mean, std) in self.numeric.items():
            parts.append(((frame[col].to_numpy(dtype=np.float64) - mean) / std)[:, None])
        for col, cats in self.categorical.items():
            values = frame[col].astype(str).str.strip().to_numpy()
            parts.append((values[:, None] == np.asarray(cats)[None, :]).astype(np.float64))
        x = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)

    def logits(self, x: Any) -> Any:
        return self.model(x)


@register("bias.classifier")
@dataclass(frozen=True)
class ClassifierBias:
    """Fairness of a classifier by group: selection rate, accuracy, TPR, FPR and their gaps.

    Per sensitive column (and their intersection): each metric per group with a Wilson
    interval; between-group ``{metric}_difference`` and ``{metric}_ratio`` with bootstrap
    intervals; ``demographic_parity_difference``/``_ratio`` and
    ``equalized_odds_difference``/``_ratio`` as Fairlearn defines them; ``policy_{name}``
    (1 met, 0 not met) for each threshold policy; ``significant_gaps``, the number of
    group-vs-rest differences significant after Holm's correction over all tests reported.
    Groups under ``min_group_size`` rows are reported and flagged, and left out of the gaps.
    """

    id: ClassVar[str] = "bias.classifier"
    applies_to: ClassVar[tuple[str, ...]] = ("classifier",)
    requires: ClassVar[tuple[str, ...]] = ("logits",)

    data: str = field(default="table", metadata={"help": "named data input: a labelled table (.csv or .parquet)"})
    label_column: str = field(default="label", metadata={"help": "column of true labels"})
    sensitive_columns: tuple[str, ...] = field(default=("sex",), metadata={"help": "columns that define groups"})
    intersectional: bool = field(default=True, metadata={"help": "also report the intersection of all sensitive columns"})
    positive_label: str | int | float | bool | None = field(default=None, metadata={"help": "label value of the positive class (default: labels are 0/1)"})
    positive_class: int | str = field(default=1, metadata={"help": "output class index or name that counts as a positive prediction"})
    threshold: float | None = field(default=None, metadata={"help": "predict positive when its probability >= threshold (default: argmax)"})
    prediction_column: str | None = field(default=None, metadata={"help": "read predictions from this column instead of running the model"})
    feature_columns: tuple[str, ...] | None = field(default=None, metadata={"help": "numeric input columns, for classifiers without table_inputs()"})
    metrics: tuple[str, ...] = field(default=("selection_rate", "accuracy", "true_positive_rate", "false_positive_rate"), metadata={"help": f"rate metrics by group ({', '.join(RATE_METRICS)})"})
    min_group_size: int = field(default=30, metadata={"help": "smaller groups are reported and flagged, and left out of the gaps"})
    policies: tuple[str, ...] = field(default=("four_fifths", "demographic_parity_0.1", "equalized_odds_0.1"), metadata={"help": f"named threshold policies ({', '.join(POLICIES)}) or custom_policies names"})
    custom_policies: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"help": "own policies: {name: {metric, min|max, note}}"})
    alpha: float = field(default=0.05, metadata={"help": "family-wise error rate of the Holm-corrected group-vs-rest tests"})
    n_resamples: int = field(default=1000, metadata={"help": "bootstrap resamples for the gap intervals"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})
    batch_size: int = field(default=4096, metadata={"help": "rows per forward pass"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail = check.fail
        for name in ("data", "label_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                fail(name, "a non-empty string")
        if not self.sensitive_columns or not all(isinstance(c, str) and c for c in self.sensitive_columns):
            fail("sensitive_columns", "a non-empty list of column names")
        if len(set(self.sensitive_columns)) != len(self.sensitive_columns):
            fail("sensitive_columns", "a list without repeats")
        if self.label_column in self.sensitive_columns:
            fail("label_column", "a column that is not also a sensitive column")
        unknown = [m for m in self.metrics if m not in RATE_METRICS]
        if unknown or not self.metrics:
            raise SpecError(f"{self.id}: metrics: unknown metric(s) {unknown}.{did_you_mean(str(unknown[0]), RATE_METRICS) if unknown else ''} "
                            f"Known: {', '.join(RATE_METRICS)}")
        if isinstance(self.min_group_size, bool) or not isinstance(self.min_group_size, int) or self.min_group_size < 1:
            fail("min_group_size", "an integer >= 1")
        if self.threshold is not None and not 0 < self.threshold < 1:
            fail("threshold", "a probability in (0, 1), or null for argmax")
        if not 0 < self.alpha < 1:
            fail("alpha", "a number in (0, 1), e.g. 0.05")
        if not isinstance(self.n_resamples, int) or isinstance(self.n_resamples, bool) or \
                not (self.n_resamples == 0 or self.n_resamples >= 100):
            fail("n_resamples", "0 (no gap intervals) or an integer >= 100")
        if not 0 < self.confidence < 1:
            fail("confidence", "a number in (0, 1), e.g. 0.95")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            fail("batch_size", "an integer >= 1")
        self._policies()  # unknown names and malformed custom policies fail here, before the run

    def _policies(self) -> list[Any]:
        custom = {name: policy_from_dict(name, d) for name, d in self.custom_policies.items()}
        known = {**POLICIES, **custom}
        out = []
        for name in dict.fromkeys([*self.policies, *custom]):
            if name not in known:
                raise SpecError(f"{self.id}: policies: unknown policy '{name}'.{did_you_mean(name, known)} "
                                f"Known: {', '.join(known)} (add your own under custom_policies)")
            out.append(known[name])
        return out

    # -- run -----------------------------------------------------------------------------
    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        frame = read_table(ctx.input_path(self.data))
        where = f"{self.id}: table {ctx.data.get(self.data)}"
        needed = [self.label_column, *self.sensitive_columns]
        if self.prediction_column:
            needed.append(self.prediction_column)
        for col in needed:
            if col not in frame.columns:
                raise InputError(f"{where}: no column '{col}'.{did_you_mean(col, map(str, frame.columns))} "
                                 f"Columns: {', '.join(map(str, frame.columns))}")
        if len(frame) == 0:
            raise InputError(f"{where}: the table has no rows")
        notes: list[str] = []
        y_true = binary_labels(frame[self.label_column], what=f"{where}: column '{self.label_column}'",
                               positive=self.positive_label)
        if self.prediction_column:
            y_pred = binary_labels(frame[self.prediction_column], what=f"{where}: column '{self.prediction_column}'",
                                   positive=self.positive_label)
        else:
            y_pred = self._predict(subject, frame, ctx)

        sens = frame[list(self.sensitive_columns)].copy()
        for col in self.sensitive_columns:
            missing = int(sens[col].isna().sum())
            if missing:
                notes.append(f"{missing} rows have no '{col}': they form the group '{_MISSING}'")
            sens[col] = sens[col].astype(object).where(sens[col].notna(), _MISSING).astype(str).str.strip()

        groupings = [(col,) for col in self.sensitive_columns]
        if self.intersectional and len(self.sensitive_columns) > 1:
            groupings.append(tuple(self.sensitive_columns))
        results = []
        for cols in groupings:
            d = disaggregate(y_true, y_pred, sens[list(cols)], metrics=list(self.metrics),
                             min_group_size=self.min_group_size, n_resamples=self.n_resamples,
                             confidence=self.confidence, seed=ctx.child_seed("bootstrap:" + "+".join(cols)))
            results.append((cols, d))

        findings: list[Finding] = []
        first = results[0][1]
        # Per-row units (ids: row positions, equal on every variant) for paired deltas.
        rows = _Rows([str(i) for i in range(len(frame))], 2 * np.asarray(y_true) + np.asarray(y_pred), sens)
        for m in self.metrics:
            value, ci = first.overall(m)
            findings.append(Finding(probe=self.id, metric=m, value=value, ci=ci, n=len(frame),
                                    higher_is_better=RATE_METRICS[m].higher_is_better,
                                    warnings=(*notes, *first.overall_warnings(m)),
                                    units=rows.rate(m) if math.isfinite(value) else None))
        # Holm over every group-vs-rest test the probe reports (all groupings, all metrics).
        all_tests = [(cols, t) for cols, d in results for t in d.tests()]
        adjusted = holm([t.p_value for _, t in all_tests])
        for (cols, d) in results:
            tests = [(t, float(a)) for (c, t), a in zip(all_tests, adjusted) if c == cols]
            findings += self._grouping_findings(cols, d, tests, notes, rows)
        return findings

    def _predict(self, subject: Any, frame: Any, ctx: ProbeContext) -> np.ndarray:
        import torch

        if hasattr(subject, "table_inputs"):
            x = subject.table_inputs(frame)
        else:
            cols = list(self.feature_columns) if self.feature_columns else [
                c for c in frame.columns
                if c not in (self.label_column, *self.sensitive_columns, self.prediction_column)
                and np.issubdtype(frame[c].dtype, np.number)]
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise InputError(f"{self.id}: feature_columns not in the table: {missing}")
            x = torch.as_tensor(frame[cols].to_numpy(dtype=np.float32, copy=True))
            shape = tuple(getattr(subject, "input_shape", ()) or ())
            if shape and shape != (len(cols),):
                raise InputError(f"{self.id}: the classifier takes inputs of shape {shape}, but the table gives "
                                 f"{len(cols)} feature columns {cols}; set feature_columns")
        pos = self._positive_index(subject)
        device = getattr(subject, "device", None) or ctx.device
        preds = []
        mine = ctx.dist.shard(x.shape[0])  # under torchrun each rank classifies its rows
        with torch.inference_mode():
            for xb in x[mine.start:mine.stop].split(self.batch_size):
                logits = subject.logits(xb.to(device))
                if logits.ndim == 1 or logits.shape[-1] == 1:  # one logit: sigmoid of the positive class
                    p = torch.sigmoid(logits.reshape(-1))
                    preds.append(p >= (self.threshold if self.threshold is not None else 0.5))
                elif self.threshold is not None:
                    preds.append(logits.softmax(-1)[:, pos] >= self.threshold)
                else:
                    preds.append(logits.argmax(-1) == pos)
        mine_preds = torch.cat(preds).cpu().to(torch.int64) if preds else torch.zeros(0, dtype=torch.int64)
        return ctx.dist.gather_tensor(mine_preds, mine).numpy()

    def _positive_index(self, subject: Any) -> int:
        pc = self.positive_class
        if isinstance(pc, str):
            names = list(getattr(subject, "class_names", None) or ())
            if pc not in names:
                raise InputError(f"{self.id}: positive_class '{pc}' is not one of the classifier's classes "
                                 f"{names or '(it declares no class_names; give an index)'}")
            return names.index(pc)
        return int(pc)

    def _grouping_findings(self, cols: tuple[str, ...], d: Disaggregation, tests: list[tuple[Any, float]],
                           notes: list[str], rows: _Rows) -> list[Finding]:
        out: list[Finding] = []
        attr = {"attribute": "+".join(cols)}
        test_of = {(t.metric, t.group): (t, a) for t, a in tests}
        for m in self.metrics:
            hib = RATE_METRICS[m].higher_is_better
            for g in d.groups(m):
                ev: dict[str, Any] = {"group_size": g.n, "small_group": g.small}
                if (m, g.group) in test_of:
                    t, a = test_of[(m, g.group)]
                    ev["vs_rest"] = {"rest_value": t.rest_value, "difference": t.difference,
                                     "p_value": t.p_value, "p_holm": a, "test": "fisher-exact"}
                out.append(Finding(probe=self.id, metric=m, value=g.value, higher_is_better=hib, ci=g.ci,
                                   n=g.denominator, slice=dict(zip(cols, g.group)), warnings=g.warnings,
                                   evidence=ev,
                                   units=rows.rate(m, cols, g.group) if math.isfinite(g.value) else None))
            for kind in ("difference", "ratio"):
                out.append(self._gap_finding(f"{m}_{kind}", d.gap(m, kind), attr, d,
                                             to_overall=d.gap(m, f"{kind}_to_overall"),
                                             units=rows.gap(m, kind, cols, d)))

        gaps: dict[str, Gap] = {}
        gap_units: dict[str, Any] = {}
        if "selection_rate" in self.metrics:
            gaps["demographic_parity_difference"] = d.gap("selection_rate", "difference")
            gaps["demographic_parity_ratio"] = d.gap("selection_rate", "ratio")
            gap_units = {f"demographic_parity_{k}": rows.gap("selection_rate", k, cols, d) for k in ("difference", "ratio")}
        if {"true_positive_rate", "false_positive_rate"} <= set(self.metrics):
            pair = ("true_positive_rate", "false_positive_rate")
            gaps["equalized_odds_difference"] = d.combined_gap("equalized_odds_difference", pair, "difference", "max")
            gaps["equalized_odds_ratio"] = d.combined_gap("equalized_odds_ratio", pair, "ratio", "min")
        for name, gap in gaps.items():
            out.append(self._gap_finding(name, gap, attr, d, units=gap_units.get(name)))

        for policy in self._policies():
            gap = gaps.get(policy.metric) or _metric_gap(d, policy.metric)
            label = ("legal heuristic, not a verdict: " if policy.kind == "legal-heuristic" else "") + policy.note
            if gap is None:
                out.append(Finding(probe=self.id, metric=f"policy_{policy.name}", value=math.nan,
                                   higher_is_better=True, slice=attr,
                                   warnings=(f"policy '{policy.name}' needs {policy.metric}, which this probe's "
                                             "metrics do not give",),
                                   evidence={"policy": policy.describe(), "kind": policy.kind}))
                continue
            verdict = evaluate_policy(policy, gap.value, gap.ci)
            value = math.nan if verdict["met"] is None else float(verdict["met"])
            w = [label] if label else []
            if verdict["confidence"] == "inconclusive":
                w.append(f"the {self.confidence:.0%} interval of {policy.metric} straddles the bound: inconclusive")
            out.append(Finding(
                probe=self.id, metric=f"policy_{policy.name}", value=value, higher_is_better=True, n=d.n,
                slice=attr, warnings=tuple(w),
                evidence={"policy": policy.describe(), "kind": policy.kind, "observed": gap.value,
                          "ci": None if gap.ci is None else [gap.ci.low, gap.ci.high],
                          "met": verdict["met"], "with_confidence": verdict["confidence"]},
            ))

        significant = [(t, a) for t, a in tests if a < self.alpha]
        out.append(Finding(
            probe=self.id, metric="significant_gaps", value=float(len(significant)), higher_is_better=False,
            n=len(tests), slice=attr,
            warnings=(f"Holm-corrected over all {len(tests)} group-vs-rest tests of this probe's report"
                      if tests else "no group-vs-rest test could be made",),
            evidence={"alpha": self.alpha, "correction": "holm", "test": "fisher-exact",
                      "significant": [{"metric": t.metric, "group": "+".join(t.group), "difference": t.difference,
                                       "p_value": t.p_value, "p_holm": a} for t, a in significant][:50]},
        ))
        return out

    def _gap_finding(self, metric: str, gap: Gap, attr: dict[str, str], d: Disaggregation,
                     to_overall: Gap | None = None, units: Any = None) -> Finding:
        hib = metric.endswith("ratio")
        ev: dict[str, Any] = {
            "groups": ["+".join(g) for g in gap.groups],
            "value_all_groups": gap.value_all_groups,
            "small_groups_left_out": ["+".join(g) for g in gap.excluded_small],
        }
        if gap.low_group is not None:
            ev["lowest"], ev["highest"] = "+".join(gap.low_group), "+".join(gap.high_group or ())
        if to_overall is not None:
            ev[f"{to_overall.kind}"] = to_overall.value
            ev[f"{to_overall.kind}_ci"] = None if to_overall.ci is None else [to_overall.ci.low, to_overall.ci.high]
        return Finding(probe=self.id, metric=metric, value=gap.value, higher_is_better=hib, ci=gap.ci, n=d.n,
                       slice=attr, warnings=gap.warnings, evidence=ev,
                       units=units if math.isfinite(gap.value) else None)


def _metric_gap(d: Disaggregation, name: str) -> Gap | None:
    for kind in ("difference_to_overall", "ratio_to_overall", "difference", "ratio"):
        base = name.removesuffix("_" + kind)
        if base != name and base in d.metric_names:
            return d.gap(base, kind)
    return None


@dataclass
class _Rows:
    """The table's rows as units: ids, confusion cells (2 * label + prediction) and groups."""

    ids: list[str]
    cells: np.ndarray
    sens: Any

    def members(self, cols: tuple[str, ...], group: tuple[str, ...]) -> np.ndarray:
        mask = np.ones(len(self.ids), dtype=bool)
        for col, value in zip(cols, group):
            mask &= (self.sens[col] == value).to_numpy()
        return mask

    def rate(self, metric: str, cols: tuple[str, ...] = (), group: tuple[str, ...] = ()) -> Any:
        from probes.bias.row_units import rate_units

        return rate_units(RATE_METRICS[metric], self.cells, self.ids, self.members(cols, group))

    def gap(self, metric: str, kind: str, cols: tuple[str, ...], d: Disaggregation) -> Any:
        """Units of the gap over the groups the engine took it over (not small, value defined)."""
        from probes.bias.row_units import gap_units

        used = [g.group for g in d.groups(metric) if not g.small and math.isfinite(g.value)]
        return gap_units(RATE_METRICS[metric], kind, self.cells, self.ids, [self.members(cols, g) for g in used])
