"""Tiny random-weight diffusers pipelines built in code from diffusers' own model classes and
saved with ``save_pretrained`` (no download):

* ``tiny_ddpm_folder(folder)``: a DDPMPipeline (UNet2DModel, 8x8 RGB, DDPMScheduler T=20).
* ``tiny_sd_folder(folder)``: a StableDiffusionPipeline (UNet2DConditionModel on 8x8 latents,
  AutoencoderKL to 16x16 images, a 1-layer CLIPTextModel and a CLIPTokenizer whose vocab and
  merges files are written here), no safety checker.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch


def tiny_unet(*, channels: int = 3, size: int = 8, out_channels: int | None = None, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=out_channels or channels,
                       layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def tiny_ddpm_folder(folder: Path, *, scheduler: str = "DDPMScheduler", variance_type: str = "fixed_small",
                     T: int = 20, channels: int = 3, seed: int = 0) -> Path:
    """A DDPMPipeline saved to ``folder`` (its scheduler class named by ``scheduler``)."""
    import diffusers
    from diffusers import DDPMPipeline

    out = 2 * channels if variance_type.startswith("learned") else channels
    unet = tiny_unet(channels=channels, out_channels=out, seed=seed)
    cls = getattr(diffusers, scheduler)
    kwargs = {"num_train_timesteps": T}
    if scheduler == "DDPMScheduler":
        kwargs["variance_type"] = variance_type
    sched = cls(**kwargs)
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


def _tokenizer_files(folder: Path) -> tuple[Path, Path]:
    chars = string.ascii_lowercase + string.digits
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = ["a n", "an d</w>"]
    vocab["an"] = len(vocab)
    vocab["and</w>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


def tiny_sd_folder(folder: Path, *, seed: int = 0) -> Path:
    """A tiny StableDiffusionPipeline saved to ``folder`` (16x16 RGB images)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        norm_num_groups=4, sample_size=16, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    # from_pretrained on a folder of vocab.json + merges.txt: the constructor's arguments differ
    # between transformers 4 (file paths) and 5 (a vocab dict and merges list).
    src = Path(folder).parent / f".{Path(folder).name}-tokenizer-src"
    _tokenizer_files(src)
    tokenizer = CLIPTokenizer.from_pretrained(str(src), model_max_length=16)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer),
                                        hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_hidden_layers=1, max_position_embeddings=16, projection_dim=16,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    sched = DDIMScheduler(num_train_timesteps=50, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
