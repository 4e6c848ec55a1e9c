"""Per-sample records: ctx.record_samples, samples.parquet beside report.json, bounds, --resume."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd
import pyarrow.parquet as pq
import pytest

import tests.probes_for_tests as tp
from audit.probe import ProbeContext, registry
from audit.samples import COLUMNS, MAX_TEXT_CHARS, SampleBuffer, read_samples, write_samples
from tests.test_runner import make_spec, run


@dataclass(frozen=True)
class Recorder:
    """Records one row per document it 'scores' (test probe)."""

    applies_to = ("text-generator",)
    n: int = 5

    def run(self, subject, ctx):
        tp.CALLS[self.id] = tp.CALLS.get(self.id, 0) + 1
        ctx.record_samples({"item": f"doc-{i}", "metric": "nll", "score": i / 2, "label": i % 2, "fold": i % 3,
                            "seed": 10 + i, "slice": {"length": "short" if i < 3 else "long"},
                            "text": f"document {i}", "tokens": [1, 2, i]} for i in range(self.n))
        from audit.findings import Finding

        return [Finding(probe=self.id, metric="mean_nll", value=sum(i / 2 for i in range(self.n)) / self.n,
                        higher_is_better=False, n=self.n)]


@dataclass(frozen=True)
class RecordThenCrash:
    """Records rows, then raises (test probe)."""

    applies_to = ("text-generator",)

    def run(self, subject, ctx):
        ctx.record_samples([{"score": 1.0}])
        raise RuntimeError("after recording")


registry.register("test.recorder", Recorder, replace=True)
registry.register("test.record_then_crash", RecordThenCrash, replace=True)


def test_the_runner_writes_samples_parquet_beside_the_report(tmp_path):
    spec = make_spec(tmp_path, ["test.recorder", "test.constant", "test.record_then_crash"])
    res = run(spec, tmp_path / "out")
    path = tmp_path / "out" / "samples.parquet"
    assert res.files["samples"] == path and (tmp_path / "out" / "report.json").is_file()
    df = pd.read_parquet(path)  # an ordinary Parquet file: pandas reads it back
    assert list(df.columns) == [name for name, _ in COLUMNS]
    assert set(df["probe"]) == {"test.recorder"}  # the crashed probe's rows are dropped
    assert df["sample"].tolist() == [0, 1, 2, 3, 4]
    assert df["label"].tolist() == ["0", "1", "0", "1", "0"] and df["fold"].tolist() == [0, 1, 2, 0, 1]
    assert df["seed"].tolist() == [10, 11, 12, 13, 14] and df["text"].iloc[4] == "document 4"
    assert [json.loads(s) for s in df["slice"]][3] == {"length": "long"}
    assert json.loads(df["extra"].iloc[2]) == {"tokens": [1, 2, 2]}
    assert df["thumbnail"].isna().all()
    # The finding is rebuilt from the rows.
    assert df["score"].mean() == pytest.approx(res.report.finding("test.recorder/mean_nll").value)
    meta = json.loads(pq.read_schema(path).metadata[b"genai_audit.samples"])
    assert meta == {"test.recorder": {"offered": 5, "kept": 5}}
    assert (read_samples(path)["probe"] == df["probe"]).all()


def test_no_rows_no_file_and_a_stale_file_is_removed(tmp_path):
    out = tmp_path / "out"
    run(make_spec(tmp_path, ["test.recorder"]), out)
    assert (out / "samples.parquet").is_file()
    res = run(make_spec(tmp_path, ["test.constant"]), out)
    assert "samples" not in res.files and not (out / "samples.parquet").exists()


def test_resume_keeps_the_rows_of_reused_probes(tmp_path):
    tp.CALLS.clear()
    spec = make_spec(tmp_path, ["test.recorder", "test.interrupt"])
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(spec, out)
    res = run(spec, out, resume=True)
    assert tp.CALLS["test.recorder"] == 1  # reused, not rerun
    df = pd.read_parquet(res.files["samples"])
    assert df["probe"].tolist() == ["test.recorder"] * 5 and df["seed"].tolist() == [10, 11, 12, 13, 14]


def test_rows_are_bounded_and_texts_cut(tmp_path):
    buf = SampleBuffer("p", max_rows=3)
    buf.add({"text": "x" * (MAX_TEXT_CHARS + 50), "score": float("nan")} for _ in range(10))
    assert len(buf.rows) == 3 and buf.offered == 10
    assert len(buf.rows[0]["text"]) == MAX_TEXT_CHARS and buf.rows[0]["text"].endswith("…")
    path = write_samples([buf], tmp_path / "s.parquet")
    df = pd.read_parquet(path)
    assert len(df) == 3 and math.isnan(df["score"].iloc[0])
    assert json.loads(pq.read_schema(path).metadata[b"genai_audit.samples"]) == {"p": {"offered": 10, "kept": 3}}


@pytest.mark.parametrize("row, message", [
    ("not a row", "each row must be a mapping"),
    ({"fold": 1.5}, "fold must be an integer"),
    ({"seed": 2**70}, "does not fit a 64-bit integer"),
    ({"score": "high"}, "score must be a number"),
    ({"slice": ["a"]}, "slice must be a mapping"),
])
def test_bad_rows_are_refused_with_the_key_named(row, message):
    ctx = ProbeContext(probe_id="p")
    with pytest.raises(ValueError, match=message):
        ctx.record_samples([row])


def test_numpy_and_torch_scalars_are_accepted():
    import numpy as np
    import torch

    ctx = ProbeContext(probe_id="p")
    ctx.record_samples([{"score": np.float32(0.5), "fold": np.int64(2), "seed": torch.tensor(7), "label": np.int64(1),
                         "extra_array": np.arange(3)}])
    row = ctx.samples.rows[0]
    assert (row["score"], row["fold"], row["seed"], row["label"]) == (0.5, 2, 7, "1")
    assert json.loads(row["extra"]) == {"extra_array": [0, 1, 2]}


def test_the_store_keeps_a_copy_the_dashboard_can_serve(tmp_path):
    from audit.store import ReportStore

    db = tmp_path / "store" / "audits.db"
    res = run(make_spec(tmp_path, ["test.recorder"]), tmp_path / "out", store_url=f"sqlite:///{db}")
    with ReportStore(f"sqlite:///{db}") as store:
        copy = store.report_file(res.report.run_id, "samples.parquet")
        assert copy is not None and copy != res.files["samples"]
        assert pd.read_parquet(copy).equals(pd.read_parquet(res.files["samples"]))
