"""energy.footprint: FLOPs, parameters and bytes against hand counts, the peak of tensor memory,
skip reasons, parameter checks, and the probe end to end on a tiny text generator and classifiers."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from audit.errors import InputError, SpecError
from audit.findings import FileHash, SubjectIdentity
from audit.probe import ProbeContext, build_probe, probe_info
from audit.subjects import missing_capabilities
from probes.energy.footprint_functional import (
    TensorPeak,
    count_flops,
    count_parameters,
    disk_bytes,
    memory_bytes,
    torch_modules,
)
from tests.energy_fakes import PowerMeter, TinyClassifier, TinyImageGenerator
from tests.fakes import tiny_causal_lm, tiny_text_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"repeats": 2, "min_window_s": 60.0, "max_calls_per_window": 3, "warmup_calls": 1, "cpu_estimate": False,
        "n_resamples": 200}


def footprint_contract_inputs(tmp_path):
    """FAKES entry of tests/test_contract.py: the tiny text generator; windows bounded by calls
    (3 each, whatever the speed), so the counts are the same in every process."""
    return tiny_text_generator(), {}, dict(FAST)


def _quantized(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)


def _run(subject, **params):
    probe = build_probe("energy.footprint", {**FAST, **params})
    ctx = ProbeContext(device="cpu", probe_id="energy.footprint", meter=PowerMeter(watts=(40.0,)))
    return {f.metric: f for f in probe.run(subject, ctx)}


# -- FLOPs ------------------------------------------------------------------------------------


def test_flops_of_a_linear_layer_are_2_in_out_per_token():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(3, 5, 16)  # 15 tokens
    assert count_flops(lambda: lin(x), [lin]).total == 2 * 16 * 8 * 15


def test_flops_of_a_convolution_by_hand():
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    # each of the 2 x 4 x 5 x 5 outputs is 3 x 3 x 3 multiply-adds
    assert count_flops(lambda: conv(x), [conv]).total == 2 * (2 * 4 * 5 * 5) * (3 * 3 * 3)


def test_flops_of_dynamic_quantized_linear_layers_come_from_hooks_and_equal_the_float_count():
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    q = _quantized(net)
    x = torch.randn(6, 16)
    hand = 2 * (16 * 8 + 8 * 4) * 6
    got = count_flops(lambda: q(x), [q])
    assert (got.total, got.counted, got.quantized, got.quantized_layers) == (hand, 0, hand, 2)
    assert count_flops(lambda: net(x), [net]).total == hand


def test_flops_of_cpu_attention_by_hand():
    b, h, s, d = 1, 2, 8, 4
    q, k, v = (torch.randn(b, h, s, d) for _ in range(3))
    got = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert got.total == 2 * (2 * b * h * s * d * s)  # Q K^T and (scores) V, each 2 s d s per head


def test_flops_per_token_of_the_tiny_llama_by_hand():
    # hidden 32, 4 heads of 8, 2 KV heads (k, v: 32 -> 16), MLP 64 (gate, up, down), 2 layers, vocab 320
    lm = tiny_text_generator()
    per_layer = 2 * (32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64)
    head = 2 * 32 * len(lm.tokenizer)
    attention = 2 * (2 * 4 * 32 * 8)  # per token at 32 tokens: Q K^T and (scores) V, 4 heads, full square
    got = _run(lm, seq_len=32)
    assert got["flops_per_token"].value == 2 * per_layer + head + 2 * attention
    assert got["flops_per_token"].n == 32


# -- parameters and bytes ---------------------------------------------------------------------


def test_parameters_and_bytes_float32_and_bfloat16():
    net = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8))
    # Linear 16*8 + 8; BatchNorm weight + bias 8 + 8; buffers: running mean, var (float32 8 each), count (int64)
    assert count_parameters([net]).total == 16 * 8 + 8 + 16
    assert count_parameters([net]).trainable == 16 * 8 + 8 + 16
    m = memory_bytes([net])
    assert (m.parameters, m.buffers) == (4 * (16 * 8 + 8 + 16), 4 * 16 + 8)
    half = memory_bytes([net.to(torch.bfloat16)])
    # .to() casts the floating buffers too; the int64 batch count stays
    assert half.by_dtype == {"bfloat16": 2 * (16 * 8 + 8 + 16) + 2 * 16, "int64": 8}
    net[0].weight.requires_grad_(False)
    assert count_parameters([net]).trainable == 8 + 16


def test_a_tied_weight_counts_once():
    a, b = torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    assert count_parameters([torch.nn.Sequential(a, b)]).total == 16
    assert memory_bytes([torch.nn.Sequential(a, b), a]).total == 64  # and across roots


def test_int8_dynamic_quantized_linear_bytes_and_parameters_by_hand():
    q = _quantized(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)))
    assert list(q.parameters()) == []  # the weights live in packed params
    c = count_parameters([q])
    assert (c.total, c.packed, c.trainable) == (16 * 8 + 8 + 8 * 4 + 4, 16 * 8 + 8 + 8 * 4 + 4, 0)
    # int8 weight (1 byte each) + per-tensor scale (float64) and zero point (int64) + float32 bias
    m = memory_bytes([q])
    assert m.total == m.packed == (16 * 8 + 16 + 8 * 4) + (8 * 4 + 16 + 4 * 4)
    assert m.by_dtype == {"qint8": 16 * 8 + 16 + 8 * 4 + 16, "float32": 4 * (8 + 4)}


def test_per_channel_quantized_weights_count_a_scale_and_zero_point_per_row():
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(16, 8)),
                             {torch.nn.Linear: per_channel_dynamic_qconfig})
    assert memory_bytes([q]).total == 16 * 8 + 8 * (8 + 8) + 8 * 4


def test_a_quantized_head_tied_to_the_embedding_is_counted_apart_and_said_so():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=320, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    tied = LlamaForCausalLM(cfg).eval()
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    base = count_parameters([tied]).total  # the tied head once
    q = _quantized(tied)
    # the head is now an int8 copy beside the float embedding: counted apart, with a warning
    assert count_parameters([q]).total == base + 320 * 16
    lm = tiny_text_generator()
    lm.model = q
    got = _run(lm)
    assert "lm_head" in got["parameters_total"].warnings[0] and "lm_head" in got["weight_bytes_memory"].warnings[0]
    untied = tiny_text_generator()  # tie_word_embeddings false: no warning
    untied.model = _quantized(untied.model)
    assert _run(untied)["parameters_total"].warnings == ()


def test_bitsandbytes_style_weights_count_the_values_they_pack_and_their_state():
    # bitsandbytes is GPU-only here: its layout by duck typing (Params4bit: uint8 data, two 4-bit
    # values per byte, the original shape and absmax/code in quant_state; Int8Params: row scales SCB)
    from types import SimpleNamespace

    lin4 = torch.nn.Linear(64, 32, bias=False)
    lin4.weight = torch.nn.Parameter(torch.zeros(64 * 32 // 2, 1, dtype=torch.uint8), requires_grad=False)
    nested = SimpleNamespace(absmax=torch.zeros(2, dtype=torch.float32), code=torch.zeros(256))
    lin4.weight.quant_state = SimpleNamespace(shape=torch.Size([32, 64]), absmax=torch.zeros(32, dtype=torch.uint8),
                                              code=torch.zeros(16), offset=torch.zeros(()), state2=nested)
    lin8 = torch.nn.Linear(64, 32, bias=False)
    lin8.weight = torch.nn.Parameter(torch.zeros(32, 64, dtype=torch.int8), requires_grad=False)
    lin8.weight.SCB = torch.zeros(32)
    net = torch.nn.Sequential(lin4, lin8)
    assert count_parameters([net]).total == 2 * 32 * 64
    state4 = 32 * 1 + 16 * 4 + 4 + (2 * 4 + 256 * 4)
    assert memory_bytes([net]).total == (64 * 32 // 2 + state4) + (32 * 64 + 32 * 4)


def test_a_wrapper_names_the_deployed_module_and_only_it_is_counted():
    class WithReference(torch.nn.Module):  # an int8 model and the float one kept for gradients
        def __init__(self):
            super().__init__()
            self.reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
            self.quantized = _quantized(self.reference)
            self.footprint_module = self.quantized

        def forward(self, x):
            return self.quantized(x)

    clf = TinyClassifier()
    clf.model = WithReference()
    assert list(torch_modules(clf)) == ["model.footprint_module"]
    got = _run(clf)
    assert got["parameters_total"].value == 51 and got["weight_bytes_memory"].value == 16 * 3 + 16 + 3 * 4
    assert got["parameters_total"].evidence["modules"] == {"model.footprint_module": 51}
    assert got["parameters_total"].evidence["quantized_packed"] == 51


def _lora(model, r=4):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, target_modules=["q_proj", "v_proj"]))


def test_lora_trainable_parameters_are_rank_times_in_plus_out_per_adapted_layer(tmp_path):
    from peft import PeftModel

    base_total = sum(p.numel() for p in tiny_causal_lm().parameters())
    r = 4
    per_layer = r * (32 + 32) + r * (32 + 16)  # q_proj 32 -> 32, v_proj 32 -> 16
    wrapped = _lora(tiny_causal_lm(), r)
    c = count_parameters([wrapped])
    assert c.trainable == 2 * per_layer and c.total == base_total + 2 * per_layer
    assert len(c.adapted_modules) == 4 and all(n.endswith(("q_proj", "v_proj")) for n in c.adapted_modules)
    # loaded for inference the adapter is frozen (requires_grad off), yet it is what was trained
    wrapped.save_pretrained(tmp_path / "lora")
    frozen = PeftModel.from_pretrained(tiny_causal_lm(), str(tmp_path / "lora"), is_trainable=False)
    assert sum(p.numel() for p in frozen.parameters() if p.requires_grad) == 0
    assert count_parameters([frozen]).trainable == 2 * per_layer
    # merged into the weights, the probe counts it from the adapter's file
    lm = tiny_text_generator()
    lm.model = frozen.merge_and_unload().eval()
    lm.identity = dataclasses.replace(lm.identity, details={"adapter": str(tmp_path / "lora"), "adapter_merged": True})
    got = _run(lm)
    assert got["parameters_trainable"].value == 2 * per_layer and got["parameters_total"].value == base_total
    assert "merged" in got["parameters_trainable"].warnings[0]


def test_disk_bytes_count_weight_files_and_list_every_file(tmp_path):
    files = [FileHash("model.safetensors", "0" * 64, 1000), FileHash("adapter/adapter_model.safetensors", "0" * 64, 50),
             FileHash("tokenizer.json", "0" * 64, 7)]
    weights, every, rows = disk_bytes(files)
    assert (weights, every, [r["weights"] for r in rows]) == (1050, 1057, [True, True, False])
    clf = TinyClassifier()
    clf.identity = dataclasses.replace(clf.identity, files=tuple(files))
    got = _run(clf)["weight_bytes_disk"]
    assert got.value == 1050 and got.evidence["all_files_bytes"] == 1057
    assert math.isnan(_run(TinyClassifier())["weight_bytes_disk"].value)


# -- peak tensor memory -------------------------------------------------------------------------


def test_tensor_peak_follows_allocations_and_frees_and_ignores_existing_storage():
    x = torch.ones(256)  # 1 KiB, exists before: not counted

    def work():
        a = x * 2          # +1 KiB
        b = a + 1          # +1 KiB: 2 KiB live
        del a              # -1 KiB
        c = b * 3          # +1 KiB: 2 KiB live again, not 3
        return x.t(), x[:10], c.sum()  # views of existing storage: nothing new; the sum: 4 bytes

    with TensorPeak() as tp:
        work()
    assert tp.peak == 2048 + 4  # b, c and the sum
    with TensorPeak() as tp:
        y = torch.zeros(1024, dtype=torch.float64)  # 8 KiB, held
        z = y.view(32, 32).add_(1)  # in place, a view: nothing new
    assert tp.peak == 8192 and tp.current == 8192 and z.shape == (32, 32)


# -- skips and parameters -----------------------------------------------------------------------


def test_subjects_without_a_torch_module_are_skipped_with_the_reason(tmp_path):
    from audit.subjects.generations import GenerationsFile
    from audit.subjects.image import FolderImageGenerator
    from tests import image_fakes

    probe = build_probe("energy.footprint", {})
    gen = GenerationsFile([{"prompt": "p", "output": "o"}], SubjectIdentity(name="g", kind="text-generator",
                                                                         source="generations"))
    remote = tiny_text_generator()
    remote.model = "served-model-name"  # a server's model is a name, not a module
    folder = FolderImageGenerator(image_fakes.write_image_folder(tmp_path / "imgs", 2, seed=0),
                                  SubjectIdentity(name="f", kind="image-generator", source="folder"))
    for subject in (gen, remote, folder):
        reason = missing_capabilities(subject, probe)
        assert reason and "torch module" in reason and type(subject).__name__ in reason
        with pytest.raises(InputError, match="torch module"):
            probe.run(subject, ProbeContext(probe_id="energy.footprint"))
    assert missing_capabilities(tiny_text_generator(), probe) is None
    assert "applies to" in missing_capabilities(type("E", (), {"kind": "encoder"})(), probe)
    assert torch_modules(TinyImageGenerator()).keys() == {"model"}


@pytest.mark.parametrize("params, match", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"seq_len": 1}, "seq_len must be an integer >= 2"),
    ({"repeats": 1}, "repeats must be an integer >= 2"),
    ({"min_window_s": -1}, r"min_window_s must be a number of seconds in \[0, 600\]"),
    ({"confidence": 1.5}, r"confidence must be a number in \(0, 1\)"),
    ({"seq_len": 10**9}, "seq_len must be an integer <= 1_048_576"),
    ({"seq_len": "32"}, "expected an integer"),
])
def test_bad_parameters_are_spec_errors(params, match):
    with pytest.raises(SpecError, match=match):
        build_probe("energy.footprint", params)


def test_listed_with_its_parameters():
    info = probe_info("energy.footprint")
    assert info.summary.startswith("Parameters, weight bytes")
    assert {"batch_size", "seq_len", "repeats", "min_window_s"} <= {p[0] for p in info.params}
    assert set(info.applies_to) == {"text-generator", "image-generator", "classifier"}


# -- end to end ---------------------------------------------------------------------------------


def test_probe_on_a_tiny_text_generator_end_to_end():
    lm = tiny_text_generator()
    got = _run(lm, batch_size=2, seq_len=16)
    total = sum(p.numel() for p in lm.model.parameters())
    assert got["parameters_total"].value == total == got["parameters_trainable"].value
    rotary = sum(b.nbytes for b in lm.model.buffers())  # the rotary embedding's inverse frequencies
    assert rotary > 0 and got["weight_bytes_memory"].value == 4 * total + rotary
    assert got["flops_per_token"].n == 32
    assert all(not f.higher_is_better for f in got.values())
    peak = got["peak_memory_bytes"]
    # the logits alone: 2 x 16 x vocab float32, held while the log-softmax is taken
    assert peak.value >= 4 * total + rotary + 2 * 16 * len(lm.tokenizer) * 4 and peak.evidence["activations_peak"] > 0
    lat, energy = got["latency_s_per_1k_tokens"], got["energy_j_per_1k_tokens"]
    assert lat.n == 6 and lat.ci.low <= lat.value <= lat.ci.high and lat.unit == "s/1k tokens"
    assert energy.n == 2 and energy.evidence["units"] == 6 * 32 and energy.unit == "J/1k tokens"
    # a 40 W meter: J per 1k tokens = 40 W x seconds per 1k tokens (windows are back-to-back calls)
    # (the meter's window is a little longer than the calls': it starts before the first)
    assert energy.value == pytest.approx(40.0 * energy.evidence["seconds"] / energy.evidence["units"] * 1000, rel=0.05)
    assert "energy_estimate_j_per_1k_tokens" not in got


def test_unavailable_energy_is_nan_with_the_reason_and_the_estimate_apart():
    probe = build_probe("energy.footprint", FAST)
    ctx = ProbeContext(device="cpu", probe_id="energy.footprint", meter=PowerMeter(kind="unavailable"))
    got = {f.metric: f for f in probe.run(TinyClassifier(), ctx)}
    assert math.isnan(got["energy_j_per_1k_classifications"].value)
    assert "energy unavailable" in got["energy_j_per_1k_classifications"].warnings[-1]
    ctx = ProbeContext(device="cpu", probe_id="energy.footprint", meter=PowerMeter(kind="estimate"))
    got = {f.metric: f for f in probe.run(TinyClassifier(), ctx)}
    assert got["energy_estimate_j_per_1k_classifications"].evidence["label"] == "estimate"


def test_probe_on_a_classifier_float32_and_int8():
    clf = TinyClassifier()  # Flatten, Linear(16, 3)
    f32 = _run(clf, batch_size=4)
    assert f32["parameters_total"].value == 16 * 3 + 3 and f32["weight_bytes_memory"].value == 4 * 51
    assert f32["flops_per_input"].value == 2 * 16 * 3 and f32["flops_per_input"].n == 4
    int8 = TinyClassifier()
    int8.model = _quantized(int8.model)
    q = _run(int8, batch_size=4)
    assert q["parameters_total"].value == 51 and q["parameters_trainable"].value == 0
    assert q["weight_bytes_memory"].value == 16 * 3 + 16 + 3 * 4
    assert q["flops_per_input"].value == 2 * 16 * 3 and "forward hooks" in q["flops_per_input"].warnings[0]
    assert q["latency_s_per_1k_classifications"].n == 6


def test_probe_on_an_image_generator():
    got = _run(TinyImageGenerator(), batch_size=2)  # Linear(8, 192)
    assert got["flops_per_image"].value == 2 * 8 * 192 and got["parameters_total"].value == 8 * 192 + 192
    assert got["latency_s_per_image"].n == 6 and got["energy_j_per_image"].n == 2


@pytest.mark.gpu
def test_on_cuda_the_peak_is_the_allocator_s_and_the_counts_match_the_cpu():
    cpu = _run(tiny_text_generator())
    lm = tiny_text_generator()
    lm.model.to("cuda")
    lm.device = torch.device("cuda")
    probe = build_probe("energy.footprint", {**FAST, "cpu_estimate": False})
    got = {f.metric: f for f in probe.run(lm, ProbeContext(device="cuda", probe_id="energy.footprint"))}
    for metric in ("parameters_total", "weight_bytes_memory", "flops_per_token"):
        assert got[metric].value == cpu[metric].value, metric
    peak = got["peak_memory_bytes"]
    assert "max_memory_allocated" in peak.evidence["what"] and peak.evidence["activations_peak"] > 0
    assert peak.value >= got["weight_bytes_memory"].value
    assert got["latency_s_per_1k_tokens"].value > 0


def test_the_runner_records_the_skip_of_a_generations_file(tmp_path):
    import yaml

    from audit.runner import run_audit
    from audit.spec import load_spec

    (tmp_path / "gens.jsonl").write_text('{"prompt": "A", "output": "a"}\n', encoding="utf-8")
    spec = {"name": "skip", "subject": {"kind": "text-generator", "source": "generations", "path": "gens.jsonl"},
            "probes": [{"id": "energy.footprint"}], "settings": {"device": "cpu", "allow_empty": True}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    report = run_audit(load_spec(tmp_path / "a.yaml"), out_dir=tmp_path / "out", use_store=False).report
    status = report.probes["energy.footprint"]
    assert status.status == "skipped" and "GenerationsFile" in status.reason and not report.findings
