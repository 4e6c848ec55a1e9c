"""``genai-audit stats``: reference statistics for image fidelity, computed once.

Example:
    genai-audit stats build real-images/ --out real.npz --feature inception --inception-weights inception.pth
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

__all__ = ["stats"]


def _parse_options(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--feature-option")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@click.group()
def stats() -> None:
    """Reference statistics files for quality.image_fidelity."""


@stats.command("build")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="The .npz file to write.")
@click.option("--feature", default="inception", show_default=True, help="inception, clip or module:factory.")
@click.option("--feature-option", "feature_options", multiple=True, metavar="KEY=VALUE",
              help="Option of a module:factory extractor (JSON values), e.g. channels=1; repeatable.")
@click.option("--inception-weights", default=None, help="Local FID Inception weights (.pth / .safetensors).")
@click.option("--clip-model", default="ViT-B-32", show_default=True)
@click.option("--clip-pretrained", default=None, help="open_clip pretrained tag or local weights file.")
@click.option("--image-size", type=click.IntRange(1), default=None, help="Common side for mixed sizes.")
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True)
@click.option("--max-features", type=click.IntRange(0), default=10000, show_default=True,
              help="Features kept in the file for KID and precision/recall (0: none, only mean/cov).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
def build(folder: Path, out: Path, feature: str, feature_options: tuple[str, ...], inception_weights: str | None,
          clip_model: str, clip_pretrained: str | None, image_size: int | None, batch_size: int,
          max_features: int, device: str) -> None:
    """Compute the feature mean and covariance of a FOLDER of real images into a .npz file.

    The file records the extractor (name, weights SHA-256, resize, antialias), the
    preprocessing and n; quality.image_fidelity refuses it under any other settings.
    """
    from audit.errors import InputError
    from audit.subjects.loading import resolve_device
    from probes.quality.features import build_extractor
    from probes.quality.image_fidelity import reference_from_folder
    from probes.quality.stats_file import save_stats

    t0 = time.perf_counter()
    fx = build_extractor(feature, _parse_options(feature_options), device=resolve_device(device),
                         inception_weights=inception_weights, clip_model=clip_model, clip_pretrained=clip_pretrained)
    size = (image_size, image_size) if image_size else None
    col = reference_from_folder(folder, fx, batch_size=batch_size, size=size, keep_features=max_features or 0)
    if col.n < 2:
        raise InputError(f"{folder}: only {col.n} readable image(s) ({col.log.n_skipped} skipped); "
                         "statistics need at least 2")
    path = save_stats(out, mean=col.moments.mean, cov=col.moments.cov, n=col.n, extractor=fx.describe(),
                      features=col.features if max_features else None,
                      meta={"folder": str(Path(folder).resolve()), "read": col.log.as_evidence(),
                            "image_size": image_size})
    for w in col.log.warnings("reference"):
        click.echo(f"warning: {w}", err=True)
    click.echo(f"{path}: n={col.n}, dim={col.moments.mean.shape[0]}, extractor {fx.name} "
               f"(weights sha256 {fx.weights_sha256[:12]}), {time.perf_counter() - t0:.1f} s")
