"""quality.perplexity and its maths, against independent references.

References: windows derived by hand; a single full forward pass with log-softmax; the
stride-by-stride recipe of the transformers perplexity guide written out below
(``model(input_ids, labels=target_ids)``); and fake subjects whose log-probabilities are
known, so that bits per byte can be worked out by hand.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from audit.errors import InputError, SpecError  # noqa: E402
from audit.findings import AuditReport, SubjectIdentity  # noqa: E402
from audit.probe import ProbeContext, build_probe, probe_info, registry  # noqa: E402
from audit.subjects import HFTextGenerator, TextGenerator  # noqa: E402
from probes.quality.functional import (  # noqa: E402
    bits_per_byte,
    causal_lm_scorer,
    corpus_perplexity,
    sliding_windows,
    windowed_token_logprobs,
)
from probes.quality.perplexity import Perplexity  # noqa: E402

LN2 = math.log(2.0)

TEXTS = [
    "Language models assign probabilities to sequences of words; a good model is rarely surprised by held-out text.",
    "Zebras graze quietly.",
    "The committee postponed its vote on the new harbour bridge until engineers finish the wind-load review.",
    "Quantum dots glow green, then orange, then red as they grow: 2 nm, 4 nm, 6 nm.",
    "Bakers in Lyon start before dawn — croissants and brioche must be ready by six.",
]


# -- fixtures and fakes ------------------------------------------------------------------------

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm():
    from tests.fakes import tiny_causal_lm

    return tiny_causal_lm()


@pytest.fixture(scope="module")
def tok():
    from tests.fakes import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="module")
def subject(lm, tok):
    ident = SubjectIdentity(name="tiny-llama", kind="text-generator", source="python")
    return HFTextGenerator(lm, tok, ident, device="cpu")


class CharSubject(TextGenerator):
    """One token per character (id = code point + 3) with log-probs that ignore the context.

    ``logprob(targets) -> [B, T-1]`` gives the log-prob of each target token; by default
    ``-ln 2`` (exactly one bit per token).
    """

    def __init__(self, *, bos: int | None = 1, max_context: int | None = None, logprob=None):
        self.identity = SubjectIdentity(name="chars", kind="text-generator", source="python")
        self.bos_token_id = bos
        self.pad_token_id = 0
        self.max_context = max_context
        self.device = torch.device("cpu")
        self.logprob = logprob or (lambda targets: torch.full(targets.shape, -LN2))
        self.calls: list[tuple[int, int]] = []

    def encode(self, texts):
        return [[ord(c) + 3 for c in t] for t in texts]

    def decode(self, ids):
        return "".join(chr(i - 3) for i in ids if i >= 3)

    def token_logprobs(self, input_ids, attention_mask=None):
        self.calls.append(tuple(input_ids.shape))
        return self.logprob(input_ids[:, 1:])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_probe(subject, path, **params):
    probe = build_probe("quality.perplexity", params)
    ctx = ProbeContext(data={"texts": path}, probe_id=probe.id)
    return {f.key: f for f in probe.run(subject, ctx)}


# -- sliding_windows ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("n", "max_length", "stride", "expected"),
    [
        (10, 4, 2, [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]),
        (10, 4, 3, [(0, 4, 1), (3, 7, 4), (6, 10, 7)]),
        (10, 4, 4, [(0, 4, 1), (3, 7, 4), (6, 10, 7)]),   # stride == max_length: step 3 (see docstring)
        (10, 4, 1, [(0, 4, 1), (1, 5, 4), (2, 6, 5), (3, 7, 6), (4, 8, 7), (5, 9, 8), (6, 10, 9)]),
        (11, 5, 2, [(0, 5, 1), (2, 7, 5), (4, 9, 7), (6, 11, 9)]),
        (5, 8, 4, [(0, 5, 1)]),
        (2, 2, 2, [(0, 2, 1)]),
        (4, 2, 1, [(0, 2, 1), (1, 3, 2), (2, 4, 3)]),
        (1, 4, 2, []),
        (0, 4, 2, []),
    ],
)
def test_sliding_windows_hand_derived(n, max_length, stride, expected):
    assert sliding_windows(n, max_length, stride) == expected


def _guide_targets(n, max_length, stride):
    """Positions the transformers guide scores: targets of each window minus its first token."""
    scored, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        trg_len = end - prev_end
        scored += [p for p in range(end - trg_len, end) if p > begin]
        prev_end = end
        if end == n:
            break
    return scored


def test_sliding_windows_score_each_token_once_and_match_the_guide():
    for n in range(0, 41):
        for max_length in range(2, 10):
            for stride in range(1, max_length + 1):
                windows = sliding_windows(n, max_length, stride)
                scored = [p for b, e, s in windows for p in range(s, e)]
                assert scored == list(range(1, n)), (n, max_length, stride)
                for b, e, s in windows:
                    assert 0 <= b < s <= e <= n and e - b <= max_length
                if stride < max_length and n >= 2:
                    assert scored == _guide_targets(n, max_length, stride)
                    assert [w[0] for w in windows] == list(range(0, n, stride))[: len(windows)]


def test_guide_with_stride_equal_to_max_length_skips_tokens():
    # Why stride == max_length is stepped by max_length - 1: the guide loses a token per window.
    assert _guide_targets(10, 4, 4) == [1, 2, 3, 5, 6, 7, 9]


@pytest.mark.parametrize(("max_length", "stride"), [(1, 1), (4, 0), (4, 5), (4, -1)])
def test_sliding_windows_reject_bad_arguments(max_length, stride):
    with pytest.raises(ValueError):
        sliding_windows(10, max_length, stride)


# -- windowed_token_logprobs against a full forward pass ---------------------------------------

def _full_forward_logprobs(lm, ids):
    """log p(ids[t] | ids[:t]) for t >= 1 from one forward pass, via log-softmax + gather."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=x).logits.double(), dim=-1)
    return logp[0, :-1].gather(-1, x[0, 1:, None])[:, 0]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_single_window_equals_full_forward_cross_entropy(lm, tok, subject, batch_size):
    seqs = [[tok.bos_token_id] + tok.encode(t, add_special_tokens=False) for t in TEXTS]
    ours = windowed_token_logprobs(
        subject.token_logprobs, seqs, max_length=256, stride=128, batch_size=batch_size,
        pad_id=tok.pad_token_id, device="cpu",
    )
    for seq, lp in zip(seqs, ours):
        ref = _full_forward_logprobs(lm, seq)
        assert lp.shape == (len(seq) - 1,)
        torch.testing.assert_close(lp.double(), ref, rtol=1e-4, atol=1e-6)
        # and the same per-token NLL as F.cross_entropy on the full pass
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([seq])).logits[0]
        ce = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(seq[1:]), reduction="none")
        torch.testing.assert_close(-lp, ce, rtol=1e-4, atol=1e-6)


