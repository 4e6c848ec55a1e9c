"""Fakes for human evaluation: a tiny image-generator report to rate and filled rating CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

from tests.image_fakes import write_image_folder


def tiny_image_report(tmp_path: Path, n: int = 6) -> Path:
    """An audit folder (report.json with its spec) of a folder subject with a reference folder."""
    from audit.findings import AuditReport, SubjectIdentity

    gen = write_image_folder(tmp_path / "gen", n, size=16, seed=1, shift=0.3)
    ref = write_image_folder(tmp_path / "ref", n, size=16, seed=2)
    spec = {"name": "tiny-images", "subject": {"kind": "image-generator", "source": "folder", "path": str(gen)},
            "data": {"reference": str(ref)},
            "probes": [{"id": "quality.sliced_wasserstein", "params": {}}]}
    out = tmp_path / "audit"
    out.mkdir()
    AuditReport(name="tiny-images", subject=SubjectIdentity("tiny", "image-generator", "folder", str(gen)),
                spec=spec).save(out / "report.json")
    return out


def write_key(folder: Path, task: str, truths: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "key.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "task", "truth", "image_a", "image_b", "prompt", "question"])
        for item, truth in truths.items():
            w.writerow([item, task, truth, f"{item}.png", "", "", ""])
    return folder / "key.csv"


def write_ratings(folder: Path, rater: str, answers: dict[str, object]) -> Path:
    path = folder / f"ratings-{rater}.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["rater", "item_id", "response"])
        for item, v in answers.items():
            w.writerow([rater, item, v])
    return path


def human_ratings_inputs(tmp_path):
    """FAKES entry for human.ratings: two raters' hype judgements of 4 real and 4 generated images."""
    folder = tmp_path / "rating"
    truths = {f"gen-{i}": "generated" for i in range(4)} | {f"real-{i}": "real" for i in range(4)}
    write_key(folder, "hype", truths)
    write_ratings(folder, "ann", {k: ("real" if k in ("gen-0", "real-1", "real-2") else "generated") for k in truths})
    write_ratings(folder, "bob", {k: ("real" if k in ("gen-0", "gen-1", "real-0", "real-2") else "generated")
                                  for k in truths})
    from audit.spec import SubjectSpec
    from audit.subjects.loading import load_subject

    subject = load_subject(SubjectSpec(kind="image-generator", source="folder",
                                       path=str(write_image_folder(tmp_path / "gen", 4, seed=1))),
                           device="cpu", cache_dir=tmp_path / "cache")
    return subject, {"ratings": folder}, {"n_resamples": 50}
