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

With ``spec.variants``, every probe also runs on every variant of the subject, with the same
seeds and data (variant-major: one model in memory at a time; see :mod:`audit.variants_run`),
and the variants' findings get deltas to the subject's (:func:`audit.units.attach_deltas`).

The steps: :func:`_prepare` (device, ranks, output folder, what a resumed run reuses),
:func:`_run_probes` (each probe in isolation, :func:`_run_one`, settled across ranks by
:func:`audit.ranks.settle_across_ranks`), :func:`_assemble_report` and :func:`_gate`, then
:func:`_write` (reports, store). The resume folder lives in :mod:`audit.resume`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from audit.distributed import Distributed
from audit.errors import AuditError, InputError
from audit.findings import AuditReport, Finding, ProbeStatus, SubjectIdentity, VariantRecord, jsonable
from audit.gates import evaluate_gates
from audit.outdir import drop_previous
from audit.probe import ProbeContext
from audit.ranks import (
    RanksFailed,
    backend,
    join_distributed,
    leave_distributed,
    rank_scratch,
    settle_across_ranks,
)
from audit.resume import Done, Partial, check_inputs, params_hash, partial_key, start_run
from audit.spec import AuditSpec
from audit.subjects import missing_capabilities
from audit.variants_run import LazySubject, Target, tag_findings, targets

__all__ = ["RunResult", "default_cache_dir", "environment_info", "run_audit"]