def test_windowed_logprobs_do_not_depend_on_batching(subject, tok):
    seqs = [[tok.bos_token_id] + tok.encode(t, add_special_tokens=False) for t in TEXTS] + [[5], []]
    runs = [
        windowed_token_logprobs(subject.token_logprobs, seqs, max_length=16, stride=8, batch_size=bs,
                                pad_id=tok.pad_token_id, device="cpu")
        for bs in (1, 2, 7, 64)
    ]
    assert [len(t) for t in runs[0]] == [max(len(s) - 1, 0) for s in seqs]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(bool(torch.isfinite(t).all()) for t in runs[0])


def test_windowed_logprobs_scatter_positions_exactly():
    # A score_fn that "predicts" each target's own id makes the scatter checkable by eye.
    seqs = [list(range(100, 111)), list(range(200, 204)), [7]]
    out = windowed_token_logprobs(
        lambda ids, mask: ids[:, 1:].float() * mask[:, 1:], seqs, max_length=4, stride=2,
        batch_size=3, pad_id=0,
    )
    assert [t.tolist() for t in out] == [list(map(float, range(101, 111))), [201.0, 202.0, 203.0], []]


def test_windowed_logprobs_back_off_on_out_of_memory():
    sizes = []

    def score(ids, mask):
        sizes.append(ids.shape[0])
        if ids.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return ids[:, 1:].float()

    seqs = [list(range(10 * k, 10 * k + 9)) for k in range(1, 6)]
    out = windowed_token_logprobs(score, seqs, max_length=4, stride=2, batch_size=8, pad_id=0)
    assert [t.tolist() for t in out] == [[float(v) for v in s[1:]] for s in seqs]
    assert sizes[:2] == [8, 4] and max(sizes[2:]) <= 2  # halved until it fits, then kept small


