"""The maths of the privacy probes: pure functions, numbers and strings in, numbers out.

- Extraction: :func:`normalized_edit_distance` between a true and a generated continuation.
- Canaries (Carlini et al. 2019, "The Secret Sharer"): :func:`make_canaries`,
  :func:`canary_candidates`, :func:`exposure`.
- Membership scores (higher means "member"): :func:`loss_score`, :func:`zlib_score`,
  :func:`min_k_score`, :func:`loss_ratio_score`.
- PII checksums: :func:`luhn_valid` (card numbers), :func:`iban_valid` (ISO 13616 mod-97),
  :func:`ssn_valid` (US Social Security numbers, SSA's never-issued ranges excluded).

Example:
    >>> round(exposure(1, 1023), 3)   # the canary ranks first among 1024: log2(1024) - log2(1)
    10.0
    >>> luhn_valid("4111 1111 1111 1111"), iban_valid("GB82 WEST 1234 5698 7654 32")
    (True, True)
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Canary",
    "canary_candidates",
    "canary_pattern",
    "canary_rank",
    "chance_exposure",
    "exposure",
    "iban_valid",
    "levenshtein",
    "loss_ratio_score",
    "loss_score",
    "luhn_valid",
    "make_canaries",
    "min_k_score",
    "normalized_edit_distance",
    "ssn_valid",
    "zlib_score",
]


# -- extraction ------------------------------------------------------------------------------
def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1) of two sequences.

    Example:
        >>> levenshtein("kitten", "sitting")
        3
    """
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalized_edit_distance(reference: Sequence, candidate: Sequence) -> float:
    """``levenshtein(reference, candidate) / max(len(reference), len(candidate))``, in [0, 1]
    (0: identical; 0 for two empty sequences).

    Example:
        >>> normalized_edit_distance("abcd", "abce")
        0.25
    """
    longest = max(len(reference), len(candidate))
    return 0.0 if longest == 0 else levenshtein(reference, candidate) / longest


# -- canaries (The Secret Sharer) ------------------------------------------------------------
@dataclass(frozen=True)
class Canary:
    """One inserted secret: the full ``text`` (the template filled in) and its ``secret``."""

    text: str
    secret: str


def canary_pattern(template: str, alphabet: str, length: int) -> re.Pattern[str]:
    """The regular expression that finds a secret of this format in a filled-in template.

    Example:
        >>> canary_pattern("my code is {secret}.", "0123456789", 4).fullmatch("my code is 0042.")["secret"]
        '0042'
    """
    if template.count("{secret}") != 1:
        raise ValueError(f"the canary template must hold '{{secret}}' exactly once, got {template!r}")
    head, tail = template.split("{secret}")
    chars = re.escape(alphabet).replace("-", r"\-")
    return re.compile(f"{re.escape(head)}(?P<secret>[{chars}]{{{length}}}){re.escape(tail)}")


def make_canaries(n: int, *, template: str, alphabet: str = "0123456789", length: int = 6,
                  seed: int = 0) -> list[Canary]:
    """``n`` distinct random secrets of ``length`` characters of ``alphabet``, filled into
    ``template`` (which holds ``{secret}`` once). Insert them into training data, then give
    the texts to ``privacy.extraction`` as ``data: {canaries: FILE}`` to measure their exposure.

    Example:
        >>> [c.text for c in make_canaries(2, template="PIN {secret}", length=4, seed=1)]
        ['PIN 4579', 'PIN 0189']
    """
    space = len(alphabet) ** length
    if n > space:
        raise ValueError(f"cannot draw {n} distinct secrets from a space of {space}")
    rng = np.random.default_rng(seed)
    canary_pattern(template, alphabet, length)  # validates the template
    secrets: list[str] = []
    seen: set[str] = set()
    while len(secrets) < n:
        s = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), length))
        if s not in seen:
            seen.add(s)
            secrets.append(s)
    return [Canary(template.replace("{secret}", s), s) for s in secrets]


def canary_candidates(secret: str, m: int, *, alphabet: str, rng: np.random.Generator) -> list[str]:
    """``m`` distinct random secrets of the same format as ``secret``, none equal to it
    (drawn uniformly from the format's space without replacement)."""
    length = len(secret)
    space = len(alphabet) ** length
    if m > space - 1:
        raise ValueError(f"cannot draw {m} candidates other than the canary from a space of {space}")
    out: list[str] = []
    seen = {secret}
    while len(out) < m:
        s = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), length))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def exposure(rank: int, n_candidates: int) -> float:
    """Exposure of a canary in bits (Carlini et al. 2019, "The Secret Sharer", Def. 4):

        exposure = log2 |R| - log2 rank

    where ``R`` is the set of secrets the canary competes with (here: the canary itself and
    ``n_candidates`` random secrets of its format, so ``|R| = n_candidates + 1``) and ``rank``
    is the canary's 1-based position when ``R`` is sorted by the model's likelihood, most
    likely first. The maximum, ``log2 |R|``, means the model prefers the inserted secret to
    every candidate; a canary the model never saw has expected exposure close to
    ``log2(e) = 1.44`` bits (the rank is uniform on 1..|R|).

    Example:
        >>> exposure(4, 15)   # log2(16) - log2(4)
        2.0
    """
    if not 1 <= rank <= n_candidates + 1:
        raise ValueError(f"rank must be in 1 .. n_candidates + 1 ({n_candidates + 1}), got {rank}")
    return math.log2(n_candidates + 1) - math.log2(rank)


