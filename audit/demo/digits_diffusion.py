"""Demo part: a tiny DDPM trained here on the 8x8 digits, audited as a diffusers pipeline.

A diffusers ``UNet2DModel`` (8x8, one grey channel, 0.16 M parameters) learns to predict
the noise of scikit-learn's digits (the training split of
:func:`audit.demo.digits.digits_split`) under a cosine schedule of T = 100 steps, in about
15 s on this CPU (600 steps of 64). It is saved as a ``DDPMPipeline`` folder and audited through
``source: diffusers`` (sampled with 20 DDIM steps): FID, KID, IS, precision/recall and the
Gaussian KL on the shared digits classifier's features (a domain extractor: the numbers
compare digit generators with each other, never with published FIDs), the diffusion
likelihood (negative ELBO in bits/dim over the held-out real digits), detectability, a
contact sheet and energy. The pipeline is cached in the work folder by its training parameters.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from audit.demo.digits import digits_split, load_digits_tensors, train_digits_classifier
from audit.demo.digits_generator import _one_thread, write_real_digits

__all__ = ["digits_ddpm_spec", "train_digits_ddpm"]

_DONE = "genai_audit_demo.json"


def _unet():
    from diffusers import UNet2DModel

    # Small enough to train on one CPU thread in seconds: two levels (8x8, 4x4), no attention.
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8, add_attention=False,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def _train(seed: int, steps: int, T: int, batch: int, lr: float):
    from diffusers import DDPMScheduler

    x, y = load_digits_tensors()
    tr, _ = digits_split(len(y), seed=0)  # the classifier's split: the held-out digits stay unseen
    data = x[tr].float() / 127.5 - 1.0
    torch.manual_seed(seed)
    unet = _unet()
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                          variance_type="fixed_small")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    lr_at = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    abar = sched.alphas_cumprod
    unet.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        x0 = data[idx]
        t = torch.randint(0, T, (batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = torch.nn.functional.mse_loss(unet(x_t, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_at.step()
    return unet.eval(), sched, float(loss.detach())


def train_digits_ddpm(workdir: str | Path, *, seed: int = 0, steps: int = 600, T: int = 100, batch: int = 64,
                      lr: float = 3e-3) -> Path:
    """Train (or reuse) the digits DDPM; returns its ``DDPMPipeline`` folder (cached by parameters)."""
    from diffusers import DDPMPipeline

    params = {"seed": seed, "steps": steps, "T": T, "batch": batch, "lr": lr, "v": 1}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(workdir) / f"digits-ddpm-{key}"
    if (folder / _DONE).is_file():
        return folder
    with _one_thread():
        unet, sched, loss = _train(seed, steps, T, batch, lr)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder, safe_serialization=True)
    (folder / _DONE).write_text(json.dumps({**params, "final_loss": loss}), encoding="utf-8")
    return folder


def digits_ddpm_spec(workdir: Path) -> dict:
    """The diffusion-model audit of the demo."""
    workdir = Path(workdir)
    with _one_thread():
        classifier = train_digits_classifier(workdir)
    pipeline = train_digits_ddpm(workdir)
    reference = write_real_digits(workdir)
    features = {"feature": "audit.demo.digits:digits_classifier",
                "feature_options": {"weights": str(classifier), "channels": 1}}
    return {
        "name": "digits-ddpm-demo",
        "subject": {
            "kind": "image-generator",
            "source": "diffusers",
            "path": str(pipeline),
            "name": "digits DDPM (8x8, T=100, trained in the demo; sampled with 20 DDIM steps)",
            "options": {"scheduler": "DDIMScheduler", "num_inference_steps": 20, "batch_size": 500},
        },
        "data": {"reference": str(reference), "real": str(reference)},
        "probes": [
            {"id": "quality.image_fidelity",
             "params": {**features, "n_samples": 1000, "batch_size": 500, "kid_subsets": 50, "kid_subset_size": 500,
                        "n_resamples": 200,
                        "metrics": ["fid", "kid", "inception_score", "precision", "recall", "gaussian_kl"]}},
            # The bound on the held-out digits' NLL under the forward process of the DDPMScheduler the
            # pipeline was saved with (not the DDIM sampler): 20 strata of the 99 timesteps per image,
            # importance-weighted (``timesteps: all`` is the exact sum, 5x the model calls).
            {"id": "quality.diffusion_likelihood", "params": {"timesteps": 20, "batch_size": 539,
                                                              "n_resamples": 1000}},
            # Sliced Wasserstein (Karras et al.'s Laplacian-pyramid SWD; the 8x8 digits are upsampled to
            # 16x16, one level, and the finding says so), beside the CVAE's.
            {"id": "quality.sliced_wasserstein",
             "params": {"n_samples": 539, "batch_size": 539, "patches_per_image": 16, "n_directions": 64,
                        "n_repeats": 4, "n_resamples": 20}},
            {"id": "deepfake.image_detectability",
             "params": {**features, "folds": 3, "postprocess": ["jpeg:75", "resize:0.5", "blur:0.7"],
                        "eps": ["4/255"], "attack_steps": 5, "attack_samples": 128, "n_resamples": 200}},
            # A seeded contact sheet (generated beside held-out real digits) and the nearest real digit
            # of six generated ones, for people to look at.
            {"id": "quality.visual_inspection", "params": {"n_generated": 24, "n_real": 12, "n_neighbours": 6}},
            {"id": "energy.inference", "params": {"repeats": 3, "batch_size": 250, "warmup_calls": 1}},
        ],
        "gates": [],
        "settings": {"seed": 0},
    }