log = logging.getLogger("genai_audit")


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


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every step of one run shares, fixed once :func:`_prepare` has made it."""

    spec: AuditSpec
    out: Path
    device: Any  # torch.device
    cache: Path
    dist: Distributed
    own_group: bool  # this run created the process group (and so destroys it)
    say: Callable[[str], None]
    progress: bool
    partial: Partial
    run_info: dict[str, Any]  # run id, spec fingerprint, inputs digest, creation time
    probes: tuple[Any, ...]
    done: Done  # what an interrupted run finished
    t_start: float
    added_footprint: bool = False  # energy.footprint was appended for the variants
    memo: dict[Any, Any] = dataclasses.field(default_factory=dict)  # ProbeContext.shared, one per audit

    @property
    def main(self) -> bool:
        return self.dist.is_main


@dataclasses.dataclass
class _Outcome:
    """What the probes produced, in spec order."""

    statuses: dict[str, ProbeStatus]
    findings: list[Finding]
    timings: dict[str, float]
    identity: SubjectIdentity | None
    samples: list[Any]  # per-sample rows of the probes that recorded any (samples.parquet), rank 0 only
    threads: dict[str, Any] = dataclasses.field(default_factory=dict)  # settings.threads as in force
    variants: tuple[VariantRecord, ...] = ()


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
    run = _prepare(spec, out_dir=Path(out_dir), resume=resume, cache_dir=cache_dir, device=device,
                   show_progress=show_progress, on_event=on_event, dist=dist)
    outcome = _run_probes(run, subject_loader)
    report = _gate(_assemble_report(run, outcome), spec, baseline)
    return _write(run, report, outcome.samples, store_url=store_url, use_store=use_store)


def _prepare(spec: AuditSpec, *, out_dir: Path, resume: bool, cache_dir: str | Path | None,
             device: str | None, show_progress: bool | None, on_event: Callable[[str], None] | None,
             dist: Distributed | None) -> _Run:
    """Resolve the device, join the ranks, check the inputs, build the probes and start (or
    resume) the run record; fails (exit 2) before the model loads."""
    t_start = time.perf_counter()
    say = on_event or (lambda msg: log.info(msg))
    from audit.subjects.loading import resolve_device

    dev = resolve_device(device or spec.subject.device or spec.settings.device)
    own_group = False
    if dist is None:
        dist, own_group = join_distributed(dev)
    if dist.active and dev.type == "cuda" and dev.index is None:
        import torch

        dev = torch.device("cuda", dist.local_rank)  # one GPU per process
    if dist.active and not dist.is_main:
        say = lambda msg: log.debug(msg)  # noqa: E731 - rank 0 speaks for the job
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    check_inputs(spec)
    from audit.variants_run import check_variants, with_default_footprint

    check_variants(spec, dev)
    spec, added_footprint = with_default_footprint(spec)
    probes = spec.build_probes()
    partial = Partial(out_dir)
    # Rank 0 owns the output folder: it decides what a resumed run reuses and tells the others,
    # errors included, so that no rank waits for one that has given up.
    try:
        start = start_run(spec, probes, out_dir, partial, resume) if dist.is_main else None
    except AuditError as exc:
        start = exc
    start = dist.broadcast_object(start)
    if isinstance(start, AuditError):
        raise start
    run_info, done = start
    run_probe_checks(spec, probes, spec.data_paths())
    progress = spec.settings.progress and sys.stderr.isatty() if show_progress is None else show_progress
    if dist.active and not dist.is_main:
        progress = False
    return _Run(spec=spec, out=out_dir, device=dev, cache=cache, dist=dist, own_group=own_group, say=say,
                progress=progress, partial=partial, run_info=run_info, probes=tuple(probes), done=done,
                t_start=t_start, added_footprint=added_footprint)


def _run_probes(run: _Run, subject_loader: Callable[..., Any] | None) -> _Outcome:
    """Run each probe of the spec in order on the subject, then on each variant (or reuse what an
    unfinished run finished); rank 0 saves each outcome to ``.partial/`` at once. A model that
    cannot load ends the run (exit 2)."""
    from audit.threads import set_intra_op_threads
    from audit.variants_run import variant_records

    timings: dict[str, float] = {}
    statuses: dict[str, dict[str, ProbeStatus]] = {}  # target label -> probe id -> status
    identities: dict[str | None, SubjectIdentity | None] = {}
    findings: list[Finding] = []
    sample_buffers: list[Any] = []
    threads = set_intra_op_threads(run.spec.settings.threads)  # put back in the finally below
    try:
        for target in targets(run.spec):  # variant-major: one model in memory at a time
            subject = LazySubject(run, target, subject_loader, timings)
            mine = statuses.setdefault(target.label, {})
            try:
                for i, (pspec, probe) in enumerate(zip(run.spec.probes, run.probes)):
                    mine[pspec.id] = _probe_on(run, subject, target, i, pspec.id, probe, findings, sample_buffers)
            finally:
                subject.close()
            identities[target.name] = subject.identity
    finally:
        threads.restore()
    base = statuses.pop(targets(run.spec)[0].label)
    return _Outcome(statuses=base, findings=findings, timings=timings, identity=identities[None],
                    samples=sample_buffers, threads=threads.info,
                    variants=variant_records(run.spec, statuses, identities, added_footprint=run.added_footprint))


def _probe_on(run: _Run, subject: LazySubject, target: Target, i: int, pid: str, probe: Any,
              findings: list[Finding], sample_buffers: list[Any]) -> ProbeStatus:
    """One probe on one target (reused from ``.partial`` when an unfinished run finished it);
    its findings (tagged with the variant) go to ``findings``; per-sample rows of the subject only."""
    from audit import samples as sample_records

    key = partial_key(pid, target.name)
    tag = f"[{i + 1}/{len(run.probes)}] {pid}" + (f" [{target.name}]" if target.name else "")
    keep_rows = run.main and target.name is None
    done = run.done.get(key)
    if done is not None and done[0].status != "failed":
        findings.extend(done[1])
        kept = sample_records.load_partial(run.out, pid) if keep_rows else None
        if kept is not None:
            sample_buffers.append(kept)
        run.say(f"{tag}: reused from the unfinished run ({done[0].status})")
        return done[0]
    status, got, rows = _run_one(run, subject, tag, pid, probe, target)
    got = tag_findings(got, target)
    findings.extend(got)
    if keep_rows and rows is not None:
        sample_buffers.append(rows)
    if keep_rows and status.status != "skipped":
        sample_records.save_partial(run.out, pid, rows)
    if run.main:
        run.partial.save_probe(key, params_hash(probe), status, got)
    return status


def _run_one(run: _Run, subject: LazySubject, tag: str, pid: str, probe: Any,
             target: Target) -> tuple[ProbeStatus, list[Finding], Any]:
    """Run one probe in isolation, metered; its error (if any) is recorded, never raised. Returns
    its status, findings and per-sample rows (None when it recorded none, was skipped or failed)."""
    from audit.energy import default_meter, summarize

    params = jsonable(dataclasses.asdict(probe))
    subj = subject.get()  # an AuditError here: the model cannot be loaded, nothing can run (exit 2)
    reason = missing_capabilities(subj, probe)
    if reason is not None:
        run.say(f"{tag}: skipped: {reason}")
        return ProbeStatus(status="skipped", reason=reason, params=params), [], None
    ctx = ProbeContext(
        device=run.device, seed=run.spec.settings.seed, data=run.spec.data_paths(), cache_dir=run.cache,
        artefact_dir=(run.out if run.main else rank_scratch(run.out, run.dist.rank)) / target.artefacts(pid),
        batch_size=run.spec.settings.batch_size, show_progress=run.progress, logger=log, probe_id=pid,
        dist=run.dist, memo=run.memo,
    )
    ctx.seed_everything()
    meter = default_meter(str(run.device))
    run.say(f"{tag}: running")
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
    if run.dist.active:
        error, wall, energy = settle_across_ranks(run.dist, tag.split("] ", 1)[-1], error, wall, readings)
    else:
        energy = summarize(readings)
    if error is None:
        run.say(f"{tag}: ok, {len(got)} findings in {wall:.1f} s")
        status = ProbeStatus(status="ok", wall_s=wall, energy=energy, n_findings=len(got), params=params)
        return status, got, ctx.samples
    status = _failed_status(error, wall=wall, energy=energy, params=params)
    run.say(f"{tag}: FAILED: {status.error}")
    return status, got, None  # a crashed probe's rows describe nothing


def _failed_status(error: BaseException, *, wall: float, energy: dict[str, Any],
                   params: dict[str, Any]) -> ProbeStatus:
    """A failed probe's status: bad input (``input``) or a crash (``crash``), with its traceback."""
    kind = "input" if isinstance(error, AuditError) else "crash"
    msg = (str(error) if kind == "input" or isinstance(error, RanksFailed)
           else f"{type(error).__name__}: {error}")
    return ProbeStatus(
        status="failed", error=msg, error_kind=kind,
        traceback="".join(traceback.format_exception(error))[-8000:],
        wall_s=wall, energy=energy, params=params,
    )


