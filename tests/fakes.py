"""Tiny models built in code, so tests need no downloads (HF_HUB_OFFLINE=1).

``tiny_text_generator()`` is a 2-layer Llama with random (seeded) weights and a byte-level
BPE tokenizer trained here on a few sentences: small enough that a forward pass takes
milliseconds, real enough that every transformers code path runs.
"""

from __future__ import annotations

import functools
from pathlib import Path

from audit.findings import SubjectIdentity
from audit.subjects import HFTextGenerator

TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. A café serves naïve coffee for 3 €.\n"
    "Perplexity measures how well a model predicts held-out text; lower is better.\n"
    "Bits per byte compare models with different tokenizers. 0123456789 — done!\n"
)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab 320) with bos/eos/pad tokens, trained in code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([TRAIN_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
    )


def tiny_causal_lm(vocab_size: int | None = None, *, seed: int = 0, max_positions: int = 256):
    """A 2-layer Llama causal LM with seeded random weights (float32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    # Random init gives near-uniform predictions; scale the head so that logits vary and
    # numeric differences between scoring recipes would show.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model.eval()


def tiny_text_generator(*, seed: int = 0, max_positions: int = 256) -> HFTextGenerator:
    model = tiny_causal_lm(seed=seed, max_positions=max_positions)
    ident = SubjectIdentity(name="tiny-llama", kind="text-generator", source="python", path="tests.fakes")
    return HFTextGenerator(model, tiny_tokenizer(), ident, device="cpu")


def make_text_generator():
    """``module:callable`` entry for specs in tests: ``tests.fakes:make_text_generator``."""
    return tiny_text_generator()


def save_tiny_model(folder: str | Path) -> Path:
    """Save the tiny model and tokenizer as a transformers folder (safetensors)."""
    folder = Path(folder)
    tiny_causal_lm().save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _llama_cpp_permute(weight, n_head: int):
    """The q/k row order llama.cpp's converter writes (transformers undoes it on load)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def save_tiny_gguf(path: str | Path) -> Path:
    """Write the tiny model and tokenizer as a float32 llama GGUF file, as llama.cpp lays it out.

    Loading it with transformers gives back the same logits as ``tiny_causal_lm()`` and the same
    token ids as ``tiny_tokenizer()``, so GGUF loading can be tested in a second, without downloads.
    """
    import json

    import gguf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model, tok = tiny_causal_lm(), tiny_tokenizer()
    cfg = model.config
    rope_theta = float((getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0))

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)

    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(False)

    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight",
                          _llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight",
                          _llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads))
        writer.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    writer.add_tensor("output.weight", sd["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
