"""Probe ``quality.diffusion_likelihood``: the negative ELBO of a DDPM-family model on held-out images.

The bound of Ho et al. (2020) with the discretised Gaussian decoder (Nichol & Dhariwal 2021),
in bits per dimension, and its three terms: the prior ``L_T`` (closed form), the diffusion
terms ``sum L_t`` and the decoder ``L_0`` (maths in :mod:`probes.quality.diffusion_functional`).
It needs the subject's UNet and the betas of the scheduler the pipeline was saved with
(``DDPMScheduler`` or ``DDIMScheduler``, which share the DDPM forward process); any other
scheduler is refused, naming the ones that apply.

``timesteps``: ``all`` evaluates every ``L_t`` (T - 1 model calls per image, plus one for
``L_0``); an integer K < T - 1 cuts 1..T-1 into K strata and draws one timestep per stratum
and image, weighted by the stratum's size (its inverse probability): an unbiased estimate of
the sum whose extra variance the bootstrap over images includes. Every term is one draw of
the noise (as improved-diffusion's ``calc_bpd_loop``).

Example (spec):
    subject: {kind: image-generator, source: diffusers, path: ddpm-cifar10/}
    data: {real: cifar10-test/}
    probes:
      - id: quality.diffusion_likelihood
        params: {timesteps: 100, n_images: 1000}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from audit.errors import InputError
from audit.findings import Finding
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import bootstrap_ci
from audit.subjects.imagedata import ImageReadLog, iter_image_batches, list_images
from probes.quality.diffusion_functional import VARIANCE_TYPES, GaussianDiffusion, stratified_timesteps

__all__ = ["DDPM_SCHEDULERS", "DiffusionLikelihood"]

#: Schedulers whose betas define a discrete-time DDPM forward process the bound is taken over.
DDPM_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler")
_OOM = (torch.cuda.OutOfMemoryError,)


@register("quality.diffusion_likelihood")
@dataclass(frozen=True)
class DiffusionLikelihood:
    """Negative ELBO (bits/dim) of a DDPM-family diffusion model on held-out real images, with
    its terms L_T, sum L_t and L_0, bootstrap intervals over images."""

    id: ClassVar[str] = "quality.diffusion_likelihood"
    applies_to: ClassVar[tuple[str, ...]] = ("image-generator",)
    requires: ClassVar[tuple[str, ...]] = ("denoiser",)

    data: str = field(default="real", metadata={"help": "data input with the held-out real images (a folder)"})
    n_images: int | None = field(default=None, metadata={"help": "score at most this many images (the first, sorted; default all)"})
    timesteps: Any = field(default=100, metadata={"help": "'all', or K: one timestep per image in each of K strata of 1..T-1 (importance-weighted); all when K >= T-1"})
    variance: str = field(default="scheduler", metadata={"help": "model variance: scheduler (its variance_type), fixed_small, fixed_large or learned_range"})
    clip_denoised: bool | None = field(default=None, metadata={"help": "clip the predicted x0 to [-1, 1] (default: the scheduler's clip_sample)"})
    batch_size: int = field(default=64, metadata={"help": "images per model call (halved on out-of-memory)"})
    n_resamples: int = field(default=2000, metadata={"help": "bootstrap resamples over images"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        check.data_name("real")
        if self.n_images is not None:
            check.int_at_least("n_images", 2)
        if not (self.timesteps == "all" or (check.is_int(self.timesteps) and self.timesteps >= 1)):
            check.fail("timesteps", "'all' or an integer >= 1 (strata of timesteps)")
        if self.variance not in ("scheduler", *VARIANCE_TYPES):
            check.fail("variance", f"one of scheduler, {', '.join(VARIANCE_TYPES)}")
        if self.clip_denoised is not None and not isinstance(self.clip_denoised, bool):
            check.fail("clip_denoised", "true, false or null")
        check.int_at_least("batch_size", 1)
        check.int_at_least("n_resamples", 100)
        if not check.is_num(self.confidence) or not 0 < self.confidence < 1:
            check.fail("confidence", "a number in (0, 1), e.g. 0.95")

    # -- the process -----------------------------------------------------------------------------
    def process(self, scheduler: Any) -> tuple[GaussianDiffusion, list[str]]:
        """The forward process of ``scheduler`` (refused unless DDPM-family) and warnings."""
        name = type(scheduler).__name__
        if name not in DDPM_SCHEDULERS:
            raise InputError(f"{self.id}: the pipeline's scheduler is {name}; the likelihood bound needs the "
                             f"discrete-time DDPM forward process of {', '.join(DDPM_SCHEDULERS)} (a model "
                             "trained as a DDPM saved with another scheduler can be re-saved with "
                             "DDPMScheduler.from_config(pipe.scheduler.config))")
        cfg = scheduler.config
        warns: list[str] = []
        variance = self.variance
        if variance == "scheduler":
            vt = cfg.get("variance_type")
            if vt is None:
                vt = "fixed_small"
                warns.append(f"{name} declares no variance_type: fixed_small (the DDPM default) is assumed; "
                             "set the variance parameter to override")
            variance = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}.get(vt, vt)
            if variance not in VARIANCE_TYPES:
                raise InputError(f"{self.id}: the scheduler's variance_type {vt!r} is not supported; supported: "
                                 f"{', '.join(VARIANCE_TYPES)} (and their _log forms)")
        prediction = cfg.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "sample", "v_prediction"):
            raise InputError(f"{self.id}: prediction_type {prediction!r} is not supported (epsilon, sample, "
                             "v_prediction)")
        clip = bool(cfg.get("clip_sample", False)) if self.clip_denoised is None else self.clip_denoised
        return GaussianDiffusion.from_betas(scheduler.betas, variance_type=variance, prediction_type=prediction,
                                            clip_denoised=clip), warns

    # -- run -------------------------------------------------------------------------------------
    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        proc, warns = self.process(subject.training_scheduler)
        folder = ctx.input_path(self.data)
        c, h, w = subject.sample_shape
        if c not in (1, 3):
            raise InputError(f"{self.id}: the UNet takes {c} channels; held-out images can be read as 1 (grey) "
                             "or 3 (RGB) channels only")
        device = torch.device(ctx.device)
        paths = list_images(folder)
        bs = self.batch_size
        while True:
            try:
                terms, log, items = self._score(subject, proc, paths, (c, h, w), bs, ctx, device)
                break
            except _OOM:
                if bs == 1:
                    raise
                torch.cuda.empty_cache()
                bs = max(1, bs // 2)
        if terms["prior"].size < 2:
            raise InputError(f"{self.id}: only {terms['prior'].size} readable image(s) in {folder}; at least 2 "
                             "are needed")
        findings = self._findings(terms, proc, (c, h, w), log, folder, warns)
        to_bpd = 1.0 / (int(np.prod((c, h, w))) * math.log(2.0))
        ctx.record_samples({"item": item, "metric": "nll_bpd", "score": float(sum(terms[k][i] for k in terms) * to_bpd),
                            **{f"{k}_bpd": float(terms[k][i] * to_bpd) for k in terms}}
                           for i, item in enumerate(items))
        return findings

    def _score(self, subject: Any, proc: GaussianDiffusion, paths: list[Any], shape: tuple[int, int, int],
               bs: int, ctx: ProbeContext, device: torch.device
               ) -> tuple[dict[str, np.ndarray], ImageReadLog, list[str]]:
        c, h, w = shape
        log = ImageReadLog()
        k = proc.T - 1 if self.timesteps == "all" else int(self.timesteps)
        g_t, g_noise = ctx.rng("timesteps"), ctx.rng("noise")
        out: dict[str, list[torch.Tensor]] = {"prior": [], "diffusion": [], "decoder": []}
        # float64 maths around the model (the terms are sums of D small numbers); the model in its dtype.
        model = lambda x_t, t: subject.predict(x_t.float(), t).double()  # noqa: E731
        batches = iter_image_batches(paths, batch_size=bs, mode="L" if c == 1 else "RGB", size=(w, h), log=log,
                                     limit=self.n_images, with_index=True)
        items: list[str] = []
        for batch, idx in ctx.progress(batches, desc=f"{self.id}: images"):
            items.extend(Path(paths[int(i)]).name for i in idx)
            x0 = batch.to(device, torch.float64) / 127.5 - 1.0
            t, wts = stratified_timesteps(proc.T, k, x0.shape[0], generator=g_t)
            for name, v in proc.elbo_terms(model, x0, timesteps=t, weights=wts, generator=g_noise).items():
                out[name].append(v)
        return {k_: torch.cat(v).cpu().numpy() if v else np.zeros(0) for k_, v in out.items()}, log, items

    def _findings(self, terms: dict[str, np.ndarray], proc: GaussianDiffusion, shape: tuple[int, int, int],
                  log: ImageReadLog, folder: Any, warns: list[str]) -> list[Finding]:
        d = int(np.prod(shape))
        to_bpd = 1.0 / (d * math.log(2.0))
        bpd = {name: v * to_bpd for name, v in terms.items()}
        bpd["total"] = bpd["prior"] + bpd["diffusion"] + bpd["decoder"]
        n = int(bpd["total"].size)
        stratified = self.timesteps != "all" and int(self.timesteps) < proc.T - 1
        m = int(self.timesteps) if stratified else proc.T - 1
        warnings = list(warns)
        if stratified:
            warnings.append(f"sum of L_t estimated from {m} of {proc.T - 1} timesteps per image (one per stratum, "
                            "importance-weighted by the stratum size: unbiased; the interval includes its variance)")
        if log.resized:
            warnings.append(f"{log.resized} image(s) resized to the model's {shape[2]}x{shape[1]}: the bound is of "
                            "the resized images")
        evidence = {
            "n_images": n, "dims_per_image": d, "T": proc.T, "timesteps_per_image": m + 1,
            "estimator": ("stratified, importance-weighted" if stratified else "all timesteps") +
                         "; one noise draw per term",
            "variance_type": proc.variance_type, "prediction_type": proc.prediction_type,
            "clip_denoised": proc.clip_denoised, "decoder": "discretised Gaussian, 256 levels on [-1, 1]",
            "data": str(folder), "images": log.as_evidence(),
        }
        names = {"total": ("nll_bpd", "negative ELBO: an upper bound on the NLL"),
                 "prior": ("prior_bpd", "L_T: KL(q(x_T|x_0) || N(0, I))"),
                 "diffusion": ("diffusion_bpd", "sum of L_t, t = 1..T-1: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))"),
                 "decoder": ("decoder_bpd", "L_0: -log p(x_0|x_1), discretised Gaussian")}
        findings = []
        for key, (metric, what) in names.items():
            v = bpd[key]
            ci = bootstrap_ci(v, n_resamples=self.n_resamples, confidence=self.confidence, seed=0)
            ev = {"what": what, **(evidence if key == "total" else {"n_images": n})}
            findings.append(Finding(probe=self.id, metric=metric, value=float(v.mean()), higher_is_better=False,
                                    unit="bits/dim", ci=ci, n=n, warnings=tuple(warnings), evidence=ev))
        return findings
