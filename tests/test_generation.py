"""The batched generation engine: batch-independent samples, per-row stopping, out-of-memory
back-off, chat templates, and the probes' one generation call. References: transformers'
``generate`` and logits warpers, SciPy's goodness-of-fit tests, hand-derived probabilities."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from scipy import stats

from audit.errors import InputError, SpecError
from audit.findings import SubjectIdentity
from audit.probe import ProbeContext, build_probe
from audit.subjects import HFTextGenerator, TextGenerator
from audit.subjects.generation import (
    SamplingConfig,
    counter_uniform,
    generate_ids,
    next_tokens,
    restrict_logits,
    sample_keys,
)
from audit.subjects.textgen import CHUNK, encode_prompts, generate_texts, row_seeds
from tests.fakes import tiny_causal_lm, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDENT = SubjectIdentity(name="tiny", kind="text-generator", source="python")
PROMPTS = ["The quick brown fox", "Perplexity", "A café serves naïve coffee for", "0123",
           "Bits per byte compare models with different", "lower is", "x", "The lazy dog jumps over the quick",
           "done!", "Held-out text; lower"]
CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm()


@pytest.fixture(scope="module")
def prompt_ids():
    tok = tiny_tokenizer()
    return [[tok.bos_token_id, *tok.encode(p, add_special_tokens=False)] for p in PROMPTS]


def chat_tokenizer():
    tok = copy.deepcopy(tiny_tokenizer())
    tok.chat_template = CHAT
    return tok


# -- the counter-based noise ----------------------------------------------------------------------
def test_counter_uniform_is_a_pure_function_of_key_step_and_column_and_is_uniform():
    keys = sample_keys(range(64))
    u = counter_uniform(keys, 3, 5000)
    assert u.dtype == torch.float32 and u.shape == (64, 5000) and 0 < u.min() and u.max() < 1
    assert torch.equal(counter_uniform(keys[10:11], 3, 5000), u[10:11])          # a row alone: the same
    assert torch.equal(counter_uniform(keys.flip(0), 3, 5000), u.flip(0))         # any order: the same
    assert torch.equal(counter_uniform(sample_keys([10]), 3, 5000), u[10:11])     # keyed by the seed only
    assert not torch.equal(counter_uniform(keys, 4, 5000), u)                     # a new step: new noise
    assert stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    # No correlation between neighbouring columns, rows or steps.
    nxt = counter_uniform(keys, 4, 5000)
    for a, b in ((u[:, :-1], u[:, 1:]), (u[:-1], u[1:]), (u, nxt)):
        assert abs(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]) < 0.01


def test_restrict_logits_equals_transformers_top_k_and_top_p_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(16, 300, generator=g) * 3
    for top_k, top_p in ((10, None), (None, 0.8), (40, 0.9), (None, 0.05), (1000, None)):
        ref = scores.clone()
        if top_k is not None:
            ref = TopKLogitsWarper(top_k)(None, ref)
        if top_p is not None:
            ref = TopPLogitsWarper(top_p)(None, ref)
        torch.testing.assert_close(restrict_logits(scores, top_k, top_p), ref, rtol=0, atol=0)


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, None, None), (0.5, None, None), (1.0, 3, None),
                                                              (1.0, None, 0.7)])
def test_gumbel_max_samples_follow_the_restricted_softmax(temperature, top_k, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 40_000
    tok = next_tokens(logits.expand(n, -1), sample_keys(range(n)), 0,
                      SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
    # Hand-derived distribution: softmax(logits / T) over the kept tokens. top_p 0.7 at T=1: the
    # sorted probabilities are .574, .211, .128, ...; the two largest already pass .7 - .574.
    keep = {None: 6, 3: 3}[top_k] if top_p is None else 2
    p = torch.softmax(logits[:keep].double() / temperature, 0).numpy()
    counts = np.bincount(tok.numpy(), minlength=6)
    assert counts[keep:].sum() == 0
    assert stats.chisquare(counts[:keep], p * n).pvalue > 1e-3


# -- batch independence ---------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [
    SamplingConfig(max_new_tokens=16),
    SamplingConfig(max_new_tokens=16, temperature=1.0, top_k=50, top_p=0.9),
    SamplingConfig(max_new_tokens=16, temperature=1.0),
], ids=["greedy", "top-k-top-p", "plain-sampling"])
def test_batch_size_1_and_8_give_identical_tokens(model, prompt_ids, cfg):
    keys = sample_keys([1000 + i for i in range(len(prompt_ids))])
    batched, bs = generate_ids(model, prompt_ids, keys, cfg, batch_size=8, pad_id=0)
    alone = [generate_ids(model, [p], keys[i:i + 1], cfg, batch_size=1)[0][0] for i, p in enumerate(prompt_ids)]
    assert bs == 8 and batched == alone
    assert all(len(t) == 16 for t in batched)
    # In another order and at batch size 3 (other batch-mates, other padding): the same again.
    order = list(range(len(prompt_ids)))
    random.Random(0).shuffle(order)
    shuffled, _ = generate_ids(model, [prompt_ids[i] for i in order], keys[order], cfg, batch_size=3)
    assert shuffled == [batched[i] for i in order]
    if cfg.temperature:
        other, _ = generate_ids(model, prompt_ids, sample_keys(range(len(prompt_ids))), cfg, batch_size=8)
        assert other != batched  # the seeds matter


def test_greedy_equals_transformers_generate_one_prompt_at_a_time(model, prompt_ids):
    got, _ = generate_ids(model, prompt_ids, sample_keys(range(len(prompt_ids))), SamplingConfig(max_new_tokens=12),
                          batch_size=8)
    for p, ids in zip(prompt_ids, got):
        x = torch.tensor([p])
        ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                             pad_token_id=0)[0, len(p):].tolist()
        assert ids == ref


def test_rows_stop_on_their_own_eos_and_leave_the_batch(model, prompt_ids):
    full, _ = generate_ids(model, prompt_ids, sample_keys(range(10)), SamplingConfig(max_new_tokens=12), batch_size=8)
    eos = full[0][2]  # row 0's third token ends row 0 after two tokens, and any other row that emits it
    cut, _ = generate_ids(model, prompt_ids, sample_keys(range(10)),
                          SamplingConfig(max_new_tokens=12, eos_token_ids=(eos,)), batch_size=8)
    expected = [t[:t.index(eos)] if eos in t else t for t in full]
    assert cut == expected and len(cut[0]) <= 2
    assert any(len(t) == 12 for t in cut)  # the others went on


def test_out_of_memory_halves_the_batch_and_keeps_the_tokens(model, prompt_ids):
    class OOMAbove2(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.sizes = inner, inner.config, []

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                    logits_to_keep=0):
            self.sizes.append(input_ids.shape[0])
            if input_ids.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (test)")
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, use_cache=use_cache, logits_to_keep=logits_to_keep)

    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=20)
    keys = sample_keys(range(len(prompt_ids)))
    ref, _ = generate_ids(model, prompt_ids, keys, cfg, batch_size=8)
    wrapped = OOMAbove2(model)
    got, bs = generate_ids(wrapped, prompt_ids, keys, cfg, batch_size=8)
    assert got == ref and bs == 2
    assert wrapped.sizes[:2] == [8, 4] and max(wrapped.sizes[2:]) == 2  # halved twice, then kept

    class Broken(OOMAbove2):
        def forward(self, input_ids=None, **kw):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # only out-of-memory is retried
        generate_ids(Broken(model), prompt_ids, keys, cfg, batch_size=8)


def test_engine_rejects_bad_input(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate_ids(model, [[]], sample_keys([0]), SamplingConfig())
    with pytest.raises(ValueError, match="2 prompts but 1 noise keys"):
        generate_ids(model, [[1], [1]], sample_keys([0]), SamplingConfig())


# -- the subject ----------------------------------------------------------------------------------
def test_subject_seeds_stop_strings_and_token_ids(model):
    lm = HFTextGenerator(model, tiny_tokenizer(), IDENT, device="cpu", batch_size=4)
    texts = lm.generate(PROMPTS, max_new_tokens=10, temperature=1.0, seed=list(range(10)))
    assert texts == [lm.generate([p], max_new_tokens=10, temperature=1.0, seed=[i])[0] for i, p in enumerate(PROMPTS)]
    assert lm.generate(PROMPTS[:1], max_new_tokens=10, temperature=1.0, seed=0) == texts[:1]  # seed=s is seed=[s]
    assert row_seeds(7, 3)[0] == 7 and len(set(row_seeds(7, 3))) == 3
    ids = lm.generate_tokens(PROMPTS, max_new_tokens=10, temperature=1.0, seed=list(range(10)))
    assert [lm.decode(t) for t in ids] == texts
    # A stop string ends a row where it first appears; the text is cut before it.
    greedy = lm.generate(PROMPTS, max_new_tokens=20)
    row, text = next((i, t) for i, t in enumerate(greedy) if len(t) > 8 and t[4:6].isascii() and t[4:6].strip())
    stop = text[4:6]
    got = lm.generate(PROMPTS, max_new_tokens=20, stop=[stop])
    assert got[row] == text[:text.find(stop)]
    assert all(g == (t[:t.find(stop)] if stop in t else t) for g, t in zip(got, greedy))
    assert len(lm.generate_tokens([PROMPTS[row]], max_new_tokens=20, stop=[stop])[0]) < 20
    with pytest.raises(ValueError, match="10 prompts but 2 seeds"):
        lm.generate(PROMPTS, seed=[1, 2])


def test_chat_template_true_auto_false(model):
    chat_tok, plain_tok = chat_tokenizer(), tiny_tokenizer()
    rows = encode_prompts(chat_tok, ["hi"], chat=True, fallback_id=1)
    assert rows == [chat_tok.encode("<s>user: hi\nassistant:", add_special_tokens=False)]
    on = HFTextGenerator(model, chat_tok, IDENT, device="cpu", chat_template=True)
    auto = HFTextGenerator(model, chat_tok, IDENT, device="cpu", chat_template="auto")
    off = HFTextGenerator(model, chat_tok, IDENT, device="cpu")
    assert on.chat_template and auto.chat_template and not off.chat_template
    ref, _ = generate_ids(model, rows, sample_keys([5]), SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=50,
                                                                        top_p=1.0, eos_token_ids=(2,)))
    assert on.generate(["hi"], max_new_tokens=8, temperature=1.0, seed=[5]) == [chat_tok.decode(ref[0],
                                                                                                skip_special_tokens=True)]
    assert off.generate(["hi"], max_new_tokens=8) != on.generate(["hi"], max_new_tokens=8)
    assert "used for generation (auto" in auto.identity.details["chat_template"]
    assert "not used: the tokenizer has one" in off.identity.details["chat_template"]
    assert "chat_template" not in HFTextGenerator(model, plain_tok, IDENT, device="cpu").identity.details
    assert not HFTextGenerator(model, plain_tok, IDENT, device="cpu", chat_template="auto").chat_template
    with pytest.raises(InputError, match="has no chat template"):
        HFTextGenerator(model, plain_tok, IDENT, device="cpu", chat_template=True)
    with pytest.raises(SpecError, match="true, false or auto"):
        HFTextGenerator(model, plain_tok, IDENT, device="cpu", chat_template="yes")


def test_perplexity_reads_raw_text_under_a_chat_template(model, tmp_path):
    (tmp_path / "t.txt").write_text("The quick brown fox jumps over the lazy dog.\n\nA café serves coffee.\n")
    values = []
    for tmpl in (False, True):
        lm = HFTextGenerator(model, chat_tokenizer(), IDENT, device="cpu", chat_template=tmpl)
        probe = build_probe("quality.perplexity", {"n_resamples": 100})
        found = probe.run(lm, ProbeContext(data={"texts": tmp_path / "t.txt"}, probe_id=probe.id))
        values.append([(f.key, f.value) for f in found])
    assert values[0] == values[1]


def test_chat_template_from_the_spec_through_the_loader(tmp_path):
    from audit.spec import SubjectSpec
    from audit.subjects.loading import load_subject

    (tmp_path / "chat_subject.py").write_text(
        "from tests.fakes import tiny_causal_lm\nfrom tests.test_generation import chat_tokenizer\n"
        "def build():\n    return tiny_causal_lm(), chat_tokenizer()\n")
    spec = SubjectSpec(kind="text-generator", source="python", path="chat_subject.py:build", chat_template="auto")
    lm = load_subject(spec, base_dir=tmp_path, device="cpu", cache_dir=tmp_path / "c")
    assert lm.chat_template and "auto" in lm.identity.details["chat_template"]
    own = SubjectSpec(kind="text-generator", source="python", path="tests.fakes:make_text_generator",
                      chat_template=True)
    with pytest.raises(SpecError, match="returned its own TextGenerator"):
        load_subject(own, base_dir=tmp_path, device="cpu", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="applies to text-generator subjects"):
        SubjectSpec(kind="classifier", source="python", path="m:f", chat_template=True)
    with pytest.raises(ValueError, match="chat_template"):
        SubjectSpec(kind="text-generator", source="python", path="m:f", chat_template="sometimes")


# -- the probes' call -----------------------------------------------------------------------------
class Recorder(TextGenerator):
    """Records each call; answers 'reply to <prompt> with <seed>'."""

    identity = IDENT

    def __init__(self, per_sample: bool):
        self.per_sample_seeds = per_sample
        self.calls = []

    def generate(self, prompts, *, max_new_tokens=32, temperature=0.0, seed=0):
        self.calls.append((list(prompts), seed))
        seeds = seed if isinstance(seed, list) else [seed] * len(prompts)
        return [f"{p}|{s}" for p, s in zip(prompts, seeds)]


def test_generate_texts_batches_where_the_subject_keeps_seeds_apart():
    prompts, seeds = [f"p{i}" for i in range(CHUNK + 5)], list(range(100, 100 + CHUNK + 5))
    expected = [f"{p}|{s}" for p, s in zip(prompts, seeds)]
    batching = Recorder(per_sample=True)
    assert generate_texts(batching, prompts, seeds, max_new_tokens=4, temperature=1.0, what="t") == expected
    assert [len(c[0]) for c in batching.calls] == [CHUNK, 5]
    plain = Recorder(per_sample=False)  # one seed per call: sampled one prompt at a time
    assert generate_texts(plain, prompts, seeds, max_new_tokens=4, temperature=1.0, what="t") == expected
    assert len(plain.calls) == len(prompts) and all(isinstance(c[1], int) for c in plain.calls)
    greedy = Recorder(per_sample=False)  # greedy: no randomness, so it keeps its own batching
    generate_texts(greedy, prompts, seeds, max_new_tokens=4, temperature=0.0, what="t")
    assert [len(c[0]) for c in greedy.calls] == [CHUNK, 5]

    class Short(Recorder):
        def generate(self, prompts, **kw):
            return super().generate(prompts, **kw)[:-1]

    with pytest.raises(InputError, match="t: the subject returned 1 continuations for 2 prompt"):
        generate_texts(Short(True), ["a", "b"], [1, 2], max_new_tokens=4, temperature=1.0, what="t")


def test_diversity_probe_batched_equals_one_prompt_at_a_time(model, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(f'{{"text": "{p}"}}\n' for p in PROMPTS[:4]))

    class OneAtATime(HFTextGenerator):
        per_sample_seeds = False
        calls = 0

        def generate(self, prompts, **kw):
            assert len(prompts) == 1
            type(self).calls += 1
            return super().generate(prompts, **kw)

    results = []
    for cls in (HFTextGenerator, OneAtATime):
        lm = cls(model, tiny_tokenizer(), IDENT, device="cpu")
        probe = build_probe("quality.text_diversity", {"n_resamples": 100, "max_new_tokens": 8, "samples_per_prompt": 3})
        found = probe.run(lm, ProbeContext(data={"prompts": path}, seed=3, probe_id=probe.id))
        results.append([(f.key, f.value, f.evidence.get("examples")) for f in found])
    assert OneAtATime.calls == 12 and results[0] == results[1]
