"""The vocabularies: the order of the keys in ``items.txt`` / ``users.txt``, and the stage that builds them.

An item's id is its line in ``items.txt`` (1-based; 0 is padding), a user's index its line in ``users.txt``. Each
vocabulary is combined into one sorted list: the vocabulary (distinct keys), not the data, must fit in one worker's
memory. Ids reach the events by joins, not broadcasts (`pipeline.records.MakeRecords`). With ``--vocabulary_from``
each list extends a previous output's (`pipeline.parent`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import apache_beam as beam

from mdcns_tf import features
from pipeline import blocks, formats, portable

if TYPE_CHECKING:
    from pipeline.parent import ParentVocabulary


def vocabulary_order(keys: Any) -> list[str]:
    """Distinct keys in vocabulary order: integer keys first, ascending numerically, then the others sorted.

    So the S3-Rec files, whose ids are 1..n, keep their ids, and one non-integer key (a typo, a stray header) takes
    the last id instead of renumbering every integer key. Ties between spellings of one integer ("7", "07") are
    broken by the string, so the order is total. Integers are compared as digit strings: no ``int()`` of an
    arbitrarily long key.
    """
    keys = set(keys)
    # The common case first: canonical decimal keys (no sign, no leading zero) below 10**18, whose order is the
    # numeric one and for which ``int`` is a sort key 4x faster than `_integer_order` (0.4 against 1.7 s for 500k
    # keys, a serial step of a 10M-event run).
    canonical = [key for key in keys if key.isdigit() and key.isascii() and _is_short_canonical(key)]
    rest = keys.difference(canonical) if len(canonical) < len(keys) else set()
    others = sorted(key for key in rest if not formats.is_integer_key(key))
    if len(canonical) + len(others) == len(keys):
        return sorted(canonical, key=int) + others
    return sorted((key for key in keys if formats.is_integer_key(key)), key=_integer_order) + others


def _is_short_canonical(digits: str) -> bool:
    return len(digits) <= 18 and (digits[0] != "0" or digits == "0")


def _integer_order(key: str) -> tuple[int, int, str, str]:
    """A sort key that orders integer strings numerically (ties by the string), without converting them."""
    digits = key.lstrip("+-").lstrip("0")
    if not digits:
        return (1, 0, "", key)
    if key.startswith("-"):  # larger magnitude first: fewer digits, then the digit-wise complement ascending
        return (0, -len(digits), digits.translate(_COMPLEMENT), key)
    return (2, len(digits), digits, key)


_COMPLEMENT = str.maketrans("0123456789", "9876543210")


class Vocabulary(beam.CombineFn):
    """Combines collections of keys into the sorted distinct list (`vocabulary_order`)."""

    def create_accumulator(self) -> set[str]:
        return set()

    def add_input(self, acc: set[str], keys: Iterable[str]) -> set[str]:
        acc.update(keys)
        return acc

    def merge_accumulators(self, accumulators: Iterable[set[str]]) -> set[str]:
        merged: set[str] = set()
        for acc in accumulators:
            merged |= acc
        return merged

    def extract_output(self, acc: set[str]) -> list[str]:
        return vocabulary_order(acc)


def extend_parent(present: list[str], parent: ParentVocabulary, name: str) -> list[str]:
    """The vocabulary ``name`` (``items.txt`` / ``users.txt``) of a run extending ``parent``: the parent's keys
    (re-read and checked: `pipeline.parent.ParentVocabulary.keys`), then ``present``'s new keys in `vocabulary_order`.
    """
    kept = parent.keys(name)
    known = set(kept)
    return kept + vocabulary_order(key for key in present if key not in known)


def _users_with_present(present: list[str], parent: ParentVocabulary) -> tuple[list[str], list[str]]:
    return extend_parent(present, parent, features.USERS_FILE), present


def _users_written(user_vocab: list[str]) -> tuple[str, int]:
    return "users_written", len(user_vocab)


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _block_users(block: tuple[int, list[tuple[str, Any]]]) -> list[list[str]]:
    return [[user for user, _ in block[1]]] if block[1] else []


def _distinct_items(element: tuple[int, Iterable[tuple[int, bytes]]]) -> set[str]:
    """An item block's uses (packed item lists, `pipeline.blocks.pack`) -> its distinct items."""
    return {item for _, packed in element[1] for item in blocks.unpack(packed)}


class BuildVocabularies(beam.PTransform):
    """``{"sequences": blocks of (user K, [item K, ...]), "item_uses": (item block, (user block, packed [item K,
    ...]))}`` (`pipeline.records.item_uses`) -> ``{"item_vocab": [item K, ...], "user_vocab": [user K, ...], "stats":
    ("users_written", n)}``, one list each in `vocabulary_order`; without defaults: with no user left neither has an
    element (read as empty by `pipeline.preprocess.Finish`).

    An item's uses meet in its item block first, so the global combine gets each item once (a global combine is
    one group, which the Dask runner materialises whole in one worker); a user is in one block only.
    With ``parent`` (``--vocabulary_from``) each list is the parent's followed by this log's new keys (always one
    element, the parent's keys at least), and ``"user_indices"`` is ``(user_vocab, users of this log)`` for
    `pipeline.records.UserSplits`.
    """

    def __init__(self, parent: ParentVocabulary | None = None) -> None:
        super().__init__()
        self.parent = parent

    def expand(self, inputs: dict[str, beam.PCollection]) -> dict[str, beam.PCollection]:
        items = (
            inputs["item_uses"] | "GroupByItemBlock" >> beam.GroupByKey() | "DistinctItems" >> beam.Map(_distinct_items)
        )
        users = inputs["sequences"] | "BlockUsers" >> beam.FlatMap(_block_users)
        if self.parent is None:
            item_vocab = items | "ItemVocab" >> beam.CombineGlobally(Vocabulary()).without_defaults()
            user_vocab = users | "UserVocab" >> beam.CombineGlobally(Vocabulary()).without_defaults()
            stats = user_vocab | "UsersWritten" >> beam.Map(_users_written)
            return {"item_vocab": item_vocab, "user_vocab": user_vocab, "stats": stats}
        # An empty log still writes the parent's vocabularies: a later run extending this output keeps its ids.
        present_items = portable.combine_globally(items, Vocabulary(), (), "ItemVocab")
        present_users = portable.combine_globally(users, Vocabulary(), (), "UserVocab")
        item_vocab = present_items | "ExtendItems" >> beam.Map(extend_parent, self.parent, features.ITEMS_FILE)
        user_indices = present_users | "ExtendUsers" >> beam.Map(_users_with_present, self.parent)
        return {
            "item_vocab": item_vocab,
            "user_vocab": user_indices | "UserVocabList" >> beam.Map(_first),
            "user_indices": user_indices,
            "stats": present_users | "UsersWritten" >> beam.Map(_users_written),
        }
