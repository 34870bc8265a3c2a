"""Records: the filtered sequences and the vocabularies -> each split's serialised records, a block at a time.

`MakeRecords` joins the ids to the events a block at a time (`pipeline.blocks`); which records a user's ids become
is `pipeline.splits`; `serialize_record` gives a record's bytes.

    item_uses       a block of sequences -> (item block, (user block, packed [item K, ...])) its distinct items
    MakeRecords     blocks + vocabularies -> ("records", (split, [record bytes, ...])) per block and split,
                    ("stats", [(name, n), ...]), ("item_counts", (item block, {item id: train uses})),
                    ("eval_targets", (item block, [(target id, split), ...]))       one output (`pipeline.portable`)
"""

from __future__ import annotations

import array
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import blocks, encoding, spill, splits

RECORDS, STATS, ITEM_COUNTS, EVAL_TARGETS = "records", "stats", "item_counts", "eval_targets"


def item_uses(block: blocks.Block, num_blocks: int) -> Iterator[tuple[int, tuple[int, bytes]]]:
    """A block of ``(user K, [item K, ...])`` -> ``(item block, (user block, packed [item K, ...]))``: each distinct
    item of the block once, grouped by the item's block. The vocabulary is built from these (`pipeline.vocabulary`),
    and the item ids come back to the user block through them (`item_ids_of_uses`)."""
    distinct = {item for _, items in block[1] for item in items}
    for item_block, items in blocks.by_block(distinct, num_blocks).items():
        yield item_block, (block[0], blocks.pack(items))


def vocabulary_blocks(vocabulary: list[str], num_blocks: int) -> Iterator[tuple[int, dict[str, int]]]:
    """The item vocabulary -> ``(item block, {item K: item id})`` (id = position + 1) for every item block."""
    per_block: dict[int, dict[str, int]] = {}
    for item_id, key in enumerate(vocabulary, start=1):
        per_block.setdefault(blocks.block_of(key, num_blocks), {})[key] = item_id
    return iter(per_block.items())


def item_ids_of_uses(element: tuple[int, dict[str, list[Any]]]) -> Iterator[tuple[int, bytes]]:
    """``(item block, {"ids": [{item K: id}], "uses": [(user block, packed [item K, ...]), ...]})`` -> ``(user
    block, packed {item K: id})`` for each user block that uses an item of this item block."""
    item_block, joined = element
    id_maps, uses = list(joined["ids"]), list(joined["uses"])
    if len(id_maps) > 1:
        raise ValueError(f"item block {item_block}: {len(id_maps)} vocabulary parts instead of one (a runner bug)")
    ids = id_maps[0] if id_maps else {}
    for user_block, packed in uses:
        items = blocks.unpack(packed)
        missing = [item for item in items if item not in ids]
        if missing:
            # Both sides come from the same sequences, so this means the vocabulary and the events were computed
            # from different versions of them. Fail loudly: dropping the item's events would lose data silently.
            raise ValueError(
                f"items {missing[:3]!r} ({len(missing)} in all) have events but no vocabulary id; the item "
                "vocabulary and the events disagree (was an upstream step re-run with a different result?)"
            )
        yield user_block, blocks.pack({item: ids[item] for item in items})


def pack_users(keys: Sequence[str], indices: Sequence[int], split_of: Sequence[str | None] | None) -> bytes:
    """A user block's ``(user K, user_index, split)`` triples as columns, `pipeline.blocks.pack`ed (``split_of``
    None: every split None). Columns rather than Beam's coding of a list of tuples: 2.9 against 7.9 MB for 500k
    users, which cross a shuffle from one worker (the vocabulary's), the serial step of a run."""
    return blocks.pack((list(keys), array.array("q", indices), None if split_of is None else list(split_of)))


def unpack_users(payload: bytes) -> dict[str, tuple[int, str | None]]:
    """`pack_users`'s triples as ``{user K: (user_index, split)}``."""
    keys, indices, split_of = blocks.unpack(payload)
    return dict(zip(keys, zip(indices, split_of or [None] * len(keys), strict=True), strict=True))


