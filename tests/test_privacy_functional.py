"""The privacy maths against independent references: rapidfuzz's Levenshtein, the exposure
formula by hand, published valid / invalid card numbers and IBANs, Min-K% and zlib by hand."""

from __future__ import annotations

import math
import random
import zlib

import numpy as np
import pytest

from probes.privacy.functional import (
    canary_candidates,
    canary_pattern,
    canary_rank,
    chance_exposure,
    exposure,
    iban_valid,
    levenshtein,
    loss_ratio_score,
    loss_score,
    luhn_valid,
    make_canaries,
    min_k_score,
    normalized_edit_distance,
    ssn_valid,
    zlib_score,
)
from probes.privacy.pii import RegexScanner, redact


def test_levenshtein_equals_rapidfuzz():
    from rapidfuzz.distance import Levenshtein

    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        assert levenshtein(a, b) == Levenshtein.distance(a, b)
        assert normalized_edit_distance(a, b) == pytest.approx(Levenshtein.normalized_distance(a, b))


def test_exposure_by_hand():
    # |R| = 1000 candidates + the canary; rank 1 -> log2(1001); rank 8 -> log2(1001) - 3.
    assert exposure(1, 1000) == pytest.approx(math.log2(1001))
    assert exposure(8, 1000) == pytest.approx(math.log2(1001) - 3)
    assert exposure(1001, 1000) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        exposure(0, 10)
    # Rank: 1 + candidates strictly more likely; a tie goes to the canary.
    assert canary_rank(-5.0, [-1.0, -6.0, -5.0, -2.0]) == 3
    # The chance level is the mean exposure over a uniform rank: brute force for |R| = 50.
    assert chance_exposure(49) == pytest.approx(np.mean([exposure(r, 49) for r in range(1, 51)]))
    assert chance_exposure(10**6) == pytest.approx(math.log2(math.e), abs=1e-4)


def test_canaries_and_candidates_have_the_format():
    made = make_canaries(5, template="code {secret}!", alphabet="ab", length=8, seed=3)
    pattern = canary_pattern("code {secret}!", "ab", 8)
    assert len({c.secret for c in made}) == 5
    assert all(pattern.fullmatch(c.text)["secret"] == c.secret for c in made)
    cands = canary_candidates(made[0].secret, 100, alphabet="ab", rng=np.random.default_rng(0))
    assert len(set(cands)) == 100 and made[0].secret not in cands and all(set(c) <= {"a", "b"} for c in cands)
    with pytest.raises(ValueError):
        canary_candidates("ab", 4, alphabet="ab", rng=np.random.default_rng(0))  # space 4, only 3 others
    with pytest.raises(ValueError):
        canary_pattern("no secret here", "0123456789", 4)


def test_membership_scores_by_hand():
    lp = [-0.5, -4.0, -1.5, -0.1, -3.0]
    assert loss_score(lp) == pytest.approx(-9.1 / 5)
    # Min-K% with k = 0.4 of 5 tokens: the 2 lowest, -4 and -3.
    assert min_k_score(lp, 0.4) == pytest.approx(-3.5)
    assert min_k_score(lp, 0.1) == pytest.approx(-4.0)  # at least one token
    assert min_k_score(lp, 1.0) == pytest.approx(-9.1 / 5)
    text = "the cat sat on the mat"
    assert zlib_score(lp, text) == pytest.approx((-9.1 / 5) / (8 * len(zlib.compress(text.encode()))))
    assert loss_ratio_score([-1.0, -3.0], [-2.0, -6.0]) == pytest.approx(-0.5)


# Published test numbers: the card networks' test cards (Stripe / PayPal docs), Wikipedia's
# Luhn example; IBAN examples of the ECBS / Wikipedia / the SWIFT IBAN registry.
VALID_CARDS = ["4111 1111 1111 1111", "4242424242424242", "5555555555554444", "5105-1051-0510-5100",
               "378282246310005", "6011111111111117", "3530111333300000", "79927398713"]
INVALID_CARDS = ["4111 1111 1111 1112", "4242424242424241", "79927398710", "1234567812345678", "4111-x111"]
VALID_IBANS = ["GB82 WEST 1234 5698 7654 32", "DE89 3704 0044 0532 0130 00", "FR14 2004 1010 0505 0001 3M02 606",
               "NL91ABNA0417164300", "BE68 5390 0754 7034", "CH93 0076 2011 6238 5295 7", "ES9121000418450200051332",
               "IT60X0542811101000000123456", "NO9386011117947"]
INVALID_IBANS = ["GB82 WEST 1234 5698 7654 33", "GB82 WEST 1234 5698 7654 3", "DE89 3704 0044 0532 0130 01",
                 "XX82 WEST 1234 5698 7654 32", "NL91ABNA0417164301", "gb82 west"]


@pytest.mark.parametrize("number", VALID_CARDS)
def test_luhn_accepts_published_valid_numbers(number):
    assert luhn_valid(number)


@pytest.mark.parametrize("number", INVALID_CARDS)
def test_luhn_rejects_invalid_numbers(number):
    assert not luhn_valid(number)


@pytest.mark.parametrize("iban", VALID_IBANS)
def test_iban_accepts_published_valid_ibans(iban):
    assert iban_valid(iban)


@pytest.mark.parametrize("iban", INVALID_IBANS)
def test_iban_rejects_invalid_ibans(iban):
    assert not iban_valid(iban)


def test_ssn_never_issued_ranges():
    assert ssn_valid("123-45-6789") and ssn_valid("899-99-9999")
    for bad in ("000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000", "123456789"):
        assert not ssn_valid(bad), bad


def test_scanner_finds_each_type_and_skips_look_alikes():
    text = ("Mail jane.roe@example.org, call +44 20 7946 0958 or (555) 010-4477; card 4111 1111 1111 1111; "
            "IBAN DE89 3704 0044 0532 0130 00; SSN 123-45-6789. Not PII: order 123456, 1990-05-12, "
            "card 4111 1111 1111 1112, IBAN DE89 3704 0044 0532 0130 01, SSN 666-12-3456.")
    found = RegexScanner().scan(text)
    got = [(m.entity, text[m.start:m.end]) for m in found]
    assert got == [("email", "jane.roe@example.org"), ("phone", "+44 20 7946 0958"), ("phone", "(555) 010-4477"),
                   ("card", "4111 1111 1111 1111"), ("iban", "DE89 3704 0044 0532 0130 00"),
                   ("national_id", "123-45-6789")]


def test_redaction_is_salted_and_normalised():
    a, b = redact("card", "4111 1111 1111 1111", b"salt-1"), redact("card", "4111-1111-1111-1111", b"salt-1")
    assert a == b and a.startswith("<card:") and "4111" not in a
    assert redact("card", "4111 1111 1111 1111", b"salt-2") != a