# -- the probe against the transformers guide's recipe ------------------------------------------

def _guide_recipe(model, ids, max_length, stride):
    """The stride-by-stride loop of https://huggingface.co/docs/transformers/perplexity."""
    input_all = torch.tensor([ids])
    seq_len = input_all.size(1)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = input_all[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        # The model shifts labels by one inside the window: its valid targets are labels[1:].
        n_valid = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * n_valid
        n_tokens += n_valid
        prev_end = end
        if end == seq_len:
            break
    return nll_sum, n_tokens


@pytest.mark.parametrize(("max_length", "stride"), [(16, 8), (12, 5), (16, 16), (256, 256)])
@pytest.mark.parametrize(("batch_size", "selective"), [(1, True), (5, True), (5, False)])
def test_corpus_perplexity_matches_transformers_recipe(lm, tok, subject, tmp_path, max_length, stride, batch_size,
                                                        selective):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in TEXTS])
    found = run_probe(subject, path, max_length=max_length, stride=stride, batch_size=batch_size, n_resamples=200,
                      selective_logits=selective)
    assert found["quality.perplexity/perplexity"].evidence["scorer"] == (
        "selective-logits" if selective else "token_logprobs")

    # stride == max_length: the guide drops each later window's first token; we step by
    # max_length - 1 instead, which is the guide's loop at that stride (see sliding_windows).
    guide_stride = min(stride, max_length - 1)
    nll, n = 0.0, 0
    for t in TEXTS:
        ids = [tok.bos_token_id] + tok.encode(t, add_special_tokens=False)
        s, k = _guide_recipe(lm, ids, max_length, guide_stride)
        nll, n = nll + s, n + k
        assert k == len(ids) - 1  # every document token scored once
    ppl = found["quality.perplexity/perplexity"]
    assert ppl.evidence["tokens"] == n
    assert ppl.value == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert found["quality.perplexity/nll_per_token"].value == pytest.approx(nll / n, rel=1e-4)
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    assert found["quality.perplexity/bits_per_byte"].value == pytest.approx(nll / (LN2 * n_bytes), rel=1e-4)


# -- the selective scorer (logits only at scored positions) ------------------------------------

def test_selective_scatter_positions_exactly():
    # The selective contract: log-probs of the selected positions only, flattened row-major.
    seen = []

    def score(ids, mask, select):
        seen.append((tuple(ids.shape), mask is None, int(select.sum())))
        return ids[:, 1:][select].float()

    seqs = [list(range(100, 111)), list(range(200, 204)), [7], list(range(300, 306))]
    out = windowed_token_logprobs(score, seqs, max_length=4, stride=2, batch_size=3, pad_id=0, selective=True)
    assert [t.tolist() for t in out] == [list(map(float, range(101, 111))), [201.0, 202.0, 203.0], [],
                                         list(map(float, range(301, 306)))]
    # windows of 11 tokens: (0,4,1) (2,6,4) (4,8,6) (6,10,8) (8,11,10); sorted longest first, so the
    # first batch holds only full-length windows (no mask) and selects 3 + 2 + 2 positions.
    assert seen[0] == ((3, 4), True, 7)
    assert sum(k for *_, k in seen) == 10 + 3 + 5
    assert any(not full for _, full, _ in seen)  # a padded batch gets its mask


