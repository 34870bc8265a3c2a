"""The vocabularies: the order of the keys in ``items.txt`` / ``users.txt``, and the stage that builds them.

An item's id is its line in ``items.txt`` (1-based; 0 is padding), a user's index its line in ``users.txt``. Each
vocabulary is combined into one sorted list: the vocabulary (distinct keys), not the data, must fit in one worker's
memory. Ids reach the events by joins, not broadcasts (`pipeline.records.MakeRecords`). With ``--vocabulary_from``
each list extends a previous output's (`pipeline.parent`).
"""

from __future__ import annotations

import itertools
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


def _users_written(user_indices: tuple[list[str], dict[int, list[str]]]) -> tuple[str, int]:
    return "users_written", sum(len(users) for users in user_indices[1].values())


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _block_users(block: tuple[int, list[tuple[str, Any]]]) -> list[tuple[int, list[str]]]:
    return [(block[0], [user for user, _ in block[1]])] if block[1] else []


class UserBlocks(beam.CombineFn):
    """Combines ``(user block, [user K, ...])`` parts into ``{user block: [user K, ...]}``: a user is in one block
    only, so the users stay grouped by block and `pipeline.records.UserSplits` gives each block its part without
    hashing every key again in the one worker that holds the vocabulary. Ignores an empty marker (``()``,
    `pipeline.portable.combine_globally`)."""

    def create_accumulator(self) -> dict[int, list[str]]:
        return {}

    def add_input(self, acc: dict[int, list[str]], part: tuple[int, list[str]] | tuple[()]) -> dict[int, list[str]]:
        if part:
            _add_block(acc, *part)
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[int, list[str]]]) -> dict[int, list[str]]:
        merged: dict[int, list[str]] = {}
        for acc in accumulators:
            for block, users in acc.items():
                _add_block(merged, block, users)
        return merged

    def extract_output(self, acc: dict[int, list[str]]) -> dict[int, list[str]]:
        return acc


def _add_block(acc: dict[int, list[str]], block: int, users: list[str]) -> None:
    if block in acc:
        raise ValueError(
            f"user block {block} reached the user vocabulary twice: the runner repeated elements in a shuffle "
            "(docs/beam_multiprocess_loss); rerun, or use --direct_num_workers 1"
        )
    acc[block] = users


def indexed_users(
    user_blocks: dict[int, list[str]], parent: ParentVocabulary | None = None
) -> tuple[list[str], dict[int, list[str]]]:
    """``{user block: [user K]}`` -> ``(user vocabulary, the same blocks)`` for `pipeline.records.UserSplits`; with
    ``parent`` the vocabulary extends the parent's (`extend_parent`)."""
    present = itertools.chain.from_iterable(user_blocks.values())
    if parent is None:
        return vocabulary_order(present), user_blocks
    return extend_parent(list(present), parent, features.USERS_FILE), user_blocks


def _distinct_items(element: tuple[int, Iterable[tuple[int, bytes]]]) -> set[str]:
    """An item block's uses (packed item lists, `pipeline.blocks.pack`) -> its distinct items."""
    return {item for _, packed in element[1] for item in blocks.unpack(packed)}


class BuildVocabularies(beam.PTransform):
    """``{"sequences": blocks of (user K, [item K, ...]), "item_uses": (item block, (user block, packed [item K,
    ...]))}`` (`pipeline.records.item_uses`) -> ``{"item_vocab": [item K, ...], "user_vocab": [user K, ...], "stats":
    ("users_written", n), "user_indices": (user_vocab, {user block: [user K, ...]})}``, each list in
    `vocabulary_order`, ``user_indices`` for `pipeline.records.UserSplits`; without defaults: with no user left
    none has an element (read as empty by `pipeline.preprocess.Finish`).

    An item's uses meet in its item block first, so the global combine gets each item once (a global combine is
    one group, which the Dask runner materialises whole in one worker); a user is in one block only, and its
    block's part reaches the combine whole (`UserBlocks`). With ``parent`` (``--vocabulary_from``) each list is the
    parent's followed by this log's new keys (always one element, the parent's keys at least).
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
            user_blocks = users | "UserVocab" >> beam.CombineGlobally(UserBlocks()).without_defaults()
            user_indices = user_blocks | "OrderUsers" >> beam.Map(indexed_users)
        else:
            # An empty log still writes the parent's vocabularies: a later run extending this output keeps its ids.
            present_items = portable.combine_globally(items, Vocabulary(), (), "ItemVocab")
            item_vocab = present_items | "ExtendItems" >> beam.Map(extend_parent, self.parent, features.ITEMS_FILE)
            user_blocks = portable.combine_globally(users, UserBlocks(), (), "UserVocab")
            user_indices = user_blocks | "ExtendUsers" >> beam.Map(indexed_users, self.parent)
        user_vocab = user_indices | "UserVocabList" >> beam.Map(_first)
        return {
            "item_vocab": item_vocab,
            "user_vocab": user_vocab,
            "user_indices": user_indices,
            "stats": user_indices | "UsersWritten" >> beam.Map(_users_written),
        }
