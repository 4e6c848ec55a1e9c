"""The maths of text diversity, as pure functions (token lists in, numbers out).

- :func:`distinct_n` (Li et al., 2016): distinct n-grams over all n-grams of a set of texts;
  1.0 when nothing repeats, near 0 for a model that says the same thing again and again.
- :func:`self_bleu` (Zhu et al., 2018, Texygen): the mean BLEU of each text against the
  others as references; high when the samples for a prompt resemble each other.

BLEU here is torchmetrics' ``BLEUScore`` definition (clipped n-gram precisions up to
``max_n`` with uniform weights, the brevity penalty against the reference closest in length,
and, with ``smooth``, add-one smoothing of the precisions for n > 1), computed from n-gram
counters that are built once per text instead of once per (text, reference) pair.
``tests/test_text_diversity.py`` checks it against ``torchmetrics.functional.text.bleu_score``.

Example:
    >>> texts = [tokenize("The cat sat."), tokenize("The cat ran!")]
    >>> distinct_n(texts, 1)          # 8 unigrams, 6 distinct: the, cat, sat, ., ran, !
    0.75
    >>> self_bleu(texts, max_n=2, smooth=True)   # unigrams 2/4, bigrams (1+1)/(3+1): sqrt(.5 * .5)
    0.5
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["bleu_from_counts", "distinct_n", "ngram_counts", "self_bleu", "sentence_bleu", "tokenize"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str, *, lowercase: bool = True) -> list[str]:
    """Words and single punctuation marks (Unicode-aware), lower-cased by default.

    Example:
        >>> tokenize("Don't stop -- café!")
        ['don', "'", 't', 'stop', '-', '-', 'café', '!']
    """
    return _TOKEN.findall(text.lower() if lowercase else text)


def ngram_counts(tokens: Sequence[str], max_n: int) -> Counter:
    """Counts of every n-gram of ``tokens`` for n = 1 .. ``max_n`` (tuples as keys)."""
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def distinct_n(texts: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams / all n-grams over ``texts`` (token lists); ``nan`` when there is no n-gram.

    Example:
        >>> distinct_n([["a", "b", "a", "b"]], 2)   # ab, ba, ab: 2 distinct of 3
        0.6666666666666666
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    grams = [tuple(t[i:i + n]) for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def bleu_from_counts(hyp: Counter, hyp_len: int, refs: Sequence[Counter], ref_lens: Sequence[int], *,
                     max_n: int = 4, smooth: bool = False) -> float:
    """Sentence BLEU from precomputed n-gram counters (see :func:`ngram_counts`).

    Follows torchmetrics: any n-gram order with no clipped match gives 0 (with or without
    ``smooth``); ``smooth`` adds one to the numerator and denominator of orders 2..max_n;
    the reference length is the one closest to the hypothesis (the first on a tie); the
    brevity penalty is ``exp(1 - r / c)`` unless the hypothesis is longer than it.
    """
    if hyp_len == 0 or not refs:
        return 0.0
    ref_max: Counter = Counter()
    for r in refs:
        ref_max |= r
    clipped = hyp & ref_max
    num = [0] * max_n
    den = [0] * max_n
    for gram, c in clipped.items():
        num[len(gram) - 1] += c
    for gram, c in hyp.items():
        den[len(gram) - 1] += c
    if min(num) == 0:
        return 0.0
    log_p = 0.0
    for k in range(max_n):
        if smooth and k > 0:
            log_p += math.log((num[k] + 1) / (den[k] + 1))
        else:
            log_p += math.log(num[k] / den[k])
    diffs = [abs(hyp_len - r) for r in ref_lens]
    ref_len = ref_lens[diffs.index(min(diffs))]
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p / max_n)


def sentence_bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], *, max_n: int = 4,
                  smooth: bool = False) -> float:
    """BLEU of one token list against reference token lists (torchmetrics' definition).

    Example:
        >>> round(sentence_bleu("the cat sat on the mat".split(), ["the cat sat on a mat".split()],
        ...                     smooth=True), 4)
        0.6389
    """
    return bleu_from_counts(ngram_counts(hypothesis, max_n), len(hypothesis),
                            [ngram_counts(r, max_n) for r in references], [len(r) for r in references],
                            max_n=max_n, smooth=smooth)


def self_bleu(texts: Sequence[Sequence[str]], *, max_n: int = 4, smooth: bool = True) -> float:
    """Mean over texts of the BLEU of each against all the others; ``nan`` for fewer than 2 texts.

    Counters are built once per text, so k texts cost k counter builds and k unions of
    k - 1 counters (not k * (k - 1) tokenisations).

    Example:
        >>> self_bleu([["a", "b", "c"], ["a", "b", "c"]], max_n=2)   # identical samples
        1.0
    """
    if len(texts) < 2:
        return math.nan
    counts = [ngram_counts(t, max_n) for t in texts]
    lens = [len(t) for t in texts]
    scores = [
        bleu_from_counts(counts[i], lens[i], counts[:i] + counts[i + 1:], lens[:i] + lens[i + 1:],
                         max_n=max_n, smooth=smooth)
        for i in range(len(texts))
    ]
    return sum(scores) / len(scores)
