"""privacy.image_replication: nearest training image of each generated image, checked against a
brute-force NumPy nearest neighbour; thumbnails of the top pairs; unreadable files counted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from audit.errors import InputError, SpecError
from audit.probe import ProbeContext, build_probe
from audit.render.gallery import gallery_html, read_galleries
from audit.findings import AuditReport, SubjectIdentity
from audit.stats import wilson_interval
from probes.privacy.image_replication import cosine_nearest, similarity_quantiles
from tests.image_fakes import random_images


def _brute_force(q: np.ndarray, k: np.ndarray, exclude_self: bool = False):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    kn = k / np.linalg.norm(k, axis=1, keepdims=True)
    s = qn @ kn.T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    return s.max(1), s.argmax(1)


@pytest.mark.parametrize("chunk", [3, 4096])
def test_cosine_nearest_equals_brute_force(chunk):
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(17, 5)), rng.normal(size=(23, 5))
    sim, idx = cosine_nearest(torch.tensor(q), torch.tensor(k), chunk=chunk)
    ref_s, ref_i = _brute_force(q, k)
    np.testing.assert_allclose(sim.numpy(), ref_s, atol=1e-5)
    assert idx.tolist() == ref_i.tolist()
    # Leave-one-out among one set.
    sim2, idx2 = cosine_nearest(torch.tensor(k), torch.tensor(k), chunk=chunk, exclude_self=True)
    ref_s2, ref_i2 = _brute_force(k, k, exclude_self=True)
    np.testing.assert_allclose(sim2.numpy(), ref_s2, atol=1e-5)
    assert idx2.tolist() == ref_i2.tolist()


def test_cosine_nearest_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        cosine_nearest(torch.zeros(2, 3), torch.zeros(2, 4))


def _save(folder, arrays, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / (names[i] if names else f"img{i:03d}.png"))
    return folder


def _setup(tmp_path, n_gen=20, n_copies=5):
    """Training images, and generated ones of which the first n_copies are exact training copies."""
    train = random_images(30, 16, seed=1)
    fresh = random_images(n_gen - n_copies, 16, seed=2)
    gen = np.concatenate([train[[3, 7, 7, 11, 29][:n_copies]], fresh])
    _save(tmp_path / "train", train)
    (tmp_path / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    _save(tmp_path / "gen", gen)
    from audit.subjects.loading import load_subject
    from audit.spec import SubjectSpec

    subject = load_subject(SubjectSpec(kind="image-generator", source="folder", path=str(tmp_path / "gen")),
                           device="cpu", cache_dir=tmp_path / "cache")
    return subject, train, gen


def _pixel_features(images: np.ndarray) -> np.ndarray:
    """Standardised pixels in NumPy: [0, 1], flattened (C, H, W order), minus the image's mean."""
    x = images.astype(np.float64).transpose(0, 3, 1, 2).reshape(len(images), -1) / 255.0
    return x - x.mean(1, keepdims=True)


def test_replication_rate_against_numpy_brute_force(tmp_path):
    subject, train, gen = _setup(tmp_path)
    ctx = ProbeContext(device="cpu", seed=0, data={"train": tmp_path / "train"}, cache_dir=tmp_path / "c",
                       artefact_dir=tmp_path / "out" / "artefacts" / "privacy.image_replication",
                       probe_id="privacy.image_replication")
    probe = build_probe("privacy.image_replication",
                        {"feature": "pixels", "feature_options": {"size": 16}, "threshold": 0.9, "top_pairs": 3})
    rate, p95 = probe.run(subject, ctx)

    ref_s, ref_i = _brute_force(_pixel_features(gen), _pixel_features(train))
    hits = int((ref_s > 0.9).sum())
    assert hits == 5  # the copies, and none of the fresh random images
    assert rate.metric == "replication_rate" and rate.n == len(gen)
    assert rate.value == pytest.approx(hits / len(gen))
    assert rate.ci == wilson_interval(hits, len(gen))
    assert p95.value == pytest.approx(np.quantile(ref_s, 0.95), abs=1e-5)
    np.testing.assert_allclose(p95.evidence["values"], ref_s, atol=1e-4)
    q = rate.evidence["similarity_quantiles"]
    assert q["q50"] == pytest.approx(np.quantile(ref_s, 0.5), abs=1e-5) and q["q100"] == pytest.approx(1.0, abs=1e-5)
    # The unreadable training file is skipped and counted.
    assert rate.evidence["train_images"]["files_skipped"] == 1
    assert rate.evidence["n_train"] == 30
    assert any("broken.png" in w for w in rate.warnings)
    # Not calibrated for pixels: said so.
    assert any("not on pixels-standardised-16" in w for w in rate.warnings)
    assert rate.evidence["train_to_train_quantiles"]["n"] == 30

    # The top pairs are thumbnails of a copy and its original; the gallery embeds them.
    pairs = rate.evidence["gallery"]["sections"][0]["pairs"]
    assert len(pairs) == 3 and all(p["caption"].startswith("cosine 1.000") for p in pairs)
    assert all(p["a"]["src"].startswith("artefacts/privacy.image_replication/") for p in pairs)
    report = AuditReport(name="r", subject=SubjectIdentity(name="g", kind="image-generator", source="folder"),
                         findings=(rate, p95))
    html = gallery_html(report.findings, tmp_path / "out")
    assert html.count("data:image/png;base64,") == 6 and "src=\"artefacts" not in html
    sections = read_galleries(AuditReport.from_json(report.to_json()), tmp_path / "out")
    assert sections[0].pairs[0][0].png.startswith(b"\x89PNG")
    # The train image of the best pair is the original of a copy (an index of the brute force).
    names = sorted(p.name for p in (tmp_path / "train").glob("img*.png"))
    assert pairs[0]["b"]["caption"] in {names[i] for i in ref_i[:5]}