@pytest.mark.parametrize(("max_length", "stride"), [(16, 8), (12, 5), (256, 128)])
def test_causal_lm_scorer_equals_the_subjects_token_logprobs(lm, tok, subject, max_length, stride):
    seqs = [[tok.bos_token_id] + tok.encode(t, add_special_tokens=False) for t in TEXTS]
    kw = dict(max_length=max_length, stride=stride, batch_size=3, pad_id=tok.pad_token_id)
    ref = windowed_token_logprobs(subject.token_logprobs, seqs, **kw)
    fast = windowed_token_logprobs(causal_lm_scorer(lm), seqs, selective=True, **kw)
    for a, b in zip(ref, fast):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_causal_lm_scorer_with_autocast_is_close_and_model_without_logits_to_keep_is_refused(lm, tok):
    seqs = [[tok.bos_token_id] + tok.encode(t, add_special_tokens=False) for t in TEXTS]
    kw = dict(max_length=32, stride=16, batch_size=4, pad_id=tok.pad_token_id, selective=True)
    ref = torch.cat(windowed_token_logprobs(causal_lm_scorer(lm), seqs, **kw)).double()
    bf16 = torch.cat(windowed_token_logprobs(causal_lm_scorer(lm, autocast="bfloat16"), seqs, **kw)).double()
    # bfloat16 keeps 8 bits of mantissa: the corpus NLL moves by about a percent, not more.
    assert float(bf16.mean()) == pytest.approx(float(ref.mean()), rel=0.05)
    assert not torch.equal(ref, bf16)

    class Plain(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            raise AssertionError("not called")

    assert causal_lm_scorer(Plain()) is None
    with pytest.raises(ValueError, match="autocast"):
        causal_lm_scorer(lm, autocast="int8")


# -- bits per byte, intervals, slices, warnings ----------------------------------------------

def test_functional_formulas():
    assert float(corpus_perplexity(torch.tensor(3 * LN2), 3)) == pytest.approx(2.0)
    assert float(bits_per_byte(12 * LN2, 8)) == pytest.approx(1.5)
    assert corpus_perplexity(torch.tensor([0.0, 6.0]), torch.tensor([4, 3])).tolist() == pytest.approx([1.0, math.exp(2)])
    assert math.isnan(float(corpus_perplexity(0.0, 0)))


def test_bits_per_byte_by_hand_with_bos(tmp_path):
    # One bit per token; "éllo" is 4 tokens / 5 bytes, "ab" 2 / 2: with BOS every token is scored.
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "éllo"}, {"text": "ab"}])
    found = run_probe(CharSubject(), path, n_resamples=200)
    assert found["quality.perplexity/bits_per_byte"].value == pytest.approx(6 / 7)
    assert found["quality.perplexity/bits_per_byte"].unit == "bits/byte"
    assert found["quality.perplexity/perplexity"].value == pytest.approx(2.0)
    assert found["quality.perplexity/nll_per_token"].value == pytest.approx(LN2)
    ev = found["quality.perplexity/perplexity"].evidence
    assert (ev["tokens"], ev["bytes"], ev["document_ids"]) == (6, 7, ["1", "2"])
    assert ev["per_document"] == pytest.approx([2.0, 2.0])


def test_word_and_byte_perplexity_by_hand_as_lm_evaluation_harness_counts(tmp_path):
    # One bit per token, 7 tokens over 8 bytes. Words as lm-eval's wikitext task counts them,
    # len(re.split(r"\s+", text)): "é llo" is 2 words, "ab" 1, so NLL = 6 ln 2 over 3 words.
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "é llo"}, {"text": "ab"}])
    found = run_probe(CharSubject(), path, n_resamples=200)
    nll = 7 * LN2  # "é llo" is 5 characters (tokens), "ab" 2: 7 tokens with BOS
    assert found["quality.perplexity/word_perplexity"].value == pytest.approx(math.exp(nll / 3))
    assert found["quality.perplexity/byte_perplexity"].value == pytest.approx(math.exp(nll / 8))
    assert found["quality.perplexity/byte_perplexity"].value == pytest.approx(
        2 ** found["quality.perplexity/bits_per_byte"].value)
    assert found["quality.perplexity/perplexity"].evidence["words"] == 3


def test_bits_per_byte_by_hand_without_bos(tmp_path):
    # Without BOS the first token ("é", 2 bytes; "a", 1 byte) is context: 3 + 1 tokens on 3 + 1 bytes.
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "éllo"}, {"text": "ab"}])
    found = run_probe(CharSubject(), path, add_bos=False, n_resamples=200)
    assert found["quality.perplexity/bits_per_byte"].value == pytest.approx(1.0)
    assert found["quality.perplexity/perplexity"].evidence["bytes"] == 4
    # A model without a BOS token gives the same numbers, and says why.
    no_bos = run_probe(CharSubject(bos=None), path, n_resamples=200)
    assert no_bos["quality.perplexity/bits_per_byte"].value == pytest.approx(1.0)
    assert any("no BOS token" in w for w in no_bos["quality.perplexity/bits_per_byte"].warnings)


