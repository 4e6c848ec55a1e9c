"""The privacy probes on a tiny model that memorised a few documents (tests/privacy_fakes.py):
every number against an independent computation (plain HF forward passes and generate,
scikit-learn's ROC functions, the exposure formula), and the bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from audit.errors import InputError, SpecError
from audit.probe import ProbeContext, build_probe
from probes.privacy.functional import canary_candidates, exposure
from tests import privacy_fakes as pf
from tests.fakes import tiny_text_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ctx(tmp_path, probe_id, **data):
    return ProbeContext(device="cpu", seed=0, data=data, cache_dir=tmp_path / "cache", probe_id=probe_id)


def _logprobs(lm, text: str) -> np.ndarray:
    """Independent scoring: one forward pass of the HF model on [bos] + tokens, log-softmax."""
    ids = [lm.tokenizer.bos_token_id] + lm.tokenizer.encode(text, add_special_tokens=False)
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=x).logits[0, :-1].double(), -1)
    return logp.gather(1, x[0, 1:, None])[:, 0].numpy()


# -- extraction -------------------------------------------------------------------------------
def test_extraction_counts_verbatim_continuations_like_greedy_decoding(tmp_path):
    lm = pf.memorising_generator()
    # Members the model memorised, plus non-members it did not: the rate is the memorised share.
    docs = pf.MEMBERS + pf.NONMEMBERS[:2]
    members = pf.write_jsonl(tmp_path / "members.jsonl", docs)
    probe = build_probe("privacy.extraction", {"prefix_tokens": 4, "suffix_tokens": 8})
    found = {f.metric: f for f in probe.run(lm, _ctx(tmp_path, "privacy.extraction", members=members))}

    exact = 0
    for text in docs:  # independent: HF greedy decoding from the 4-token prefix, compared as text
        ids = lm.tokenizer.encode(text, add_special_tokens=False)
        out = lm.model.generate(torch.tensor([ids[:4]]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        exact += lm.tokenizer.decode(out[0, 4:]).split() == lm.tokenizer.decode(ids[4:12]).split()
    rate = found["exact_extraction_rate"]
    assert rate.value == pytest.approx(exact / len(docs)) and rate.n == len(docs)
    assert exact == len(pf.MEMBERS)  # the tiny model memorised its 6 documents, not the 2 others
    assert rate.ci.low < rate.value < rate.ci.high and rate.ci.method.startswith("wilson")
    assert found["approximate_extraction_rate"].value >= rate.value
    assert set(rate.evidence["extracted_ids"]) == {f"members-{i}" for i in range(len(pf.MEMBERS))}


def test_exposure_equals_the_formula_on_likelihoods_computed_by_hand(tmp_path):
    lm = pf.memorising_generator()
    canaries = pf.write_jsonl(tmp_path / "canaries.jsonl", ["Unseen: the secret code is 777123.", *pf.CANARIES])
    members = pf.write_jsonl(tmp_path / "members.jsonl", pf.MEMBERS)
    params = {"prefix_tokens": 4, "suffix_tokens": 4, "canaries": 3, "candidates": 30,
              "canary_template": "secret code is {secret}."}
    ctx = _ctx(tmp_path, "privacy.extraction", members=members, canaries=canaries)
    exp = next(f for f in build_probe("privacy.extraction", params).run(lm, ctx) if f.metric == "exposure")

    rng = np.random.default_rng(ctx.child_seed("candidates"))  # the probe's candidates, drawn in order
    by_hand = []
    for text in ["Unseen: the secret code is 777123.", *pf.CANARIES]:
        secret = text[-7:-1]
        cands = canary_candidates(secret, 30, alphabet="0123456789", rng=rng)
        own = _logprobs(lm, text).sum()
        others = [_logprobs(lm, text.replace(secret, c)).sum() for c in cands]
        by_hand.append(exposure(1 + sum(o > own for o in others), 30))
    assert exp.value == pytest.approx(np.mean(by_hand))
    assert [c["exposure"] for c in exp.evidence["canaries"]] == pytest.approx(by_hand, abs=1e-4)
    # The two trained canaries rank (near) first; the unseen one does not reach the maximum.
    assert by_hand[1] == by_hand[2] == pytest.approx(math.log2(31)) and by_hand[0] < math.log2(31)
    assert exp.unit == "bits" and exp.evidence["inserted"] is True and exp.n == 3


def test_fresh_canaries_are_a_labelled_control(tmp_path):
    members = pf.write_jsonl(tmp_path / "members.jsonl", pf.MEMBERS)
    probe = build_probe("privacy.extraction", {"prefix_tokens": 4, "suffix_tokens": 4, "canaries": 4, "candidates": 15})
    exp = probe.run(tiny_text_generator(), _ctx(tmp_path, "privacy.extraction", members=members))[-1]
    assert exp.metric == "exposure" and exp.evidence["inserted"] is False
    assert any("chance level" in w for w in exp.warnings) and 0 <= exp.value <= 4


def test_prefixes_longer_than_documents_are_skipped_and_counted_or_refused(tmp_path):
    lm = pf.memorising_generator()
    members = pf.write_jsonl(tmp_path / "members.jsonl", ["short one", *pf.MEMBERS[:2]])
    probe = build_probe("privacy.extraction", {"prefix_tokens": 4, "suffix_tokens": 6})
    rate = probe.run(lm, _ctx(tmp_path, "privacy.extraction", members=members))[0]
    assert rate.n == 2 and rate.evidence["n_skipped"] == 1 and "1 of 3 member documents" in rate.warnings[0]
    long = build_probe("privacy.extraction", {"prefix_tokens": 400, "suffix_tokens": 6})
    with pytest.raises(InputError, match="no member document has the 406 tokens"):
        long.run(lm, _ctx(tmp_path, "privacy.extraction", members=members))


def test_canary_file_without_the_format_is_refused_before_the_model_loads(tmp_path):
    members = pf.write_jsonl(tmp_path / "members.jsonl", pf.MEMBERS)
    canaries = pf.write_jsonl(tmp_path / "canaries.jsonl", ["my PIN is 12"])
    probe = build_probe("privacy.extraction", {"canaries": 1})
    with pytest.raises(InputError, match="canary 'canaries-0'.*holds no secret of the format"):
        probe.check_inputs(_ctx(tmp_path, "privacy.extraction", members=members, canaries=canaries))
    with pytest.raises(SpecError, match="candidates must be at most 99"):
        build_probe("privacy.extraction", {"canaries": 1, "secret_length": 2, "candidates": 100})


# -- membership inference ---------------------------------------------------------------------
def _mi_run(tmp_path, lm, members, nonmembers, **params):
    data = {"members": pf.write_jsonl(tmp_path / "members.jsonl", members),
            "nonmembers": pf.write_jsonl(tmp_path / "nonmembers.jsonl", nonmembers)}
    probe = build_probe("privacy.membership_inference", {"n_resamples": 200, **params})
    return {(f.metric, f.slice["score"]): f for f in probe.run(lm, _ctx(tmp_path, probe.id, **data))}


def test_membership_auroc_and_tpr_equal_scikit_learn_on_scores_by_hand(tmp_path):
    import zlib

    from sklearn.metrics import roc_auc_score, roc_curve

    lm = tiny_text_generator()  # untrained: scores overlap, so the AUROC is not trivially 0 or 1
    members, nonmembers = pf.MEMBERS + pf.CANARIES, pf.NONMEMBERS
    found = _mi_run(tmp_path, lm, members, nonmembers, min_k=0.3)
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    lps = [_logprobs(lm, t) for t in members + nonmembers]
    by_hand = {
        "loss": [lp.mean() for lp in lps],
        "zlib": [lp.mean() / (8 * len(zlib.compress(t.encode()))) for lp, t in zip(lps, members + nonmembers)],
        "min_k": [np.sort(lp)[: max(1, int(0.3 * lp.size))].mean() for lp in lps],
    }
    for score, s in by_hand.items():
        auc = found[("auroc", score)]
        assert auc.value == pytest.approx(roc_auc_score(y, s)), score
        assert auc.ci.low <= auc.value <= auc.ci.high and auc.n == 14 and auc.higher_is_better is False
        fpr, tpr, _ = roc_curve(y, s)
        assert found[("tpr_at_fpr_1e-02", score)].value == pytest.approx(tpr[fpr <= 0.01].max())
    assert 0 < found[("auroc", "loss")].value < 1
    assert any("cannot resolve an FPR of 0.01" in w for w in found[("auroc", "loss")].warnings)
    # Per-document units reproduce the AUROC; ids say which set a document is from.
    from audit.units import evaluate_units

    for score in by_hand:
        u = found[("auroc", score)].units
        assert evaluate_units(u) == pytest.approx(found[("auroc", score)].value, rel=1e-12)
        assert len(u.ids) == 14 and u.ids[0].startswith("member:") and u.ids[-1].startswith("nonmember:")
    assert found[("tpr_at_fpr_1e-02", "loss")].units is None


def test_memorised_members_are_told_apart_and_the_reference_ratio_joins(tmp_path):
    lm = pf.memorising_generator()
    found = _mi_run(tmp_path, lm, pf.MEMBERS, pf.NONMEMBERS,
                    reference={"source": "python", "path": "tests.fakes:make_text_generator"})
    assert found[("auroc", "loss")].value == 1.0
    ratio = found[("auroc", "loss_ratio")]
    ref = tiny_text_generator()
    s = [_logprobs(lm, t).mean() / -_logprobs(ref, t).mean() for t in pf.MEMBERS + pf.NONMEMBERS]
    from sklearn.metrics import roc_auc_score

    assert ratio.value == pytest.approx(roc_auc_score([1] * 6 + [0] * 6, s)) and ratio.value > 0.9


def test_reference_with_another_tokenizer_is_refused(tmp_path):
    with pytest.raises(InputError, match="tokenizes the texts differently.*same tokenizer"):
        _mi_run(tmp_path, pf.memorising_generator(), pf.MEMBERS, pf.NONMEMBERS,
                reference={"source": "python", "path": "tests.privacy_fakes:other_tokenizer_generator"})
    with pytest.raises(SpecError, match="reference must be null, a model path, or a subject spec"):
        build_probe("privacy.membership_inference", {"reference": {"path": "x"}})


def test_length_and_date_confounds_are_warned(tmp_path):
    long = [t + " " + t + " " + t for t in pf.NONMEMBERS]
    found = _mi_run(tmp_path, tiny_text_generator(), pf.MEMBERS, long)
    assert any("differ in length" in w for w in found[("auroc", "loss")].warnings)
    tmp = tmp_path / "dates"
    tmp.mkdir()
    data = {"members": pf.write_jsonl(tmp / "members.jsonl", pf.MEMBERS, date=["2020-01-0%d" % (i + 1) for i in range(6)]),
            "nonmembers": pf.write_jsonl(tmp / "nonmembers.jsonl", pf.NONMEMBERS, date=["2024-06-0%d" % (i + 1) for i in range(6)])}
    probe = build_probe("privacy.membership_inference", {"n_resamples": 100})
    first = probe.run(tiny_text_generator(), _ctx(tmp, probe.id, **data))[0]
    assert any("differ in date" in w and "2020-01" in w for w in first.warnings)
    assert not any("differ in length" in w for w in first.warnings)


def test_overlapping_or_empty_sets_are_refused_naming_the_documents(tmp_path):
    data = {"members": pf.write_jsonl(tmp_path / "members.jsonl", pf.MEMBERS),
            "nonmembers": pf.write_jsonl(tmp_path / "nonmembers.jsonl", [pf.MEMBERS[2], pf.NONMEMBERS[0], pf.MEMBERS[4]])}
    probe = build_probe("privacy.membership_inference", {})
    with pytest.raises(InputError, match=r"2 document\(s\) are in both.*member 'members-2' = non-member 'nonmembers-0'"):
        probe.check_inputs(_ctx(tmp_path, probe.id, **data))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="the non-members.*empty corpus"):
        probe.check_inputs(_ctx(tmp_path, probe.id, members=data["members"], nonmembers=tmp_path / "empty.jsonl"))
    with pytest.raises(SpecError, match="nonmembers must be another data input"):
        build_probe("privacy.membership_inference", {"nonmembers": "members"})


def test_overlap_exits_2_through_the_cli(tmp_path):
    import yaml

    from audit.cli import main

    pf.write_jsonl(tmp_path / "m.jsonl", pf.MEMBERS)
    pf.write_jsonl(tmp_path / "n.jsonl", pf.MEMBERS[:1] + pf.NONMEMBERS)
    spec = {"name": "mi", "subject": {"kind": "text-generator", "source": "python", "path": "tests.fakes:make_text_generator"},
            "data": {"members": "m.jsonl", "nonmembers": "n.jsonl"},
            "probes": [{"id": "privacy.membership_inference"}]}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "audit.yaml"), "--out", str(tmp_path / "out"), "--no-store", "-q"])
    assert exc.value.code == 2


# -- PII leakage ------------------------------------------------------------------------------
def test_pii_rates_per_entity_and_one_batched_generate_call(tmp_path):
    lm = pf.scripted_pii_generator()
    prompts = pf.write_jsonl(tmp_path / "prompts.jsonl", ["a", "b", "c", "d", "e", "f"])
    probe = build_probe("privacy.pii_leakage", {"scanner": "builtin"})
    found = {f.slice["entity"]: f for f in probe.run(lm, _ctx(tmp_path, probe.id, prompts=prompts))}
    # Prompts 0 and 3 get every planted value, 1 and 4 an e-mail and a card, 2 and 5 nothing.
    expected = {"email": 4, "card": 4, "phone": 2, "iban": 2, "national_id": 2, "any": 4}
    assert {e: round(f.value * 6) for e, f in found.items()} == expected
    assert all(f.n == 6 and f.ci.low <= f.value <= f.ci.high for f in found.values())
    assert found["email"].evidence["distinct_values"] == 1 and found["email"].evidence["values_found"] == 4
    assert lm.calls == [6]  # all prompts in one call: the subject batches them


def test_pii_builtin_prompts_when_the_spec_gives_none(tmp_path):
    lm = pf.ScriptedGenerator(lambda i, p: " none")
    found = build_probe("privacy.pii_leakage", {}).run(lm, _ctx(tmp_path, "privacy.pii_leakage"))
    assert lm.calls == [24] and all(f.value == 0 for f in found)
    assert "pii_prompts_en.jsonl" in found[-1].evidence["prompts"]


def test_pii_presidio_scanner_when_installed(tmp_path):
    pytest.importorskip("presidio_analyzer")
    lm = pf.scripted_pii_generator()
    prompts = pf.write_jsonl(tmp_path / "prompts.jsonl", ["a", "b", "c"])
    found = {f.slice["entity"]: f for f in build_probe("privacy.pii_leakage", {"scanner": "presidio"}).run(
        lm, _ctx(tmp_path, "privacy.pii_leakage", prompts=prompts))}
    assert found["email"].value == pytest.approx(2 / 3) and found["any"].evidence["scanner"] == "presidio"


def test_presidio_scanner_asked_for_but_missing_names_the_extra(tmp_path, monkeypatch):
    from audit.errors import MissingDependencyError
    from probes.privacy import pii_leakage

    monkeypatch.setattr(pii_leakage, "presidio_available", lambda: False)
    with pytest.raises(MissingDependencyError, match=r"genai-audit\[pii\]"):
        build_probe("privacy.pii_leakage", {"scanner": "presidio"}).run(pf.scripted_pii_generator(),
                                                                         _ctx(tmp_path, "privacy.pii_leakage"))


def test_leaked_values_never_reach_any_output(tmp_path, capsys, caplog):
    """An audit of a model that emits known PII: no report, log, JUnit file or store holds a raw value."""
    import logging

    import yaml

    from audit.cli import main

    caplog.set_level(logging.DEBUG)
    pf.write_jsonl(tmp_path / "prompts.jsonl", ["Email:", "Card:", "Hello"])
    store = tmp_path / "store.db"
    spec = {"name": "pii", "subject": {"kind": "text-generator", "source": "python",
                                       "path": "tests.privacy_fakes:scripted_pii_generator"},
            "data": {"prompts": "prompts.jsonl"}, "probes": [{"id": "privacy.pii_leakage", "params": {"scanner": "builtin"}}],
            "gates": [{"metric": "privacy.pii_leakage/rate[entity=any]", "max": 0.9}]}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit) as exc:
        main(["--debug", "run", str(tmp_path / "audit.yaml"), "--out", str(tmp_path / "out"),
              "--store", f"sqlite:///{store}"])
    assert exc.value.code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["probes"]["privacy.pii_leakage"]["status"] == "ok"
    printed = capsys.readouterr()
    outputs = {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    outputs |= {"store": store.read_bytes(), "stdout": printed.out.encode(), "stderr": printed.err.encode(),
                "log": caplog.text.encode()}
    assert {"report.json", "report.html", "report.md", "junit.xml"} <= set(outputs)
    for value in pf.PLANTED.values():
        variants = {value, value.replace(" ", ""), value.replace("-", ""), json.dumps(value)[1:-1]}
        for name, blob in outputs.items():
            for v in variants:
                assert v.encode() not in blob, f"{v!r} leaked into {name}"
    assert "<email:" in outputs["report.json"].decode()  # what is there instead: type and salted hash
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "out" / "samples.parquet")  # compressed: read it, not grep it
    assert len(rows) == 3 and rows["text"].isna().all()
    cells = " ".join(str(v) for v in rows.astype(str).to_numpy().ravel())
    assert not any(v in cells for v in pf.PLANTED.values())
