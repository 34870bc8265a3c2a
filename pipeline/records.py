"""Records: the filtered sequences and the vocabularies -> ``(split, (user_index, [item id], target))`` pairs.

`MakeRecords` joins the ids to the events; which records a user's ids become is `pipeline.splits`;
`serialize_record` gives a record's bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline import encoding, sequences, splits


def _item_ids(vocabulary: list[str]) -> Iterator[tuple[str, int]]:
    """The item vocabulary -> ``(item K, item id)`` per item."""
    for item_id, key in enumerate(vocabulary, start=1):
        yield key, item_id


def _ids_by_user(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, tuple[int, int]]]:
    """``(item K, {"id": [item id], "uses": [(user K, position), ...]})`` -> ``(user K, (position, item id))``."""
    item, joined = element
    ids, uses = list(joined["id"]), list(joined["uses"])
    if uses and len(ids) != 1:
        # Both sides come from the same sequences, so this means the vocabulary and the events were computed from
        # different versions of them. Fail loudly: dropping the item's events would lose data silently.
        raise ValueError(
            f"item {item!r}: {len(uses)} events but {len(ids)} vocabulary ids; the item vocabulary "
            "and the events disagree (was an upstream step re-run with a different result?)"
        )
    for item_id in ids:
        for user, position in uses:
            yield user, (position, item_id)


class UserSplits(beam.DoFn):
    """The user vocabulary -> ``(user K, (user_index, split))`` for every user (index = position + 1).

    The element is the vocabulary, or ``(vocabulary, users of this log)`` with ``--vocabulary_from`` (whose
    vocabulary keeps users this log does not have: they get no record, and no share of a split).
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
    ) -> None:
        if protocol not in splits.PROTOCOLS:
            raise ValueError(f"unknown split protocol {protocol!r}; expected one of {splits.PROTOCOLS}")
        self.protocol = protocol
        self.seed = seed
        self.valid_fraction = valid_fraction
        self.test_fraction = test_fraction
        self.split_file = split_file

    def process(self, element: list[str] | tuple[list[str], list[str]]) -> Iterator[tuple[str, tuple[int, str | None]]]:
        user_vocab, present = element if isinstance(element, tuple) else (element, element)
        if self.protocol in ("loo", "time"):
            assignment: dict[str, str] | None = None
        elif self.split_file is not None:
            assignment = splits.file_split_assignment(present, self.split_file)
        else:
            assignment = splits.user_split_assignment(present, self.seed, self.valid_fraction, self.test_fraction)
        wanted = None if present is user_vocab else set(present)
        for index, key in enumerate(user_vocab, start=1):
            if wanted is None or key in wanted:
                yield key, (index, None if assignment is None else assignment[key])


def _sequence_length(element: sequences.UserSequence) -> tuple[str, int]:
    user, items = element
    return user, len(items)


def records_of_user(element: tuple[str, dict[str, list[Any]]], protocol: str) -> Iterator[tuple[str, Any]]:
    """A user's joined ``{"user": [(user_index, split)], "length": [n], "ids": [(position, item id), ...]}`` (time
    protocol: also ``"held_out": [split]`` for a held-out user) -> its ``(split, record)`` pairs; fails loudly
    unless exactly positions 0..n-1 arrived."""
    user, joined = element
    ((user_index, split),) = joined["user"]
    (length,) = joined["length"]
    positions = sorted(joined["ids"])
    arrived = [position for position, _ in positions]
    if arrived != list(range(length)):
        # Every position left `sequences` once and went through two shuffles (JoinItemIds, JoinUsers). A mismatch is
        # not bad input: a runner lost or repeated elements. Seen on Beam's multi-process direct runner at 10M
        # events (README, "Known bug"); failing here keeps a short sequence from being written as if it were whole.
        missing = sorted(set(range(length)) - set(arrived))[:5]
        raise ValueError(
            f"user {user!r}: {len(arrived)} of its {length} events reached the records step (missing positions "
            f"{missing}, repeated: {len(arrived) - len(set(arrived))}): the runner lost or repeated elements in a "
            "shuffle. Seen with --direct_running_mode multi_processing on large logs: rerun with "
            "--direct_num_workers 1 or on Dataflow, Flink or Spark"
        )
    ids = [item_id for _, item_id in positions]
    if protocol == "loo":
        records = splits.loo_records(user_index, ids)
    elif protocol == "time":
        records = splits.time_records(user_index, ids, next(iter(joined.get("held_out", ())), "train"))
    else:
        records = splits.user_records(user_index, ids, split)
    Metrics.counter("pipeline", "users_written").inc()
    yield from records.items()


class MakeRecords(beam.PTransform):
    """``{"sequences", "item_vocab", "user_vocab"}`` -> ``(split, (user_index, [item id], target))`` pairs.

    Item ids (position in ``item_vocab`` + 1) reach the events by a join on the item key, user indices and splits
    (`UserSplits`) by a join on the user key: two shuffles of the events instead of broadcasting the vocabularies
    as side inputs, which the Dask runner recomputes per task (`pipeline.portable`). A user with no vocabulary entry
    cannot occur: both vocabularies are built from these sequences. Each sequence's length joins too, so a record is
    written only when every one of its positions arrived (`records_of_user`). ``user_splits`` assigns each user
    its split (and with it the protocol), from ``user_indices`` (``(vocabulary, users of this log)``, with
    ``--vocabulary_from``) when given, else ``user_vocab``; the time protocol's ``held_out`` ``(user K, split)``
    joins too.
    """

    def __init__(self, user_splits: UserSplits) -> None:
        super().__init__()
        self.user_splits = user_splits

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        item_ids = inputs["item_vocab"] | "ItemIds" >> beam.FlatMap(_item_ids)
        events = inputs["sequences"] | "EventsByItem" >> beam.FlatMap(sequences.events_by_item)
        ids = (
            {"id": item_ids, "uses": events}
            | "JoinItemIds" >> beam.CoGroupByKey()
            | "IdsByUser" >> beam.FlatMap(_ids_by_user)
        )
        users = inputs.get("user_indices", inputs["user_vocab"]) | "UserSplits" >> beam.ParDo(self.user_splits)
        lengths = inputs["sequences"] | "SequenceLengths" >> beam.Map(_sequence_length)
        held_out = {"held_out": inputs["held_out"]} if "held_out" in inputs else {}
        return (
            {"user": users, "length": lengths, "ids": ids, **held_out}
            | "JoinUsers" >> beam.CoGroupByKey()
            | "Records" >> beam.FlatMap(records_of_user, protocol=self.user_splits.protocol)
        )


def serialize_record(record: splits.Record) -> bytes:
    """The record as a serialised ``tf.train.Example``, equal to `mdcns_tf.features.make_example`'s proto.

    `pipeline.encoding` writes the wire format directly: no TensorFlow import in the Beam workers.
    """
    return encoding.encode_example(*record)
