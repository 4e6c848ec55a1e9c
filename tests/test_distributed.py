"""Audits over several processes: sharding helpers, world size 2 == world size 1 per probe,
the crash path (bounded, the failing rank's error shown, resumable) and torchrun end to end.

Two CPU processes with the gloo backend. Process start-up costs seconds on this machine, so
one spawned group runs every probe comparison and then the crash scenario.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from audit.distributed import Distributed
from audit.findings import Finding
from audit.probe import ProbeContext, build_probe, registry

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


# -- helpers without processes -------------------------------------------------------------------


def test_shard_covers_every_index_once_and_cuts_on_whole_blocks():
    for n in (0, 1, 5, 10, 17):
        for world in (1, 2, 3, 4):
            for block in (1, 4):
                parts = [Distributed(r, world).shard(n, block=block) for r in range(world)]
                assert [i for p in parts for i in p] == list(range(n))
                assert all(p.start % block == 0 for p in parts if len(p))
    assert Distributed(1, 2).shard(["a", "b", "c"]) == range(1, 3)
    with pytest.raises(ValueError):
        Distributed().shard(3, block=0)


def test_single_process_helpers_are_no_ops():
    d = Distributed()
    assert not d.active and d.shard(4) == range(4)
    assert d.gather([3, 1], [1, 0]) == [1, 3]  # put in item order
    t = torch.arange(6.0).view(3, 2)
    assert d.gather_tensor(t, [0, 1, 2]) is t
    assert torch.equal(d.gather_tensor(t, [2, 0, 1]), t[[1, 2, 0]])
    s = d.all_reduce_sum(torch.tensor([1.5], dtype=torch.float32))
    assert s.dtype == torch.float64 and s.item() == 1.5
    assert d.all_gather_object({"a": 1}) == [{"a": 1}] and d.broadcast_object(7) == 7
    assert d.exchange({"ok": True}) == [{"ok": True}]
    ctx = ProbeContext()
    assert ctx.dist.world_size == 1 and ctx.rank == 0


# -- probes used by the distributed tests ---------------------------------------------------------


@dataclass(frozen=True)
class CrashOnRank:
    """Raises on one rank while the others wait in a collective (test probe)."""

    applies_to = ("text-generator",)
    rank: int = 1

    def run(self, subject, ctx):
        if ctx.rank == self.rank:
            raise RuntimeError(f"boom on rank {ctx.rank}")
        got = ctx.dist.gather([ctx.rank], [ctx.rank])  # the other ranks wait here for the crashed one
        return [Finding(probe=self.id, metric="ranks", value=float(len(got)), higher_is_better=True)]


@dataclass(frozen=True)
class FailOnRankAlone:
    """Raises on one rank, no collective anywhere: the failure can be recorded (test probe)."""

    applies_to = ("text-generator",)
    rank: int = 1

    def run(self, subject, ctx):
        if ctx.rank == self.rank:
            raise ValueError(f"bad on rank {ctx.rank}")
        return [Finding(probe=self.id, metric="x", value=1.0, higher_is_better=True)]


def _register_test_probes() -> None:
    import tests.probes_for_tests  # noqa: F401  (test.constant, test.crash)

    registry.register("test.crash_on_rank", CrashOnRank, replace=True)
    registry.register("test.fail_on_rank_alone", FailOnRankAlone, replace=True)


_register_test_probes()


# -- inputs: the contract fakes plus generated-image subjects ------------------------------------


def _torch_images(tmp_path):
    from audit.findings import SubjectIdentity
    from audit.subjects.image import TorchImageGenerator
    from tests import image_fakes

    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(8, 3 * 16 * 16), torch.nn.Unflatten(1, (3, 16, 16)),
                              torch.nn.Tanh()).eval()
    subject = TorchImageGenerator(net, SubjectIdentity(name="z2x", kind="image-generator", source="torch"),
                                  latent_shape=(8,))
    ref = image_fakes.write_image_folder(tmp_path / "ref", 20, seed=2)
    return subject, {"reference": ref}, {"feature": "tests.image_fakes:tiny_feature_net", "n_samples": 21,
                                         "batch_size": 4, "kid_subsets": 5, "kid_subset_size": 8,
                                         "is_splits": 2, "n_resamples": 20, "max_features": 15}


def _callable_images(n, seed=0):
    from tests.image_fakes import random_images

    return random_images(n, 16, seed=seed)


def _callable_subject(tmp_path):
    from audit.findings import SubjectIdentity
    from audit.subjects.image import CallableImageGenerator
    from tests import image_fakes

    subject = CallableImageGenerator(_callable_images, SubjectIdentity(name="fn", kind="image-generator",
                                                                       source="python"))
    ref = image_fakes.write_image_folder(tmp_path / "ref", 12, seed=2)
    return subject, {"reference": ref}, {"feature": "tests.image_fakes:tiny_feature_net", "n_samples": 14,
                                         "batch_size": 4, "kid_subsets": 5, "kid_subset_size": 8,
                                         "is_splits": 2, "n_resamples": 20}


def _energy(tmp_path):
    """The contract fake with windows bounded by calls, not time: 4 calls per window, whatever
    the speed, so that calls and units are the same over 1 and 2 processes."""
    from tests.energy_fakes import energy_inference_inputs

    subject, data, params = energy_inference_inputs(tmp_path)
    return subject, data, {**params, "min_window_s": 60.0, "max_calls_per_window": 4}


#: Every builtin probe, on its contract fake (tests/test_contract.py), at world size 2 and 1.
PROBES = (
    "quality.image_fidelity", "quality.perplexity", "quality.clip_score", "quality.text_diversity",
    "robustness.classifier", "robustness.detector_evasion", "robustness.text_embedding",
    "bias.classifier", "bias.stereotype_pairs", "bias.counterfactual_generation", "bias.t2i_representation",
    "bias.embedding_association", "deepfake.text_detectability", "deepfake.image_detectability",
)


#: Probes that do not shard yet: every rank computes the whole result (rank 0 writes it), which must
#: still equal a single process's.
WHOLE_ON_EVERY_RANK = (
    "quality.sliced_wasserstein", "quality.diffusion_likelihood", "quality.visual_inspection",
    "privacy.extraction", "privacy.membership_inference", "privacy.pii_leakage", "privacy.image_replication",
    "human.ratings", "energy.footprint",
)


#: Smaller batches than the fakes' where a rank would otherwise get no whole batch of its own.
SMALL_BATCHES = {"quality.clip_score": 2, "bias.stereotype_pairs": 8, "bias.embedding_association": 8,
                 "deepfake.text_detectability": 4, "deepfake.image_detectability": 8}


def _with_batch(make, size):
    def made(tmp_path):
        subject, data, params = make(tmp_path)
        return subject, data, {**params, "batch_size": size}
    return made


def _with_params(make, **extra):
    def made(tmp_path):
        subject, data, params = make(tmp_path)
        return subject, data, {**params, **extra}
    return made


def _cases():
    from tests.test_contract import FAKES

    return {
        **{pid: (pid, _with_batch(FAKES[pid], SMALL_BATCHES[pid]) if pid in SMALL_BATCHES else FAKES[pid])
           for pid in PROBES},
        **{pid: (pid, FAKES[pid]) for pid in WHOLE_ON_EVERY_RANK},
        "energy.inference": ("energy.inference", _energy),
        "quality.image_fidelity[torch]": ("quality.image_fidelity", _torch_images),
        "quality.image_fidelity[callable]": ("quality.image_fidelity", _callable_subject),
        # One sample: one rank attacks it, the other has an empty shard and must still join the gather.
        "robustness.classifier[one sample]": ("robustness.classifier",
                                              _with_params(FAKES["robustness.classifier"], max_samples=1)),
    }


#: The cases that shard their work (each rank is checked to get a non-empty, adjoining part).
SHARDED = (*PROBES, "quality.image_fidelity[torch]", "quality.image_fidelity[callable]", "energy.inference")
#: Measured, not computed: only the counts (calls, units, windows, n) can equal a single process's.
MEASURED = ("energy.inference", "energy.footprint")


def _make_case(case: str, folder: Path) -> tuple:
    pid, make = _cases()[case]
    folder.mkdir(parents=True, exist_ok=True)
    return make(folder)


def _run_case(case: str, folder: Path, dist: Distributed, made: tuple | None = None) -> list[dict]:
    pid, _ = _cases()[case]
    subject, data, params = made or _make_case(case, folder)
    ctx = ProbeContext(device="cpu", seed=0, data=data, cache_dir=folder / "cache", probe_id=pid, dist=dist)
    ctx.seed_everything()
    findings = build_probe(pid, params).run(subject, ctx)
    return [_counts(f) if case in MEASURED else _comparable(f) for f in findings]


def _counts(f: Finding) -> dict:
    ev = f.evidence
    return {"key": f.key, "n": f.n, "slice": dict(f.slice),
            **{k: ev[k] for k in ("windows", "calls", "units") if k in ev}}


def _comparable(f: Finding) -> dict:
    d = dataclasses.asdict(f)
    return {"key": f.key, "value": d["value"], "ci": d["ci"], "n": d["n"], "slice": d["slice"],
            "warnings": len(d["warnings"]), "evidence": _numbers(d["evidence"])}


def _numbers(obj):
    """The numbers of an evidence record (paths and names differ between the runs' folders)."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if not isinstance(v, str)}
    if isinstance(obj, (list, tuple)):
        return [_numbers(v) for v in obj if not isinstance(v, str)]
    return obj


def _close(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is None and b is None, where
        elif math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), where
        else:
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"  # counts, flags, slices: exactly


# -- the spawned group ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, cases: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1",
                      GENAI_AUDIT_DIST_TIMEOUT="60", GENAI_AUDIT_DIST_FAIL_GRACE="3")
    torch.set_num_threads(1)
    _register_test_probes()
    from audit.distributed import from_env

    out = Path(root)
    # The inputs are made before the group exists: transformers' save_pretrained (the fakes'
    # sentence encoder) writes on rank 0 only inside a process group.
    made = {case: _make_case(case, out / f"rank{rank}" / case) for case in cases}
    d = from_env(device="cpu", timeout_s=60, fail_grace_s=3)
    shard, shards = d.shard, []

    def recording_shard(n, *, block=1):  # what this rank was given, for the test to check
        r = shard(n, block=block)
        shards.append([r.start, r.stop])
        return r

    d.shard = recording_shard
    for case in cases:
        t0 = time.perf_counter()
        shards.clear()
        try:
            got = {"findings": _run_case(case, out / f"rank{rank}" / case, d, made[case]), "shards": list(shards)}
        except Exception:
            import traceback

            got = {"error": traceback.format_exc()}
        (out / f"{case}.rank{rank}.json").write_text(json.dumps({**got, "s": time.perf_counter() - t0}))
    # The crash scenario: an audit whose third probe fails on rank 1 while rank 0 waits in it.
    from audit.runner import run_audit
    from audit.spec import load_spec

    t0 = time.perf_counter()
    try:
        run_audit(load_spec(out / "crash.yaml"), out_dir=out / "crash-out", use_store=False, dist=d)
        outcome = {"error": None}
    except Exception as exc:
        outcome = {"error": f"{type(exc).__name__}: {exc}", "exit_code": getattr(exc, "exit_code", None)}
    outcome["s"] = time.perf_counter() - t0
    (out / f"crash.rank{rank}.json").write_text(json.dumps(outcome))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(outcome.get("exit_code") or (1 if outcome["error"] else 0))


