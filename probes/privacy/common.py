"""What the privacy probes share: batched token scoring, reading and checking the member
and non-member sets, and loading a reference model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import InputError, SpecError
from audit.probe import ProbeContext
from audit.subjects.textdata import Document, read_documents

__all__ = ["check_disjoint", "load_reference", "read_set", "sequence_logprobs", "with_bos"]

_SHOWN = 5


def with_bos(subject: Any, ids: Sequence[Sequence[int]]) -> list[list[int]]:
    """Token ids with the subject's BOS token in front (when it has one), so that the first
    token of a text is scored too."""
    bos = getattr(subject, "bos_token_id", None)
    head = [] if bos is None else [int(bos)]
    return [head + list(s) for s in ids]


def sequence_logprobs(subject: Any, sequences: Sequence[Sequence[int]], *, batch_size: int = 16) -> list[np.ndarray]:
    """``log p(token_t | tokens_<t)`` for t = 1 .. len-1 of every sequence (float64 arrays),
    in batches of similar length (right-padded; one host transfer per batch).

    Example:
        >>> from tests.fakes import tiny_text_generator          # doctest: +SKIP
        >>> lm = tiny_text_generator()                            # doctest: +SKIP
        >>> [a.shape for a in sequence_logprobs(lm, [[1, 5, 6], [1, 7]])]   # doctest: +SKIP
        [(2,), (1,)]
    """
    import torch

    short = [i for i, s in enumerate(sequences) if len(s) < 2]
    if short:
        raise ValueError(f"sequences need at least 2 tokens to score one; sequence {short[0]} has {len(sequences[short[0]])}")
    out: list[np.ndarray] = [np.empty(0)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    pad = int(getattr(subject, "pad_token_id", 0) or 0)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        t = len(sequences[idx[0]])
        ids = torch.full((len(idx), t), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), t), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
            mask[r, : len(sequences[i])] = 1
        lp = subject.token_logprobs(ids, mask).double().cpu().numpy()
        for r, i in enumerate(idx):
            out[i] = lp[r, : len(sequences[i]) - 1]
    return out


def read_set(ctx: ProbeContext, name: str, what: str) -> list[Document]:
    """The documents of the named data input; the message says what the set is for."""
    try:
        return read_documents(ctx.input_path(name))
    except InputError as exc:
        raise InputError(f"{ctx.probe_id}: the {what} (`data: {{{name}: ...}}`): {exc}") from None


def _norm(text: str) -> str:
    return " ".join(text.split())


def check_disjoint(members: Sequence[Document], nonmembers: Sequence[Document], probe_id: str) -> None:
    """Refuse a non-member that is also a member (same text, whitespace aside), naming the first few.

    Raises:
        InputError: the two sets share documents.
    """
    by_text: dict[str, str] = {}
    for d in members:
        by_text.setdefault(_norm(d.text), d.id)
    both = [(by_text[_norm(d.text)], d.id) for d in nonmembers if _norm(d.text) in by_text]
    if both:
        shown = ", ".join(f"member '{m}' = non-member '{n}'" for m, n in both[:_SHOWN])
        more = f" and {len(both) - _SHOWN} more" if len(both) > _SHOWN else ""
        raise InputError(
            f"{probe_id}: {len(both)} document(s) are in both the members and the non-members ({shown}{more}); "
            f"a document cannot be both: remove it from one of the two sets"
        )


def load_reference(reference: str | Mapping[str, Any], ctx: ProbeContext, probe_id: str) -> Any:
    """Load the reference model a probe names: a subject spec (``{source, path, ...}``, kind
    text-generator by default) or a path (a ``.gguf`` file or a transformers folder / hub id).

    Raises:
        SpecError: the mapping is not a valid subject spec.
    """
    from pydantic import ValidationError

    from audit.spec import SubjectSpec
    from audit.subjects.loading import load_subject

    if isinstance(reference, str):
        fields: dict[str, Any] = {"source": "gguf" if reference.endswith(".gguf") else "hf", "path": reference}
    else:
        fields = dict(reference)
    fields.setdefault("kind", "text-generator")
    try:
        spec = SubjectSpec(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise SpecError(f"{probe_id}: reference.{where}: {err['msg']} (reference: {dict(fields)})") from None
    if spec.kind != "text-generator":
        raise SpecError(f"{probe_id}: reference must be a text-generator, got kind {spec.kind!r}")
    device = str(ctx.device) if ctx.device is not None else "auto"
    return load_subject(spec, base_dir=Path("."), device=device, cache_dir=Path(ctx.cache_dir))


def same_tokenizer(subject: Any, reference: Any, texts: Sequence[str], probe_id: str) -> None:
    """Refuse a reference model that tokenizes the texts differently from the subject.

    Raises:
        InputError: the token ids differ on some text (the first one is named).
    """
    a, b = subject.encode(list(texts)), reference.encode(list(texts))
    for i, (x, y) in enumerate(zip(a, b)):
        if list(x) != list(y):
            raise InputError(
                f"{probe_id}: the reference model tokenizes the texts differently from the subject (first "
                f"difference in text {i + 1}: {len(x)} vs {len(y)} tokens); the loss ratio compares token "
                f"losses, so it needs a reference on the same tokenizer (e.g. the base model of a fine-tune)"
            )
