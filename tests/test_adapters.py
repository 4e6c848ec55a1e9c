"""``subject.adapter``: a peft LoRA adapter on a text-generator subject, wrapped or merged,
checked against peft itself; an adapter for another base or other shapes is refused."""

from __future__ import annotations

import json

import pytest
import torch

from audit.errors import InputError, SpecError
from audit.spec import AuditSpec, SubjectSpec
from audit.subjects.loading import load_subject
from tests.fakes import save_tiny_model, tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_adapter(folder, base_name, model=None):
    from peft import LoraConfig, get_peft_model

    model = model if model is not None else tiny_causal_lm()
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))  # non-zero B: it changes outputs
    peft_model.peft_config["default"].base_model_name_or_path = base_name
    peft_model.save_pretrained(folder)
    return peft_model.eval()


@pytest.fixture
def base_and_adapter(tmp_path):
    base = save_tiny_model(tmp_path / "tiny-llama")
    reference = _make_adapter(tmp_path / "lora", str(base))
    return base, tmp_path / "lora", reference


def _logits(subject_or_model, ids):
    model = getattr(subject_or_model, "model", subject_or_model)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("merge", [False, True])
def test_adapter_applies_like_peft(base_and_adapter, tmp_path, merge):
    base, adapter, reference = base_and_adapter
    spec = SubjectSpec(kind="text-generator", source="hf", path=str(base), adapter=str(adapter), merge=merge)
    lm = load_subject(spec, device="cpu", cache_dir=tmp_path / "cache")
    ids = torch.tensor([tiny_tokenizer().encode("The quick brown fox")])
    plain = load_subject(SubjectSpec(kind="text-generator", source="hf", path=str(base)), device="cpu",
                         cache_dir=tmp_path / "cache")
    assert not torch.allclose(_logits(lm, ids), _logits(plain, ids), atol=1e-4)  # the adapter does something
    torch.testing.assert_close(_logits(lm, ids), _logits(reference, ids), atol=1e-4, rtol=1e-4)
    files = {f.path for f in lm.identity.files}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "model.safetensors"} <= files
    assert lm.identity.details["adapter_merged"] is merge and lm.identity.details["adapter_rank"] == 4
    assert (type(lm.model).__name__ == "PeftModel") is not merge


def test_relative_adapter_path_resolves_against_the_spec_folder(base_and_adapter, tmp_path):
    base, _, _ = base_and_adapter
    spec = SubjectSpec(kind="text-generator", source="hf", path=str(base), adapter="lora")
    lm = load_subject(spec, base_dir=tmp_path, device="cpu", cache_dir=tmp_path / "cache")
    assert lm.identity.details["adapter"] == str(tmp_path / "lora")


def test_adapter_for_another_base_is_refused(tmp_path):
    base = save_tiny_model(tmp_path / "tiny-llama")
    _make_adapter(tmp_path / "lora", "HuggingFaceTB/SmolLM2-360M")
    spec = SubjectSpec(kind="text-generator", source="hf", path=str(base), adapter=str(tmp_path / "lora"))
    with pytest.raises(InputError, match="was trained on 'HuggingFaceTB/SmolLM2-360M'"):
        load_subject(spec, device="cpu", cache_dir=tmp_path / "cache")


def test_adapter_of_other_shapes_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    base = save_tiny_model(tmp_path / "tiny-llama")
    cfg = tiny_causal_lm().config.to_dict() | {"hidden_size": 64, "intermediate_size": 64}
    _make_adapter(tmp_path / "lora", str(base), model=LlamaForCausalLM(LlamaConfig(**cfg)))
    spec = SubjectSpec(kind="text-generator", source="hf", path=str(base), adapter=str(tmp_path / "lora"))
    with pytest.raises(InputError, match="does not fit the subject's model: .*size mismatch"):
        load_subject(spec, device="cpu", cache_dir=tmp_path / "cache")


def test_bad_adapter_specs(tmp_path):
    base = save_tiny_model(tmp_path / "tiny-llama")
    (tmp_path / "empty").mkdir()
    spec = SubjectSpec(kind="text-generator", source="hf", path=str(base), adapter=str(tmp_path / "empty"))
    with pytest.raises(InputError, match="is not a peft adapter folder"):
        load_subject(spec, device="cpu", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="merge: true needs an adapter"):
        SubjectSpec(kind="text-generator", source="hf", path=str(base), merge=True)
    from audit.subjects.adapters import apply_adapter

    class NoModel:
        model = None

    with pytest.raises(SpecError, match="adapters apply to text-generator subjects"):
        apply_adapter(NoModel(), SubjectSpec(kind="encoder", source="hf", path="x", adapter="a"), tmp_path)


def test_fingerprint_of_a_spec_without_adapter_is_unchanged(tmp_path):
    def spec(subject):
        return AuditSpec.model_validate({"name": "a", "subject": subject, "probes": [{"id": "quality.perplexity"}]})

    plain = {"kind": "text-generator", "source": "hf", "path": "gpt2"}
    assert "adapter" not in json.dumps(spec(plain).fingerprint())
    assert spec(plain).fingerprint() != spec({**plain, "adapter": "lora"}).fingerprint()