def test_calibrated_threshold_has_no_warning(tmp_path):
    subject, *_ = _setup(tmp_path)
    ctx = ProbeContext(device="cpu", seed=0, data={"train": tmp_path / "train"}, cache_dir=tmp_path / "c",
                       probe_id="privacy.image_replication")
    probe = build_probe("privacy.image_replication",
                        {"feature": "pixels", "threshold": 0.9, "threshold_calibrated_for": "pixels", "top_pairs": 0})
    rate, _ = probe.run(subject, ctx)
    assert not any(w.startswith("threshold") for w in rate.warnings)
    assert rate.evidence["threshold_calibrated_for_this_extractor"] is True
    assert "gallery" not in rate.evidence


def test_threshold_calibrated_on_heldout_images(tmp_path):
    subject, train, gen = _setup(tmp_path)
    held = random_images(12, 16, seed=9)
    _save(tmp_path / "held", held)
    ctx = ProbeContext(device="cpu", seed=0, data={"train": tmp_path / "train", "held": tmp_path / "held"},
                       cache_dir=tmp_path / "c", probe_id="privacy.image_replication")
    probe = build_probe("privacy.image_replication", {"feature": "pixels", "feature_options": {"size": 16},
                                                      "heldout": "held", "threshold_from_heldout": 0.75})
    rate, _, held_rate = probe.run(subject, ctx)
    h_s, _ = _brute_force(_pixel_features(held), _pixel_features(train))
    g_s, _ = _brute_force(_pixel_features(gen), _pixel_features(train))
    thr = np.quantile(h_s, 0.75)
    assert rate.evidence["threshold"] == pytest.approx(thr, abs=1e-5)
    assert rate.value == pytest.approx(np.mean(g_s > thr))
    assert held_rate.metric == "heldout_rate" and held_rate.n == 12
    assert held_rate.value == pytest.approx(np.mean(h_s > thr)) and held_rate.value == pytest.approx(3 / 12)
    assert held_rate.ci == wilson_interval(3, 12)
    assert not any("not on pixels" in w for w in rate.warnings)
    assert any("quantile of the held-out" in w for w in rate.warnings)


def test_bad_input(tmp_path):
    subject, *_ = _setup(tmp_path)
    with pytest.raises(SpecError, match="threshold must be a cosine similarity"):
        build_probe("privacy.image_replication", {"threshold": 1.5})
    with pytest.raises(SpecError, match="feature"):
        build_probe("privacy.image_replication", {"feature": "sift"})
    with pytest.raises(SpecError, match="threshold_from_heldout must be null unless `heldout`"):
        build_probe("privacy.image_replication", {"threshold_from_heldout": 0.99})
    with pytest.raises(SpecError, match="quantile in"):
        build_probe("privacy.image_replication", {"heldout": "h", "threshold_from_heldout": 1.0})
    probe = build_probe("privacy.image_replication", {"feature": "pixels"})
    f = tmp_path / "one.png"
    f.write_bytes(b"x")
    ctx = ProbeContext(device="cpu", data={"train": f}, probe_id="privacy.image_replication")
    with pytest.raises(InputError, match="must be a folder"):
        probe.run(subject, ctx)
    with pytest.raises(InputError, match="needs the data input 'train'"):
        probe.run(subject, ProbeContext(device="cpu", probe_id="privacy.image_replication"))
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "a.png").write_bytes(b"junk")
    (only_broken / "b.png").write_bytes(b"junk")
    with pytest.raises(InputError, match="0 readable training image"):
        probe.run(subject, ProbeContext(device="cpu", data={"train": only_broken}, probe_id="privacy.image_replication"))


def test_similarity_quantiles():
    q = similarity_quantiles(np.array([0.0, 0.5, 1.0]))
    assert q["q0"] == 0.0 and q["q50"] == 0.5 and q["q100"] == 1.0
    assert math.isclose(q["q25"], 0.25)


def replication_contract_inputs(tmp_path):
    """FAKES entry for the contract test."""
    subject, *_ = _setup(tmp_path)
    return subject, {"train": tmp_path / "train"}, {"feature": "pixels", "threshold": 0.9}