def test_bootstrap_interval_contains_the_value(subject, tmp_path):
    rows = [{"text": f"{TEXTS[i % len(TEXTS)][: 20 + 3 * i]} #{i}"} for i in range(24)]
    found = run_probe(subject, write_jsonl(tmp_path / "c.jsonl", rows), max_length=32, stride=16, n_resamples=500)
    for metric in ("perplexity", "bits_per_byte", "nll_per_token"):
        f = found[f"quality.perplexity/{metric}"]
        assert f.n == 24 and f.higher_is_better is False
        assert f.ci is not None and f.ci.low < f.value < f.ci.high, metric
        assert f.ci.method == "bootstrap-percentile-95"
        assert not any("wide" in w for w in f.warnings)
    ev = found["quality.perplexity/perplexity"].evidence
    assert len(ev["per_document"]) == len(ev["document_ids"]) == 24
    # same seed, same interval: the report is reproducible
    again = run_probe(subject, tmp_path / "c.jsonl", max_length=32, stride=16, n_resamples=500)
    assert again["quality.perplexity/perplexity"].ci == found["quality.perplexity/perplexity"].ci


def test_small_corpus_warns_that_the_interval_is_wide(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "abc"}, {"text": "de"}, {"text": "fgh"}])
    f = run_probe(CharSubject(), path, n_resamples=200)["quality.perplexity/perplexity"]
    assert any("only 3 documents" in w and "wide" in w for w in f.warnings)


def test_slices_equal_the_probe_on_each_sub_corpus(subject, tmp_path):
    rows = [{"text": t, "genre": g} for t, g in zip(TEXTS, ["news", "fiction", "news", "science", "fiction"])]
    rows.append({"text": "No genre here at all."})
    found = run_probe(subject, write_jsonl(tmp_path / "all.jsonl", rows), max_length=16, stride=8, n_resamples=200)
    for genre in ("news", "fiction", "science"):
        sub = [{"text": r["text"]} for r in rows if r.get("genre") == genre]
        alone = run_probe(subject, write_jsonl(tmp_path / f"{genre}.jsonl", sub), max_length=16, stride=8,
                          n_resamples=200, slice_by=None)
        for metric in ("perplexity", "bits_per_byte"):
            f = found[f"quality.perplexity/{metric}[genre={genre}]"]
            assert f.slice == {"genre": genre} and f.n == len(sub)
            assert f.value == pytest.approx(alone[f"quality.perplexity/{metric}"].value, rel=1e-5)
            assert "1 of 6 documents have no 'genre' and are in no slice" in f.warnings
    assert found["quality.perplexity/perplexity[genre=news]"].ci is not None
    assert found["quality.perplexity/perplexity[genre=science]"].ci is None  # one document
    assert "quality.perplexity/nll_per_token[genre=news]" not in found
    assert not any(k.startswith("quality.perplexity/perplexity[") for k in
                   run_probe(subject, tmp_path / "all.jsonl", max_length=16, stride=8, n_resamples=200,
                             slice_by="topic"))


def test_short_documents_are_skipped_with_a_warning(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "abc"}, {"id": "tiny", "text": "a"}, {"text": "de"}])
    found = run_probe(CharSubject(), path, add_bos=False, n_resamples=200)
    f = found["quality.perplexity/perplexity"]
    assert f.n == 2 and f.value == pytest.approx(2.0)
    assert any("1 of 3 documents have fewer than 2 tokens" in w and "'tiny'" in w for w in f.warnings)
    # with BOS, the one-token document has a scored token and is kept
    assert run_probe(CharSubject(), path, n_resamples=200)["quality.perplexity/perplexity"].n == 3


def test_no_scorable_document_gives_nan_not_a_crash(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"text": "b"}])
    found = run_probe(CharSubject(), path, add_bos=False, n_resamples=200)
    for f in found.values():
        assert math.isnan(f.value) and f.ci is None and f.n == 0


