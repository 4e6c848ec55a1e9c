"""SmolLM2-135M's architecture with seeded random weights, for benchmarks on machines that cannot
carry the 98 MB GGUF bundle (speed, and the equality of two recipes' values, do not depend on the
weights). Shared by ``bench_perplexity.py`` and ``bench_generation.py``."""

from __future__ import annotations

import torch


def smollm2_random(device: str, *, layers: int = 30, dtype: str = "float32", bos: int = 1, eos: int = 2,
                   pad: int = 2):
    """A ``LlamaForCausalLM`` of SmolLM2-135M's configuration (``layers`` of its 30 kept), seeded, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos,
                      pad_token_id=pad)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=device, dtype=getattr(torch, dtype)).eval()
