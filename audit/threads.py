"""The audit's torch intra-op threads (``settings.threads``), set for the run and recorded.

Example:
    >>> with intra_op_threads(1) as info:        # doctest: +SKIP
    ...     info["intra_op"]
    1
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ThreadSetting", "intra_op_threads", "set_intra_op_threads", "thread_info"]


def thread_info(requested: int | None = None) -> dict[str, Any]:
    """What the report records: the threads torch uses now, what the spec asked, the CPUs seen."""
    import torch

    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads(),
            "requested": requested, "cpu_count": os.cpu_count()}


@dataclass(frozen=True)
class ThreadSetting:
    """The threads in force (``info``) and how to put back the ones before."""

    info: dict[str, Any]
    previous: int
    changed: bool

    def restore(self) -> None:
        import torch

        if self.changed:
            torch.set_num_threads(self.previous)


def set_intra_op_threads(n: int | None) -> ThreadSetting:
    """``torch.set_num_threads(n)`` (None: leave torch's default, one thread per core)."""
    import torch

    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    return ThreadSetting(info=thread_info(n), previous=previous, changed=n is not None)


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[dict[str, Any]]:
    """Run the block with ``n`` intra-op threads, then put back the previous setting."""
    setting = set_intra_op_threads(n)
    try:
        yield setting.info
    finally:
        setting.restore()