class UserSplits(beam.DoFn):
    """The user vocabulary -> ``(user block, pack_users(...))`` for every user of this log (index = position in the
    vocabulary + 1), a part per user block (`pipeline.blocks`, ``num_blocks``).

    The element is ``(vocabulary, {user block: [user K, ...]})``, this log's users by block
    (`pipeline.vocabulary.indexed_users`; with ``--vocabulary_from`` the vocabulary also keeps parent users this log
    does not have: they get no record, and no share of a split), or the vocabulary alone (every user of it present,
    its blocks hashed here).
    The split is ``None`` for the loo protocol (every user in every split) and the time protocol (whose held-out
    users join separately, `pipeline.timesplit.HeldOut`); for the user protocol it comes from ``split_file``
    (``{user key: split}`` read from ``--split_file``, checked against the users by `splits.file_split_assignment`,
    which raises `splits.SplitFileError`) when given, else from `splits.user_split_assignment`.
    """

    def __init__(
        self,
        protocol: str,
        seed: int,
        valid_fraction: float,
        test_fraction: float,
        split_file: dict[str, str] | None = None,
        num_blocks: int = blocks.MIN_BLOCKS,
    ) -> None:
        if protocol not in splits.PROTOCOLS:
            raise ValueError(f"unknown split protocol {protocol!r}; expected one of {splits.PROTOCOLS}")
        self.protocol = protocol
        self.seed = seed
        self.valid_fraction = valid_fraction
        self.test_fraction = test_fraction
        self.split_file = split_file
        self.num_blocks = num_blocks

    def process(self, element: list[str] | tuple[list[str], dict[int, list[str]]]) -> Iterator[tuple[int, bytes]]:
        if isinstance(element, tuple):
            user_vocab, user_blocks = element
        else:
            user_vocab, user_blocks = element, blocks.by_block(element, self.num_blocks)
        if self.protocol in ("loo", "time"):
            assignment: dict[str, str] | None = None
        else:
            present = list(itertools.chain.from_iterable(user_blocks.values()))
            assignment = (
                splits.file_split_assignment(present, self.split_file)
                if self.split_file is not None
                else splits.user_split_assignment(present, self.seed, self.valid_fraction, self.test_fraction)
            )
        # dict(zip) and list(map): 0.2 s against 0.44 s of comprehensions (0.6 s with an array filled from the map)
        # for 500k users, in the run's one serial worker.
        index_of = dict(zip(user_vocab, range(1, len(user_vocab) + 1), strict=True))
        for block, keys in user_blocks.items():
            split_of = None if assignment is None else [assignment[key] for key in keys]
            yield block, pack_users(keys, list(map(index_of.__getitem__, keys)), split_of)


def _records(protocol: str, user_index: int, ids: list[int], split: str | None) -> dict[str, splits.Record]:
    if protocol == "loo":
        return splits.loo_records(user_index, ids)
    if protocol == "time":
        return splits.time_records(user_index, ids, split or "train")
    return splits.user_records(user_index, ids, split)


def _one(values: list[Any], what: str, block: int) -> Any:
    if len(values) != 1:
        raise ValueError(
            f"user block {block}: {len(values)} {what} instead of one: the runner lost or repeated elements in a "
            "shuffle (seen with --direct_running_mode multi_processing on large logs with per-event elements: "
            "docs/beam_multiprocess_loss); rerun, or use --direct_num_workers 1"
        )
    return values[0]


def records_of_block(
    element: tuple[int, dict[str, list[Any]]], protocol: str, num_blocks: int
) -> Iterator[tuple[str, Any]]:
    """A user block's joined ``{"block": [packed sequences, or a `pipeline.spill` reference], "ids": [packed {item K:
    id}, ...], "users": [`pack_users` part]}`` (time protocol: also ``"held_out": [[(user K, split), ...]]``) -> its
    records and their stats, item counts and evaluation targets (module docstring).

    Fails loudly unless the block arrived exactly once, its users are exactly the users the vocabulary gave this
    block, and every item has an id: a mismatch is not bad input but a runner that lost or repeated elements.
    """
    block, joined = element
    parts = [unpack_users(part) for part in joined["users"]]
    user_of = {user: value for part in parts for user, value in part.items()}
    copies = list(spill.payloads(joined["block"]))
    packed = _one(copies, "copies of its sequences", block) if copies or user_of else None
    sequences = blocks.unpack(packed) if packed is not None else []
    n_users = sum(len(part) for part in parts)
    if n_users != len(sequences) or len(user_of) != n_users or {u for u, _ in sequences} != user_of.keys():
        raise ValueError(
            f"user block {block}: {len(sequences)} sequences but {n_users} vocabulary users: the runner lost or "
            "repeated elements in a shuffle (docs/beam_multiprocess_loss); rerun, or use --direct_num_workers 1"
        )
    ids: dict[str, int] = {}
    for part in joined["ids"]:
        ids.update(blocks.unpack(part))
    held_out = dict(pair for part in joined.get("held_out", ()) for pair in part)
    serialized: dict[str, list[bytes]] = {}
    train_counts: Counter[int] = Counter()
    targets: list[tuple[int, str]] = []
    for user, items in sequences:
        index, split = user_of[user]
        try:
            item_ids = [ids[item] for item in items]
        except KeyError as e:
            raise ValueError(
                f"user {user!r}: item {e.args[0]!r} reached its block without an id: the runner lost elements in a "
                "shuffle (docs/beam_multiprocess_loss); rerun, or use --direct_num_workers 1"
            ) from None
        for name, record in _records(protocol, index, item_ids, held_out.get(user, split)).items():
            serialized.setdefault(name, []).append(serialize_record(record))
            if name == "train":
                train_counts.update(record[1])
            else:
                targets.append((record[2], name))
    Metrics.counter("pipeline", "users_written").inc(len(sequences))
    for name, records in serialized.items():
        yield RECORDS, (name, records)
    yield STATS, [(f"records_{name}", len(records)) for name, records in serialized.items()]
    for item_block, counts in _by_id_block(train_counts.items(), num_blocks).items():
        yield ITEM_COUNTS, (item_block, dict(counts))
    if protocol == "time":
        for item_block, pairs in _by_id_block(targets, num_blocks).items():
            yield EVAL_TARGETS, (item_block, pairs)