def _crash_spec(folder: Path) -> Path:
    import yaml

    spec = {
        "name": "crash",
        "subject": {"kind": "text-generator", "source": "python", "path": "tests.fakes:make_text_generator"},
        "probes": [{"id": "test.constant"}, {"id": "test.fail_on_rank_alone"}, {"id": "test.crash"},
                   {"id": "test.crash_on_rank"}],
        "settings": {"device": "cpu"},
    }
    p = folder / "crash.yaml"
    p.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """One group of 2 processes: every case, then the crash scenario; what each rank wrote."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("dist")
    _crash_spec(root)
    cases = list(_cases())
    t0 = time.perf_counter()
    procs = mp.spawn(_worker, args=(WORLD, _free_port(), str(root), cases), nprocs=WORLD, join=False)
    error = None
    deadline = time.monotonic() + 300
    try:
        while not procs.join(timeout=5):
            if time.monotonic() > deadline:
                for p in procs.processes:
                    p.kill()
                pytest.fail("the spawned group did not end within 300 s")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        error = str(exc)  # the crash scenario ends the group with exit code 3
    return root, time.perf_counter() - t0, error


def _load(root: Path, name: str) -> dict:
    p = root / name
    assert p.exists(), f"{name} was not written (the rank died before: see the captured stderr)"
    got = json.loads(p.read_text())
    assert "error" not in got or name.startswith("crash"), got["error"]
    return got


@pytest.mark.parametrize("case", sorted(_cases()))
def test_world_size_2_equals_world_size_1(case, spawned, tmp_path):
    root, _, _ = spawned
    r0 = _load(root, f"{case}.rank0.json")["findings"]
    r1 = _load(root, f"{case}.rank1.json")["findings"]
    single = _run_case(case, tmp_path, Distributed())
    assert r0, "the probe gave findings"
    if case in SHARDED:  # each rank had a non-empty part of each sharded set, the parts adjoin
        s0 = _load(root, f"{case}.rank0.json")["shards"]
        s1 = _load(root, f"{case}.rank1.json")["shards"]
        assert s0 and len(s0) == len(s1)
        assert all(a[0] == 0 and a[0] < a[1] == b[0] < b[1] for a, b in zip(s0, s1)), (s0, s1)
    _close(r0, r1, f"{case} rank 0 vs rank 1")
    _close(single, r0, f"{case} world 1 vs world 2")


def test_a_rank_that_crashes_ends_the_job_in_bounded_time_and_the_run_resumes(spawned):
    from audit.runner import run_audit
    from audit.spec import load_spec
    from tests.probes_for_tests import CALLS

    root, _, error = spawned
    assert error is not None and "exit code 3" in error, error
    r1 = _load(root, "crash.rank1.json")
    assert r1["exit_code"] == 3
    assert "RankFailed: rank 1: probe test.crash_on_rank failed: RuntimeError: boom on rank 1" in r1["error"]
    assert r1["s"] < 30, "bounded by the fail grace (3 s), not the 60 s timeout"
    out = root / "crash-out"
    assert not (out / "report.json").exists()
    saved = {p.stem: json.loads(p.read_text())["status"] for p in (out / ".partial" / "probes").glob("*.json")}
    # Failures the ranks could settle are recorded and the audit went on: the same error on every
    # rank as a single process would record it, a failure on rank 1 alone with its rank.
    assert saved["test.constant"]["status"] == "ok"
    assert saved["test.crash"]["error"] == "RuntimeError: boom: the probe fell over"
    assert saved["test.fail_on_rank_alone"]["error"] == "rank 1: ValueError: bad on rank 1"
    assert "test.crash_on_rank" not in saved

    before = CALLS.get("test.constant", 0)
    result = run_audit(load_spec(root / "crash.yaml"), out_dir=out, resume=True, use_store=False)
    st = result.report.probes
    assert CALLS.get("test.constant", 0) == before, "the finished probe was reused, not rerun"
    assert st["test.constant"].status == "ok" and st["test.crash_on_rank"].status == "ok"
    assert st["test.fail_on_rank_alone"].status == "ok" and st["test.crash"].status == "failed"
    assert (out / "report.json").exists() and not (out / ".partial").exists()


@pytest.mark.slow  # three fresh interpreters import torch and transformers: 25-40 s on 2 cores
def test_torchrun_end_to_end_through_the_cli_rank_0_alone_writes_and_stores(tmp_path):
    """``genai-audit run --nproc 2`` relaunches itself as ``torchrun ... -m audit run``."""
    import yaml

    from audit.findings import AuditReport
    from audit.runner import run_audit
    from audit.spec import load_spec
    from audit.store import ReportStore

    docs = [{"id": f"d{i}", "genre": "ab"[i % 2], "text": f"Doc {i}: the quick brown fox {'jumps ' * i}over."}
            for i in range(7)]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    spec = {"name": "e2e", "subject": {"kind": "text-generator", "source": "python",
                                       "path": "tests.fakes:make_text_generator"},
            "data": {"texts": "texts.jsonl"},
            "probes": [{"id": "quality.perplexity", "params": {"max_length": 8, "stride": 4, "n_resamples": 200}}],
            "gates": [{"metric": "quality.perplexity/perplexity", "max": 1.0}],  # fails: exit code 1
            "variants": [{"name": "again", "dtype": "float32"}],  # runs on every rank the same way
            "settings": {"device": "cpu"}}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    store = tmp_path / "store.db"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "GENAI_AUDIT_DIST_TIMEOUT": "60"}
    r = subprocess.run([sys.executable, "-m", "audit", "run", str(tmp_path / "audit.yaml"), "--nproc", "2",
                        "--out", str(tmp_path / "out"), "--store", str(store)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 1, r.stderr[-3000:]  # the gate's verdict comes through torchrun
    report = AuditReport.load(tmp_path / "out" / "report.json")
    assert report.environment["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert r.stdout.count("Reports:") == 1, "rank 0 alone prints the scorecard"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "junit.xml", "report.html", "report.json", "report.md", "samples.parquet"]
    with ReportStore(f"sqlite:///{store}") as st:
        assert len(st.list_audits()) == 1, "rank 0 alone ingests"
    single = run_audit(load_spec(tmp_path / "audit.yaml"), out_dir=tmp_path / "single", use_store=False)
    # (energy.footprint, appended for the variants when installed, measures time: not compared.)
    ppl = [f for f in report.findings if f.probe == "quality.perplexity"]
    by_key = {(f.key, f.variant): f for f in single.report.findings if f.probe == "quality.perplexity"}
    assert len(by_key) == len(ppl) == 2 * 9  # 5 for the corpus, 2 per genre; base and variant
    assert [v.probes["quality.perplexity"].status for v in report.variants] == ["ok"]
    assert all(f.delta.value == 0 for f in ppl if f.variant == "again")  # the same model
    for f in ppl:
        g = by_key[f.key, f.variant]
        assert f.n == g.n and math.isclose(f.value, g.value, rel_tol=1e-6)
        assert math.isclose(f.ci.low, g.ci.low, rel_tol=1e-6) and math.isclose(f.ci.high, g.ci.high, rel_tol=1e-6)
    # Rank 0 writes every document's row once, as a single process does.
    import pandas as pd

    rows, one = pd.read_parquet(tmp_path / "out" / "samples.parquet"), pd.read_parquet(single.files["samples"])
    assert rows["item"].tolist() == one["item"].tolist() == [d["id"] for d in docs]
    assert rows["score"].tolist() == pytest.approx(one["score"].tolist(), rel=1e-6)


def test_run_nproc_must_be_at_least_1(tmp_path, capsys):
    from audit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", str(tmp_path / "audit.yaml"), "--nproc", "0"])
    assert exc.value.code == 2 and "--nproc" in capsys.readouterr().err


def test_every_builtin_probe_is_compared_at_world_size_2():
    from tests.test_contract import BUILTIN

    assert sorted({pid for pid, _ in _cases().values()}) == BUILTIN


def test_pgd_random_starts_do_not_depend_on_batches_or_shards():
    """Per-sample random starts (seed, restart, sample index): a shard attacked alone, in any batch
    size, gets exactly the adversarial examples the whole set gets."""
    from probes.robustness.attacks import per_sample_start, pgd, run_batched

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(10, 12), torch.randint(0, 3, (10,))
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        kw = dict(eps=eps, norm=norm, steps=2, restarts=2, input_range=(0.0, 1.0), seed=7)
        whole = run_batched(pgd, net, x, y, batch_size=10, **kw)
        parts = [run_batched(pgd, net, x[a:b], y[a:b], batch_size=3, sample_ids=torch.arange(a, b), **kw)
                 for a, b in ((0, 4), (4, 10))]
        # The starts are equal bit for bit; the steps up to float rounding (batched L2 norms).
        ids = torch.arange(4, 10)
        assert torch.equal(per_sample_start(x[4:], eps, norm, 7, 1, ids), per_sample_start(x, eps, norm, 7, 1)[4:])
        assert torch.allclose(torch.cat([p.x_adv for p in parts]), whole.x_adv, rtol=0, atol=1e-6)
        other = run_batched(pgd, net, x, y, batch_size=10, **{**kw, "seed": 8})
        assert not torch.equal(other.x_adv, whole.x_adv)