def chance_exposure(n_candidates: int) -> float:
    """The expected exposure of a canary the model never saw (its rank uniform on 1..|R|):
    ``log2 |R| - log2(|R|!) / |R|``, which tends to ``log2 e = 1.44`` bits.

    Example:
        >>> chance_exposure(1)   # |R| = 2: ranks 1 and 2 give 1 and 0 bits
        0.5
    """
    r = n_candidates + 1
    return math.log2(r) - math.lgamma(r + 1) / (r * math.log(2))


def canary_rank(canary_loglik: float, candidate_logliks: Sequence[float]) -> int:
    """1 + the number of candidates strictly more likely than the canary (ties go to the
    canary: the audit reports the higher exposure)."""
    return 1 + int(np.sum(np.asarray(candidate_logliks, dtype=np.float64) > canary_loglik))


# -- membership scores (higher: more likely a member) ----------------------------------------
def loss_score(token_logprobs: Sequence[float]) -> float:
    """Mean token log-probability, i.e. minus the loss (Yeom et al. 2018).

    Example:
        >>> loss_score([-1.0, -3.0])
        -2.0
    """
    lp = np.asarray(token_logprobs, dtype=np.float64)
    return float(lp.mean())


def zlib_score(token_logprobs: Sequence[float], text: str) -> float:
    """Minus the loss divided by the zlib entropy of the text, in bits (Carlini et al. 2021:
    ``log-perplexity / zlib entropy``, negated): text that is easy for the model but hard for
    zlib scores high.

    Example:
        >>> import zlib
        >>> zlib_score([-2.0], "aaaa") == -2.0 / (8 * len(zlib.compress(b"aaaa")))
        True
    """
    bits = 8 * len(zlib.compress(text.encode("utf-8")))
    return loss_score(token_logprobs) / bits


def min_k_score(token_logprobs: Sequence[float], k: float) -> float:
    """Min-K% Prob (Shi et al. 2023): the mean of the lowest ``k`` share of the token
    log-probabilities (at least one token); members have fewer very unlikely tokens.

    Example:
        >>> min_k_score([-0.1, -5.0, -0.2, -3.0], 0.5)   # mean of -5 and -3
        -4.0
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k!r}")
    lp = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    count = max(1, int(lp.size * k))
    return float(lp[:count].mean())


def loss_ratio_score(token_logprobs: Sequence[float], reference_logprobs: Sequence[float]) -> float:
    """Minus the ratio of the subject's loss to a reference model's loss on the same text
    (Carlini et al. 2021, "comparing to other models"): the subject finds a member far easier
    than a model that did not train on it.

    Example:
        >>> loss_ratio_score([-1.0, -1.0], [-4.0, -4.0])
        -0.25
    """
    ref = -loss_score(reference_logprobs)
    return loss_score(token_logprobs) / ref if ref > 0 else -math.inf


# -- PII checksums ---------------------------------------------------------------------------
def luhn_valid(number: str) -> bool:
    """Whether the digits of ``number`` (spaces and dashes ignored) pass the Luhn check.

    Example:
        >>> luhn_valid("79927398713"), luhn_valid("79927398710")
        (True, False)
    """
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 2 or any(not (c.isdigit() or c in " -") for c in number):
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


#: IBAN length per country (ISO 13616 registry, the SEPA countries and a few others).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21, "CY": 28,
    "CZ": 24, "DE": 22, "DK": 18, "EE": 20, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GI": 23,
    "GL": 18, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "KW": 30, "KZ": 20,
    "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "ME": 22, "MK": 19, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PL": 28, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29,
}


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (spaces ignored) has its country's length and passes the ISO 7064
    mod-97 check: move the first four characters to the end, letters to 10..35, the
    number mod 97 must be 1.

    Example:
        >>> iban_valid("DE89 3704 0044 0532 0130 00"), iban_valid("DE89 3704 0044 0532 0130 01")
        (True, False)
    """
    s = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]+", s) or IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ssn_valid(ssn: str) -> bool:
    """Whether ``ssn`` (``AAA-GG-SSSS``) could be a US Social Security number: area not 000,
    666 or 900-999, group not 00, serial not 0000 (SSA's never-issued values).

    Example:
        >>> ssn_valid("123-45-6789"), ssn_valid("666-12-3456"), ssn_valid("123-00-4567")
        (True, False, False)
    """
    m = re.fullmatch(r"(\d{3})-(\d{2})-(\d{4})", ssn.strip())
    if not m:
        return False
    area, group, serial = (int(g) for g in m.groups())
    return area not in (0, 666) and area < 900 and group != 0 and serial != 0
