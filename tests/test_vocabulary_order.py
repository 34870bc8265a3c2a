"""`pipeline.vocabulary.vocabulary_order`: the numeric fast path and the general order agree."""

from __future__ import annotations

import random

from pipeline import vocabulary


def test_canonical_integer_keys_sort_numerically_then_the_others() -> None:
    assert vocabulary.vocabulary_order(["10", "2", "b", "0", "1", "a", "2"]) == ["0", "1", "2", "10", "a", "b"]
    assert vocabulary.vocabulary_order(["100000000000000000", "99999999999999999", "9"]) == [
        "9",
        "99999999999999999",
        "100000000000000000",
    ]


def test_one_non_canonical_integer_key_takes_the_general_order() -> None:
    # signs, leading zeros, non-ASCII digits (not integer keys: they sort with the strings) and long keys
    keys = ["07", "7", "-3", "+5", "0", "-0", "x", "\u0661", "2", "1" + "0" * 30]
    assert vocabulary.vocabulary_order(keys) == ["-3", "-0", "0", "2", "+5", "07", "7", "1" + "0" * 30, "x", "\u0661"]


def test_fast_path_equals_the_general_order_on_random_keys() -> None:
    rng = random.Random(0)
    general = vocabulary._integer_order
    for _ in range(300):
        keys = [str(rng.randrange(10 ** rng.randrange(1, 21))) for _ in range(30)]
        keys += rng.choice([[], ["k"], ["007"], ["-4"]])
        integers = sorted({k for k in keys if vocabulary.formats.is_integer_key(k)}, key=general)
        others = sorted({k for k in keys if not vocabulary.formats.is_integer_key(k)})
        assert vocabulary.vocabulary_order(keys) == integers + others
