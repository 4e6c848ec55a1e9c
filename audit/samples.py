"""Per-sample records: what a probe scored, one row per sample, written to ``samples.parquet``.

A probe calls ``ctx.record_samples(rows)`` (:meth:`audit.probe.ProbeContext.record_samples`)
with the samples behind its findings: each row's score, label, fold, seed, slice, and the
kept text or a thumbnail reference. The runner writes every probe's rows to
``DIR/samples.parquet`` beside ``report.json`` with a ``probe`` column, so that a reviewer
can rebuild any number outside the tool (pandas, DuckDB, Polars). Recording is optional.

Columns (fixed, so that files of different runs concatenate):

========== ======= ============================================================================
probe      string  the probe id
sample     int64   the row's index within the probe's records (recording order)
item       string  what the sample is: an image path, document id, "real/17", ... (or null)
metric     string  what ``score`` is, e.g. "detector_score", "nll", "correct" (or null)
score      double  the per-sample number (null when there is none)
label      string  the true label / class (as text) (or null)
prediction string  the predicted label (or null)
fold       int64   cross-validation fold (or null)
seed       int64   the seed the sample was generated or attacked with (or null)
slice      string  the sample's slice as JSON, e.g. ``{"attack": "pgd", "eps": "8/255"}``
text       string  kept text (a prompt, a generation), cut to ``MAX_TEXT_CHARS`` (or null)
thumbnail  string  a reference to an image: a path relative to DIR, or a source path (or null)
extra      string  any other keys of the row, as JSON (``{}`` when none)
========== ======= ============================================================================

Bounded: at most ``MAX_ROWS_PER_PROBE`` rows per probe (later rows are counted, not kept) and
``MAX_TEXT_CHARS`` characters per text. The file's metadata holds, per probe, how many rows were
offered and how many kept (``genai_audit.samples``, JSON).

Example:
    >>> buf = SampleBuffer("p")
    >>> buf.add([{"score": 0.5, "label": 1, "slice": {"group": "a"}}])
    >>> buf.rows[0]["label"], buf.rows[0]["slice"]
    ('1', '{"group": "a"}')
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "COLUMNS",
    "MAX_ROWS_PER_PROBE",
    "MAX_TEXT_CHARS",
    "SAMPLES_FILE",
    "SampleBuffer",
    "load_partial",
    "read_samples",
    "save_partial",
    "write_samples",
]

SAMPLES_FILE = "samples.parquet"
MAX_ROWS_PER_PROBE = 50_000
MAX_TEXT_CHARS = 2_000
COLUMNS: tuple[tuple[str, str], ...] = (
    ("probe", "string"), ("sample", "int64"), ("item", "string"), ("metric", "string"), ("score", "double"),
    ("label", "string"), ("prediction", "string"), ("fold", "int64"), ("seed", "int64"), ("slice", "string"),
    ("text", "string"), ("thumbnail", "string"), ("extra", "string"),
)
_TEXT = ("item", "metric", "label", "prediction", "text", "thumbnail")
_INTS = ("fold", "seed")
_KNOWN = {name for name, _ in COLUMNS} - {"probe", "sample", "extra"}


def _int_or_none(key: str, v: Any) -> int | None:
    if v is None:
        return None
    if hasattr(v, "item"):  # numpy / torch scalars
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"record_samples: {key} must be an integer or None, got {v!r}")
    v = int(v)
    if not -(2**63) <= v < 2**63:  # a child seed fits; anything else would not store as int64
        raise ValueError(f"record_samples: {key} {v} does not fit a 64-bit integer")
    return v


def _score(v: Any) -> float | None:
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, bool):
        return float(v)
    if not isinstance(v, (int, float)):
        raise ValueError(f"record_samples: score must be a number or None, got {v!r}")
    return float(v)


def _text(key: str, v: Any) -> str | None:
    if v is None:
        return None
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()
    s = str(v)
    if key == "text" and len(s) > MAX_TEXT_CHARS:
        s = s[: MAX_TEXT_CHARS - 1] + "…"
    return s


def _jsonable(v: Any) -> Any:
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


class SampleBuffer:
    """The rows one probe recorded, normalised to :data:`COLUMNS` as they come in.

    Args:
        probe: the probe id written in the ``probe`` column.
        max_rows: most rows kept; later ones are counted in ``offered`` only.
    """

    def __init__(self, probe: str, max_rows: int = MAX_ROWS_PER_PROBE):
        self.probe = probe
        self.max_rows = max_rows
        self.rows: list[dict[str, Any]] = []
        self.offered = 0

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Normalise and keep ``rows`` (until ``max_rows``).

        Raises:
            ValueError: a row that is not a mapping, or a value of the wrong type, named.
        """
        for row in rows:
            if not isinstance(row, Mapping):
                raise ValueError(f"record_samples: each row must be a mapping, got {type(row).__name__}")
            self.offered += 1
            if len(self.rows) >= self.max_rows:
                continue
            self.rows.append(self._normalise(row))

    def _normalise(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"probe": self.probe, "sample": len(self.rows)}
        for key in _TEXT:
            out[key] = _text(key, row.get(key))
        for key in _INTS:
            out[key] = _int_or_none(key, row.get(key))
        out["score"] = _score(row.get("score"))
        sl = row.get("slice") or {}
        if not isinstance(sl, Mapping):
            raise ValueError(f"record_samples: slice must be a mapping such as {{'group': 'a'}}, got {sl!r}")
        out["slice"] = json.dumps({str(k): str(v) for k, v in sl.items()}, sort_keys=True, ensure_ascii=False)
        extra = {str(k): _jsonable(v) for k, v in row.items() if k not in _KNOWN}
        out["extra"] = json.dumps(extra, sort_keys=True, ensure_ascii=False)
        return out

    def summary(self) -> dict[str, int]:
        return {"offered": self.offered, "kept": len(self.rows)}

    def to_json(self) -> str:
        """The kept rows and counts as JSON (how a finished probe's rows wait for ``--resume``)."""
        return json.dumps({"probe": self.probe, "offered": self.offered, "rows": self.rows}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> SampleBuffer:
        data = json.loads(text)
        buf = cls(str(data["probe"]))
        buf.rows = list(data["rows"])
        buf.offered = int(data["offered"])
        return buf


def write_samples(buffers: Sequence[SampleBuffer], path: str | os.PathLike[str]) -> Path | None:
    """Write the probes' rows to one Parquet file (atomically); None when no probe recorded any
    (and any stale file of an earlier run at ``path`` is removed, so the folder never mixes runs).

    Raises:
        ImportError: pyarrow is missing (the message names the package to install).
    """
    p = Path(path)
    rows = [r for b in buffers for r in b.rows]
    if not rows:
        p.unlink(missing_ok=True)
        return None
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
        raise ImportError("writing samples.parquet needs pyarrow: pip install pyarrow") from exc
    types = {"string": pa.string(), "int64": pa.int64(), "double": pa.float64()}
    schema = pa.schema([(name, types[t]) for name, t in COLUMNS])
    meta = {b.probe: b.summary() for b in buffers if b.offered}
    schema = schema.with_metadata({"genai_audit.samples": json.dumps(meta, sort_keys=True)})
    table = pa.Table.from_pydict({name: [r[name] for r in rows] for name, _ in COLUMNS}, schema=schema)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def read_samples(path: str | os.PathLike[str]) -> Any:
    """``samples.parquet`` as a pandas DataFrame (``slice`` and ``extra`` left as JSON text)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pandas()


def _partial_path(out_dir: str | os.PathLike[str], probe_id: str) -> Path:
    return Path(out_dir) / ".partial" / "samples" / f"{probe_id}.json"


def save_partial(out_dir: str | os.PathLike[str], probe_id: str, buffer: SampleBuffer | None) -> None:
    """Keep a finished probe's rows under ``OUT/.partial/`` for ``--resume`` (or remove a stale
    file when the probe recorded none this time)."""
    from audit.findings import atomic_write_text

    path = _partial_path(out_dir, probe_id)
    if buffer is None or not buffer.offered:
        path.unlink(missing_ok=True)
        return
    atomic_write_text(path, buffer.to_json())


def load_partial(out_dir: str | os.PathLike[str], probe_id: str) -> SampleBuffer | None:
    """The rows an interrupted run kept for ``probe_id``, or None (none kept, or unreadable)."""
    try:
        return SampleBuffer.from_json(_partial_path(out_dir, probe_id).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
