"""Test support for the bias probes: synthetic tables, tiny tabular classifiers, a fake
text-to-image generator, a CLIP-like encoder with known geometry, tiny sentence encoders
and open_clip models built in code (no downloads), and the contract-test inputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.findings import SubjectIdentity
from audit.subjects import Encoder, ImageGenerator

RACES = ("Black", "White", "Asian", "Other")


def synthetic_table(n: int = 2000, seed: int = 0):
    """A table with label, pred, score, sex, race and two numeric features; group rates differ."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    sex = rng.choice(["Female", "Male"], size=n, p=[0.4, 0.6])
    race = rng.choice(RACES, size=n, p=[0.2, 0.6, 0.15, 0.05])
    x1 = rng.normal(size=n) + (sex == "Male") * 0.5
    x2 = rng.normal(size=n) - (race == "Black") * 0.3
    label = (x1 + x2 + rng.normal(scale=0.8, size=n) > 0.3).astype(int)
    score = x1 + x2 + rng.normal(scale=0.5, size=n)
    pred = (score > 0.3).astype(int)
    return pd.DataFrame({"x1": x1, "x2": x2, "sex": sex, "race": race, "label": label, "pred": pred,
                         "score": score})


class LinearScore(torch.nn.Module):
    """Logits [-s/2, s/2] for s = x1 + x2 - 0.3: argmax is 'positive' exactly when x1 + x2 > 0.3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0] + x[:, 1] - 0.3
        return torch.stack([-s / 2, s / 2], dim=1)


def numeric_classifier():
    """A Classifier over the numeric columns x1, x2 (no table_inputs: the probe reads feature_columns)."""
    from audit.subjects import Classifier

    clf = Classifier()
    clf.model = LinearScore()
    clf.input_shape = (2,)
    clf.input_range = (-float("inf"), float("inf"))
    clf.num_classes = 2
    clf.class_names = ("no", "yes")
    clf.identity = SubjectIdentity(name="linear-score", kind="classifier", source="python")
    return clf


# -- text-to-image ---------------------------------------------------------------------------
class ColourGenerator(ImageGenerator):
    """A fake text-to-image generator: each image is a flat colour, red (channel 0) or blue
    (channel 2), chosen by a seeded hash of (prompt, seed) with a per-prompt red share.
    ``shares`` maps prompts to their red share (default 0.5); ``grey_every`` makes every
    k-th image grey (ambiguous to the judge)."""

    capabilities = frozenset({"generate_images", "prompts"})

    def __init__(self, shares: dict[str, float] | None = None, size: int = 16, grey_every: int = 0):
        self.shares = shares or {}
        self.size = size
        self.grey_every = grey_every
        self.calls: list[tuple[list[str], int]] = []
        self.identity = SubjectIdentity(name="colour-t2i", kind="image-generator", source="python")

    def generate(self, n: int | None = None, *, prompts: Sequence[str] | None = None, seed: int = 0,
                 batch_size: int = 64):
        prompts = list(prompts or [])
        self.calls.append((prompts, seed))
        imgs = torch.zeros(len(prompts), 3, self.size, self.size, dtype=torch.uint8)
        for i, p in enumerate(prompts):
            rng = np.random.default_rng(abs(hash((p, seed))) % (2**32))
            if self.grey_every and (seed + 1) % self.grey_every == 0:
                imgs[i] = 128
                continue
            red = rng.random() < self.shares.get(p, 0.5)
            imgs[i, 0 if red else 2] = 255
        for start in range(0, len(prompts), batch_size):
            yield imgs[start:start + batch_size]


class ColourJudge(Encoder):
    """A CLIP-like encoder with known geometry: images embed as their mean (r, g, b), texts
    mentioning 'red'/'woman' embed as (1, 0, 0), 'blue'/'man' as (0, 0, 1), anything else as (0, 1, 0)."""

    capabilities = frozenset({"embed_text", "embed_image"})

    def __init__(self):
        self.identity = SubjectIdentity(name="colour-judge", kind="encoder", source="python")

    def embed_text(self, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        out = []
        for t in texts:
            words = t.lower().replace(".", " ").split()
            out.append([1.0, 0, 0] if {"red", "woman"} & set(words) else
                       [0, 0, 1.0] if {"blue", "man"} & set(words) else [0, 1.0, 0])
        return torch.tensor(out)

    def embed_image(self, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        return images.float().mean((2, 3)) / 255.0


def make_colour_judge() -> ColourJudge:
    return ColourJudge()


# -- tiny encoders built in code -------------------------------------------------------------
def save_tiny_sentence_encoder(folder: str | Path, *, pooling: str = "mean", normalize: bool = False) -> Path:
    """A 2-layer BERT with a word-level tokenizer, saved as a sentence-transformers folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = ("the a man woman doctor nurse is was here this that good bad happy sad rose tulip ant wasp "
             "love hate career family office home science art math poetry young old").split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words, ".", ","])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).eval().save_pretrained(folder, safe_serialization=True)
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 16, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return folder


TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_open_clip(seed: int = 0):
    """A random open_clip CLIP (1-layer towers, 32x32 images) and its tokenizer, built in code."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG).eval()
    return model, open_clip.get_tokenizer("ViT-B-32")


def save_tiny_open_clip(folder: str | Path) -> Path:
    """The tiny CLIP as an open_clip ``local-dir`` folder (open_clip_config.json + safetensors)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, _ = tiny_open_clip()
    cfg = {"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def tiny_open_clip_encoder():
    """``module:callable`` for a python-source encoder: the tiny CLIP as an Encoder."""
    from audit.subjects.encoder import OpenClipEncoder

    model, tokenizer = tiny_open_clip()
    return OpenClipEncoder(model, tokenizer, SubjectIdentity(name="tiny-clip", kind="encoder", source="python"))


class KeywordScorer:
    """A deterministic scorer for tests: +1 per 'good', -1 per 'bad' in a completion."""

    name = "keyword-test-scorer"
    description = "counts 'good' minus 'bad' (tests only)"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([t.lower().split().count("good") - t.lower().split().count("bad") for t in texts], float)


def make_keyword_scorer() -> KeywordScorer:
    return KeywordScorer()


class ScriptedGenerator:
    """A text generator whose completions depend on the group word in the prompt, with
    per-sample variation: for text-generator probes that call ``generate`` only."""

    kind = "text-generator"
    capabilities = frozenset({"generate"})
    device = "cpu"

    def __init__(self, replies: dict[str, list[str]]):
        self.replies = replies
        self.n_calls = 0
        self.identity = SubjectIdentity(name="scripted", kind="text-generator", source="python")

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        out = []
        k = self.n_calls  # the i-th call gives every prompt its i-th reply
        self.n_calls += 1
        for p in prompts:
            for word, options in self.replies.items():
                if f" {word} " in f" {p} ":
                    out.append(options[k % len(options)])
                    break
            else:
                out.append("nothing")
        return out

    def close(self) -> None:
        pass


def as_any(x: Any) -> Any:
    return x


# -- contract-test inputs (tests/test_contract.py FAKES) -------------------------------------
def bias_classifier_inputs(tmp_path):
    table = tmp_path / "table.csv"
    synthetic_table(n=600, seed=3).to_csv(table, index=False)
    params = {"label_column": "label", "sensitive_columns": ["sex", "race"], "feature_columns": ["x1", "x2"],
              "n_resamples": 100}
    return numeric_classifier(), {"table": table}, params


def stereotype_pairs_inputs(tmp_path):
    from tests.fakes import tiny_text_generator

    return tiny_text_generator(), {}, {"max_pairs": 12, "n_resamples": 100}


def _tiny_encoder(tmp_path):
    from audit.subjects.encoder import HFSentenceEncoder

    return HFSentenceEncoder.from_folder(save_tiny_sentence_encoder(tmp_path / "tiny-st"))


def counterfactual_inputs(tmp_path):
    from tests.fakes import tiny_text_generator

    folder = save_tiny_sentence_encoder(tmp_path / "tiny-st")
    params = {"templates": ["The {group} was", "A {group} is"], "samples": 2, "max_new_tokens": 4,
              "scorer": "embedding", "scorer_model": str(folder), "n_resamples": 100}
    return tiny_text_generator(), {}, params


def t2i_inputs(tmp_path):
    params = {"prompts": ["a photo of a doctor", "a photo of a nurse"], "images_per_prompt": 4, "n_resamples": 100,
              "judge": {"source": "python", "path": "tests.bias_fakes:tiny_open_clip_encoder"},
              "abstain_threshold": 0.0}
    return ColourGenerator(size=32), {}, params


def embedding_association_inputs(tmp_path):
    return _tiny_encoder(tmp_path), {}, {"mode": "word", "n_permutations": 200, "n_resamples": 100,
                                         "tests": ["flowers_insects_pleasantness"]}
