"""The one near-duplicate rule: skeletons, shingle Jaccard, the exact index and families."""

from __future__ import annotations

import random

import pytest

from st_workflow.near_duplicates import NearDuplicateIndex, NearDuplicateRule, families, jaccard, skeleton


def test_skeleton_masks_digits_case_and_punctuation() -> None:
    assert skeleton("NWS Daily Climatology Data: 1978 (SNF)") == skeleton(
        "nws daily climatology data 1979 snf"
    )
    assert skeleton("DSS-33 34-m Radio Telescope") == skeleton("DSS-43 64-m Radio Telescope")
    assert skeleton("Venera 10") != skeleton("Vega 1")
    assert skeleton("  ") == ""


def test_rule_same_by_skeleton_or_jaccard() -> None:
    rule = NearDuplicateRule(threshold=0.8, ngram=3)
    base = "the radar altimeter measures sea surface height over the open ocean every ten days"
    one_word = base.replace("open", "deep")
    assert rule.same(base, base.upper())
    assert not rule.same(base, one_word)  # 3 of 12 shingles changed: Jaccard 0.6
    assert rule.same(base, base + " worldwide")  # Jaccard 10/11
    assert not rule.same("", "")
    assert NearDuplicateRule(threshold=0.5).same(base, one_word)
    with pytest.raises(ValueError):
        NearDuplicateRule(threshold=0.0)


def test_index_finds_exactly_what_brute_force_finds() -> None:
    rng = random.Random(0)
    vocab = [f"w{c}" for c in "abcdefghijklmnop"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 12))) for _ in range(300)]
    texts += [t + " extra" for t in texts[:40]]  # guaranteed near-duplicates
    for threshold in (0.5, 0.8, 1.0):
        rule = NearDuplicateRule(threshold=threshold, ngram=2)
        index = NearDuplicateIndex(rule, texts)
        for probe in [*texts[:60], "wa wb wc", "nothing like it"]:
            brute = [i for i, t in enumerate(texts) if rule.same(probe, t)]
            assert index.matches(probe) == brute, (threshold, probe)


def test_families_are_transitive_and_named_by_their_first_record() -> None:
    rule = NearDuplicateRule()
    titles = ["Rain 1990", "Snow cover", "Rain 1991", "Ice", "rain 2001"]
    texts = ["a b c d", "e f g h", "i j k l", "e f g h", "m n o p"]
    assert families([titles, texts], rule) == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError):
        families([titles, texts[:2]], rule)
    assert jaccard(frozenset(), frozenset()) == 1.0
