"""Tests of audit.subjects.loading: every source of a text-generator, the safety gates, the GGUF cache."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / transformers: no network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from audit.subjects import loading
from audit.subjects import text as text_loaders
from audit.errors import InputError, SpecError
from audit.findings import FileHash, SubjectIdentity
from audit.subjects.loading import convert_gguf, load_subject, resolve_device, sha256_file
from audit.spec import SubjectSpec
from audit.subjects import HFTextGenerator, TextGenerator
from tests.fakes import save_tiny_gguf, save_tiny_model, tiny_causal_lm, tiny_text_generator, tiny_tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. Perplexity: lower is better!"


def _spec(source: str, path: str, **kw) -> SubjectSpec:
    return SubjectSpec(kind="text-generator", source=source, path=path, **kw)


def _load(spec: SubjectSpec, tmp_path: Path, **kw):
    return load_subject(spec, base_dir=tmp_path, device="cpu", cache_dir=tmp_path / "cache", **kw)


def _logprobs(lm: TextGenerator, text: str = TEXT) -> torch.Tensor:
    ids = lm.encode([text])[0]
    if lm.bos_token_id is not None:
        ids = [lm.bos_token_id, *ids]
    return lm.token_logprobs(torch.tensor([ids])).cpu()


@pytest.fixture(scope="module")
def reference_logprobs() -> torch.Tensor:
    return _logprobs(tiny_text_generator())


@pytest.fixture()
def offline_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache and offline mode, whatever imported huggingface_hub first."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _weights_identity(folder: Path, names: list[str]) -> tuple[FileHash, ...]:
    return tuple(
        FileHash(n, hashlib.sha256((folder / n).read_bytes()).hexdigest(), (folder / n).stat().st_size) for n in names
    )


# -- helpers --------------------------------------------------------------------------------------
def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path):
    data = os.urandom((1 << 20) * 2 + 12345)  # two full 1 MiB chunks and a partial one
    f = tmp_path / "blob"
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SpecError, match="'gpu0' is not a valid device"):
        resolve_device("gpu0")
    with pytest.raises(SpecError, match="cuda:99"):
        resolve_device("cuda:99")


def test_spec_device_overrides_the_argument(tmp_path):
    lm = load_subject(_spec("python", "tests.fakes:make_text_generator", device="cpu"),
                      base_dir=tmp_path, device="not-a-device", cache_dir=tmp_path)
    assert lm.device == torch.device("cpu")
    with pytest.raises(SpecError, match="subject.device: device 'nonsense'"):
        load_subject(_spec("python", "tests.fakes:make_text_generator", device="nonsense"), cache_dir=tmp_path)


@pytest.mark.parametrize(("kind", "source"), [("encoder", "gguf"), ("text-generator", "torchscript")])
def test_unsupported_kind_or_source_is_a_spec_error(tmp_path, kind, source):
    spec = SubjectSpec(kind=kind, source=source, path="x")
    with pytest.raises(SpecError) as info:
        _load(spec, tmp_path)
    message = str(info.value)
    assert message.startswith(f"subject kind '{kind}' with source '{source}' is not supported yet; supported: ")
    # The message lists what is supported, from the loader table itself.
    assert "text-generator from hf, gguf, python" in message
    for k, src in loading._LOADERS:
        assert src in message and k in message


# -- source: hf -----------------------------------------------------------------------------------
def test_hf_folder_scores_like_the_model_it_was_saved_from(tmp_path, reference_logprobs):
    folder = save_tiny_model(tmp_path / "models" / "tiny")
    lm = _load(_spec("hf", "models/tiny"), tmp_path)  # relative to base_dir

    assert isinstance(lm, HFTextGenerator)
    assert not lm.model.training
    assert lm.encode([TEXT]) == tiny_text_generator().encode([TEXT])
    torch.testing.assert_close(_logprobs(lm), reference_logprobs, rtol=0, atol=1e-5)

    ident = lm.identity
    assert (ident.name, ident.kind, ident.source, ident.path, ident.revision) == (
        "tiny", "text-generator", "hf", "models/tiny", None)
    assert ident.files == _weights_identity(folder, ["model.safetensors"])
    assert ident.details["n_parameters"] == sum(p.numel() for p in tiny_causal_lm().parameters())
    assert ident.details["dtype"] == "float32"
    assert ident.details["device"] == "cpu"


def test_hf_dtype_and_name_come_from_the_spec(tmp_path):
    save_tiny_model(tmp_path / "m")
    lm = _load(_spec("hf", str(tmp_path / "m"), dtype="bfloat16", name="release-candidate"), tmp_path)
    assert lm.model.dtype == torch.bfloat16
    assert lm.identity.details["dtype"] == "bfloat16"
    assert lm.identity.name == "release-candidate"


def _pickle_only_folder(tmp_path: Path) -> Path:
    folder = save_tiny_model(tmp_path / "pickled")
    torch.save(tiny_causal_lm().state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_hf_pickled_weights_need_allow_pickle(tmp_path, reference_logprobs):
    folder = _pickle_only_folder(tmp_path)
    with pytest.raises(InputError) as info:
        _load(_spec("hf", str(folder)), tmp_path)
    msg = str(info.value)
    assert "pytorch_model.bin" in msg and "`allow_pickle: true`" in msg and "arbitrary code" in msg

    lm = _load(_spec("hf", str(folder), allow_pickle=True), tmp_path)
    torch.testing.assert_close(_logprobs(lm), reference_logprobs, rtol=0, atol=1e-5)
    assert [f.path for f in lm.identity.files] == ["pytorch_model.bin"]


@pytest.mark.parametrize("path", ["./missing-model", "models/missing", "/no/such/folder", "~/no-such-model-dir-xyz"])
def test_hf_missing_local_path(tmp_path, path):
    (tmp_path / "models").mkdir()
    with pytest.raises(InputError, match="model path not found: "):
        _load(_spec("hf", path), tmp_path)


def test_hf_truncated_safetensors_names_the_file(tmp_path):
    folder = save_tiny_model(tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(InputError) as info:
        _load(_spec("hf", "m"), tmp_path)
    assert f"corrupt safetensors file: {weights}" in str(info.value)
    assert "truncated" in str(info.value)


def test_hf_file_or_empty_folder_is_explained(tmp_path):
    gguf_file = save_tiny_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(InputError, match="use `source: gguf`"):
        _load(_spec("hf", "tiny.gguf"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no model weights found"):
        _load(_spec("hf", "empty"), tmp_path)
    assert gguf_file.exists()


def test_hf_hub_id_offline_and_not_cached(tmp_path, offline_hub):
    with pytest.raises(InputError) as info:
        _load(_spec("hf", "HuggingFaceTB/SmolLM2-135M-Instruct"), tmp_path)
    msg = str(info.value)
    assert "'HuggingFaceTB/SmolLM2-135M-Instruct' is not a local folder and is not in the Hugging Face cache" in msg
    assert "HF_HUB_OFFLINE=1" in msg
    assert info.value.__cause__ is None  # a clean message, no chained transformers traceback


def test_hf_hub_id_from_the_cache_records_the_commit(tmp_path, offline_hub, reference_logprobs):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--tiny-org--tiny-llama"
    snapshot = save_tiny_model(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    lm = _load(_spec("hf", "tiny-org/tiny-llama"), tmp_path)
    assert lm.identity.name == "tiny-org/tiny-llama"
    assert lm.identity.revision == commit
    assert lm.identity.files == _weights_identity(snapshot, ["model.safetensors"])
    torch.testing.assert_close(_logprobs(lm), reference_logprobs, rtol=0, atol=1e-5)


def test_hf_corrupt_file_in_the_hub_cache_is_named(tmp_path, offline_hub):
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = offline_hub / "models--tiny-org--broken"
    snapshot = save_tiny_model(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    with pytest.raises(InputError, match=f"corrupt safetensors file: {weights}"):
        _load(_spec("hf", "tiny-org/broken"), tmp_path)


def test_hf_remote_code_runs_only_with_trust_remote_code(tmp_path):
    folder = save_tiny_model(tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom-llama", auto_map={"AutoConfig": "modeling_custom.Config",
                                                        "AutoModelForCausalLM": "modeling_custom.Model"})
    (folder / "config.json").write_text(json.dumps(config))
    ran = tmp_path / "remote-code-ran"
    (folder / "modeling_custom.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    with pytest.raises(InputError, match="`trust_remote_code: true`"):
        _load(_spec("hf", "custom"), tmp_path)
    assert not ran.exists()


def test_hf_takes_no_options(tmp_path):
    save_tiny_model(tmp_path / "m")
    with pytest.raises(SpecError, match="subject.options: source 'hf' takes no options"):
        _load(_spec("hf", "m", options={"attn": "sdpa"}), tmp_path)


# -- source: gguf ---------------------------------------------------------------------------------
def test_gguf_converts_once_then_loads_the_cache(tmp_path, monkeypatch, reference_logprobs):
    gguf_file = save_tiny_gguf(tmp_path / "tiny.gguf")
    digest = hashlib.sha256(gguf_file.read_bytes()).hexdigest()

    calls: list[Path] = []
    real = text_loaders._convert_gguf_into
    monkeypatch.setattr(text_loaders, "_convert_gguf_into", lambda src, out: (calls.append(src), real(src, out)))

    first = _load(_spec("gguf", "tiny.gguf"), tmp_path)
    second = _load(_spec("gguf", "tiny.gguf"), tmp_path)
    assert calls == [gguf_file]

    cached = tmp_path / "cache" / "gguf" / digest[:16]
    assert (cached / loading.GGUF_CACHE_MARKER).is_file()
    assert (cached / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == [digest[:16]]  # no temp folders left

    for lm in (first, second):
        torch.testing.assert_close(_logprobs(lm), reference_logprobs, rtol=0, atol=1e-4)
        assert lm.encode([TEXT]) == [tiny_tokenizer().encode(TEXT, add_special_tokens=False)]
        ident = lm.identity
        assert (ident.name, ident.source, ident.path) == ("tiny", "gguf", "tiny.gguf")
        assert ident.files == (FileHash("tiny.gguf", digest, gguf_file.stat().st_size),)
        assert ident.details["gguf_cache"] == str(cached)
        assert ident.details["dtype"] == "float32"


def test_gguf_failed_conversion_leaves_no_folder_that_is_used(tmp_path, monkeypatch):
    gguf_file = save_tiny_gguf(tmp_path / "tiny.gguf")
    root = tmp_path / "cache" / "gguf"
    final = root / sha256_file(gguf_file)[:16]

    def crash(src, out):
        (out / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(text_loaders, "_convert_gguf_into", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf(gguf_file, tmp_path / "cache")
    assert list(root.iterdir()) == []

    # A folder under the final name without the completion marker (a crash of some other writer,
    # or a hand-made copy) is never used: it is rebuilt.
    final.mkdir()
    (final / "model.safetensors").write_bytes(b"half a file")
    (root / f".{final.name}.999.dead.tmp").mkdir()  # a crashed conversion's leftover is ignored
    monkeypatch.undo()
    assert convert_gguf(gguf_file, tmp_path / "cache") == final
    assert text_loaders._gguf_cache_complete(final, sha256_file(gguf_file))

    # A cached file that changed size (truncated on disk) also triggers a rebuild.
    weights = final / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert not text_loaders._gguf_cache_complete(final, sha256_file(gguf_file))
    convert_gguf(gguf_file, tmp_path / "cache")
    assert text_loaders._gguf_cache_complete(final, sha256_file(gguf_file))


def test_gguf_concurrent_conversion_uses_the_winners_folder(tmp_path, monkeypatch):
    gguf_file = save_tiny_gguf(tmp_path / "tiny.gguf")
    real = text_loaders._convert_gguf_into

    def racing(src, out):
        monkeypatch.setattr(text_loaders, "_convert_gguf_into", real)
        convert_gguf(src, tmp_path / "cache")  # another process finishes first
        real(src, out)

    monkeypatch.setattr(text_loaders, "_convert_gguf_into", racing)
    folder = convert_gguf(gguf_file, tmp_path / "cache")
    assert text_loaders._gguf_cache_complete(folder, sha256_file(gguf_file))
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_gguf_garbage_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(InputError) as info:
        _load(_spec("gguf", "model.gguf"), tmp_path)
    assert f"not a valid GGUF file: {bad}" in str(info.value)
    assert not (tmp_path / "cache" / "gguf").exists()


@pytest.mark.parametrize("keep", [0.01, 0.9], ids=["metadata-cut", "tensors-cut"])
def test_gguf_truncated_file(tmp_path, keep):
    gguf_file = save_tiny_gguf(tmp_path / "tiny.gguf")
    data = gguf_file.read_bytes()
    gguf_file.write_bytes(data[: int(len(data) * keep)])  # the magic is intact
    with pytest.raises(InputError, match=f"not a valid GGUF file: {gguf_file}"):
        _load(_spec("gguf", "tiny.gguf"), tmp_path)
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == []


def test_gguf_missing_file_or_folder(tmp_path):
    with pytest.raises(InputError, match="model path not found: .*nope.gguf"):
        _load(_spec("gguf", "nope.gguf"), tmp_path)
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match="expected a .gguf file, got a folder"):
        _load(_spec("gguf", "dir"), tmp_path)


@pytest.mark.slow
def test_smollm2_gguf_converts_once_and_the_cache_is_fast(smollm2_conversion, monkeypatch):
    from tests.conftest import SMOLLM2_TEXT, smollm2_gguf

    cache, convert_s, first_logprobs, identity = smollm2_conversion

    def no_conversion(src, out):
        raise AssertionError("the cached folder should have been used")

    monkeypatch.setattr(text_loaders, "_convert_gguf_into", no_conversion)
    start = time.perf_counter()
    second = load_subject(_spec("gguf", str(smollm2_gguf())), device="cpu", cache_dir=cache)
    cached_s = time.perf_counter() - start
    print(f"\nSmolLM2-135M Q4_1: first load (conversion) {convert_s:.1f} s, cached load {cached_s:.1f} s")

    assert cached_s < convert_s
    b = _logprobs(second, SMOLLM2_TEXT)
    torch.testing.assert_close(first_logprobs, b, rtol=0, atol=0)
    # A real instruct model finds this sentence unsurprising: mean log-prob above -4 nats/token
    # (uniform over its 49152 tokens would be -10.8).
    assert b.mean().item() > -4.0
    assert identity.files[0].sha256 == sha256_file(smollm2_gguf())
    assert identity.details["n_parameters"] > 100_000_000


# -- source: python -------------------------------------------------------------------------------
def test_python_text_generator_is_used_as_is(tmp_path, reference_logprobs):
    lm = _load(_spec("python", "tests.fakes:make_text_generator"), tmp_path)
    assert isinstance(lm, HFTextGenerator)
    assert lm.identity.name == "tiny-llama"  # its own identity is kept
    torch.testing.assert_close(_logprobs(lm), reference_logprobs, rtol=0, atol=0)


def test_python_file_returning_a_pair_is_wrapped(tmp_path, reference_logprobs):
    (tmp_path / "subject.py").write_text(
        "from tests.fakes import tiny_causal_lm, tiny_tokenizer\n"
        "def build(seed=1):\n"
        "    return tiny_causal_lm(seed=seed), tiny_tokenizer()\n"
    )
    lm = _load(_spec("python", "subject.py:build", options={"seed": 0}), tmp_path)
    assert isinstance(lm, HFTextGenerator)
    torch.testing.assert_close(_logprobs(lm), reference_logprobs, rtol=0, atol=0)
    ident = lm.identity
    assert (ident.name, ident.source, ident.path, ident.files) == ("build", "python", "subject.py:build", ())
    assert ident.details["n_parameters"] == sum(p.numel() for p in tiny_causal_lm().parameters())


def test_python_module_next_to_the_spec_and_identity_when_missing(tmp_path):
    (tmp_path / "my_subject_mod_xyz.py").write_text(
        "from audit.subjects import TextGenerator\n"
        "class Echo(TextGenerator):\n"
        "    def encode(self, texts):\n"
        "        return [[ord(c) for c in t] for t in texts]\n"
        "def make():\n"
        "    return Echo()\n"
    )
    lm = _load(_spec("python", "my_subject_mod_xyz:make", name="echo"), tmp_path)
    assert lm.encode(["hi"]) == [[104, 105]]
    assert isinstance(lm.identity, SubjectIdentity)
    assert (lm.identity.name, lm.identity.source, lm.identity.path) == ("echo", "python", "my_subject_mod_xyz:make")
    assert str(tmp_path.resolve()) not in __import__("sys").path  # sys.path is left as it was


@pytest.mark.parametrize(("path", "message"), [
    ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
    ("tests.fakes:make_text_generatr", "has no attribute 'make_text_generatr'. Did you mean 'make_text_generator'?"),
    ("tests.fakes:TRAIN_TEXT", "'TRAIN_TEXT' is a str, not a callable"),
    ("missing_file.py:build", "model path not found: "),
])
def test_python_import_errors_name_the_callable(tmp_path, path, message):
    with pytest.raises(InputError) as info:
        _load(_spec("python", path), tmp_path)
    assert path in str(info.value) or "missing_file.py" in str(info.value)
    assert message in str(info.value)


def test_python_path_without_callable_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="expected 'module:callable'"):
        _load(_spec("python", "tests.fakes"), tmp_path)


def test_python_wrong_return_type_or_failing_callable(tmp_path):
    (tmp_path / "bad.py").write_text(
        "def number():\n    return 42\n"
        "def triple():\n    return 1, 2, 3\n"
        "def boom():\n    raise RuntimeError('weights server down')\n"
        "raise_on_import = False\n"
    )
    with pytest.raises(InputError) as info:
        _load(_spec("python", "bad.py:number"), tmp_path)
    assert "subject callable 'bad.py:number' returned a builtins.int; expected a TextGenerator" in str(info.value)
    assert "(model, tokenizer) pair" in str(info.value)
    with pytest.raises(InputError, match="returned a tuple of 3"):
        _load(_spec("python", "bad.py:triple"), tmp_path)
    with pytest.raises(InputError, match="'bad.py:boom' failed when called: RuntimeError: weights server down"):
        _load(_spec("python", "bad.py:boom"), tmp_path)
    with pytest.raises(InputError, match="failed when called with options"):
        _load(_spec("python", "bad.py:number", options={"unexpected": 1}), tmp_path)


def test_python_module_that_fails_on_import(tmp_path):
    (tmp_path / "broken.py").write_text("import this_dependency_is_missing_xyz\n")
    with pytest.raises(InputError, match="cannot import 'broken.py': ModuleNotFoundError.*this_dependency"):
        _load(_spec("python", "broken.py:build"), tmp_path)

