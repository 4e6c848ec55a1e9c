"""Tiny image models and image folders built in code for the image quality tests (no downloads).

* ``tiny_feature_net()``: a seeded random CNN with ``features`` (16-d) and logits (5 classes),
  usable as ``feature: tests.image_fakes:tiny_feature_net``.
* ``tiny_clip()``: a random-weight open_clip ``CLIP`` (ViT, 1 layer, width 32, 32x32 images)
  and its tokenizer, usable as ``clip_model: tests.image_fakes:tiny_clip``.
* ``write_image_folder()``: PNG files of seeded random images (optionally with prompts.jsonl).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn


class TinyFeatureNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.Tanh())
        self.head = nn.Linear(16, 5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny_feature_net(seed: int = 0) -> TinyFeatureNet:
    torch.manual_seed(seed)
    return TinyFeatureNet().eval()


class FeaturesOnly(nn.Module):
    """A feature module with a fixed dimension, for torchmetrics' custom ``feature`` argument:
    uint8 images -> the same float features our extractor computes."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x.float() / 255.0)


def tiny_clip(seed: int = 0):
    """(model, tokenizer): a random-weight open_clip CLIP for 32x32 images."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg={"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    ).eval()
    return model, _tokenizer()


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=16)


def random_images(n: int, size: int = 16, *, seed: int = 0, channels: int = 3, shift: float = 0.0) -> np.ndarray:
    """Seeded smooth-ish random images uint8 [n, H, W, C] (a blurred noise field plus ``shift``)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size // 4, size // 4, channels))
    x = x.repeat(4, axis=1).repeat(4, axis=2) + 0.3 * rng.normal(size=(n, size, size, channels)) + shift
    return np.clip(128 + 50 * x, 0, 255).astype(np.uint8)


def write_image_folder(folder: Path, n: int, *, size: int = 16, seed: int = 0, shift: float = 0.0,
                       prompts: list[str] | None = None) -> Path:
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(random_images(n, size, seed=seed, shift=shift)):
        Image.fromarray(img).save(folder / f"img{i:04d}.png")
    if prompts is not None:
        with open(folder / "prompts.jsonl", "w", encoding="utf-8") as fh:
            for i, p in enumerate(prompts[:n]):
                fh.write(json.dumps({"file": f"img{i:04d}.png", "prompt": p}) + "\n")
    return folder


PROMPTS = ["a red square", "a photo of a dog", "a blue circle on white", "a cat on a sofa",
           "a green field", "a city at night", "a bowl of fruit", "two people walking"]


def image_fidelity_inputs(tmp_path):
    """FAKES entry for quality.image_fidelity: a folder subject against a reference folder."""
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    gen = write_image_folder(tmp_path / "gen", 24, seed=1, shift=0.3)
    ref = write_image_folder(tmp_path / "ref", 24, seed=2)
    subject = load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(gen)),
                           device="cpu", cache_dir=tmp_path / "cache")
    params = {"feature": "tests.image_fakes:tiny_feature_net", "kid_subsets": 5, "kid_subset_size": 10,
              "is_splits": 2, "n_resamples": 20, "batch_size": 8}
    return subject, {"reference": ref}, params


def clip_score_inputs(tmp_path):
    """FAKES entry for quality.clip_score: a folder with prompts.jsonl, judged by a tiny CLIP."""
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    gen = write_image_folder(tmp_path / "t2i", 8, size=32, seed=3, prompts=PROMPTS)
    subject = load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(gen)),
                           device="cpu", cache_dir=tmp_path / "cache")
    return subject, {}, {"clip_model": "tests.image_fakes:tiny_clip", "n_resamples": 200}


def sliced_wasserstein_inputs(tmp_path):
    """FAKES entry for quality.sliced_wasserstein: ProGAN SWD of a folder against a reference folder."""
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    gen = write_image_folder(tmp_path / "gen", 12, size=32, seed=1, shift=0.3)
    ref = write_image_folder(tmp_path / "ref", 12, size=32, seed=2)
    subject = load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(gen)),
                           device="cpu", cache_dir=tmp_path / "cache")
    params = {"patches_per_image": 16, "n_directions": 16, "n_repeats": 2, "n_resamples": 20, "batch_size": 8}
    return subject, {"reference": ref}, params
