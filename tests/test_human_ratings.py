"""human.ratings and the rating page: numbers against hand counts and the peer packages, bad input."""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest

from audit.errors import InputError
from audit.probe import ProbeContext, build_probe
from audit.stats import wilson_interval
from tests.human_fakes import human_ratings_inputs, tiny_image_report, write_key, write_ratings


def _run(folder, **params):
    probe = build_probe("human.ratings", {"n_resamples": 50, **params})
    ctx = ProbeContext(device="cpu", seed=0, data={"ratings": folder}, probe_id="human.ratings")
    return {f.key: f for f in probe.run(None, ctx)}


def test_hype_error_rates_by_hand_and_agreement_against_peers(tmp_path):
    kd = pytest.importorskip("krippendorff")
    from sklearn.metrics import cohen_kappa_score

    _, data, _ = human_ratings_inputs(tmp_path)
    out = _run(data["ratings"])
    # ann: wrong on gen-0 (called real), real-0 and real-3 (called generated) -> 3 of 8;
    # bob: wrong on gen-0, gen-1, real-1, real-3 -> 4 of 8.
    err = out["human.ratings/hype_error_rate"]
    assert err.value == pytest.approx(7 / 16) and err.n == 16 and err.ci == wilson_interval(7, 16)
    assert out["human.ratings/fake_error_rate"].value == pytest.approx(3 / 8)  # gen-0 twice, gen-1 once
    assert out["human.ratings/real_error_rate"].value == pytest.approx(4 / 8)
    items = sorted(f"gen-{i}" for i in range(4)) + sorted(f"real-{i}" for i in range(4))
    rows = {r: {x["item_id"]: x["response"] for x in csv.DictReader(open(data["ratings"] / f"ratings-{r}.csv"))}
            for r in ("ann", "bob")}
    table = np.array([[1.0 if rows[r][i] == "real" else 0.0 for i in items] for r in ("ann", "bob")])
    alpha = out["human.ratings/krippendorff_alpha[level=nominal]"]
    assert alpha.value == pytest.approx(kd.alpha(reliability_data=table, level_of_measurement="nominal"))
    kappa = out["human.ratings/cohen_kappa"]
    assert kappa.value == pytest.approx(cohen_kappa_score([rows["ann"][i] for i in items],
                                                          [rows["bob"][i] for i in items]))


def test_likert_mos_and_ordinal_agreement(tmp_path):
    kd = pytest.importorskip("krippendorff")
    folder = tmp_path / "likert"
    truths = {f"gen-{i}": "generated" for i in range(6)} | {"real-0": "real", "real-1": "real"}
    write_key(folder, "likert", truths)
    a = {"gen-0": 1, "gen-1": 2, "gen-2": 3, "gen-3": 4, "gen-4": 5, "gen-5": 3, "real-0": 5, "real-1": 4}
    b = {"gen-0": 2, "gen-1": 2, "gen-2": 3, "gen-3": 5, "gen-4": 4, "real-0": 5, "real-1": 5}
    c = {"gen-0": 1, "gen-2": 4, "gen-3": 4, "gen-5": 2, "real-1": 4}
    for name, ans in (("a", a), ("b", b), ("c", c)):
        write_ratings(folder, name, ans)
    out = _run(folder)
    gen = [v for d in (a, b, c) for k, v in d.items() if k.startswith("gen")]
    mos = out["human.ratings/mos"]
    assert mos.value == pytest.approx(np.mean(gen)) and mos.n == len(gen)
    assert mos.ci.low <= mos.value <= mos.ci.high
    assert out["human.ratings/mos_real"].value == pytest.approx(np.mean([5, 4, 5, 5, 4]))
    items = sorted(truths)
    table = np.array([[d.get(i, np.nan) for i in items] for d in (a, b, c)], dtype=float)
    for level in ("ordinal", "interval"):
        got = out[f"human.ratings/krippendorff_alpha[level={level}]"].value
        assert got == pytest.approx(kd.alpha(reliability_data=table, level_of_measurement=level))
    assert "human.ratings/cohen_kappa" not in out  # three raters


