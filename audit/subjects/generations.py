"""``source: generations``: a text generator that is a file of prompts and outputs, no model.

For the probes that only read generations (they ``require`` just ``generate``: diversity,
counterfactual generation, PII leakage, ...) an audit can run on outputs produced elsewhere:
an API without logprobs, a model the auditor may not run, or a frozen release's samples.

The file is JSON Lines, one generation per line::

    {"prompt": "The nurse said", "output": " that she would be late."}
    {"prompt": "The nurse said", "output": " he was tired.", "seed": 7}

When a probe asks for a prompt, the subject answers with that prompt's outputs in file order:
the first request for a prompt gets its first output, the second request its second, and so
on (a probe that samples a prompt 5 times needs 5 lines for it). Lines with a ``seed`` are
matched by seed first when the probe asks with per-sample seeds. A prompt the file lacks,
or one asked for more often than the file holds, is an :class:`~audit.errors.InputError`
that names the prompt and the counts: nothing is made up.

Example:
    >>> from audit.spec import SubjectSpec                                          # doctest: +SKIP
    >>> spec = SubjectSpec(kind="text-generator", source="generations", path="gens.jsonl")
    >>> lm = load_generations(spec, Path("."), torch.device("cpu"), Path(".cache"))  # doctest: +SKIP
    >>> lm.generate(["The nurse said"])                                             # doctest: +SKIP
    [' that she would be late.']
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit.errors import InputError, SpecError
from audit.findings import FileHash, SubjectIdentity
from audit.spec import SubjectSpec
from audit.subjects.base import TextGenerator

__all__ = ["GenerationsFile", "load_generations", "read_generations"]

_MAX_QUOTE = 80


def read_generations(path: Path) -> list[dict[str, Any]]:
    """The rows of a generations JSONL file, checked: each has a string ``prompt`` and ``output``.

    Raises:
        InputError: the file is missing, is a folder, is not JSON Lines, or a row lacks a field.
    """
    if not path.exists():
        raise InputError(f"generations file not found: {path.resolve()}")
    if path.is_dir():
        raise InputError(f"{path.resolve()}: is a folder; expected a .jsonl file of {{'prompt', 'output'}} rows")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not JSON ({exc.msg}); expected one "
                                 '{"prompt": ..., "output": ...} object per line') from exc
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in ("prompt", "output"):
                if not isinstance(row.get(key), str):
                    raise InputError(f"{path}:{lineno}: '{key}' must be a string, got {_quote(row.get(key))}")
            seed = row.get("seed")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise InputError(f"{path}:{lineno}: 'seed' must be an integer, got {_quote(seed)}")
            rows.append(row)
    if not rows:
        raise InputError(f"{path}: no generations (the file is empty)")
    return rows


class GenerationsFile(TextGenerator):
    """Generations read from a file, answered by prompt (see the module docstring).

    Capabilities: ``generate`` only; probes that score tokens are skipped with the reason.
    """

    capabilities = frozenset({"generate"})
    #: generate() takes one seed per prompt (lines with a seed are matched by it).
    per_sample_seeds = True

    def __init__(self, rows: Sequence[dict[str, Any]], identity: SubjectIdentity, *, source: str = ""):
        self.identity = identity
        self.device = "cpu"
        self._source = source
        self._outputs: dict[str, list[str]] = defaultdict(list)
        self._by_seed: dict[tuple[str, int], str] = {}
        for row in rows:
            self._outputs[row["prompt"]].append(row["output"])
            if row.get("seed") is not None:
                self._by_seed[(row["prompt"], int(row["seed"]))] = row["output"]
        self._served: dict[str, int] = defaultdict(int)

    @property
    def prompts(self) -> list[str]:
        """The distinct prompts of the file, in file order."""
        return list(self._outputs)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32, temperature: float = 0.0,
                 seed: int | Sequence[int] = 0, **_: Any) -> list[str]:
        """The file's outputs for ``prompts``; ``max_new_tokens`` and ``temperature`` were fixed when
        the file was made and are ignored here (the report states the source)."""
        seeds = None if isinstance(seed, int) else [int(s) for s in seed]
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        out = []
        for i, prompt in enumerate(prompts):
            if seeds is not None and (prompt, int(seeds[i])) in self._by_seed:
                out.append(self._by_seed[(prompt, int(seeds[i]))])
                continue
            outputs = self._outputs.get(prompt)
            if not outputs:
                raise InputError(f"{self._source}: no generation for the prompt {_quote(prompt)}; the file has "
                                 f"{len(self._outputs)} prompts (a probe can only read what the file holds: "
                                 "give the probe the file's prompts)")
            k = self._served[prompt]
            if k >= len(outputs):
                raise InputError(f"{self._source}: the prompt {_quote(prompt)} was asked for {k + 1} times but the "
                                 f"file holds {len(outputs)} generations for it; add more lines for it")
            self._served[prompt] = k + 1
            out.append(outputs[k])
        return out


def load_generations(spec: SubjectSpec, base_dir: Path, device: Any, cache_dir: Path) -> GenerationsFile:
    """The loader of ``(text-generator, generations)``: ``path`` is the JSONL file."""
    if spec.options:
        raise SpecError(f"subject.options: source 'generations' takes no options, got {sorted(spec.options)}")
    path = Path(spec.path)
    if not path.is_absolute():
        path = base_dir / path
    rows = read_generations(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    identity = SubjectIdentity(
        name=spec.name or path.stem, kind=spec.kind, source=spec.source, path=spec.path,
        files=(FileHash(path=path.name, sha256=digest, bytes=path.stat().st_size),),
        details={"generations": len(rows), "prompts": len({r["prompt"] for r in rows}),
                 "note": "outputs read from a file: no model was run; only probes that read generations apply"},
    )
    return GenerationsFile(rows, identity, source=str(path))


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_QUOTE else text[:_MAX_QUOTE - 3] + "..."