def test_nan_model_gives_nan_with_a_warning(tmp_path):
    bang = ord("!") + 3
    subject = CharSubject(logprob=lambda t: torch.where(t == bang, torch.tensor(math.nan), torch.tensor(-LN2)))
    rows = [{"id": "loud", "text": "hi!", "genre": "shout"}, {"text": "calm", "genre": "quiet"},
            {"text": "still", "genre": "quiet"}]
    found = run_probe(subject, write_jsonl(tmp_path / "c.jsonl", rows), n_resamples=200)
    for metric in ("perplexity", "bits_per_byte", "nll_per_token"):
        f = found[f"quality.perplexity/{metric}"]
        assert math.isnan(f.value) and f.ci is None
        assert any("1 of 3 documents have a non-finite NLL" in w and "'loud'" in w for w in f.warnings)
    # one bad document degrades its findings only: the other slice is still measured
    assert found["quality.perplexity/perplexity[genre=quiet]"].value == pytest.approx(2.0)
    assert math.isnan(found["quality.perplexity/perplexity[genre=shout]"].value)
    # and the findings, NaN included, round-trip through report.json
    report = AuditReport(name="nan", subject=subject.identity, findings=tuple(found.values()))
    text = report.to_json()
    assert AuditReport.from_json(text).to_json() == text


def test_all_nan_model(tmp_path):
    subject = CharSubject(logprob=lambda t: torch.full(t.shape, math.nan))
    found = run_probe(subject, write_jsonl(tmp_path / "c.jsonl", [{"text": "abc"}, {"text": "de"}]),
                      n_resamples=200)
    f = found["quality.perplexity/perplexity"]
    assert math.isnan(f.value) and any("non-finite" in w for w in f.warnings)


def test_max_length_is_clamped_to_the_model_context(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "abcdefghijklmnopqrstuvwxyz"}, {"text": "hello world"}])
    subject = CharSubject(max_context=8)
    found = run_probe(subject, path, max_length=1024, stride=512, n_resamples=200)
    f = found["quality.perplexity/perplexity"]
    assert any("max_length 1024 exceeds the model's context of 8 tokens; clamped to 8" in w for w in f.warnings)
    assert (f.evidence["max_length"], f.evidence["stride"]) == (8, 8)
    assert max(t for _, t in subject.calls) <= 8
    assert f.evidence["tokens"] == 26 + 11  # still every token, with BOS


def test_batches_many_windows_per_forward_pass(tmp_path):
    subject = CharSubject()
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "x" * 40}, {"text": "y" * 23}, {"text": "z" * 9}])
    run_probe(subject, path, max_length=8, stride=4, batch_size=4, n_resamples=200)
    n_windows = sum(len(sliding_windows(n + 1, 8, 4)) for n in (40, 23, 9))
    assert len(subject.calls) == math.ceil(n_windows / 4)
    assert [b for b, _ in subject.calls[:-1]] == [4] * (len(subject.calls) - 1)


def test_missing_data_input_is_an_input_error(tmp_path):
    probe = Perplexity(data="heldout")
    with pytest.raises(InputError, match="needs the data input 'heldout'"):
        probe.run(CharSubject(), ProbeContext(data={"texts": tmp_path}, probe_id=probe.id))


# -- parameters and registry ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"max_length": 1}, "max_length must be an integer >= 2"),
        ({"stride": 0}, r"stride must be an integer in 1 \.\. max_length \(1024\), got 0"),
        ({"max_length": 64, "stride": 128}, r"stride must be an integer in 1 \.\. max_length \(64\), got 128"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"confidence": 1.0}, r"confidence must be a number in \(0, 1\)"),
        ({"confidence": 0}, r"confidence must be a number in \(0, 1\)"),
        ({"n_resamples": 10}, "n_resamples must be an integer >= 100"),
        ({"data": ""}, "data must be the name of a data input"),
        ({"slice_by": ""}, "slice_by must be the name of a metadata field"),
        ({"autocast": "fp8"}, "autocast must be null, 'bfloat16' or 'float16'"),
    ],
)
def test_invalid_parameters_raise_spec_error(params, expected):
    with pytest.raises(SpecError, match=f"quality.perplexity: {expected}"):
        Perplexity(**params)
    with pytest.raises(SpecError, match=expected):
        build_probe("quality.perplexity", params, where="audit.yaml: probes[0]")


