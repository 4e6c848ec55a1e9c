"""Text generators without a local model: ``source: openai-compatible`` against a server started
here on 127.0.0.1, and ``source: generations`` (a JSONL of prompts and outputs).

The reference for the server is the same tiny model in process: perplexity through the server
must equal perplexity computed locally, and greedy continuations must be the same text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.errors import InputError, SpecError
from audit.probe import ProbeContext
from audit.spec import SubjectSpec
from audit.subjects import missing_capabilities
from audit.subjects.loading import load_subject
from probes.quality.perplexity import Perplexity
from tests.fakes import tiny_causal_lm, tiny_text_generator, tiny_tokenizer
from tests.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Perplexity measures how well a model predicts held-out text; lower is better.",
    "Bits per byte compare models with different tokenizers.",
]


def _remote(url: str, tmp_path: Path, **options) -> object:
    spec = SubjectSpec(kind="text-generator", source="openai-compatible", path=url, options=options)
    return load_subject(spec, base_dir=tmp_path, device="cpu", cache_dir=tmp_path / "cache")


def _perplexity(subject, tmp_path: Path) -> float:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    probe = Perplexity(max_length=16, stride=8, batch_size=4, n_resamples=200, slice_by=None)
    ctx = ProbeContext(device="cpu", seed=0, data={"texts": corpus}, probe_id=probe.id,
                       cache_dir=tmp_path / "cache")
    return next(f.value for f in probe.run(subject, ctx) if f.metric == "perplexity")


def test_perplexity_through_the_server_equals_the_local_model(tmp_path):
    local = tiny_text_generator()
    with FakeOpenAIServer(tiny_causal_lm(), tiny_tokenizer()) as url:
        remote = _remote(url, tmp_path, bos_token_id=local.bos_token_id)
        assert {"generate", "tokenize", "token_logprobs"} <= remote.capabilities
        assert remote.identity.details["server_model"] == "tiny-remote"
        assert remote.encode(TEXTS) == local.encode(TEXTS)
        got = _perplexity(remote, tmp_path)
    assert got == pytest.approx(_perplexity(local, tmp_path), rel=1e-5)


def test_greedy_generation_through_the_server_is_the_models(tmp_path):
    model, tok = tiny_causal_lm(), tiny_tokenizer()
    with FakeOpenAIServer(model, tok) as url:
        remote = _remote(url, tmp_path, batch_size=2)
        got = remote.generate(["The quick", "Bits per", "A café"], max_new_tokens=5)
    import torch

    for prompt, text in zip(["The quick", "Bits per", "A café"], got):
        ids = torch.tensor([tok.encode(prompt)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                             pad_token_id=0, top_k=None, top_p=None)
        assert text == tok.decode(ref[0, ids.shape[1]:].tolist())


def test_sampling_sends_one_request_per_sample_with_its_seed(tmp_path):
    server = FakeOpenAIServer(tiny_causal_lm(), tiny_tokenizer())
    with server as url:
        remote = _remote(url, tmp_path)
        server.requests.clear()
        a = remote.generate(["The", "The"], max_new_tokens=4, temperature=1.0, seed=[3, 4])
        b = remote.generate(["The"], max_new_tokens=4, temperature=1.0, seed=[4])
    seeds = sorted(body["seed"] for path, body in server.requests if path == "/v1/completions")
    assert seeds == [3, 4, 4]
    assert a[1] == b[0]  # the same sample, whether asked alone or beside another


def test_a_server_without_logprobs_skips_scoring_probes_with_the_reason(tmp_path):
    with FakeOpenAIServer(tiny_causal_lm(), tiny_tokenizer(), logprobs=False) as url:
        remote = _remote(url, tmp_path)
    assert remote.capabilities == frozenset({"generate", "tokenize"})
    reason = missing_capabilities(remote, Perplexity())
    assert "token_logprobs" in reason and "no prompt logprobs" in reason
    assert remote.identity.details["not_offered"]["token_logprobs"]


def test_a_server_without_tokenize_offers_generation_only(tmp_path):
    with FakeOpenAIServer(tiny_causal_lm(), tiny_tokenizer(), tokenize=False) as url:
        remote = _remote(url, tmp_path)
        assert remote.generate(["The"], max_new_tokens=2)[0] is not None
    assert remote.capabilities == frozenset({"generate"})
    assert "cannot tokenize" in missing_capabilities(remote, Perplexity())


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "ftp://127.0.0.1/v1", "model.gguf"])
def test_a_path_that_is_not_an_http_url_is_a_spec_error(tmp_path, url):
    with pytest.raises(SpecError, match="base URL"):
        _remote(url, tmp_path)


def test_unknown_options_and_unset_key_variable_are_named(tmp_path, monkeypatch):
    with pytest.raises(SpecError, match="unknown option.*temprature"):
        _remote("http://127.0.0.1:9/v1", tmp_path, temprature=0.5)
    monkeypatch.delenv("GENAI_AUDIT_TEST_KEY", raising=False)
    with pytest.raises(InputError, match="GENAI_AUDIT_TEST_KEY"):
        _remote("http://127.0.0.1:9/v1", tmp_path, api_key_env="GENAI_AUDIT_TEST_KEY")


def test_a_server_that_is_not_running_is_named(tmp_path):
    import socket

    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError, match=rf"127\.0\.0\.1:{port}.*cannot reach"):
        _remote(f"http://127.0.0.1:{port}/v1", tmp_path, timeout_s=2)


# -- source: generations --------------------------------------------------------------------
def _generations(tmp_path: Path, rows) -> object:
    path = tmp_path / "gens.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    spec = SubjectSpec(kind="text-generator", source="generations", path="gens.jsonl")
    return load_subject(spec, base_dir=tmp_path, device="cpu", cache_dir=tmp_path / "cache")


def test_generations_answer_by_prompt_in_file_order_and_by_seed(tmp_path):
    lm = _generations(tmp_path, [
        {"prompt": "A", "output": "a1"}, {"prompt": "B", "output": "b1"}, {"prompt": "A", "output": "a2"},
        {"prompt": "C", "output": "c7", "seed": 7},
    ])
    assert lm.capabilities == frozenset({"generate"})
    assert lm.generate(["A", "B", "A"]) == ["a1", "b1", "a2"]
    assert lm.generate(["C"], seed=[7]) == ["c7"]
    assert lm.identity.files[0].path == "gens.jsonl" and len(lm.identity.files[0].sha256) == 64
    assert "needs the subject capabilities" in missing_capabilities(lm, Perplexity())
    with pytest.raises(InputError, match="asked for 3 times but the file holds 2"):
        lm.generate(["A"])
    with pytest.raises(InputError, match="no generation for the prompt 'Z'"):
        lm.generate(["Z"])


@pytest.mark.parametrize("rows, message", [
    (["not json"], "gens.jsonl:1: not JSON"),
    ([{"prompt": "A"}], "'output' must be a string"),
    ([{"prompt": 3, "output": "x"}], "'prompt' must be a string"),
    ([{"prompt": "A", "output": "x", "seed": "7"}], "'seed' must be an integer"),
    ([], "no generations"),
])
def test_bad_generations_files_are_named(tmp_path, rows, message):
    with pytest.raises(InputError, match=message):
        _generations(tmp_path, rows)


def test_a_folder_or_missing_generations_file_is_named(tmp_path):
    (tmp_path / "gens.jsonl").mkdir()
    spec = SubjectSpec(kind="text-generator", source="generations", path="gens.jsonl")
    with pytest.raises(InputError, match="is a folder"):
        load_subject(spec, base_dir=tmp_path, device="cpu", cache_dir=tmp_path)
    spec = SubjectSpec(kind="text-generator", source="generations", path="none.jsonl")
    with pytest.raises(InputError, match="not found"):
        load_subject(spec, base_dir=tmp_path, device="cpu", cache_dir=tmp_path)
