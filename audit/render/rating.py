"""``genai-audit rate``: a self-contained HTML page for human evaluation of generated images.

Three tasks (``kind``):

* ``2afc`` -- "which image is real?": pairs of one real and one generated image, sides drawn
  at random (HYPE, Zhou et al. 2019, in its paired form).
* ``hype`` -- single images, half real and half generated, each judged "real" or "generated"
  (HYPE-infinity's judgement without the time limit).
* ``likert`` -- 1-5 ratings of quality, or of faithfulness to the prompt (``question:
  prompt``, text-to-image subjects); real images, when there is a reference, are mixed in as
  controls.

Where the images come from: the audit's own spec (kept in ``report.json``, or ``--spec``).
The generated images are regenerated from the subject with ``seed`` (a folder subject: its
first files), the real ones drawn with ``seed`` from the ``reference`` data folder. The page
embeds every image as a PNG data URI, makes no outside request (a Content-Security-Policy
forbids them) and works from ``file://``; the rater's answers are saved as a CSV through a
download link made in the page. Beside it: ``key.csv`` (the truth per item, for
``human.ratings``; not shown to raters) and ``template.csv`` (the same columns as the page's
CSV, for ratings collected another way).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import InputError

__all__ = ["KINDS", "RatingItem", "RESPONSE_COLUMNS", "KEY_COLUMNS", "write_rating_page", "rating_images"]

KINDS = ("2afc", "hype", "likert")
RESPONSE_COLUMNS = ("rater", "item_id", "response")
KEY_COLUMNS = ("item_id", "task", "truth", "image_a", "image_b", "prompt", "question")
QUESTIONS = {
    "2afc": "Which image is real?",
    "hype": "Is this image real or generated?",
    "quality": "How good is this image? (1 = very poor, 5 = excellent)",
    "prompt": "How well does the image match the prompt? (1 = not at all, 5 = perfectly)",
}


@dataclass(frozen=True)
class RatingItem:
    """One item of a rating page: its id, the truth (kept in ``key.csv``), images and prompt."""

    item_id: str
    task: str
    truth: str
    images: tuple[tuple[str, bytes], ...]  # (source, PNG bytes): one, or two for 2afc
    prompt: str = ""
    question: str = ""


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def rating_images(report_path: str | Path, *, spec_path: str | Path | None = None, n: int = 20, seed: int = 0,
                  device: str = "cpu", cache_dir: Path | None = None
                  ) -> tuple[list[tuple[str, bytes, str]], list[tuple[str, bytes]]]:
    """The generated images ``[(source, png, prompt)]`` and real ones ``[(source, png)]`` of an audit.

    Raises:
        InputError: the report is not an image-generator audit, or its images cannot be found.
    """
    from PIL import Image

    from audit.findings import AuditReport
    from audit.spec import load_spec, spec_from_dict
    from audit.subjects.imagedata import list_images, read_prompts
    from audit.subjects.loading import load_subject

    path = Path(report_path)
    report_file = path / "report.json" if path.is_dir() else path
    if not report_file.is_file():
        raise InputError(f"{report_path}: no report.json there; expected an audit's output folder or its report.json")
    report = AuditReport.load(report_file)
    if spec_path is not None:
        spec = load_spec(spec_path)
    elif report.spec:
        spec = spec_from_dict(dict(report.spec), source=str(report_file), base_dir=Path.cwd())
    else:
        raise InputError(f"{report_file}: the report keeps no spec; give the audit's spec with --spec")
    if spec.subject.kind != "image-generator":
        raise InputError(f"{report_file}: the audit's subject is a {spec.subject.kind}; `rate` needs an "
                         "image-generator audit (there are no images to rate)")
    data = spec.data_paths()
    subject = load_subject(spec.subject, base_dir=Path(spec.base_dir), device=device,
                           cache_dir=cache_dir or Path(report_file).parent / ".rate-cache")
    prompts = getattr(subject, "prompts", None)
    if "prompts" in getattr(subject, "capabilities", ()) and prompts is None and "prompts" in data:
        prompts = [r["prompt"] for r in read_prompts(data["prompts"])]
    kwargs: dict[str, Any] = {"batch_size": min(n, 64), "seed": seed}
    if prompts is not None and not hasattr(subject, "read_log"):
        batches = subject.generate(prompts=list(prompts[:n]), **kwargs)
    else:
        batches = subject.generate(n, **kwargs)
    generated: list[tuple[str, bytes, str]] = []
    for batch in batches:
        for x in batch:
            arr = x.permute(1, 2, 0).cpu().numpy()
            img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
            i = len(generated)
            prompt = prompts[i] if prompts is not None and i < len(prompts) else ""
            generated.append((f"generated/{i}@seed{seed}", _png(img), prompt))
    generated = generated[:n]
    real: list[tuple[str, bytes]] = []
    if "reference" in data and data["reference"].is_dir():
        files = list_images(data["reference"])
        for p in sorted(random.Random(seed).sample(files, min(n, len(files)))):
            with Image.open(p) as im:
                real.append((str(p), _png(im.convert("L" if im.mode in ("L", "1", "I;16") else "RGB"))))
    if not generated:
        raise InputError(f"{report_file}: the subject produced no images to rate")
    return generated, real


def build_items(kind: str, generated: list[tuple[str, bytes, str]], real: list[tuple[str, bytes]], *,
                seed: int = 0, question: str = "quality") -> list[RatingItem]:
    """The items of a ``kind`` page, in a seeded random order."""
    if kind not in KINDS:
        raise InputError(f"unknown rating kind {kind!r}; expected one of {', '.join(KINDS)}")
    rng = random.Random(seed)
    items: list[RatingItem] = []
    if kind in ("2afc", "hype") and not real:
        raise InputError(f"a {kind} page needs real images: the audit has no `reference` folder in its data")
    if kind == "2afc":
        for i, (g, r) in enumerate(zip(generated, real)):
            left_real = rng.random() < 0.5
            pair = ((r[0], r[1]), (g[0], g[1])) if left_real else ((g[0], g[1]), (r[0], r[1]))
            items.append(RatingItem(f"pair-{i:04d}", kind, "left" if left_real else "right", pair,
                                    question=QUESTIONS["2afc"]))
    elif kind == "hype":
        k = min(len(generated), len(real))
        for i in range(k):
            items.append(RatingItem(f"gen-{i:04d}", kind, "generated", ((generated[i][0], generated[i][1]),),
                                    question=QUESTIONS["hype"]))
            items.append(RatingItem(f"real-{i:04d}", kind, "real", (real[i],), question=QUESTIONS["hype"]))
    else:
        if question not in ("quality", "prompt"):
            raise InputError(f"unknown Likert question {question!r}; expected quality or prompt")
        if question == "prompt" and not any(g[2] for g in generated):
            raise InputError("question: prompt needs a text-to-image subject (its images have no prompts)")
        for i, (src, png, prompt) in enumerate(generated):
            items.append(RatingItem(f"gen-{i:04d}", kind, "generated", ((src, png),), prompt, QUESTIONS[question]))
        if question == "quality":  # real images as controls (a prompt question has no real counterpart)
            for i, r in enumerate(real):
                items.append(RatingItem(f"real-{i:04d}", kind, "real", (r,), "", QUESTIONS[question]))
    rng.shuffle(items)
    return items


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_rating_page(items: list[RatingItem], out: str | Path, *, title: str = "Image rating") -> dict[str, Path]:
    """Write ``index.html``, ``key.csv`` and ``template.csv`` into ``out``; returns their paths."""
    if not items:
        raise InputError("nothing to rate: no items")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = items[0].task
    page_items = [{"id": it.item_id, "images": [_data_uri(png) for _, png in it.images], "prompt": it.prompt}
                  for it in items]
    template = (Path(__file__).parent / "templates" / "rating.html").read_text(encoding="utf-8")
    config = {"kind": kind, "question": items[0].question, "items": page_items,
              "columns": list(RESPONSE_COLUMNS)}
    page = (template.replace("__TITLE__", html.escape(title))
            .replace("__CONFIG__", json.dumps(config).replace("</", "<\\/")))
    paths = {"page": out / "index.html", "key": out / "key.csv", "template": out / "template.csv"}
    paths["page"].write_text(page, encoding="utf-8")
    with open(paths["key"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(KEY_COLUMNS)
        for it in items:
            srcs = [s for s, _ in it.images] + [""]
            w.writerow([it.item_id, it.task, it.truth, srcs[0], srcs[1] if len(it.images) > 1 else "",
                        it.prompt, it.question])
    with open(paths["template"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(RESPONSE_COLUMNS)
        for it in items:
            w.writerow(["", it.item_id, ""])
    return paths
