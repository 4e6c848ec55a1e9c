"""Loading variants: int8-dynamic quantization of text generators (log-probs close to float)
and classifiers (int8 logits, the float model's gradient: straight-through), the checks of a
quantization the device or source cannot take, and weights / dtype overrides of classifiers and
image generators (through the runner with robustness.classifier)."""

from __future__ import annotations

import copy

import pytest
import torch

from audit.errors import SpecError
from audit.spec import spec_from_dict
from tests.fakes import tiny_text_generator
from tests.test_variants_run import fast, run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

def test_int8_text_generator_log_probs_are_close_to_float_and_generation_works():
    from audit.subjects.quantize import quantize_dynamic_int8

    lm = tiny_text_generator()
    ids = torch.tensor([lm.tokenizer.encode("The quick brown fox jumps over the lazy dog.")])
    ref = lm.token_logprobs(ids)
    lm.model = quantize_dynamic_int8(lm.model)
    got = lm.token_logprobs(ids)
    assert not torch.equal(got, ref)
    # int8 weights round by at most half a step of each tensor's range; on the tiny model's scaled head
    # this moves log-probs by about 1 % of their typical size.
    assert (got - ref).abs().mean() < 0.02 * ref.abs().mean()
    assert len(lm.generate(["The quick"], max_new_tokens=4)) == 1

def test_int8_classifier_logits_are_int8_and_gradients_the_float_models():
    from audit.subjects.classifier import classifier_from_module
    from audit.subjects.quantize import STE_NOTE, quantize_classifier, quantize_dynamic_int8

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    reference = copy.deepcopy(net)
    clf = quantize_classifier(classifier_from_module(net, input_shape=(1, 4, 4), mean=0.5, std=0.25))
    x = torch.rand(5, 1, 4, 4)
    expected = quantize_dynamic_int8(copy.deepcopy(reference))((x - 0.5) / 0.25)  # the same torch.ao call
    xg = x.clone().requires_grad_(True)
    logits = clf.logits(xg)
    torch.testing.assert_close(logits.detach(), expected, rtol=0, atol=0)  # forward: exactly int8's
    assert not torch.allclose(logits.detach(), reference((x - 0.5) / 0.25), atol=1e-6)
    logits[:, 1].sum().backward()
    xf = x.clone().requires_grad_(True)
    reference((xf - 0.5) / 0.25)[:, 1].sum().backward()
    torch.testing.assert_close(xg.grad, xf.grad)  # backward: the float model's gradient
    assert clf.identity.details["gradients"] == STE_NOTE
    assert clf.model.footprint_module is clf.model.quantized  # energy.footprint counts the int8 model only
    with torch.no_grad():  # no gradient asked: only the int8 model runs
        torch.testing.assert_close(clf.logits(x), expected, rtol=0, atol=0)

def test_quantization_that_cannot_run_here_is_a_clear_spec_error():
    from audit.subjects.quantize import check_quantization

    with pytest.raises(SpecError, match="int8-dynamic runs on the CPU only.*cuda"):
        check_quantization("int8-dynamic", kind="text-generator", source="hf", device="cuda")
    with pytest.raises(SpecError, match=r"bnb-nf4 \(bitsandbytes\) needs a CUDA device; the device is cpu"):
        check_quantization("bnb-nf4", kind="text-generator", source="hf", device="cpu")
    with pytest.raises(SpecError, match="sources hf and gguf; this subject's source is 'python'"):
        check_quantization("bnb-8bit", kind="text-generator", source="python", device="cuda")
    with pytest.raises(SpecError, match="applies to text-generator and classifier subjects; this is a encoder"):
        check_quantization("int8-dynamic", kind="encoder", source="hf", device="cpu")

# -- weights and dtype overrides -------------------------------------------------------------------

def make_gan():
    """``tests.test_variants_run:make_gan``: latents [6] -> images [3, 4, 4] in [-1, 1]."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 48), torch.nn.Tanh(), torch.nn.Unflatten(1, (3, 4, 4)))

def test_image_generator_variant_with_other_weights_and_bfloat16(tmp_path):
    from safetensors.torch import save_file

    from audit.subjects.loading import load_subject
    from audit.variants_run import targets

    other = make_gan()
    with torch.no_grad():
        other[0].weight.mul_(-1)
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    spec = spec_from_dict({
        "name": "gan", "subject": {"kind": "image-generator", "source": "torch", "path": "tests.test_variant_loading:make_gan",
                                   "options": {"latent_shape": [6]}},
        "probes": [{"id": "test.per_variant"}],
        "variants": [{"name": "other", "weights": "other.safetensors"}, {"name": "bf16", "dtype": "bfloat16"}]},
        base_dir=tmp_path)
    base, w, bf16 = (load_subject(t.subject, base_dir=tmp_path, device="cpu", cache_dir=tmp_path / "c")
                     for t in targets(spec))
    images = [torch.cat(list(s.generate(5, seed=1))).float() for s in (base, w, bf16)]
    assert not torch.equal(images[0], images[1]) and w.identity.files[0].path == "other.safetensors"
    assert base.identity.files == () and bf16.identity.details["dtype"] == "bfloat16"
    diff = (images[0] - images[2]).abs()
    assert 0 < diff.max() <= 3  # bfloat16 rounds the pixels by a few levels of 255 at most

def test_classifier_variants_through_the_robustness_probe(tmp_path):
    """The digits net as float32, with other weights, and int8 (attacked through float gradients)."""
    from safetensors.torch import save_file

    from audit.demo.digits import DigitsNet

    for seed in (0, 1):
        torch.manual_seed(seed)
        save_file(DigitsNet().state_dict(), str(tmp_path / f"w{seed}.safetensors"))
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.rand(24, 1, 8, 8, generator=g), "y": torch.randint(0, 10, (24,), generator=g)},
               tmp_path / "digits.pt")
    spec = spec_from_dict({
        "name": "digits-variants",
        "subject": {"kind": "classifier", "source": "python", "path": "audit.demo.digits:digits_classifier",
                    "options": {"weights": "w0.safetensors", "input_shape": [1, 8, 8]}},
        "data": {"images": "digits.pt"},
        "probes": fast([{"id": "robustness.classifier", "params": {"eps": [0.1], "steps": 3, "n_resamples": 100,
                                                                    "per_class": False}}]),
        "variants": [{"name": "w1", "weights": "w1.safetensors"}, {"name": "int8", "quantization": "int8-dynamic"}],
        "settings": {"device": "cpu"}}, base_dir=tmp_path)
    r = run(spec, tmp_path / "out").report
    assert [v.probes["robustness.classifier"].status for v in r.variants] == ["ok", "ok"]
    w1, int8 = r.variants
    assert w1.subject.files[0].path == "w1.safetensors" and w1.subject.files != r.subject.files
    assert int8.subject.files == r.subject.files and int8.subject.details["quantization"] == "int8-dynamic"
    assert any("float model's gradient" in n for n in int8.notes)
    key = "robustness.classifier/clean_accuracy"
    assert {r.finding(key, v).delta is not None for v in ("w1", "int8")} == {True}
    pgd = r.finding("robustness.classifier/robust_accuracy[attack=pgd,eps=0.1]", "int8")
    assert pgd is not None and pgd.value <= r.finding(key, "int8").value  # the attack works through float gradients

def test_bitsandbytes_missing_names_the_extra():
    import importlib.util

    from audit.errors import MissingDependencyError
    from audit.subjects.quantize import check_quantization

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(MissingDependencyError, match=r"quantization"):
        check_quantization("bnb-8bit", kind="text-generator", source="hf", device="cuda")
