"""The findings of ``quality.image_fidelity`` from the collected features of both sides: FID,
KID, Inception Score, precision and recall, each with its interval and warnings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from audit.findings import Finding, Interval
from audit.probe import ProbeContext
from audit.stats import wilson_interval
from probes.quality.features import FeatureExtractor
from probes.quality.image_functional import (
    bootstrap_fid,
    bootstrap_inception_score,
    bootstrap_kid,
    frechet_distance,
    inception_score,
    kid,
    percentile_interval,
    precision_recall,
)
from probes.quality.stats_file import ReferenceStats

if TYPE_CHECKING:
    from probes.quality.image_fidelity import Collected, ImageFidelity

__all__ = ["FID_MIN_SAMPLES", "FidelityFindings"]

#: Below this many samples FID is noticeably biased upwards (Chong & Forsyth, 2020).
FID_MIN_SAMPLES = 2048


@dataclass
class FidelityFindings:
    """One probe run's two sides (generated ``fake``, reference ``real`` or ``stats``) and the
    findings made from them; :meth:`all` gives the metrics the probe asks for, in order."""

    probe: ImageFidelity
    fx: FeatureExtractor
    fake: Collected
    real: Collected | None
    stats: ReferenceStats | None
    ctx: ProbeContext
    ref_path: Path
    findings: list[Finding] = field(default_factory=list)

    def __post_init__(self) -> None:
        fx, fake, real, stats = self.fx, self.fake, self.real, self.stats
        self.n_fake = fake.n
        self.real_mean = stats.mean.to(fx.device) if stats is not None else real.moments.mean
        self.real_cov = stats.cov.to(fx.device) if stats is not None else real.moments.cov
        self.n_real = stats.n if stats is not None else real.n
        self.real_feats = (stats.features.to(fx.device) if stats is not None and stats.features is not None
                           else (real.features if real is not None else None))
        self.fake_feats = fake.features
        self.common_warn = fake.log.warnings("generated") + (real.log.warnings("reference") if real else [])
        if fx.name != "inception-v3-fid":
            self.common_warn.insert(0, f"features of {fx.name}, not the standard FID Inception network: the values "
                                       "compare models under this extractor only, not with published FIDs")
        self.evidence = {
            "n_generated": self.n_fake, "n_reference": self.n_real,
            "reference": str(self.ref_path) + (" (statistics file)" if stats is not None else ""),
            "extractor": {**fx.describe(), "dim": int(self.fake_feats.shape[1]) if self.fake_feats.numel() else fx.dim},
            "generated_images": fake.log.as_evidence(),
            **({"reference_images": real.log.as_evidence()} if real is not None else {}),
            **({"reference_stats_meta": {k: v for k, v in stats.meta.items() if k != "extractor"}}
               if stats is not None else {}),
        }
        self.conf = self.probe.confidence
        self.method = f"bootstrap-bias-corrected-{round(self.conf * 100, 2):g}"

    def all(self) -> list[Finding]:
        metrics = self.probe.metrics
        if "fid" in metrics:
            self._fid()
        if "kid" in metrics:
            self._kid()
        if "inception_score" in metrics:
            self._inception_score()
        if "precision" in metrics or "recall" in metrics:
            self._precision_recall()
        if "gaussian_kl" in metrics:
            self.add("gaussian_kl", *_gaussian_kl(
                self.fake, self.fake_feats, self.real_feats if self.stats is None else None, self.real_mean,
                self.real_cov, self.probe.n_resamples, self.ctx, self.conf, self.method))
        return self.findings

    def add(self, metric: str, value: float, hib: bool, ci: Interval | None, n: int, warns: list[str],
            extra: dict[str, Any] | None = None) -> None:
        # The first finding carries the full record (extractor, read logs); the others the counts.
        base = self.evidence if not self.findings else {"n_generated": self.n_fake, "n_reference": self.n_real}
        self.findings.append(Finding(probe=self.probe.id, metric=metric, value=value, higher_is_better=hib, ci=ci,
                                     n=n, warnings=tuple(self.common_warn + warns), evidence={**base, **(extra or {})}))

    def _fid(self) -> None:
        warns = []
        if min(self.n_fake, self.n_real) < FID_MIN_SAMPLES:
            warns.append(f"n={min(self.n_fake, self.n_real)} < {FID_MIN_SAMPLES}: FID is biased upwards at small n; "
                         "compare FIDs only at equal sample counts")
        fid = frechet_distance(self.real_mean, self.real_cov, self.fake.moments.mean, self.fake.moments.cov)
        boot = bootstrap_fid(self.fake_feats, real=self.real_feats if self.stats is None else None,
                             real_mean=self.real_mean, real_cov=self.real_cov, n_resamples=self.probe.n_resamples,
                             generator=self.ctx.rng("fid-bootstrap"))
        if self.fake_feats.shape[0] < self.n_fake or (self.real_feats is not None and self.stats is None
                                            and self.real_feats.shape[0] < self.n_real):
            warns.append(f"the interval resamples the first {self.probe.max_features} features per side")
        if self.stats is not None:
            warns.append("reference from a statistics file: the interval holds the reference fixed")
        fid_v = float(fid)
        ci = _bias_corrected(fid_v, boot, self.conf, self.method)
        if ci is not None and ci.low < 0:
            ci = Interval(0.0, ci.high, ci.method)  # a distance is never negative
        self.add("fid", fid_v, False, ci, self.n_fake, warns)

    def _kid(self) -> None:
        if self.real_feats is None:
            self.add("kid", math.nan, False, None, self.n_fake,
                [f"the statistics file {self.ref_path.name} holds no features: KID needs them (rebuild it "
                 "with `genai-audit stats build --max-features N`)"])
        else:
            m = min(self.probe.kid_subset_size, self.real_feats.shape[0], self.fake_feats.shape[0])
            warns = ([f"kid_subset_size {self.probe.kid_subset_size} clamped to {m} (the smaller set)"]
                     if m < self.probe.kid_subset_size else [])
            mean, std, per = kid(self.real_feats, self.fake_feats, subsets=self.probe.kid_subsets, subset_size=m,
                                 generator=self.ctx.rng("kid-subsets"))
            full = bootstrap_kid(self.real_feats, self.fake_feats, n_resamples=self.probe.n_resamples,
                                 generator=self.ctx.rng("kid-bootstrap"),
                                 max_samples=min(4096, self.probe.max_features))
            # The spread of the full-sample MMD² (the quantity the subsets estimate), centred on KID.
            ci = _bias_corrected(float(mean), full, self.conf, self.method)
            self.add("kid", float(mean), False, ci, self.n_fake, warns,
                {"kid_subset_std": float(std), "subsets": self.probe.kid_subsets, "subset_size": m,
                 "degree": 3, "coef": 1.0, "gamma": "1/dim"})

    def _inception_score(self) -> None:
        if self.fake.logits is None:
            self.add("inception_score", math.nan, True, None, self.n_fake,
                [f"the feature extractor {self.fx.name} has no class logits: no Inception Score"])
        else:
            splits = max(1, min(self.probe.is_splits, self.fake.logits.shape[0] // 2))
            s, sd, _ = inception_score(self.fake.logits, splits=splits)
            boot = bootstrap_inception_score(self.fake.logits, splits=splits, n_resamples=self.probe.n_resamples,
                                             generator=self.ctx.rng("is-bootstrap"))
            iv = percentile_interval(boot, self.conf)
            ci = Interval(iv[0], iv[1], f"bootstrap-percentile-{round(self.conf * 100, 2):g}") if iv else None
            warns = ([f"Inception Score from the logits of {self.fx.name}, not the Inception network: "
                      "comparable only with the same extractor"] if self.fx.name != "inception-v3-fid" else [])
            self.add("inception_score", float(s), True, ci, self.n_fake, warns,
                {"split_std": float(sd), "splits": splits})

    def _precision_recall(self) -> None:
        if self.real_feats is None:
            for metric in ("precision", "recall"):
                if metric in self.probe.metrics:
                    self.add(metric, math.nan, True, None, self.n_fake,
                        [f"the statistics file {self.ref_path.name} holds no features: {metric} needs them"])
        else:
            k = min(self.probe.pr_k, self.real_feats.shape[0] - 1, self.fake_feats.shape[0] - 1)
            warns = [f"pr_k {self.probe.pr_k} clamped to {k}"] if k < self.probe.pr_k else []
            p, r, in_real, in_fake = precision_recall(self.real_feats, self.fake_feats, k=k)
            hits_p, hits_r = int(in_real.sum()), int(in_fake.sum())
            if "precision" in self.probe.metrics:
                self.add("precision", float(p), True, wilson_interval(hits_p, in_real.numel(), confidence=self.conf),
                    in_real.numel(), warns, {"k": k, "inside": hits_p})
            if "recall" in self.probe.metrics:
                self.add("recall", float(r), True, wilson_interval(hits_r, in_fake.numel(), confidence=self.conf),
                    in_fake.numel(), warns, {"k": k, "inside": hits_r})


def _bias_corrected(value: float, boot: torch.Tensor, confidence: float, method: str) -> Interval | None:
    """The percentile bootstrap interval shifted by the bootstrap's bias estimate:
    ``[v - (mean_b - q_lo), v + (q_hi - mean_b)]``.

    FID (and the MMD² U-statistic over a resample with duplicates) of a bootstrap resample
    is biased upwards, so the plain percentile interval sits above the estimate, and the
    "basic" interval ``[2v - q_hi, 2v - q_lo]`` can exclude it when the bias exceeds the
    spread. Removing the estimated bias keeps the spread and centres it on the estimate.
    """
    iv = percentile_interval(boot, confidence)
    v = boot[torch.isfinite(boot)]
    if iv is None or not math.isfinite(value) or v.numel() < 2:
        return None
    centre = float(v.mean())
    return Interval(value - (centre - iv[0]), value + (iv[1] - centre), method)


def _gaussian_kl(fake: Collected, fake_feats: torch.Tensor, real_feats: torch.Tensor | None, real_mean: torch.Tensor,
                 real_cov: torch.Tensor, n_resamples: int, ctx: ProbeContext, conf: float, method: str) -> tuple:
    """The ``add`` arguments of the closed-form KL(N_generated || N_real) of Gaussians fitted to the features."""
    from probes.quality.diffusion_functional import bootstrap_gaussian_kl, gaussian_kl

    mf, cf = fake.moments.mean, fake.moments.cov
    # A feature constant (and equal) in both sets, e.g. a dead ReLU, adds 0 to the KL but makes
    # both covariances singular: leave it out, and say so.
    vf, vr = torch.diagonal(cf), torch.diagonal(real_cov)
    scale = float(torch.maximum(vf.max(), vr.max()).clamp(min=1e-300))
    keep = ~((vf <= 1e-12 * scale) & (vr <= 1e-12 * scale) & ((mf - real_mean).abs() <= 1e-6 * math.sqrt(scale)))
    warns = []
    if not bool(keep.all()):
        warns.append(f"{int((~keep).sum())} of {keep.numel()} feature dimension(s) constant and equal in both sets "
                     "(e.g. dead ReLUs) left out: they add 0 to the KL")
        mf, cf, real_mean, real_cov = mf[keep], cf[keep][:, keep], real_mean[keep], real_cov[keep][:, keep]
        fake_feats = fake_feats[:, keep]
        real_feats = real_feats[:, keep] if real_feats is not None else None
    kl = float(gaussian_kl(mf, cf, real_mean, real_cov))
    reverse = float(gaussian_kl(real_mean, real_cov, mf, cf))
    extra = {"direction": "KL(generated || real), nats", "reverse_kl": reverse, "dims_used": int(keep.sum())}
    if not math.isfinite(kl):
        return (math.nan, False, None, fake.n, warns + [
            f"a feature covariance is singular (n={fake.n} generated, dim={fake_feats.shape[1]}): the Gaussian "
            "KL needs more samples than feature dimensions, and no feature constant in one set only"], extra)
    boot = bootstrap_gaussian_kl(fake_feats, real=real_feats, real_mean=real_mean, real_cov=real_cov,
                                 n_resamples=n_resamples, generator=ctx.rng("gaussian-kl-bootstrap"))
    ci = _bias_corrected(kl, boot, conf, method)
    if ci is not None and ci.low < 0:
        ci = Interval(0.0, ci.high, ci.method)
    return kl, False, ci, fake.n, warns, extra
