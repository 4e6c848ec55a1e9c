"""Sharding and reduction for audits run over several processes (``torchrun``).

Every rank runs every probe on its shard of the samples, then gathers the per-sample
values back **in their original order** on every rank, so that each metric, bootstrap and
interval is computed from identical inputs everywhere: a run over 2 processes gives the
numbers of a run over 1 (exactly for counts; float sums up to their summation order).

In a single process every method is a no-op (``shard`` gives everything, ``gather``
returns its input), so probes call them unconditionally.

Example:
    >>> d = Distributed()                      # one process
    >>> d.shard(5), d.gather(["a", "b"], range(2))
    (range(0, 5), ['a', 'b'])
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Sequence
from typing import Any

from audit.errors import EXIT_PROBE_CRASHED, AuditError

__all__ = ["DEFAULT_TIMEOUT_S", "Distributed", "RankFailed", "from_env", "torchrun_env"]

#: Seconds a rank waits for the others (process-group collectives and probe status exchange).
DEFAULT_TIMEOUT_S = 600.0
#: Seconds a rank whose probe failed waits for the other ranks' status before it ends the job.
DEFAULT_FAIL_GRACE_S = 30.0


class RankFailed(AuditError):
    """A rank's probe failed where the others could not go on, or a rank did not report in
    time: the job ends (exit code 3); ``--resume`` reuses the probes finished before."""

    exit_code = EXIT_PROBE_CRASHED


def torchrun_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment, or None outside it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world <= 1 or "RANK" not in os.environ:
        return None
    rank = int(os.environ["RANK"])
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


class Distributed:
    """This process's place in a run and the collectives probes need.

    Args:
        rank / world_size / local_rank: as torchrun numbers them.
        store: the rendezvous key-value store (status exchange outside the collectives).
        timeout_s: how long to wait for other ranks.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, *, local_rank: int = 0, store: Any = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, fail_grace_s: float = DEFAULT_FAIL_GRACE_S):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.store = store
        self.timeout_s = float(timeout_s)
        self.fail_grace_s = float(fail_grace_s)
        self._round = 0

    @property
    def active(self) -> bool:
        """True when there are other ranks to talk to."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size})"

    # -- sharding --------------------------------------------------------------------------------
    def shard(self, n: int | Sequence[Any], *, block: int = 1) -> range:
        """This rank's indices of ``n`` items (or of a sequence): a contiguous range.

        With ``block > 1`` the cut points fall on multiples of ``block`` (whole batches), so a
        rank's batches are exactly the batches a single process would make.

        Example:
            >>> [Distributed(r, 2).shard(10, block=4) for r in (0, 1)]
            [range(0, 4), range(4, 10)]
        """
        total = n if isinstance(n, int) else len(n)
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        chunks = -(-total // block)
        lo = self.rank * chunks // self.world_size
        hi = (self.rank + 1) * chunks // self.world_size
        return range(min(lo * block, total), min(hi * block, total))

    # -- gathering -------------------------------------------------------------------------------
    def gather(self, values: Sequence[Any], indices: Sequence[int]) -> list[Any]:
        """Every rank's ``values`` (``values[j]`` belongs to item ``indices[j]``), as one list in
        item order, on every rank. Values must be picklable."""
        values, indices = list(values), [int(i) for i in indices]
        if len(values) != len(indices):
            raise ValueError(f"gather: {len(values)} values for {len(indices)} indices")
        parts = self.all_gather_object((indices, values)) if self.active else [(indices, values)]
        all_idx = [i for idx, _ in parts for i in idx]
        all_val = [v for _, vals in parts for v in vals]
        if len(set(all_idx)) != len(all_idx):
            raise ValueError("gather: two ranks hold the same index")
        order = sorted(range(len(all_idx)), key=all_idx.__getitem__)
        return [all_val[j] for j in order]

    def gather_tensor(self, tensor: Any, indices: Sequence[int]) -> Any:
        """Rows of ``tensor`` (row ``j`` is item ``indices[j]``) from every rank, stacked in item
        order, on every rank and on ``tensor``'s device. Rows must agree in shape and dtype."""
        import torch

        if tensor.shape[0] != len(indices):
            raise ValueError(f"gather_tensor: {tensor.shape[0]} rows for {len(indices)} indices")
        if not self.active:
            idx = torch.as_tensor(list(indices), dtype=torch.long)
            if idx.numel() and bool((idx[1:] >= idx[:-1]).all()):
                return tensor
            return tensor[torch.argsort(idx).to(tensor.device)]
        import torch.distributed as dist

        comm = self._comm_device()
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=comm)
        sizes = [torch.zeros(1, dtype=torch.long, device=comm) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([idx.numel()], dtype=torch.long, device=comm))
        counts = [int(s) for s in sizes]
        width = max(counts)
        rows = tensor.detach().to(comm)
        pad = width - rows.shape[0]
        if pad:
            rows = torch.cat([rows, rows.new_zeros((pad, *rows.shape[1:]))])
            idx = torch.cat([idx, idx.new_full((pad,), -1)])
        all_rows = [torch.empty_like(rows) for _ in range(self.world_size)]
        all_idx = [torch.empty_like(idx) for _ in range(self.world_size)]
        dist.all_gather(all_rows, rows.contiguous())
        dist.all_gather(all_idx, idx)
        rows = torch.cat([r[:c] for r, c in zip(all_rows, counts)])
        idx = torch.cat([i[:c] for i, c in zip(all_idx, counts)])
        if idx.unique().numel() != idx.numel():
            raise ValueError("gather_tensor: two ranks hold the same index")
        return rows[torch.argsort(idx)].to(tensor.device)

    def all_reduce_sum(self, tensor: Any) -> Any:
        """The float64 sum of ``tensor`` over ranks, on ``tensor``'s device (a copy)."""
        import torch

        t = torch.as_tensor(tensor).detach().to(torch.float64)
        if not self.active:
            return t.clone()
        import torch.distributed as dist

        out = t.to(self._comm_device()).clone()
        dist.all_reduce(out)
        return out.to(t.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    # -- status exchange (outside the collectives) ---------------------------------------------
    def exchange(self, payload: dict[str, Any], *, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Every rank's JSON-able ``payload`` through the rendezvous store, in rank order.

        Unlike a collective, this cannot be mistaken for a probe's own collective when one rank
        left a probe early (with an error) while the others are still inside it: the wait is
        on keys of this round only, and ends after ``timeout_s`` with :class:`RankFailed`.
        """
        if not self.active:
            return [payload]
        self._round += 1
        key = f"genai-audit/status/{self._round}"
        self.store.set(f"{key}/{self.rank}", json.dumps(payload))
        keys = [f"{key}/{r}" for r in range(self.world_size)]
        wait = self.timeout_s if timeout_s is None else timeout_s
        try:
            self.store.wait(keys, datetime.timedelta(seconds=wait))
        except Exception as exc:  # the store raises its own timeout error types
            missing = [r for r, k in enumerate(keys) if not self.store.check([k])]
            # Tell the others that this rank leaves: one that reports later must not go on alone.
            self.store.set(f"{key}/gave-up", str(self.rank))
            raise RankFailed(f"rank(s) {missing} did not report within {wait:g} s "
                             f"({type(exc).__name__})") from None
        every = [json.loads(self.store.get(k)) for k in keys]
        if self.store.check([f"{key}/gave-up"]):
            who = self.store.get(f"{key}/gave-up").decode()
            raise RankFailed(f"rank {who} gave up waiting for the others and ended the job; its error: "
                             f"{every[int(who)].get('error') or 'none'}")
        return every

    def _comm_device(self) -> Any:
        import torch
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def from_env(*, device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S,
             fail_grace_s: float = DEFAULT_FAIL_GRACE_S) -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on
    CUDA), or a single-process :class:`Distributed` outside torchrun."""
    env = torchrun_env()
    if env is None:
        return Distributed()
    rank, world, local = env
    import torch
    import torch.distributed as dist

    td = datetime.timedelta(seconds=timeout_s)
    if dist.is_initialized():
        store = dist.distributed_c10d._get_default_store()
    else:
        store, rank, world = next(dist.rendezvous("env://", rank, world, timeout=td))
        cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=world,
                                timeout=td)
    return Distributed(rank, world, local_rank=local, store=store, timeout_s=timeout_s, fail_grace_s=fail_grace_s)


def host_name() -> str:
    return socket.gethostname()
