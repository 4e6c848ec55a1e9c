"""Image-generator subjects (folder, python, torch), image reading, and the digits demo part."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from audit.errors import InputError, SpecError
from audit.subjects.imagedata import ImageReadLog, iter_image_batches, list_images, to_uint8_nchw
from audit.subjects.loading import load_subject
from audit.spec import SubjectSpec
from tests.image_fakes import write_image_folder


def _load(kind_source, path, tmp_path, **kw):
    return load_subject(SubjectSpec(kind="image-generator", source=kind_source, path=str(path), **kw),
                        device="cpu", cache_dir=tmp_path / "cache", base_dir=tmp_path)


def _mixed_folder(tmp_path):
    folder = write_image_folder(tmp_path / "mixed", 4, size=16, seed=0)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), mode="RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert("P").save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(folder / "bigger.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_mixed_modes_and_sizes_are_converted_and_corrupt_files_counted(tmp_path):
    folder = _mixed_folder(tmp_path)
    paths = list_images(folder)
    assert len(paths) == 9 and not any(p.suffix == ".txt" for p in paths)
    log = ImageReadLog()
    batches = list(iter_image_batches(paths, batch_size=3, log=log))
    x = torch.cat(batches)
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.uint8
    assert log.read == 8 and log.n_skipped == 1 and log.skipped[0][0] == "broken.png"
    assert log.converted == {"L": 1, "RGBA": 1, "P": 1} and log.resized == 1
    # Grey to RGB repeats the channel; the common size is the first image's.
    grey_idx = [p.name for p in paths if p.name != "broken.png"].index("grey.png")
    assert torch.equal(x[grey_idx, 0], x[grey_idx, 1])
    text = " ".join(log.warnings())
    assert "1 unreadable" in text and "converted to RGB" in text and "resized to 16x16" in text
    grey = torch.cat(list(iter_image_batches(paths, batch_size=4, mode="L")))
    assert grey.shape == (8, 1, 16, 16)


def test_probe_records_skipped_and_converted_images(tmp_path):
    from audit.probe import ProbeContext, build_probe

    subject = _load("folder", _mixed_folder(tmp_path), tmp_path)
    ref = write_image_folder(tmp_path / "ref", 12, seed=2)
    probe = build_probe("quality.image_fidelity", {
        "feature": "tests.image_fakes:tiny_feature_net", "metrics": ["fid", "precision"], "pr_k": 2,
        "n_resamples": 20})
    findings = probe.run(subject, ProbeContext(device="cpu", data={"reference": ref}, probe_id=probe.id))
    fid = findings[0]
    assert fid.evidence["generated_images"]["files_skipped"] == 1
    assert fid.evidence["generated_images"]["converted_to_RGB"] == {"L": 1, "P": 1, "RGBA": 1}
    assert any("unreadable or corrupt" in w for w in fid.warnings) and fid.n == 8


def test_folder_prompts_are_matched_by_file_or_order(tmp_path):
    folder = write_image_folder(tmp_path / "f", 3, prompts=["a", "b", "c"])
    subj = _load("folder", folder, tmp_path)
    assert subj.prompts == ["a", "b", "c"] and "prompts" in subj.capabilities and subj.num_images == 3
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in "xy"))
    with pytest.raises(InputError, match="2 prompts for 3 images"):
        _load("folder", folder, tmp_path)


def test_empty_folder_or_one_image_is_an_input_error_and_exit_2(tmp_path, capsys):
    from audit.cli import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        _load("folder", tmp_path / "empty", tmp_path)
    write_image_folder(tmp_path / "one", 1)
    with pytest.raises(InputError, match="at least 2"):
        _load("folder", tmp_path / "one", tmp_path)
    write_image_folder(tmp_path / "ref", 4)
    spec = {"name": "empty", "subject": {"kind": "image-generator", "source": "folder", "path": "empty"},
            "data": {"reference": "ref"}, "probes": [{"id": "quality.image_fidelity"}]}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "audit.yaml"), "--out", str(tmp_path / "out"), "--no-store", "-q"])
    assert exc.value.code == 2
    assert "no image files" in capsys.readouterr().err


def test_python_callable_generator_is_seeded_and_normalised(tmp_path):
    (tmp_path / "my_gen.py").write_text(textwrap.dedent("""
        import numpy as np
        def sample(n, seed, scale=1.0):
            rng = np.random.default_rng(seed)
            return (rng.random((n, 8, 8, 3)) * scale).astype("float32")   # NHWC floats in [0, 1]
        def t2i(prompts, seed):
            return [np.full((8, 8, 3), len(p) * 10, dtype=np.uint8) for p in prompts]
    """))
    subj = _load("python", "my_gen.py:sample", tmp_path, options={"scale": 0.5})
    a = torch.cat(list(subj.generate(10, seed=3, batch_size=4)))
    b = torch.cat(list(subj.generate(10, seed=3, batch_size=4)))
    assert a.shape == (10, 3, 8, 8) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert int(a.max()) <= 128  # scale 0.5 passed through as a keyword
    t2i = _load("python", "my_gen.py:t2i", tmp_path, options={"text_to_image": True})
    assert "prompts" in t2i.capabilities
    out = torch.cat(list(t2i.generate(prompts=["ab", "abcd"])))
    assert out[:, 0, 0, 0].tolist() == [20, 40]
    with pytest.raises(InputError, match="needs prompts"):
        list(t2i.generate(4))


def test_torch_module_generator_with_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "gan.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        class G(nn.Module):
            def __init__(self, size=4):
                super().__init__()
                self.size = size
                self.lin = nn.Linear(6, 3 * size * size)
            def forward(self, z):
                return torch.tanh(self.lin(z)).view(-1, 3, self.size, self.size)
        def make(size=4):
            return G(size)
    """))
    import importlib.util

    spec = importlib.util.spec_from_file_location("gan_for_test", tmp_path / "gan.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    save_file(mod.make(4).state_dict(), str(tmp_path / "g.safetensors"))
    subj = _load("torch", "gan.py:make", tmp_path,
                 options={"latent_shape": [6], "weights": "g.safetensors", "factory_kwargs": {"size": 4}})
    x = torch.cat(list(subj.generate(9, seed=1, batch_size=4)))
    assert x.shape == (9, 3, 4, 4) and x.dtype == torch.uint8
    assert torch.equal(x, torch.cat(list(subj.generate(9, seed=1, batch_size=9))))  # batch-size independent
    assert subj.identity.files[0].path == "g.safetensors" and len(subj.identity.files[0].sha256) == 64
    with pytest.raises(SpecError, match="latent_shape"):
        _load("torch", "gan.py:make", tmp_path, options={"latent_shape": "six"})
    with pytest.raises(InputError, match="do not fit"):
        _load("torch", "gan.py:make", tmp_path,
              options={"latent_shape": [6], "weights": "g.safetensors", "factory_kwargs": {"size": 5}})
    with pytest.raises(InputError, match="weights file not found: .*missing.safetensors"):
        _load("torch", "gan.py:make", tmp_path,
              options={"latent_shape": [6], "weights": "missing.safetensors", "factory_kwargs": {"size": 4}})
    torch.save(mod.make(4).state_dict(), tmp_path / "g.pt")
    with pytest.raises(InputError, match="g.pt: torch image generator weights load from safetensors files only"):
        _load("torch", "gan.py:make", tmp_path, options={"latent_shape": [6], "weights": "g.pt", "factory_kwargs": {"size": 4}})
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "g.safetensors").read_bytes()[:-8])
    with pytest.raises(InputError, match="cut.safetensors"):
        _load("torch", "gan.py:make", tmp_path,
              options={"latent_shape": [6], "weights": "cut.safetensors", "factory_kwargs": {"size": 4}})


def test_to_uint8_nchw_accepts_the_usual_outputs():
    assert to_uint8_nchw(torch.full((2, 1, 3, 3), 0.5)).unique().tolist() == [128]
    assert to_uint8_nchw(torch.zeros(2, 3, 3, 3) - 1, value_range=(-1, 1)).unique().tolist() == [0]
    assert to_uint8_nchw(np.zeros((2, 5, 5, 4), dtype=np.uint8)).shape == (2, 3, 5, 5)
    with pytest.raises(InputError, match="expected a uint8 or float tensor"):
        to_uint8_nchw("images")
