"""Scanners that find personal data in text, and the redaction that keeps it out of reports.

The built-in scanner (:class:`RegexScanner`) finds five entity types, checking the ones that
carry a checksum so that random digit strings are not counted:

==============  ================================================================
entity          what counts
==============  ================================================================
``email``       ``local@domain.tld``
``phone``       9 to 15 digits in the usual groupings (``+44 20 7946 0958``, ``(555) 010-4477``)
``card``        13 to 19 digits (spaces or dashes allowed) that pass the Luhn check
``iban``        country code, check digits and account, of the country's length, mod-97 valid
``national_id`` US Social Security numbers ``AAA-GG-SSSS`` outside the never-issued ranges
==============  ================================================================

:class:`PresidioScanner` adds Microsoft Presidio's recognisers (``pip install
genai-audit[pii]`` and a spaCy English model) on top of the built-in ones.

A found value is never kept as text: :func:`redact` turns it into its type and a salted
SHA-256 prefix, so that repeats of one value can be counted without the value itself.

Example:
    >>> [(m.entity, m.start) for m in RegexScanner().scan("mail a.b@example.org or call +1 415 555 0134")]
    [('email', 5), ('phone', 29)]
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Protocol

from probes.privacy.functional import iban_valid, luhn_valid, ssn_valid

__all__ = ["ENTITIES", "PiiMatch", "PresidioScanner", "RegexScanner", "Scanner", "presidio_available", "redact"]

#: The entity types reported, in report order.
ENTITIES = ("email", "phone", "card", "iban", "national_id")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){10,30}\b")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?![\w-])")


@dataclass(frozen=True)
class PiiMatch:
    """One found entity: its type and where it is in the scanned text (``text[start:end]``)."""

    entity: str
    start: int
    end: int


class Scanner(Protocol):
    name: str

    def scan(self, text: str) -> list[PiiMatch]: ...


def _overlaps(span: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in taken)


class RegexScanner:
    """The built-in scanner: regular expressions, then checksums (see the module doc).

    Example:
        >>> [m.entity for m in RegexScanner().scan("card 4111 1111 1111 1111, not 4111 1111 1111 1112")]
        ['card']
    """

    name = "builtin"

    def scan(self, text: str) -> list[PiiMatch]:
        found: list[PiiMatch] = []
        taken: list[tuple[int, int]] = []

        def add(entity: str, m: re.Match[str]) -> None:
            if not _overlaps(m.span(), taken):
                found.append(PiiMatch(entity, *m.span()))
                taken.append(m.span())

        # Checksummed types first, so that a card number is not also read as a phone number.
        for m in _EMAIL.finditer(text):
            add("email", m)
        for m in _CARD.finditer(text):
            if luhn_valid(m.group()):
                add("card", m)
        for m in _IBAN.finditer(text):
            if iban_valid(m.group()):
                add("iban", m)
        for m in _SSN.finditer(text):
            if ssn_valid(m.group()):
                add("national_id", m)
        for m in _PHONE.finditer(text):
            digits = sum(c.isdigit() for c in m.group())
            if 9 <= digits <= 15 and not _SSN.fullmatch(m.group()):
                add("phone", m)
        return sorted(found, key=lambda x: x.start)


def presidio_available() -> bool:
    """Whether presidio-analyzer can be imported (``pip install genai-audit[pii]``)."""
    import importlib.util

    return importlib.util.find_spec("presidio_analyzer") is not None


#: Presidio's entity names for the types reported here.
PRESIDIO_ENTITIES = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "card",
                     "IBAN_CODE": "iban", "US_SSN": "national_id"}


class PresidioScanner:
    """Presidio's analyzer (stronger context-aware recognisers), merged with the built-in
    scanner: a span either finds counts once, under the first finder's type."""

    name = "presidio"

    def __init__(self, *, min_score: float = 0.5, analyzer: Any = None) -> None:
        if analyzer is None:
            from presidio_analyzer import AnalyzerEngine

            analyzer = AnalyzerEngine()
        self.analyzer = analyzer
        self.min_score = min_score
        self.builtin = RegexScanner()

    def scan(self, text: str) -> list[PiiMatch]:
        found = self.builtin.scan(text)
        taken = [(m.start, m.end) for m in found]
        results = self.analyzer.analyze(text=text, language="en", entities=list(PRESIDIO_ENTITIES))
        for r in sorted(results, key=lambda r: r.start):
            if r.score >= self.min_score and not _overlaps((r.start, r.end), taken):
                found.append(PiiMatch(PRESIDIO_ENTITIES[r.entity_type], r.start, r.end))
                taken.append((r.start, r.end))
        return sorted(found, key=lambda x: x.start)


def redact(entity: str, value: str, salt: bytes) -> str:
    """``"<entity:hash>"``: the type and the first 12 hex digits of ``sha256(salt + value)``,
    the value normalised (spaces, dashes, dots and brackets dropped, lower case) so that
    ``4111-1111-...`` and ``4111 1111 ...`` hash alike. Without the salt the hash cannot be
    checked against guesses (a 16-digit card space is small enough to enumerate).

    Example:
        >>> redact("card", "4111 1111 1111 1111", b"s") == redact("card", "4111-1111-1111-1111", b"s")
        True
    """
    norm = value.strip().lower() if entity == "email" else re.sub(r"[\s\-.()]", "", value).lower()
    return f"<{entity}:{hashlib.sha256(salt + norm.encode('utf-8')).hexdigest()[:12]}>"