def test_registered_with_summary_and_help():
    assert "quality.perplexity" in registry
    assert registry.get("quality.perplexity") is Perplexity
    info = probe_info("quality.perplexity")
    assert info.summary == "Perplexity and bits per byte of a language model on a held-out corpus."
    assert info.applies_to == ("text-generator",)
    assert Perplexity.requires == ("tokenize", "token_logprobs")
    assert all(help_ for *_, help_ in info.params)
    assert {p[0]: p[2] for p in info.params} == {
        "data": "texts", "max_length": 1024, "stride": 512, "batch_size": 8, "add_bos": True,
        "slice_by": "genre", "selective_logits": True, "autocast": None, "n_resamples": 2000, "confidence": 0.95,
    }


def test_units_reproduce_every_finding_and_pair_by_document(tmp_path):
    from dataclasses import replace as _replace

    from audit.units import attach_deltas, evaluate_units

    rows = [{"id": f"doc-{i}", "text": TEXTS[i % len(TEXTS)][: 15 + 4 * i], "genre": ("a", "b")[i % 2]}
            for i in range(8)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    # A context-free model whose log-prob depends on the character, so documents differ.
    base = run_probe(CharSubject(logprob=lambda t: -(1.0 + (t % 5).double() / 4)), path, n_resamples=200)
    for key, f in base.items():
        assert f.units is not None, key
        assert evaluate_units(f.units) == pytest.approx(f.value, rel=1e-9), key
        want = [r["id"] for r in rows if not f.slice or r["genre"] == f.slice["genre"]]
        assert list(f.units.ids) == want, key
    assert base["quality.perplexity/perplexity"].units.statistic == "exp_ratio"
    assert base["quality.perplexity/bits_per_byte"].units.statistic == "ratio"
    # A variant that is uniformly worse by 0.1 nats per token pairs with the base on every document.
    worse = run_probe(CharSubject(logprob=lambda t: -(1.1 + (t % 5).double() / 4)), path, n_resamples=200)
    out = attach_deltas([*base.values(), *(_replace(f, variant="v") for f in worse.values())])
    d = next(f.delta for f in out if f.variant == "v" and f.key == "quality.perplexity/nll_per_token")
    assert d.paired and d.n_pairs == 8
    assert d.value == pytest.approx(0.1) and d.ci.low == pytest.approx(0.1) and d.ci.high == pytest.approx(0.1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_int8_dynamic_variant_pairs_far_tighter_than_two_independent_intervals(lm, tok, tmp_path):
    """A real quantization of the tiny model: its per-document NLL moves a little and together
    with the base's, so the paired interval of the delta is much narrower than an unpaired one."""
    import copy
    from dataclasses import replace as _replace

    import numpy as np

    from audit.units import attach_deltas, unpaired_delta_interval

    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(lm), {torch.nn.Linear}, dtype=torch.qint8)
    rng = np.random.default_rng(0)
    words = " ".join(TEXTS).split()
    rows = [{"id": f"d{i}", "text": " ".join(rng.choice(words, int(rng.integers(5, 40))))} for i in range(30)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    ident = SubjectIdentity(name="tiny", kind="text-generator", source="python")
    found = []
    for name, model in (("base", lm), ("int8", q)):
        fs = run_probe(HFTextGenerator(model, tok, ident, device="cpu"), path, max_length=64, stride=32,
                       n_resamples=500).values()
        found += [f if name == "base" else _replace(f, variant="int8") for f in fs]
    out = {(f.key, f.variant): f for f in attach_deltas(found)}
    for metric in ("perplexity", "nll_per_token"):
        key = f"quality.perplexity/{metric}"
        base, var = out[(key, None)], out[(key, "int8")]
        d = var.delta
        assert d.paired and d.n_pairs == 30 and d.value == pytest.approx(var.value - base.value)
        assert d.ci.contains(d.value)
        unpaired, _ = unpaired_delta_interval(base.units, var.units)
        assert d.ci.high - d.ci.low < 0.2 * (unpaired.high - unpaired.low), metric
