"""Probe ``quality.clip_score``: how well a text-to-image generator's images match their prompts.

CLIP score (Hessel et al., 2021; torchmetrics' definition): ``100 * max(cos(E_image,
E_text), 0)`` per (image, prompt) pair, averaged, with an open_clip model as the judge.
The interval is a percentile bootstrap over pairs.

Example (spec):
    subject: {kind: image-generator, source: folder, path: samples/}   # with samples/prompts.jsonl
    probes:
      - id: quality.clip_score
        params: {clip_model: ViT-B-32, clip_pretrained: /models/open_clip_vit_b32.bin}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from audit.errors import InputError
from audit.findings import Finding
from audit.subjects.imagedata import ImageReadLog, read_prompts
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import bootstrap_ci
from probes.quality.features import clip_image_input, clip_preprocess, load_open_clip
from probes.sharding import image_shard, merge_read_logs

__all__ = ["ClipScore", "clip_score_pairs"]


def clip_score_pairs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP scores ``100 * max(cos, 0)`` of matching rows [N, D] x [N, D].

    Example:
        >>> clip_score_pairs(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))
        tensor([70.7107,  0.0000])
    """
    img = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    txt = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    return (100 * (img * txt).sum(-1)).clamp_min(0)


@register("quality.clip_score")
@dataclass(frozen=True)
class ClipScore:
    """CLIP score of a text-to-image generator: image-prompt agreement judged by open_clip.

    Prompts come with the subject (a folder's prompts.jsonl) or from the data input
    ``prompts`` (.jsonl or .txt) for a text-to-image callable. Value: the mean over pairs of
    ``100 * max(cos, 0)``; interval: percentile bootstrap over pairs.
    """

    id: ClassVar[str] = "quality.clip_score"
    applies_to: ClassVar[tuple[str, ...]] = ("image-generator",)
    requires: ClassVar[tuple[str, ...]] = ("generate_images", "prompts")

    clip_model: str = field(default="ViT-B-32", metadata={"help": "open_clip architecture, or module:factory returning an open_clip-compatible model (and tokenizer)"})
    clip_pretrained: str | None = field(default=None, metadata={"help": "open_clip pretrained tag or local weights file"})
    prompts: str = field(default="prompts", metadata={"help": "data input with the prompts, for generators that do not carry their own"})
    max_prompts: int | None = field(default=None, metadata={"help": "score at most this many prompts (default: all)"})
    batch_size: int = field(default=64, metadata={"help": "images per batch"})
    n_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples for the interval"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the interval"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        fail = check.fail
        if not isinstance(self.clip_model, str) or not self.clip_model.strip():
            fail("clip_model", "an open_clip architecture name or module:factory")
        if self.max_prompts is not None and (isinstance(self.max_prompts, bool) or not isinstance(self.max_prompts, int)
                                             or self.max_prompts < 2):
            fail("max_prompts", "an integer >= 2 or null")
        for name, low in (("batch_size", 1), ("n_resamples", 100)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                fail(name, f"an integer >= {low}")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0 < self.confidence < 1:
            fail("confidence", "a number in (0, 1)")

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        device = torch.device(ctx.device)
        net, tokenizer, sha = load_open_clip(self.clip_model, self.clip_pretrained, device=device)
        size, mean, std = clip_preprocess(net)
        own = getattr(subject, "prompts", None)
        folder = own is not None and hasattr(subject, "iter_with_index")
        if own is None:
            own = [r["prompt"] for r in read_prompts(ctx.input_path(self.prompts))]
        prompts = list(own[: self.max_prompts] if self.max_prompts else own)

        # Under torchrun each rank embeds its share of the pairs; per-pair scores are gathered in
        # prompt order, so every rank computes the same mean and interval.
        log = ImageReadLog()
        scores_mine: list[torch.Tensor] = []
        idx_mine: list[int] = []
        with torch.inference_mode():
            if folder:
                # Pair each readable image with its own prompt (unreadable files are skipped).
                batches = image_shard(subject, ctx, min(len(prompts), len(subject.paths)),
                                      batch_size=self.batch_size, seed=0, log=log)
            else:
                batches = image_shard(subject, ctx, len(prompts), batch_size=self.batch_size,
                                      seed=ctx.child_seed("generate"), prompts=prompts)
            for batch, idx in ctx.progress(batches, desc=f"{self.id}: pairs"):
                x = batch.to(device)
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                img = net.encode_image(clip_image_input(x, size, mean, std))
                tokens = tokenizer([prompts[i] for i in idx]).to(device)
                scores_mine.append(clip_score_pairs(img, net.encode_text(tokens)).double())
                idx_mine.extend(idx)
        mine = torch.cat(scores_mine).cpu().tolist() if scores_mine else []
        pairs = ctx.dist.gather(list(zip(idx_mine, mine)), idx_mine)
        seen = [i for i, _ in pairs]
        n = len(seen)
        warnings = []
        if folder:
            warnings = merge_read_logs(ctx.dist.all_gather_object(log)).warnings("generated")
        if n < 2:
            raise InputError(f"{self.id}: only {n} (image, prompt) pair(s) could be scored; at least 2 are needed")
        scores = np.array([s for _, s in pairs], dtype=np.float64)
        if n < 30:
            warnings.append(f"only {n} prompts: the interval is wide")
        ci = bootstrap_ci(scores, n_resamples=self.n_resamples, confidence=self.confidence,
                          seed=ctx.child_seed("bootstrap"))
        order = scores.argsort()
        worst = [{"prompt": prompts[seen[i]], "score": round(float(scores[i]), 3)} for i in order[:5]]
        value = float(scores.mean()) if n else math.nan
        return [Finding(
            probe=self.id, metric="clip_score", value=value, higher_is_better=True, ci=ci, n=n,
            warnings=tuple(warnings),
            evidence={"judge": {"model": self.clip_model, "pretrained": self.clip_pretrained, "weights_sha256": sha,
                                "input_size": list(size), "resize": "bicubic-shortside-centercrop",
                                "antialias": True},
                      "lowest": worst, "pairs": n, "prompts_given": len(prompts)},
        )]
