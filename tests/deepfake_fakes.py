"""Tiny generators, detectors and image folders for the image-detectability tests (built in code).

* ``smooth_images(n, seed=..., shift=...)``: an image-generator callable (``source: python``)
  drawing :func:`tests.image_fakes.random_images`; ``shift`` moves the brightness, so
  ``shift=0`` is the real folder's distribution and ``shift=1.5`` is trivially detectable.
* Detectors for ``detector: {source: python, path: tests.deepfake_fakes:<name>}``:
  ``brightness_detector`` (logits [0, mean brightness]), ``jpeg_detector`` (keys on the missing
  high-frequency energy JPEG leaves), ``single_score_detector`` ([N, 1]), and bad ones:
  ``hard_detector`` (0/1 decisions), ``nan_detector``.
* ``detached_features``: a feature factory whose output has no input gradient.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.image_fakes import random_images, write_image_folder

__all__ = ["image_detectability_inputs", "smooth_images"]


def smooth_images(n: int, *, seed: int = 0, shift: float = 0.0, size: int = 16,
                  jpeg_quality: int | None = None) -> np.ndarray:
    """uint8 [n, size, size, 3]: the real folder's distribution moved by ``shift``, JPEG-encoded
    at ``jpeg_quality`` when given (a generator whose files leak their format)."""
    x = random_images(n, size, seed=1000 + seed, shift=shift)
    if jpeg_quality is not None:
        from probes.deepfake.postprocess import jpeg

        x = jpeg(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), jpeg_quality).permute(0, 2, 3, 1).numpy()
    return x


def write_real(folder: Path, n: int, *, size: int = 16, seed: int = 2) -> Path:
    return write_image_folder(folder, n, size=size, seed=seed)


class _Brightness(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x.mean(dim=(1, 2, 3)) - 0.5) * 10
        return torch.stack([torch.zeros_like(s), s], 1)


def brightness_detector() -> nn.Module:
    """Two-class logits ``[0, 10 (mean - 0.5)]`` (class names: real, fake): brighter is "generated"."""
    return _Brightness()


class _JpegKeyed(nn.Module):
    """Score = minus the mean absolute Laplacian: JPEG removes fine detail, so a re-encoded image
    scores high whatever made it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=x.device).view(1, 1, 3, 3)
        c = x.shape[1]
        lap = nn.functional.conv2d(x, k.expand(c, 1, 3, 3), groups=c)
        s = -lap.abs().mean(dim=(1, 2, 3)) * 100
        return torch.stack([torch.zeros_like(s), s], 1)


def jpeg_detector() -> nn.Module:
    return _JpegKeyed()


class _Single(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=(1, 2, 3), keepdim=False)[:, None] - 0.5) * 10


def single_score_detector() -> nn.Module:
    """One score per image, [N, 1] (higher: generated)."""
    return _Single()


class _Hard(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot((x.mean(dim=(1, 2, 3)) > 0.5).long(), 2).float()


def hard_detector() -> nn.Module:
    """Returns one-hot decisions, not scores."""
    return _Hard()


class _Nan(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(s), torch.where(s > 0.5, s * torch.nan, s)], 1)


def nan_detector() -> nn.Module:
    return _Nan()


class _Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(3, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.detach().mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def detached_features() -> nn.Module:
    """Features of the per-channel means, computed from a detached input (no gradient)."""
    return _Detached()


def generator_subject(shift: float = 0.0, size: int = 16, **options):
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    return load_subject(SubjectSpec(kind="image-generator", source="python", path="tests.deepfake_fakes:smooth_images",
                                    options={"shift": shift, "size": size, **options}),
                        device="cpu", cache_dir=Path("/tmp/genai-audit-test-cache"))


def image_detectability_inputs(tmp_path):
    """FAKES entry for deepfake.image_detectability: a python generator against a real folder, the
    linear probe on a tiny feature net and a user detector, a short sweep and one attack budget."""
    real = write_real(tmp_path / "real", 20)
    params = {"feature": "tests.image_fakes:tiny_feature_net", "folds": 3, "n_samples": 20,
              "detector": {"source": "python", "path": "tests.deepfake_fakes:brightness_detector",
                           "options": {"input_shape": [3, 16, 16], "class_names": ["real", "fake"]}},
              "postprocess": ["jpeg:50", "blur:1"], "eps": ["2/255"], "attack_steps": 2, "n_resamples": 200}
    return generator_subject(shift=0.5), {"reference": real}, params
