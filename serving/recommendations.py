"""A recommendation request and its answer, the same over REST and gRPC: histories in, ``(item, score)`` lists out.

A history is the user's items, oldest first; a request holds the ``max_len`` most recent ones, left-padded (0 /
``""``), the layout the model was trained on. Ids go through ``serving_default``, raw keys through ``serve_keys``.
Answers drop the "no item" marker (id 0 / key ``""``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from mdcns_tf.savedmodel.signatures import ITEM_IDS, ITEM_KEYS, SERVE_KEYS, SERVING_DEFAULT, checked_item_id

T = TypeVar("T")

# One list per history of its (item, score) pairs, best first.
Recommendations = list[list[tuple[Any, float]]]


def signature_for(keys: bool) -> tuple[str, str, int | str]:
    """(signature, input name, padding) of a request of raw item keys (``keys``) or of item ids."""
    return (SERVE_KEYS, ITEM_KEYS, "") if keys else (SERVING_DEFAULT, ITEM_IDS, 0)


def left_pad(history: Sequence[T], max_len: int, padding: T) -> list[T]:
    """The ``max_len`` most recent items of ``history`` (oldest first), left-padded with ``padding``."""
    recent = list(history)[-max_len:] if max_len > 0 else []
    return [padding] * (max_len - len(recent)) + recent


def request_rows(histories: Sequence[Sequence[int | str]], keys: bool, max_len: int) -> list[list[int | str]]:
    """`(batch, max_len)` rows of a request: keys as strings or ids as ints, left-padded. An id outside int32's
    range is a ValueError (`checked_item_id`), never sent to wrap around to another item."""
    padding = signature_for(keys)[2]
    return [left_pad([str(i) if keys else checked_item_id(i) for i in h], max_len, padding) for h in histories]


def without_marker(items: Sequence[Any], scores: Sequence[float], no_item: Any) -> list[tuple[Any, float]]:
    """One row of an answer as ``(item, score)`` pairs, the "no item" marker dropped."""
    return [(item, float(score)) for item, score in zip(items, scores, strict=True) if item != no_item]
