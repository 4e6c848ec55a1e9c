"""How the ranks of a ``torchrun`` job agree on each probe's outcome (used by the runner).

Every rank runs every probe on its shard. After each probe the ranks exchange their status
through the rendezvous store: a failure on every rank is recorded as usual, while a failure
on some ranks only ends the job (exit 3, the failing rank's error on stderr) since the
others may wait inside the probe's collectives.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.distributed import DEFAULT_FAIL_GRACE_S, DEFAULT_TIMEOUT_S, Distributed, RankFailed, host_name
from audit.errors import AuditError, InputError

__all__ = ["RanksFailed", "RanksInputError", "backend", "join_distributed", "leave_distributed",
           "merge_readings", "rank_scratch", "settle_across_ranks"]


class RanksFailed(RuntimeError):
    """A probe failed on some ranks; the message names each rank and its error."""


class RanksInputError(InputError):
    """A probe's input was invalid on some ranks; the message names each rank and its error."""


def join_distributed(dev: Any) -> tuple[Distributed, bool]:
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


def leave_distributed(own_group: bool) -> None:
    """Destroy the process group if :func:`join_distributed` created it."""
    if own_group:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()


def backend() -> str | None:
    """The process group's backend (``gloo``, ``nccl``), None outside one."""
    import torch.distributed as tdist

    return str(tdist.get_backend()) if tdist.is_initialized() else None


def rank_scratch(out: Path, rank: int) -> Path:
    """Artefacts of ranks other than 0 go to a scratch folder (rank 0's are the report's)."""
    return Path(tempfile.gettempdir()) / "genai-audit" / f"{out.resolve().name}-rank{rank}"


def settle_across_ranks(dist: Distributed, pid: str, error: BaseException | None, wall: float,
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
    energy = summarize(merge_readings(every))
    if not failed:
        return None, wall, energy
    if error is not None and len(failed) == dist.world_size and len({st["error"] for _, st in failed}) == 1:
        return error, wall, energy  # the same error everywhere: report it as a single process would
    msg = "; ".join(f"rank {r}: {st['error']}" for r, st in failed)
    cls = RanksInputError if all(st["input_error"] for _, st in failed) else RanksFailed
    merged = cls(msg)
    if error is not None:
        merged.__cause__ = error
    return merged, wall, energy


def merge_readings(statuses: Sequence[dict[str, Any]]) -> list[Any]:
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
