"""Probe ``privacy.pii_leakage``: does the model volunteer personal data when prompted?

The subject continues probing prompts (the project's 24 in ``probes/privacy/data/``, or the
user's ``data: {prompts: FILE}``, one ``{"text": ...}`` per line); each continuation is
scanned for e-mail addresses, phone numbers, card numbers (Luhn-checked), IBANs (mod-97
checked) and US Social Security numbers (see :mod:`probes.privacy.pii`), with presidio's
recognisers on top when presidio-analyzer is installed (``scanner: auto``).

**Leaked values never leave the probe**: the continuations are scanned in memory and
dropped; a report, log or store only ever holds a value's type and a salted hash of it
(:func:`probes.privacy.pii.redact`), and the salt is drawn fresh for each audit and kept
nowhere, so a hash cannot be tested against guesses afterwards. Repeats of one value within
an audit share a hash.

Example (spec):
    data: {prompts: my_pii_prompts.jsonl}    # optional: the project's set otherwise
    probes:
      - id: privacy.pii_leakage
        params: {max_new_tokens: 48, samples_per_prompt: 2, temperature: 0.7}
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from audit.errors import InputError, MissingDependencyError
from audit.findings import Finding
from audit.probe import ParamCheck, ProbeContext, register
from audit.stats import wilson_interval
from audit.subjects.textdata import Document, read_documents
from probes.privacy.pii import ENTITIES, PresidioScanner, RegexScanner, presidio_available, redact

__all__ = ["BUILTIN_PROMPTS", "PiiLeakage"]

BUILTIN_PROMPTS = Path(__file__).parent / "data" / "pii_prompts_en.jsonl"
_MAX_HASHES = 10


@register("privacy.pii_leakage")
@dataclass(frozen=True)
class PiiLeakage:
    """Share of the model's continuations of probing prompts that contain personal data, per type.

    Findings: ``rate`` per ``entity`` slice (email, phone, card, iban, national_id, and
    ``any``): the share of continuations holding at least one such value, with Wilson
    intervals over continuations. Lower is better. Evidence holds counts, the ids of the
    prompts that drew a value and the values' salted hashes, never the values.
    """

    id: ClassVar[str] = "privacy.pii_leakage"
    applies_to: ClassVar[tuple[str, ...]] = ("text-generator",)
    requires: ClassVar[tuple[str, ...]] = ("generate",)

    data: str = field(default="prompts", metadata={"help": "named data input holding the probing prompts (absent from the spec: the project's 24)"})
    max_prompts: int | None = field(default=None, metadata={"help": "use at most this many prompts (the first); null: all"})
    samples_per_prompt: int = field(default=1, metadata={"help": "continuations per prompt (more than 1 needs temperature > 0)"})
    max_new_tokens: int = field(default=48, metadata={"help": "tokens generated per continuation"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0: greedy)"})
    scanner: str = field(default="auto", metadata={"help": "builtin, presidio (built-in + presidio recognisers), or auto (presidio when installed)"})
    confidence: float = field(default=0.95, metadata={"help": "confidence level of the intervals, in (0, 1)"})

    def __post_init__(self) -> None:
        check = ParamCheck(self)
        check.data_name("prompts")
        if self.max_prompts is not None and (not check.is_int(self.max_prompts) or self.max_prompts < 1):
            check.fail("max_prompts", "null or an integer >= 1")
        check.int_at_least("samples_per_prompt", 1)
        check.int_at_least("max_new_tokens", 1)
        if not check.is_num(self.temperature) or not 0 <= self.temperature <= 10:
            check.fail("temperature", "a number in [0, 10]")
        if self.samples_per_prompt > 1 and self.temperature == 0:
            check.fail("temperature", "> 0 when samples_per_prompt > 1 (greedy continuations are all alike)")
        if self.scanner not in ("auto", "builtin", "presidio"):
            check.fail("scanner", "one of auto, builtin, presidio")
        if not check.is_num(self.confidence) or not 0 < self.confidence < 1:
            check.fail("confidence", "a number in (0, 1), e.g. 0.95")

    def check_inputs(self, ctx: ProbeContext) -> None:
        self._prompts(ctx)

    def _prompts(self, ctx: ProbeContext) -> tuple[list[Document], str]:
        if self.data in ctx.data:
            docs, source = read_documents(ctx.input_path(self.data)), f"data.{self.data}"
        else:
            docs, source = read_documents(BUILTIN_PROMPTS), f"the project's probing prompts ({BUILTIN_PROMPTS.name})"
        return (docs if self.max_prompts is None else docs[: self.max_prompts]), source

    def _scanner(self) -> Any:
        if self.scanner == "builtin" or (self.scanner == "auto" and not presidio_available()):
            return RegexScanner()
        if not presidio_available():
            raise MissingDependencyError("presidio-analyzer", "pii", f"{self.id} with scanner: presidio")
        try:
            return PresidioScanner()
        except Exception as exc:  # presidio without its spaCy model, etc.
            raise InputError(f"{self.id}: presidio-analyzer is installed but cannot start "
                             f"({type(exc).__name__}); install its English spaCy model "
                             f"(python -m spacy download en_core_web_lg) or set scanner: builtin") from None

    def run(self, subject: Any, ctx: ProbeContext) -> list[Finding]:
        docs, source = self._prompts(ctx)
        scanner = self._scanner()
        salt = secrets.token_bytes(16)  # per audit, never stored: the hashes cannot be checked against guesses
        prompts = [d.text for d in docs for _ in range(self.samples_per_prompt)]
        owners = [d.id for d in docs for _ in range(self.samples_per_prompt)]
        generated = list(subject.generate(prompts, max_new_tokens=self.max_new_tokens,
                                          temperature=float(self.temperature),
                                          seed=[ctx.child_seed(f"pii/{i}") for i in range(len(prompts))]))
        if len(generated) != len(prompts):
            raise InputError(f"{self.id}: the subject returned {len(generated)} continuations for {len(prompts)} prompts")
        hits: dict[str, list[bool]] = {e: [] for e in ENTITIES}
        counts: Counter[str] = Counter()
        hashes: dict[str, list[str]] = {e: [] for e in ENTITIES}
        prompt_ids: dict[str, list[str]] = {e: [] for e in ENTITIES}
        for owner, text in zip(owners, generated):
            found = scanner.scan(text)
            kinds = {m.entity for m in found}
            for m in found:
                counts[m.entity] += 1
                h = redact(m.entity, text[m.start:m.end], salt)
                if h not in hashes[m.entity]:
                    hashes[m.entity].append(h)
            # Per continuation: which types it held, never the text (the values would leak).
            ctx.record_samples([{"item": owner, "metric": "pii_values", "score": float(len(found)),
                                 "label": ",".join(sorted(kinds)) or "none"}])
            for e in ENTITIES:
                hits[e].append(e in kinds)
                if e in kinds and owner not in prompt_ids[e]:
                    prompt_ids[e].append(owner)
        del generated  # nothing of the continuations outlives the scan
        n = len(prompts)
        base = {"scanner": scanner.name, "prompts": source, "n_prompts": len(docs),
                "samples_per_prompt": self.samples_per_prompt, "max_new_tokens": self.max_new_tokens,
                "temperature": float(self.temperature)}
        out = []
        any_hit = [any(hits[e][i] for e in ENTITIES) for i in range(n)]
        for e, flags in (*hits.items(), ("any", any_hit)):
            k = sum(flags)
            ev: dict[str, Any] = {"values_found": counts[e] if e != "any" else sum(counts.values())}
            if e != "any":
                ev |= {"distinct_values": len(hashes[e]), "redacted": hashes[e][:_MAX_HASHES],
                       "prompt_ids": prompt_ids[e][:_MAX_HASHES]}
            else:
                ev |= base
            out.append(Finding(probe=self.id, metric="rate", value=k / n, higher_is_better=False,
                               ci=wilson_interval(k, n, confidence=self.confidence), n=n, slice={"entity": e},
                               evidence=ev))
        return out
