"""quality.visual_inspection and the gallery renderer: seeded contact sheets (per prompt for
text-to-image), nearest real neighbours, text samples; thumbnails embedded, never linked."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from audit.errors import SpecError
from audit.findings import AuditReport, Finding, SubjectIdentity
from audit.probe import ProbeContext, build_probe
from audit.render import write_reports
from audit.render.gallery import gallery_html, read_galleries, read_png
from audit.spec import SubjectSpec
from audit.stats import wilson_interval
from audit.subjects import TextGenerator
from audit.subjects.loading import load_subject
from tests.image_fakes import random_images

PID = "quality.visual_inspection"


def _folder(folder, arrays, prompts=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"img{i:03d}.png")
    if prompts is not None:
        (folder / "prompts.jsonl").write_text("".join(json.dumps({"file": f"img{i:03d}.png", "prompt": p}) + "\n"
                                                      for i, p in enumerate(prompts)), encoding="utf-8")
    return load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(folder)), device="cpu",
                        cache_dir=folder.parent / "cache")


def _ctx(tmp_path, data=None, artefacts=True):
    return ProbeContext(device="cpu", seed=0, data=data or {}, cache_dir=tmp_path / "cache", probe_id=PID,
                        artefact_dir=(tmp_path / "out" / "artefacts" / PID) if artefacts else None)


def test_contact_sheet_neighbours_and_duplicates(tmp_path):
    real = random_images(10, 16, seed=1)
    fresh = random_images(6, 16, seed=2)
    # Generated: copies of real images 4 and 8, then fresh ones, with one fresh image twice.
    gen = np.concatenate([real[[4, 8]], fresh, fresh[:1]])
    subject = _folder(tmp_path / "gen", gen)
    ref = tmp_path / "ref"
    ref.mkdir()
    for i, a in enumerate(real):
        Image.fromarray(a).save(ref / f"real{i:02d}.png")
    probe = build_probe(PID, {"n_generated": 9, "n_real": 5, "n_neighbours": 3,
                                "feature_options": {"size": 16}})
    (f,) = probe.run(subject, _ctx(tmp_path, {"reference": ref}))

    # Duplicates by hand: fresh[0] appears twice among the 9 generated images.
    assert f.metric == "duplicate_rate" and f.n == 9 and f.value == pytest.approx(2 / 9)
    assert f.ci == wilson_interval(2, 9)
    sheet, neighbours = f.evidence["gallery"]["sections"]
    (gen_col, real_col) = sheet["columns"]
    assert len(gen_col["images"]) == 9 and len(real_col["images"]) == 5
    # The nearest real neighbour, against a brute force in NumPy (standardised pixels, cosine).
    def feats(x):
        v = x.astype(np.float64).transpose(0, 3, 1, 2).reshape(len(x), -1) / 255.0
        v = v - v.mean(1, keepdims=True)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    picked = [(p["a"]["caption"], p["b"]["caption"], p["caption"]) for p in neighbours["pairs"]]
    sims = feats(gen[:3]) @ feats(real).T
    for k, (a, b, cap) in enumerate(picked):
        assert a == f"generated #{k}"
        assert b == f"real{int(sims[k].argmax()):02d}.png"
        assert cap.startswith(f"similarity {sims[k].max():.3f}")
    assert picked[0][1] == "real04.png" and picked[1][1] == "real08.png"

    # Files exist, are small PNGs, and the fragment embeds them.
    srcs = [im["src"] for c in sheet["columns"] for im in c["images"]]
    assert all((tmp_path / "out" / s).read_bytes().startswith(b"\x89PNG") for s in srcs)
    html = gallery_html([f], tmp_path / "out")
    assert html.count("data:image/png;base64,") == 9 + 5 + 2 * 3
    assert 'src="artefacts' not in html and "not found" not in html
    with Image.open(tmp_path / "out" / srcs[0]) as im:
        assert max(im.size) <= 64


def test_text_to_image_rows_per_prompt(tmp_path):
    prompts = ["a cat", "a dog", "a cat", "a bird", "a dog", "a cat", "a fish"]
    subject = _folder(tmp_path / "t2i", random_images(len(prompts), 16, seed=3), prompts=prompts)
    probe = build_probe(PID, {"per_prompt": 2, "max_prompts": 3, "n_real": 0, "n_neighbours": 0})
    (f,) = probe.run(subject, _ctx(tmp_path))
    sections = f.evidence["gallery"]["sections"]
    assert [s["title"] for s in sections] == ["prompt: a cat", "prompt: a dog", "prompt: a bird"]
    assert [len(s["columns"][0]["images"]) for s in sections] == [2, 2, 1]
    assert [im["caption"] for im in sections[0]["columns"][0]["images"]] == ["#0", "#2"]


def test_text_to_image_callable_gets_each_prompt_per_prompt_times(tmp_path):
    from tests.bias_fakes import ColourGenerator

    gen = ColourGenerator(size=16)
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["red", "blue", "red", "green"]), encoding="utf-8")
    probe = build_probe(PID, {"per_prompt": 3, "max_prompts": 2, "n_real": 0, "n_neighbours": 0})
    (f,) = probe.run(gen, _ctx(tmp_path, {"prompts": p}))
    assert gen.calls[0][0] == ["red"] * 3 + ["blue"] * 3
    assert [s["title"] for s in f.evidence["gallery"]["sections"]] == ["prompt: red", "prompt: blue"]


class _EchoGenerator(TextGenerator):
    """Returns the same text for every seed (a collapsed sampler), or the seed when ``vary``."""

    def __init__(self, vary: bool):
        self.vary = vary
        self.identity = SubjectIdentity(name="echo", kind="text-generator", source="python")

    def generate(self, prompts, *, max_new_tokens=8, temperature=1.0, seed=0):
        return [f"<b>{p}</b> {seed if self.vary else 'same'}" for p in prompts]


@pytest.mark.parametrize("vary, expected", [(False, 1.0), (True, 0.0)])
def test_text_samples_table(tmp_path, vary, expected):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(["Hi", "Why?", "Go"])),
                 encoding="utf-8")
    probe = build_probe(PID, {"per_prompt": 2, "max_prompts": 2})
    (f,) = probe.run(_EchoGenerator(vary), _ctx(tmp_path, {"prompts": p}))
    assert f.n == 4 and f.value == expected
    assert [r["prompt"] for r in f.evidence["samples"]] == ["Hi", "Why?"]
    html = str(gallery_html([f], None))
    assert "&lt;b&gt;Hi&lt;/b&gt;" in html and "<b>Hi" not in html


def test_text_diversity_examples_are_shown_as_samples():
    f = Finding(probe="quality.text_diversity", metric="self_bleu", value=0.2, higher_is_better=False,
                evidence={"examples": [{"id": "a", "prompt": "Why?", "samples": ["Because.", "No idea"]}]})
    (sec,) = read_galleries(AuditReport(name="t", subject=SubjectIdentity(name="m", kind="text-generator",
                                                                          source="hf"), findings=(f,)), None)
    assert sec.samples[0]["generations"] == ["Because.", "No idea"]
    html = str(gallery_html([f], None))
    assert "Sampled generations" in html and "<div>No idea</div>" in html


def test_without_artefact_folder_no_gallery_but_a_note(tmp_path):
    subject = _folder(tmp_path / "gen", random_images(4, 16, seed=5))
    (f,) = build_probe(PID, {"n_generated": 4}).run(subject, _ctx(tmp_path, artefacts=False))
    assert "gallery" not in f.evidence and "artefact folder" in f.evidence["gallery_note"]
    assert "artefact folder" in str(gallery_html([f], None))


def test_bounds_are_checked():
    with pytest.raises(SpecError, match="<= 64"):
        build_probe(PID, {"n_generated": 50, "n_real": 10, "n_neighbours": 4})
    with pytest.raises(SpecError, match="thumbnail_px"):
        build_probe(PID, {"thumbnail_px": 512})


def test_hostile_paths_are_never_read(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n secret")
    out = tmp_path / "out"
    (out / "artefacts").mkdir(parents=True)
    (out / "artefacts" / "fake.png").write_bytes(b"GIF89a not a png")
    for src in (str(secret), "../secret.png", "artefacts/../../secret.png", "artefacts/fake.png",
                "data:image/png;base64,AAAA", "http://example.com/x.png"):
        assert read_png(out, src) is None, src
    f = Finding(probe="p", metric="m", value=0.0, higher_is_better=False,
                evidence={"gallery": {"sections": [{"title": "t", "columns": [
                    {"title": "c", "images": [{"src": "../secret.png", "caption": "x"}]}]}]}})
    html = str(gallery_html([f], out))
    assert "not found" in html and "secret" not in html.replace("../secret.png", "")


def test_html_report_embeds_the_contact_sheet(tmp_path):
    subject = _folder(tmp_path / "gen", random_images(6, 16, seed=6))
    (f,) = build_probe(PID, {"n_generated": 6}).run(subject, _ctx(tmp_path))
    report = AuditReport(name="vis", subject=SubjectIdentity(name="g", kind="image-generator", source="folder"),
                         findings=(f,))
    paths = write_reports(report, tmp_path / "out")
    page = paths["html"].read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 6
    assert not re.search(r'src="(?!data:)', page)  # no image or script loads from a path or host
    # The dashboard's reader finds the same images next to report.json.
    secs = read_galleries(AuditReport.load(paths["json"]), paths["json"].parent)
    assert sum(1 for _, ims in secs[0].columns for im in ims if im.png) == 6


def visual_contract_inputs(tmp_path):
    """FAKES entry for the contract test: a folder subject and a reference folder."""
    subject = _folder(tmp_path / "gen", random_images(6, 16, seed=7))
    ref = tmp_path / "ref"
    ref.mkdir()
    for i, a in enumerate(random_images(5, 16, seed=8)):
        Image.fromarray(a).save(ref / f"r{i}.png")
    return subject, {"reference": ref}, {"n_generated": 6, "n_real": 3, "n_neighbours": 2}


def test_torch_generator_duplicates(tmp_path):
    """A latent module that ignores its input collapses: every sample is a duplicate."""
    class Const(TorchLike):
        pass
    gen = Const()
    (f,) = build_probe(PID, {"n_generated": 5}).run(gen, _ctx(tmp_path))
    assert f.value == 1.0 and f.n == 5


class TorchLike:
    kind = "image-generator"
    capabilities = frozenset({"generate_images"})
    identity = SubjectIdentity(name="const", kind="image-generator", source="python")

    def generate(self, n=None, *, prompts=None, seed=0, batch_size=64):
        yield torch.full((n, 3, 8, 8), 7, dtype=torch.uint8)
