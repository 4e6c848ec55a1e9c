"""Run an audit: load the subject, run each probe in isolation, gate, write, store.

A probe that raises is recorded as failed (with its error and traceback) while the others
finish. Each finished probe is saved under ``OUT/.partial/`` at once, so ``resume=True``
reuses the finished probes of an interrupted run (same spec fingerprint) and runs the rest.
The final reports are written atomically; ``.partial/`` is removed once they are.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) every rank runs every probe
on its shard (:mod:`audit.distributed`); rank 0 alone writes ``.partial/``, the reports and
the store. After each probe the ranks exchange their status through the rendezvous store:
a failure on every rank is recorded as usual, while a failure on some ranks only ends the
job (exit 3, the failing rank's error on stderr) since the others may wait inside the
probe's collectives; ``--resume`` then reuses the probes finished before it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from audit.distributed import DEFAULT_FAIL_GRACE_S, DEFAULT_TIMEOUT_S, Distributed, RankFailed, host_name
from audit.errors import AuditError, InputError
from audit.findings import (
    AuditReport,
    Finding,
    ProbeStatus,
    SubjectIdentity,
    atomic_write_text,
    jsonable,
)
from audit.gates import evaluate_gates
from audit.probe import ProbeContext
from audit.spec import AuditSpec
from audit.subjects import missing_capabilities

__all__ = ["RunResult", "default_cache_dir", "environment_info", "run_audit"]

log = logging.getLogger("genai_audit")
_FINDINGS = TypeAdapter(list[Finding])
_STATUS = TypeAdapter(ProbeStatus)
_IDENTITY = TypeAdapter(SubjectIdentity)


@dataclasses.dataclass(frozen=True)
class RunResult:
    report: AuditReport
    out_dir: Path
    files: dict[str, Path]
    store_error: str | None = None
    stored_in: str | None = None


def default_cache_dir() -> Path:
    """``GENAI_AUDIT_CACHE``, else ``~/.cache/genai-audit``: converted models, demo models."""
    return Path(os.environ.get("GENAI_AUDIT_CACHE", Path.home() / ".cache" / "genai-audit"))


def _package_versions(names: Sequence[str]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def environment_info(device: Any = None) -> dict[str, Any]:
    """Package versions, git commit, CPU/GPU and driver: what a rerun needs to compare."""
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": _package_versions(
            ["genai-audit", "torch", "transformers", "numpy", "scipy", "gguf", "safetensors", "tokenizers"]
        ),
        "git_commit": _git_commit(),
        "device": str(device) if device is not None else None,
    }
    try:
        import torch

        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["cuda_version"] = torch.version.cuda
    except ImportError:  # pragma: no cover
        pass
    try:
        from audit.energy import hardware_info

        env["hardware"] = hardware_info()
    except Exception as exc:  # hardware details are nice to have, never fatal
        env["hardware"] = {"error": str(exc)}
    return env


def _params_hash(probe: Any) -> str:
    params = jsonable(dataclasses.asdict(probe))
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


class _Partial:
    """The ``.partial`` folder of an unfinished run: one file per finished probe."""

    def __init__(self, out_dir: Path):
        self.root = out_dir / ".partial"

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def load_run(self) -> dict[str, Any] | None:
        p = self.root / "run.json"
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def save_run(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.root / "run.json", json.dumps(jsonable(data), indent=1))

    def _probe_path(self, probe_id: str) -> Path:
        return self.root / "probes" / f"{probe_id}.json"

    def load_probe(self, probe_id: str, params_hash: str) -> tuple[ProbeStatus, list[Finding]] | None:
        try:
            data = json.loads(self._probe_path(probe_id).read_text(encoding="utf-8"))
            if data.get("params_hash") != params_hash:
                return None
            return _STATUS.validate_python(data["status"]), _FINDINGS.validate_python(data["findings"])
        except (OSError, ValueError, KeyError):
            return None

    def save_probe(self, probe_id: str, params_hash: str, status: ProbeStatus, findings: list[Finding]) -> None:
        data = {
            "params_hash": params_hash,
            "status": dataclasses.asdict(status),
            "findings": [dataclasses.asdict(f) for f in findings],
        }
        atomic_write_text(self._probe_path(probe_id), json.dumps(jsonable(data)))


def _inputs_digest(spec: AuditSpec) -> dict[str, str]:
    """sha256 of each data input (a folder: of its files' names and contents), so that a
    resumed run can refuse inputs that changed since it was interrupted."""
    from audit.subjects.loading import sha256_file

    out: dict[str, str] = {}
    for name, path in sorted(spec.data_paths().items()):
        if path.is_dir():
            h = hashlib.sha256()
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
            out[name] = h.hexdigest()
        elif path.is_file():
            out[name] = sha256_file(path)
    return out


def _check_inputs(spec: AuditSpec) -> None:
    """Fail before the (slow) model load when a named data input does not exist."""
    for name, path in spec.data_paths().items():
        if not path.exists():
            raise InputError(f"data input '{name}' not found: {path} (from the spec's `data.{name}`)")


def run_probe_checks(spec: AuditSpec, probes: Sequence[Any], data: dict[str, Path]) -> None:
    """Let probes check their inputs (``check_inputs(ctx)``, optional) before the model loads,
    so an empty or undecodable corpus is reported in a second, not after a long load."""
    for pspec, probe in zip(spec.probes, probes):
        check = getattr(probe, "check_inputs", None)
        if check is not None:
            check(ProbeContext(data=data, probe_id=pspec.id, seed=spec.settings.seed))


def _audit_energy(statuses: dict[str, ProbeStatus], emissions: Any = None) -> dict[str, Any]:
    """The audit's energy: the sum of what was measured, labelled for what was not.

    Estimates (codecarbon's offline TDP model) are totalled apart in ``estimate_joules``, never
    added to ``joules``. With ``emissions`` (an :class:`audit.energy.emissions.EmissionsFactor`), the
    record also carries ``emissions``: gCO2e of the measured joules (``g_co2e``) and, labelled
    apart, of the estimated ones (``estimate_g_co2e``), with the intensity's source and the PUE.
    """
    ran = {pid: st for pid, st in statuses.items() if st.status != "skipped" and st.energy}
    measured = {pid: st.energy["joules"] for pid, st in ran.items()
                if st.energy.get("joules") is not None}
    estimated = [st.energy["estimate_joules"] for st in ran.values()
                 if st.energy.get("estimate_joules") is not None]
    estimate_joules = float(math.fsum(estimated)) if estimated else None
    unmeasured = sorted(pid for pid, st in ran.items() if st.energy.get("kind") != "measured")
    if not measured:
        out = {"joules": None, "kind": "unavailable", "unmeasured": unmeasured,
               "note": "no probe's energy could be measured on this machine"}
    else:
        kind = "partial" if unmeasured else "measured"
        note = "sum of the probes' measured energy"
        if unmeasured:
            note += f"; not measured (or only in part) for: {', '.join(unmeasured)}"
        out = {"joules": float(math.fsum(measured.values())), "kind": kind, "unmeasured": unmeasured, "note": note}
    out["estimate_joules"] = estimate_joules
    if emissions is not None:
        out["emissions"] = {
            **emissions.to_dict(),
            "describe": emissions.describe(),
            "g_co2e": None if out["joules"] is None else emissions.grams(out["joules"]),
            "estimate_g_co2e": None if estimate_joules is None else emissions.grams(estimate_joules),
            "note": ("g_co2e covers the measured joules only"
                     + ("; estimate_g_co2e is from estimated energy, labelled apart" if estimate_joules else "")),
        }
    return out


def _validate_findings(probe_id: str, result: Any) -> list[Finding]:
    if not isinstance(result, (list, tuple)) or not all(isinstance(f, Finding) for f in result):
        raise TypeError(f"probe {probe_id} must return a list of Finding, got {type(result).__name__}")
    return list(result)


def run_audit(
    spec: AuditSpec,
    *,
    out_dir: str | Path,
    baseline: AuditReport | None = None,
    resume: bool = False,
    store_url: str | None = None,
    use_store: bool = True,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    show_progress: bool | None = None,
    on_event: Callable[[str], None] | None = None,
    subject_loader: Callable[..., Any] | None = None,
    dist: Distributed | None = None,
) -> RunResult:
    """Run ``spec`` and write ``report.json``, ``report.html``, ``report.md``, ``junit.xml``.

    Args:
        spec: a validated spec (:func:`audit.spec.load_spec`).
        out_dir: where the reports go (created).
        baseline: a previous report for the regression gates.
        resume: reuse the probes an interrupted run into the same ``out_dir`` finished.
        store_url: SQLAlchemy URL of the store (default: ``GENAI_AUDIT_STORE`` or the
            user's data folder); ``use_store=False`` skips ingestion.
        cache_dir: folder for converted models and other reusable work.
        device: overrides the spec's ``settings.device``.
        on_event: called with one-line progress messages (the CLI prints them).
        subject_loader: replaces :func:`audit.subjects.loading.load_subject` (tests, embedding apps).
        dist: the ranks to run over; by default torchrun's (``RANK``/``WORLD_SIZE`` in the
            environment, timeouts from ``GENAI_AUDIT_DIST_TIMEOUT`` / ``_FAIL_GRACE``, in
            seconds), else this process alone. Only rank 0 writes files and the store.

    Returns:
        A :class:`RunResult`; ``result.report.exit_code`` is the CLI's exit code.

    Raises:
        InputError / SpecError: before any probe ran (exit code 2).
    """
    say = on_event or (lambda msg: log.info(msg))
    t_start = time.perf_counter()
    out = Path(out_dir)
    from audit.subjects.loading import resolve_device

    dev = resolve_device(device or spec.subject.device or spec.settings.device)
    own_group = False
    if dist is None:
        dist, own_group = _join_distributed(dev)
    if dist.active and dev.type == "cuda" and dev.index is None:
        import torch

        dev = torch.device("cuda", dist.local_rank)  # one GPU per process
    main = dist.is_main
    if dist.active and not main:
        say = lambda msg: log.debug(msg)  # noqa: E731 - rank 0 speaks for the job
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    _check_inputs(spec)
    probes = spec.build_probes()
    partial = _Partial(out)
    # Rank 0 owns the output folder: it decides what a resumed run reuses and tells the others,
    # errors included, so that no rank waits for one that has given up.
    try:
        start = _start_run(spec, probes, out, partial, resume) if main else None
    except AuditError as exc:
        start = exc
    start = dist.broadcast_object(start)
    if isinstance(start, AuditError):
        raise start
    run_info, done_probes = start
    run_probe_checks(spec, probes, spec.data_paths())

    progress = spec.settings.progress and sys.stderr.isatty() if show_progress is None else show_progress
    if dist.active and not main:
        progress = False
    subject = None
    identity = _IDENTITY.validate_python(run_info["subject"]) if "subject" in run_info else None
    timings: dict[str, float] = {}
    statuses: dict[str, ProbeStatus] = {}
    findings: list[Finding] = []
    from audit import samples as sample_records

    sample_buffers: list[Any] = []  # per-sample rows of the probes that recorded any (samples.parquet)

    def get_subject() -> Any:
        nonlocal subject, identity
        if subject is None:
            t0 = time.perf_counter()
            say(f"loading {spec.subject.kind} from {spec.subject.source}: {spec.subject.path}")
            loader = subject_loader
            if loader is None:
                from audit.subjects.loading import load_subject as loader
            subject = loader(spec.subject, base_dir=Path(spec.base_dir), device=str(dev), cache_dir=cache)
            timings["load_subject_s"] = time.perf_counter() - t0
            if identity is not None and identity.files != subject.identity.files:
                # Resumed findings were measured on other weights: mixing them would misreport.
                raise InputError(
                    f"{out}: the model's weight files changed since the unfinished run "
                    f"(sha256 differs); run without --resume"
                )
            identity = subject.identity
            if main:
                partial.save_run({**run_info, "subject": dataclasses.asdict(identity)})
        return subject

    from audit.energy import default_meter, summarize

    try:
        for i, (pspec, probe) in enumerate(zip(spec.probes, probes)):
            pid = pspec.id
            phash = _params_hash(probe)
            done = done_probes.get(pid)
            if done is not None and done[0].status != "failed":
                statuses[pid], got = done
                findings.extend(got)
                kept = sample_records.load_partial(out, pid) if main else None
                if kept is not None:
                    sample_buffers.append(kept)
                say(f"[{i + 1}/{len(probes)}] {pid}: reused from the unfinished run ({done[0].status})")
                continue
            params = jsonable(dataclasses.asdict(probe))
            try:
                subj = get_subject()
            except AuditError:
                raise  # the model cannot be loaded: invalid input, nothing can run (exit 2)
            reason = missing_capabilities(subj, probe)
            if reason is not None:
                statuses[pid] = ProbeStatus(status="skipped", reason=reason, params=params)
                if main:
                    partial.save_probe(pid, phash, statuses[pid], [])
                say(f"[{i + 1}/{len(probes)}] {pid}: skipped: {reason}")
                continue
            ctx = ProbeContext(
                device=dev, seed=spec.settings.seed, data=spec.data_paths(), cache_dir=cache,
                artefact_dir=(out if main else _rank_scratch(out, dist.rank)) / "artefacts" / pid,
                batch_size=spec.settings.batch_size, show_progress=progress, logger=log, probe_id=pid,
                dist=dist,
            )
            ctx.seed_everything()
            meter = default_meter(str(dev))
            say(f"[{i + 1}/{len(probes)}] {pid}: running")
            t0 = time.perf_counter()
            meter.start()
            try:
                got = _validate_findings(pid, probe.run(subj, ctx))
                error = None
            except Exception as exc:  # isolate: one probe's failure never stops the others
                got = []
                error = exc
            readings = meter.stop()
            wall = time.perf_counter() - t0
            if dist.active:
                error, wall, energy = _settle_across_ranks(dist, pid, error, wall, readings)
            else:
                energy = summarize(readings)
            if error is None:
                statuses[pid] = ProbeStatus(status="ok", wall_s=wall, energy=energy,
                                            n_findings=len(got), params=params)
                say(f"[{i + 1}/{len(probes)}] {pid}: ok, {len(got)} findings in {wall:.1f} s")
            else:
                kind = "input" if isinstance(error, AuditError) else "crash"
                msg = (str(error) if kind == "input" or isinstance(error, _RanksFailed)
                       else f"{type(error).__name__}: {error}")
                statuses[pid] = ProbeStatus(
                    status="failed", error=msg, error_kind=kind,
                    traceback="".join(traceback.format_exception(error))[-8000:],
                    wall_s=wall, energy=energy, params=params,
                )
                say(f"[{i + 1}/{len(probes)}] {pid}: FAILED: {msg}")
            findings.extend(got)
            rows = ctx.samples if error is None else None  # a crashed probe's rows describe nothing
            if rows is not None and main:
                sample_buffers.append(rows)
            if main:
                sample_records.save_partial(out, pid, rows)
                partial.save_probe(pid, phash, statuses[pid], got)
    finally:
        if subject is not None:
            subject.close()

    energy = _audit_energy(statuses, spec.settings.emissions.factor() if spec.settings.emissions else None)
    timings["total_s"] = time.perf_counter() - t_start
    environment = environment_info(dev)
    if dist.active:
        environment["distributed"] = {"world_size": dist.world_size, "backend": _backend()}
    report = AuditReport(
        name=spec.name,
        subject=identity or SubjectIdentity(name=spec.subject.name or spec.subject.path,
                                            kind=spec.subject.kind, source=spec.subject.source,
                                            path=spec.subject.path),
        findings=tuple(findings),
        probes=statuses,
        spec=spec.as_dict(),
        environment=environment,
        timings=timings,
        energy=energy,
        run_id=run_info["run_id"],
        created_at=run_info["created_at"],
    )
    report = report.with_gates(evaluate_gates(spec.gates, report.findings,
                                              baseline.findings if baseline else None,
                                              probes=report.probes))
    if not main:
        # Rank 0 writes and stores the report; the others wait so the job ends together.
        dist.barrier()
        _leave_distributed(own_group)
        return RunResult(report=report, out_dir=out, files={})
    from audit.render import write_reports

    try:
        files = write_reports(report, out)
    except OSError as exc:
        raise InputError(f"cannot write the reports into {out}: {exc.strerror or exc}") from None
    try:
        samples_path = sample_records.write_samples(sample_buffers, out / sample_records.SAMPLES_FILE)
        if samples_path is not None:
            files["samples"] = samples_path
    except (OSError, ImportError) as exc:  # the reports are written; per-sample rows are extra
        say(f"warning: {sample_records.SAMPLES_FILE} was not written: {exc}")
    partial.clear()
    store_error = stored_in = None
    if use_store:
        try:
            from audit.store import ReportStore, default_store_url

            url = store_url or default_store_url()
            with ReportStore(url) as store:
                store.ingest(report, report_dir=out)
            stored_in = url
        except Exception as exc:  # the reports are written; a store problem must not lose them
            store_error = f"{type(exc).__name__}: {exc}"
            say(f"warning: the report was written but not stored: {store_error}")
    if dist.active:
        dist.barrier()
        _leave_distributed(own_group)
    return RunResult(report=report, out_dir=out, files=files, store_error=store_error, stored_in=stored_in)


def _start_run(spec: AuditSpec, probes: Sequence[Any], out: Path, partial: _Partial,
               resume: bool) -> tuple[dict[str, Any], dict[str, tuple[ProbeStatus, list[Finding]]]]:
    """Create the output folder and the run record (or check the one being resumed); return it
    and the probes an interrupted run finished."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    fingerprint = spec.fingerprint()
    inputs = _inputs_digest(spec)
    run_info = partial.load_run() if resume else None
    if run_info is not None and run_info.get("fingerprint") != fingerprint:
        raise InputError(
            f"{out}: the unfinished run there was made from a different spec (fingerprint "
            f"{run_info.get('fingerprint')} != {fingerprint}); run without --resume, or use another --out"
        )
    if run_info is not None and run_info.get("inputs") != inputs:
        changed = sorted(k for k in set(inputs) | set(run_info.get("inputs", {}))
                         if inputs.get(k) != run_info.get("inputs", {}).get(k))
        raise InputError(
            f"{out}: the data input(s) {', '.join(changed)} changed since the unfinished run; "
            f"its findings would not describe them. Run without --resume."
        )
    if run_info is None:
        partial.clear()
        import uuid

        run_info = {"run_id": uuid.uuid4().hex, "fingerprint": fingerprint, "inputs": inputs,
                    "created_at": AuditReport.__dataclass_fields__["created_at"].default_factory()}
        partial.save_run(run_info)
    done: dict[str, tuple[ProbeStatus, list[Finding]]] = {}
    if resume:
        for pspec, probe in zip(spec.probes, probes):
            got = partial.load_probe(pspec.id, _params_hash(probe))
            if got is not None:
                done[pspec.id] = got
    return run_info, done


def _join_distributed(dev: Any) -> tuple[Distributed, bool]:
    """Join torchrun's process group when the environment names one; True when this call
    created the group (and so destroys it at the end)."""
    from audit.distributed import from_env, torchrun_env

    if torchrun_env() is None:
        return Distributed(), False
    import torch.distributed as tdist

    created = not tdist.is_initialized()
    d = from_env(device=str(dev), timeout_s=_env_seconds("GENAI_AUDIT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S),
                 fail_grace_s=_env_seconds("GENAI_AUDIT_DIST_FAIL_GRACE", DEFAULT_FAIL_GRACE_S))
    return d, created


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{name}={text!r}: expected a number of seconds") from None
    if not value > 0:
        raise InputError(f"{name}={text!r}: expected a positive number of seconds")
    return value


def _leave_distributed(own_group: bool) -> None:
    if own_group:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()


def _backend() -> str | None:
    import torch.distributed as tdist

    return str(tdist.get_backend()) if tdist.is_initialized() else None


def _rank_scratch(out: Path, rank: int) -> Path:
    """Artefacts of ranks other than 0 go to a scratch folder (rank 0's are the report's)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "genai-audit" / f"{out.resolve().name}-rank{rank}"


def _settle_across_ranks(dist: Distributed, pid: str, error: BaseException | None, wall: float,
                         readings: Sequence[Any]) -> tuple[BaseException | None, float, dict[str, Any]]:
    """Exchange every rank's outcome of probe ``pid``; return the job's error (None if every
    rank succeeded), the wall time (the slowest rank) and the energy (summed over ranks).

    A rank whose probe failed waits only ``fail_grace_s`` for the others: if they too failed
    (bad input fails everywhere, before any collective), the probe is recorded as failed and
    the audit goes on; if they did not report, they are stuck in the probe's collectives
    waiting for this rank, so it ends the job with its error (torchrun stops the others).
    """
    from audit.energy import summarize

    mine = {
        "ok": error is None,
        "error": None if error is None else (str(error) if isinstance(error, AuditError)
                                             else f"{type(error).__name__}: {error}"),
        "input_error": isinstance(error, AuditError),
        "wall_s": wall,
        "host": host_name(),
        "local_rank": dist.local_rank,
        "readings": [r.to_dict() for r in readings],
    }
    try:
        every = dist.exchange(mine, timeout_s=dist.fail_grace_s if error is not None else None)
    except RankFailed as exc:
        if error is not None:
            tb = "".join(traceback.format_exception(error))
            print(f"rank {dist.rank}: probe {pid} failed:\n{tb}", file=sys.stderr, flush=True)
            raise RankFailed(f"rank {dist.rank}: probe {pid} failed: {mine['error']} (the other ranks did not "
                             f"finish it: the job stops; rerun with --resume to reuse the finished probes)") from error
        raise RankFailed(f"probe {pid}: {exc}; the job stops (rerun with --resume)") from None
    failed = [(r, st) for r, st in enumerate(every) if not st["ok"]]
    wall = max(st["wall_s"] for st in every)
    energy = summarize(_merge_readings(every))
    if not failed:
        return None, wall, energy
    if error is not None and len(failed) == dist.world_size and len({st["error"] for _, st in failed}) == 1:
        return error, wall, energy  # the same error everywhere: report it as a single process would
    msg = "; ".join(f"rank {r}: {st['error']}" for r, st in failed)
    cls = _RanksInputError if all(st["input_error"] for _, st in failed) else _RanksFailed
    merged = cls(msg)
    if error is not None:
        merged.__cause__ = error
    return merged, wall, energy


class _RanksFailed(RuntimeError):
    """A probe failed on some ranks; the message names each rank and its error."""


class _RanksInputError(InputError):
    """A probe's input was invalid on some ranks; the message names each rank and its error."""


def _merge_readings(statuses: Sequence[dict[str, Any]]) -> list[Any]:
    """Every rank's energy readings, labelled by rank, each physical counter once: readings of
    the same device on the same host (a machine's CPU package counter, read by all its ranks,
    or one GPU shared by several ranks) are kept from the first rank that read it."""
    from audit.energy import EnergyReading

    fields = {f.name for f in dataclasses.fields(EnergyReading)}
    out = []
    seen: set[tuple[str, str]] = set()
    for rank, st in enumerate(statuses):
        for d in st["readings"]:
            counter = (st["host"], str(d.get("device", "")))
            if counter in seen:
                continue
            seen.add(counter)
            kw = {k: v for k, v in d.items() if k in fields}
            kw["warnings"] = tuple(kw.get("warnings") or ())
            kw["device"] = f"rank {rank} ({st['host']}): {kw.get('device', '')}"
            out.append(EnergyReading(**kw))
    return out
