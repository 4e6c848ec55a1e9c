"""Probe ``quality.visual_inspection``: what the generations look like, for people to judge.

Numbers such as FID say *how far* generated images are from real ones, never *what is
wrong* with them; the standard texts on evaluating generators put visual inspection first.
This probe puts a seeded sample of the subject's output in the report:

* image generators: a contact sheet of generated images beside real ones (data input
  ``reference``, when given), one row per prompt for text-to-image subjects, and the
  nearest real image of a few generated ones (the mode-collapse and memorisation check:
  a generation that is its neighbour's twin was copied, many generations with the same
  neighbour have collapsed), in standardised pixels or any feature space of
  ``quality.image_fidelity``;
* text generators: a table of sampled generations per prompt (data input ``prompts``).

Thumbnails are PNG files in the run's artefact folder (at most 64, 64 px); the HTML report
embeds them, so it stays self-contained. The finding is the duplicate rate of the sample:
the share of generated images (or of a prompt's generations) identical to another one,
with a Wilson interval; a generator that ignores its seed scores 1.

Example (spec):
    data: {reference: real-images/}
    probes:
      - id: quality.visual_inspection
        params: {n_generated: 24, n_real: 12, n_neighbours: 6}
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from audit.errors import InputError
from audit.findings import Finding
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import wilson_interval
from audit.subjects.imagedata import ImageReadLog, iter_image_batches, list_images
from probes.thumbnails import MAX_THUMBNAILS, ThumbnailWriter, sample_generated

__all__ = ["VisualInspection", "duplicate_flags"]

_TEXT_CHARS = 400


def duplicate_flags(items: list[Any]) -> list[bool]:
    """For each item, whether another item of the list is equal to it (bytes for images).

    Example:
        >>> duplicate_flags(["a", "b", "a"])
        [True, False, True]
    """
    keys = [bytes(x.contiguous().numpy().tobytes()) if isinstance(x, torch.Tensor) else x for x in items]
    count: dict[Any, int] = defaultdict(int)
    for k in keys:
        count[k] += 1
    return [count[k] > 1 for k in keys]


@register("quality.visual_inspection")
@dataclass(frozen=True)
class VisualInspection:
    """A seeded contact sheet of generations (beside real images) and the nearest real neighbours, for visual inspection.

    Image generators: generated images (one row per prompt for text-to-image), real images
    from ``reference`` beside them, and the nearest real image of ``n_neighbours`` generated
    ones. Text generators: sampled generations per prompt. The finding is the share of the
    sample that duplicates another generation (Wilson interval).
    """

    id: ClassVar[str] = "quality.visual_inspection"
    applies_to: ClassVar[tuple[str, ...]] = ("image-generator", "text-generator")

    n_generated: int = field(default=24, metadata={"help": "generated images shown (text-to-image: spread over the prompts)"})
    per_prompt: int = field(default=4, metadata={"help": "images (or text samples) per prompt"})
    max_prompts: int = field(default=6, metadata={"help": "prompts shown"})
    n_real: int = field(default=12, metadata={"help": "real images from `reference` shown beside them (0: none)"})
    n_neighbours: int = field(default=6, metadata={"help": "generated images shown with their nearest real image (0: none)"})
    max_reference: int = field(default=2000, metadata={"help": "real images searched for the nearest neighbour"})
    reference: str = field(default="reference", metadata={"help": "data input with real images (optional: without it, generated images only)"})
    prompts: str = field(default="prompts", metadata={"help": "data input with the prompts (text generators, text-to-image callables)"})
    feature: str = field(default="pixels", metadata={"help": "space of the nearest-neighbour search: pixels (standardised), inception, clip, module:factory"})
    feature_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "options of the feature extractor (as in quality.image_fidelity)"})
    thumbnail_px: int = field(default=64, metadata={"help": "longer side of a thumbnail, in pixels (16 .. 128)"})
    max_new_tokens: int = field(default=40, metadata={"help": "text: tokens per sample"})
    temperature: float = field(default=1.0, metadata={"help": "text: sampling temperature"})
    prompt_template: str = field(default="{prompt}", metadata={"help": "text: how a prompt is shown to the model"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the interval"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        for name, low in (("n_generated", 1), ("per_prompt", 1), ("max_prompts", 1), ("n_real", 0),
                          ("n_neighbours", 0), ("max_reference", 1), ("max_new_tokens", 1)):
            check.int_at_least(name, low)
        if self.n_generated + self.n_real + 2 * self.n_neighbours > MAX_THUMBNAILS:
            check.fail("n_generated", f"such that n_generated + n_real + 2 * n_neighbours <= {MAX_THUMBNAILS} "
                                      "(the report embeds every thumbnail)")
        if not check.is_int(self.thumbnail_px) or not 16 <= self.thumbnail_px <= 128:
            check.fail("thumbnail_px", "an integer in 16 .. 128")
        if not isinstance(self.feature, str) or not (self.feature in ("pixels", "inception", "clip")
                                                     or ":" in self.feature):
            check.fail("feature", "'pixels', 'inception', 'clip' or 'module:factory'")
        if not check.is_num(self.temperature) or not 0 < self.temperature <= 10:
            check.fail("temperature", "a number in (0, 10]")
        if not isinstance(self.prompt_template, str) or self.prompt_template.count("{prompt}") != 1:
            check.fail("prompt_template", "a string with exactly one '{prompt}'")
        if not check.is_num(self.confidence) or not 0 < self.confidence < 1:
            check.fail("confidence", "a number in (0, 1), e.g. 0.95")

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        if getattr(subject, "kind", "") == "text-generator":
            return self._run_text(subject, ctx)
        return self._run_images(subject, ctx)

    # -- images ----------------------------------------------------------------------------------
    def _run_images(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        from probes.privacy.image_replication import build_features, cosine_nearest

        text_to_image = "prompts" in getattr(subject, "capabilities", ())
        want = self.per_prompt * self.max_prompts if text_to_image else self.n_generated
        # A folder is read until max_prompts prompts have per_prompt images; a callable is given
        # each of the first max_prompts distinct prompts per_prompt times.
        images, prompts, gen_log = sample_generated(
            subject, ctx, 10 * want if text_to_image else self.n_generated, purpose="generate",
            prompt_plan=self._prompt_plan)
        if not images:
            raise InputError(f"{self.id}: the subject produced no readable image ({gen_log.n_skipped} skipped)")
        writer = ThumbnailWriter(ctx.artefact_dir, max_side=self.thumbnail_px)
        sections: list[dict[str, Any]] = []
        shown: list[int] = []
        if prompts is not None:  # one row per prompt, the first max_prompts distinct ones
            by_prompt: dict[str, list[int]] = {}
            for i, p in enumerate(prompts):
                if p in by_prompt or len(by_prompt) < self.max_prompts:
                    by_prompt.setdefault(p, []).append(i)
            budget = self.n_generated
            for p, idx in by_prompt.items():
                take = idx[: min(self.per_prompt, budget)]
                budget -= len(take)
                shown.extend(take)
                saved = [writer.save(images[i], f"gen-{i:03d}", f"#{i}") for i in take]
                sections.append({"title": f"prompt: {p}", "columns": [
                    {"title": "generated", "images": [s for s in saved if s]}]})
        else:
            shown = list(range(min(self.n_generated, len(images))))
            saved = [writer.save(images[i], f"gen-{i:03d}", f"#{i}") for i in shown]
            sections.append({"title": "generated and real images", "columns": [
                {"title": f"generated (seeded, first {len(shown)})", "images": [s for s in saved if s]}]})

        real, real_log, real_names = self._real_images(ctx, "L" if images[0].shape[0] == 1 else "RGB")
        if real:
            saved = [writer.save(img, f"real-{j:03d}", real_names[j]) for j, img in enumerate(real[: self.n_real])]
            column = {"title": f"real ({self.reference})", "images": [s for s in saved if s]}
            if prompts is None:
                sections[0]["columns"].append(column)
            elif self.n_real:
                sections.append({"title": "real images", "columns": [column]})
            if self.n_neighbours:
                fx = build_features(self.feature, self.feature_options, ctx.device)
                gen_f = torch.cat([fx(torch.stack(images[i:i + 64]))[0] for i in range(0, len(images), 64)])
                real_f = torch.cat([fx(torch.stack(real[j:j + 64]))[0] for j in range(0, len(real), 64)])
                sim, nn_idx = cosine_nearest(gen_f[torch.tensor(shown[: self.n_neighbours])], real_f)
                pairs = []
                for k, i in enumerate(shown[: self.n_neighbours]):
                    j = int(nn_idx[k])
                    a = writer.save(images[i], f"nn-{k:02d}-generated", f"generated #{i}")
                    b = writer.save(real[j], f"nn-{k:02d}-real", real_names[j])
                    if a and b:
                        pairs.append({"a": a, "b": b, "caption": f"similarity {float(sim[k]):.3f} ({fx.name})"})
                sections.append({"title": f"nearest real neighbour of {len(pairs)} generated images "
                                          f"(among {len(real)} real images)", "pairs": pairs})

        flags = duplicate_flags(images)
        dup = sum(flags)
        warns = gen_log.warnings("generated image") + real_log.warnings("real image")
        evidence: dict[str, Any] = {"n_sampled": len(images), "shown": len(shown), "duplicates": dup,
                                    "text_to_image": text_to_image, "seed": ctx.child_seed("generate"),
                                    "generated_images": gen_log.as_evidence()}
        if writer.enabled:
            evidence["gallery"] = {"sections": sections}
        if writer.note():
            evidence["gallery_note"] = writer.note()
        return [Finding(probe=self.id, metric="duplicate_rate", value=dup / len(images), higher_is_better=False,
                        ci=wilson_interval(dup, len(images), confidence=self.confidence), n=len(images),
                        warnings=tuple(warns), evidence=evidence)]

    def _prompt_plan(self, prompts: list[str]) -> list[str]:
        """Each of the first ``max_prompts`` distinct prompts, ``per_prompt`` times."""
        return [p for p in list(dict.fromkeys(prompts))[: self.max_prompts] for _ in range(self.per_prompt)]

    def _real_images(self, ctx: ProbeContext, mode: str) -> tuple[list[Any], ImageReadLog, list[str]]:
        log = ImageReadLog()
        if self.reference not in ctx.data or (not self.n_real and not self.n_neighbours):
            return [], log, []
        folder = ctx.input_path(self.reference)
        if not folder.is_dir():
            raise InputError(f"{self.id}: data input '{self.reference}' must be a folder of real images")
        paths = list_images(folder)
        # A seeded choice over the whole folder (not its first files, which may be one class).
        order = torch.randperm(len(paths), generator=ctx.rng("real"))[: self.max_reference].tolist()
        chosen = [paths[i] for i in order]
        imgs, names = [], []
        for batch, idx in iter_image_batches(chosen, batch_size=128, mode=mode, log=log, with_index=True):
            imgs.extend(batch)
            names.extend(chosen[i].name for i in idx)
        return imgs, log, names

    # -- text ------------------------------------------------------------------------------------
    def _run_text(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        from audit.subjects.textdata import read_documents

        docs = read_documents(ctx.input_path(self.prompts))[: self.max_prompts]
        from audit.subjects.textgen import generate_texts

        prompts = [self.prompt_template.replace("{prompt}", d.text) for d in docs]
        # Every sample in one call (batched by the engine), each with its own seed as before.
        flat = generate_texts(subject, [p for p in prompts for _ in range(self.per_prompt)],
                              [ctx.child_seed(f"s-{i}-{j}") for i in range(len(docs)) for j in range(self.per_prompt)],
                              max_new_tokens=self.max_new_tokens, temperature=float(self.temperature), what=self.id)
        rows, dup, total = [], 0, 0
        for i, d in enumerate(docs):
            gens = flat[i * self.per_prompt:(i + 1) * self.per_prompt]
            flags = duplicate_flags(gens)
            dup += sum(flags)
            total += len(gens)
            rows.append({"id": d.id, "prompt": d.text[:_TEXT_CHARS],
                         "generations": [g[:_TEXT_CHARS] + ("…" if len(g) > _TEXT_CHARS else "") for g in gens]})
        warns = [f"per_prompt {self.per_prompt}: no duplicate can occur with one sample per prompt"] \
            if self.per_prompt == 1 else []
        return [Finding(probe=self.id, metric="duplicate_rate", value=dup / total, higher_is_better=False,
                        ci=wilson_interval(dup, total, confidence=self.confidence), n=total, warnings=tuple(warns),
                        evidence={"samples": rows, "max_new_tokens": self.max_new_tokens,
                                  "temperature": self.temperature, "prompt_template": self.prompt_template})]
