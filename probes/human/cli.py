"""``genai-audit rate``: write a human-evaluation page for an image-generator audit.

Example:
    genai-audit rate audit-out/digits-cvae-demo --kind 2afc --out rating/
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["rate"]


@click.command("rate")
@click.argument("report", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["2afc", "hype", "likert"]), default="2afc", show_default=True,
              help="2afc: which of two images is real; hype: real or generated, one image; likert: 1-5 ratings.")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Folder to write the page into.")
@click.option("--n", "n", type=click.IntRange(min=1), default=20, show_default=True,
              help="Generated images (and as many real ones) to rate.")
@click.option("--question", type=click.Choice(["quality", "prompt"]), default="quality", show_default=True,
              help="likert: rate image quality, or faithfulness to the prompt (text-to-image).")
@click.option("--spec", "spec", type=click.Path(path_type=Path), default=None,
              help="The audit's spec (default: the one kept in report.json).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the images and of their order.")
@click.option("--device", default="cpu", show_default=True, help="Device to regenerate the images on.")
def rate(report: Path, kind: str, out: Path, n: int, question: str, spec: Path | None, seed: int,
         device: str) -> None:
    """Write OUT/index.html (a self-contained rating page), key.csv and template.csv for REPORT."""
    from audit.render.rating import build_items, rating_images, write_rating_page

    generated, real = rating_images(report, spec_path=spec, n=n, seed=seed, device=device)
    items = build_items(kind, generated, real, seed=seed, question=question)
    paths = write_rating_page(items, out, title=f"Image rating ({kind}): {Path(report).name}")
    click.echo(f"{len(items)} items: open {paths['page']} in a browser (works offline); the raters' CSVs "
               f"and {paths['key'].name} go to human.ratings (data: {{ratings: {out}}})")