def _assemble_report(run: _Run, outcome: _Outcome) -> AuditReport:
    """The report of the run (before its gates): findings (the variants' with their deltas),
    statuses, environment, energy."""
    from audit.units import attach_deltas
    from audit.variants_run import order_findings

    spec = run.spec
    every = {**outcome.statuses, **{partial_key(pid, v.name): st for v in outcome.variants for pid, st in v.probes.items()}}
    energy = _audit_energy(every, spec.settings.emissions.factor() if spec.settings.emissions else None)
    timings = {**outcome.timings, "total_s": time.perf_counter() - run.t_start}
    environment = environment_info(run.device)
    environment["threads"] = outcome.threads
    if run.dist.active:
        environment["distributed"] = {"world_size": run.dist.world_size, "backend": backend()}
    return AuditReport(
        name=spec.name,
        subject=outcome.identity or SubjectIdentity(name=spec.subject.name or spec.subject.path,
                                                    kind=spec.subject.kind, source=spec.subject.source,
                                                    path=spec.subject.path),
        findings=tuple(attach_deltas(order_findings(outcome.findings, spec))),
        probes=outcome.statuses,
        variants=outcome.variants,
        spec=spec.as_dict(),
        environment=environment,
        timings=timings,
        energy=energy,
        run_id=run.run_info["run_id"],
        created_at=run.run_info["created_at"],
    )


def _gate(report: AuditReport, spec: AuditSpec, baseline: AuditReport | None) -> AuditReport:
    """The report with the spec's gates evaluated (against ``baseline`` for regressions)."""
    return report.with_gates(evaluate_gates(spec.gates, report.findings,
                                            baseline.findings if baseline else None,
                                            probes=report.probes, variants=report.variants))


def _write(run: _Run, report: AuditReport, samples: list[Any], *, store_url: str | None,
           use_store: bool) -> RunResult:
    """Rank 0 writes the reports (then clears ``.partial/``) and ingests into the store; the
    other ranks wait for it so that the job ends together."""
    if not run.main:
        run.dist.barrier()
        leave_distributed(run.own_group)
        return RunResult(report=report, out_dir=run.out, files={})
    from audit.render import write_reports

    try:
        files = write_reports(report, run.out)
    except OSError as exc:
        raise InputError(f"cannot write the reports into {run.out}: {exc.strerror or exc}") from None
    from audit import samples as sample_records

    try:
        samples_path = sample_records.write_samples(samples, run.out / sample_records.SAMPLES_FILE)
        if samples_path is not None:
            files["samples"] = samples_path
    except (OSError, ImportError) as exc:  # the reports are written; per-sample rows are extra
        run.say(f"warning: {sample_records.SAMPLES_FILE} was not written: {exc}")
    run.partial.clear()
    drop_previous(run.out)
    store_error = stored_in = None
    if use_store:
        try:
            from audit.store import ReportStore, default_store_url

            url = store_url or default_store_url()
            with ReportStore(url) as store:
                store.ingest(report, report_dir=run.out)
            stored_in = url
        except Exception as exc:  # the reports are written; a store problem must not lose them
            store_error = f"{type(exc).__name__}: {exc}"
            run.say(f"warning: the report was written but not stored: {store_error}")
    if run.dist.active:
        run.dist.barrier()
        leave_distributed(run.own_group)
    return RunResult(report=report, out_dir=run.out, files=files, store_error=store_error, stored_in=stored_in)