def test_bad_rows_are_named(tmp_path):
    folder = tmp_path / "bad"
    write_key(folder, "likert", {"gen-0": "generated", "gen-1": "generated"})
    write_ratings(folder, "a", {"gen-0": 3, "gen-9": 4, "gen-1": 7})
    with pytest.raises(InputError, match=r"not in the rating key: ratings-a.csv:3 item_id 'gen-9'"):
        _run(folder)
    write_ratings(folder, "a", {"gen-0": 3, "gen-1": 7})
    with pytest.raises(InputError, match=r"out of range for a likert task \(expected an integer 1-5\): "
                                         r"ratings-a.csv:3 response '7'"):
        _run(folder)
    write_ratings(folder, "a", {"gen-0": "great"})
    with pytest.raises(InputError, match="ratings-a.csv:2 response 'great'"):
        _run(folder)
    hype = tmp_path / "hype"
    write_key(hype, "2afc", {"pair-0": "left"})
    write_ratings(hype, "a", {"pair-0": "middle"})
    with pytest.raises(InputError, match="expected left or right"):
        _run(hype)
    (hype / "ratings-a.csv").write_text("who,what\nx,y\n")
    with pytest.raises(InputError, match="expected rater, item_id, response"):
        _run(hype)
    empty = tmp_path / "nokey"
    empty.mkdir()
    write_ratings(empty, "a", {"x": 1})
    with pytest.raises(InputError, match="no rating key"):
        _run(empty)


def test_bad_ratings_exit_2_from_the_cli(tmp_path):
    from audit.cli import main

    folder = tmp_path / "r"
    write_key(folder, "hype", {"gen-0": "generated"})
    write_ratings(folder, "a", {"gen-0": "maybe"})
    gen = tiny_image_report(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: r\nsubject: {{kind: image-generator, source: folder, path: {tmp_path / 'gen'}}}\n"
                    f"data: {{ratings: {folder}}}\nprobes:\n  - id: human.ratings\n")
    with pytest.raises(SystemExit) as exc:
        main(["run", str(spec), "--out", str(tmp_path / "out"), "--no-store", "-q"])
    assert exc.value.code == 2 and gen.is_dir()


# -- the rating page ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["2afc", "hype", "likert"])
def test_rate_writes_a_self_contained_page(tmp_path, kind):
    from audit.cli import main

    report = tiny_image_report(tmp_path, n=4)
    out = tmp_path / f"rating-{kind}"
    with pytest.raises(SystemExit) as exc:
        main(["rate", str(report), "--kind", kind, "--out", str(out), "--n", "4"])
    assert exc.value.code == 0
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page and "src=\"/" not in page
    assert page.count("data:image/png;base64,") == 8 and "default-src 'none'" in page
    key = list(csv.DictReader(open(out / "key.csv")))
    template = list(csv.DictReader(open(out / "template.csv")))
    assert [r["item_id"] for r in template] == [r["item_id"] for r in key]
    assert len(key) == (4 if kind == "2afc" else 8) and {r["task"] for r in key} == {kind}
    if kind == "2afc":
        assert {r["truth"] for r in key} <= {"left", "right"}
        for r in key:  # the real image's side is the one from the reference folder
            real = r["image_a"] if r["truth"] == "left" else r["image_b"]
            assert "/ref/" in real and re.match(r"generated/\d+@seed0", r["image_b" if r["truth"] == "left" else "image_a"])


def test_rate_refuses_what_has_no_images(tmp_path):
    from audit.findings import AuditReport, SubjectIdentity
    from audit.render.rating import build_items, rating_images

    text = tmp_path / "text"
    text.mkdir()
    AuditReport(name="t", subject=SubjectIdentity("t", "text-generator", "python"),
                spec={"name": "t", "subject": {"kind": "text-generator", "source": "python", "path": "m:f"},
                      "probes": [{"id": "quality.perplexity"}]}).save(text / "report.json")
    with pytest.raises(InputError, match="needs an image-generator audit"):
        rating_images(text)
    with pytest.raises(InputError, match="no report.json"):
        rating_images(tmp_path / "nowhere")
    with pytest.raises(InputError, match="needs real images"):
        build_items("2afc", [("g", b"", "")], [])
    with pytest.raises(InputError, match="question: prompt needs a text-to-image"):
        build_items("likert", [("g", b"", "")], [], question="prompt")


def test_hostile_prompt_text_stays_data(tmp_path):
    from audit.render.rating import build_items, write_rating_page

    hostile = "</script><script>alert(1)</script>"
    items = build_items("likert", [("g", b"\x89PNG", hostile)], [], question="prompt")
    page = write_rating_page(items, tmp_path / "r", title="<b>t</b>")["page"].read_text()
    assert "</script><script>alert(1)" not in page and "<b>t</b>" not in page
    assert "<\\/script><script>alert(1)<\\/script>" in page  # inside the JSON config, shown via textContent