def _by_id_block(pairs: Iterable[tuple[int, Any]], num_blocks: int) -> dict[int, list[tuple[int, Any]]]:
    """``(item id, value)`` pairs by the id's block (ids are integers: ``id % num_blocks``)."""
    out: dict[int, list[tuple[int, Any]]] = {}
    for pair in pairs:
        out.setdefault(pair[0] % num_blocks, []).append(pair)
    return out


def _packed(block: blocks.Block) -> tuple[int, bytes]:
    return block[0], blocks.pack(block[1])


class MakeRecords(beam.PTransform):
    """``{"sequences": blocks, "item_uses", "item_vocab", "user_vocab"}`` -> ``(tag, value)`` pairs
    (`records_of_block`).

    Item ids (position in ``item_vocab`` + 1) reach the blocks through the item blocks: the vocabulary is cut into
    one ``{item K: id}`` part per item block, joined with the blocks' distinct items (``item_uses``) and sent back
    to each user block (`item_ids_of_uses`). User indices and splits (`UserSplits`, a list per user block) and the
    time protocol's ``held_out`` join by user block too. Only blocks and distinct keys cross a shuffle, never an
    event; no vocabulary is broadcast as a side input, which the Dask runner recomputes per task
    (`pipeline.portable`). ``user_splits`` assigns each user its split (and with it the protocol), from
    ``user_indices`` (``(vocabulary, {user block: [user K, ...]})``, `pipeline.vocabulary.indexed_users`) when
    given, else ``user_vocab``. With ``spill_dir`` the packed blocks stay in spill files and the join moves
    references to them (`pipeline.spill`).
    """

    def __init__(self, user_splits: UserSplits, spill_dir: str | None = None) -> None:
        super().__init__()
        self.user_splits = user_splits
        self.spill_dir = spill_dir

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        num_blocks = self.user_splits.num_blocks
        vocabulary = inputs["item_vocab"] | "VocabularyBlocks" >> beam.FlatMap(vocabulary_blocks, num_blocks)
        ids = (
            {"ids": vocabulary, "uses": inputs["item_uses"]}
            | "JoinItemIds" >> beam.CoGroupByKey()
            | "IdsByUserBlock" >> beam.FlatMap(item_ids_of_uses)
        )
        users = inputs.get("user_indices", inputs["user_vocab"]) | "UserSplits" >> beam.ParDo(self.user_splits)
        held_out = {"held_out": inputs["held_out"]} if "held_out" in inputs else {}
        packed = inputs["sequences"] | "PackBlocks" >> beam.Map(_packed)
        if self.spill_dir is not None:
            packed = packed | "SpillBlocks" >> beam.ParDo(spill.SpillPayloads(self.spill_dir))
        return (
            {"block": packed, "ids": ids, "users": users, **held_out}
            | "JoinUsers" >> beam.CoGroupByKey()
            | "Records" >> beam.FlatMap(records_of_block, protocol=self.user_splits.protocol, num_blocks=num_blocks)
        )


def serialize_record(record: splits.Record) -> bytes:
    """The record as a serialised ``tf.train.Example``, equal to `mdcns_tf.features.make_example`'s proto.

    `pipeline.encoding` writes the wire format directly: no TensorFlow import in the Beam workers.
    """
    return encoding.encode_example(*record)
