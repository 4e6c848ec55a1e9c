"""quality.clip_score against the open_clip recipe by hand, on a random-weight CLIP built in code."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from audit.errors import InputError
from audit.probe import ProbeContext, build_probe
from probes.quality.clip_score import clip_score_pairs
from tests.image_fakes import PROMPTS, clip_score_inputs, tiny_clip


def test_clip_score_formula_by_hand():
    img = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, -1.0]])
    # cos = 1, 0, -1 -> 100, 0, max(-100, 0) = 0
    assert clip_score_pairs(img, txt).tolist() == pytest.approx([100.0, 0.0, 0.0])


def test_probe_equals_the_open_clip_recipe(tmp_path):
    subject, data, params = clip_score_inputs(tmp_path)
    probe = build_probe("quality.clip_score", params)
    (finding,) = probe.run(subject, ProbeContext(device="cpu", data=data, probe_id=probe.id))

    # The reference: open_clip's usual steps, one pair at a time, in NumPy for the score.
    from PIL import Image

    model, tok = tiny_clip()
    mean = np.array([0.48145466, 0.4578275, 0.40821073]).reshape(3, 1, 1)
    std = np.array([0.26862954, 0.26130258, 0.27577711]).reshape(3, 1, 1)
    scores = []
    for i, prompt in enumerate(PROMPTS):
        arr = np.asarray(Image.open(subject.folder / f"img{i:04d}.png").convert("RGB"), dtype=np.float64)
        x = torch.from_numpy((arr.transpose(2, 0, 1) / 255.0 - mean) / std).float()[None]
        with torch.no_grad():
            e_img = model.encode_image(x)[0].double().numpy()
            e_txt = model.encode_text(tok([prompt]))[0].double().numpy()
        cos = e_img @ e_txt / np.linalg.norm(e_img) / np.linalg.norm(e_txt)
        scores.append(100 * max(cos, 0.0))
    assert finding.n == len(PROMPTS)
    assert finding.value == pytest.approx(np.mean(scores), rel=1e-4)
    assert finding.ci.low <= finding.value <= finding.ci.high
    assert finding.evidence["judge"]["weights_sha256"] and len(finding.evidence["lowest"]) == 5
    assert any("only 8 prompts" in w for w in finding.warnings)


def test_text_to_image_callable_reads_prompts_from_data(tmp_path):
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    (tmp_path / "t2i.py").write_text(textwrap.dedent("""
        import numpy as np
        def make(prompts, seed):
            return np.stack([np.full((32, 32, 3), (len(p) * 7) % 256, dtype=np.uint8) for p in prompts])
    """))
    subject = load_subject(SubjectSpec(kind="image-generator", source="python", path="t2i.py:make",
                                       options={"text_to_image": True}),
                           device="cpu", cache_dir=tmp_path / "c", base_dir=tmp_path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:5]))
    probe = build_probe("quality.clip_score", {"clip_model": "tests.image_fakes:tiny_clip", "n_resamples": 200,
                                               "batch_size": 2})
    (f,) = probe.run(subject, ProbeContext(device="cpu", data={"prompts": prompts}, probe_id=probe.id))
    assert f.n == 5 and 0 <= f.value <= 100


def test_clip_without_local_weights_offline_is_a_clear_error(tmp_path, monkeypatch):
    from audit.findings import SubjectIdentity
    from audit.subjects import ImageGenerator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    subj = ImageGenerator()
    subj.identity = SubjectIdentity(name="x", kind="image-generator", source="folder")
    for params, match in (({}, "needs weights"),
                          ({"clip_pretrained": str(tmp_path / "missing.bin")}, "cannot load the CLIP model")):
        probe = build_probe("quality.clip_score", params)
        with pytest.raises(InputError, match=match):
            probe.run(subj, ProbeContext(device="cpu", probe_id=probe.id))


def test_folder_without_prompts_is_skipped_by_capability(tmp_path):
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec
    from audit.subjects import missing_capabilities
    from tests.image_fakes import write_image_folder

    folder = write_image_folder(tmp_path / "f", 3)
    subj = load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(folder)), device="cpu",
                        cache_dir=tmp_path / "c")
    reason = missing_capabilities(subj, build_probe("quality.clip_score", {}))
    assert reason is not None and "prompts" in reason
