"""Beam transforms: raw files -> per-user chronological sequences -> filtered -> dense ids -> split records.

Element shapes between the steps (``K`` = raw key string):

    ReadAndParse       (file_ordinal, path, size_bytes)
                         -> (ROWS, (user K, (timestamp, file_ordinal, line_no, (item K, ...))))
                            (REJECTED, "path\\tline\\treason\\traw"); (COUNTS, dict[str, int]) once per file
    BuildSequences     (user K, values) grouped per user -> (user K, [item K, ...]) sorted by (timestamp, file, line)
    KCore / min length (user K, [item K, ...]) -> same, fewer
    MakeRecords        (user K, [item K, ...]) + vocabularies -> (split, (user_index, [item id], target))

No step holds the dataset in one worker: parsing streams each file, sequences are grouped per user. The item and
user vocabularies (distinct keys, not interactions) are combined into one sorted list each; that bounds the
vocabulary (not the data) by one worker's memory. Ids reach the sequences through joins (`MakeRecords`).

Portability. The graph uses only single-output ParDos, GroupByKey/CoGroupByKey, Flatten and combiners without
default values: no side input and no tagged output. Beam 2.77's Dask runner (`apache_beam.runners.dask`) gets both
wrong, and every other runner runs this subset as well:

- Tagged outputs: its ParDo puts every output in every output collection::

      out = p | beam.Create([1, 2]) | beam.ParDo(
          lambda x: [x, beam.pvalue.TaggedOutput("neg", -x)]).with_outputs("neg", main="main")
      out.neg | beam.Map(print)   # Dask: 1, -1, 2, -2 (the main outputs too); any other runner: -1, -2

  so a step emits ``(tag, value)`` pairs and `select` picks one tag.
- Side inputs: a side input is the producing dask bag pickled into each task of the consumer and recomputed there
  (``list(bag)`` in ``DaskBagWindowedIterator``), once per partition, in that one worker::

      seen = p | "s" >> beam.Create(range(5)) | beam.Map(lambda x: open(f"/tmp/si_{x}", "a").write("x") and x)
      p | beam.Create(range(300)) | beam.Map(lambda x, s: x, beam.pvalue.AsList(seen))
      # Dask: each /tmp/si_* holds "xxx" (3 partitions of 128); any other runner: "x"

  With the vocabularies as side inputs the whole upstream pipeline reran inside every records task. So ids are
  joined (`MakeRecords`), k-core groups by item (`KCore`), and a global combine that must yield a value on empty
  input gets it from a ``Create`` marker (`combine_globally`), not from Beam's default injection (a side input).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import encoding, formats, splits

LOG = logging.getLogger("pipeline")

ROWS = "rows"
REJECTED = "rejected"
COUNTS = "counts"

Sequence_ = tuple[str, list[str]]


class ReadAndParse(beam.DoFn):
    """Streams one file line by line (order kept via line numbers) through a `formats.LineParser`.

    Input: ``(file_ordinal, path, size_bytes)``. Outputs ``(tag, value)`` pairs (one output, see the module
    docstring; `select` splits them): ``ROWS`` `formats.Parsed` values, ``REJECTED`` text lines and, once per file,
    a ``COUNTS`` dict. Logs progress with an ETA every ``log_every_s`` seconds.
    """

    def __init__(
        self,
        input_format: str,
        delimiter: str | None,
        delimiter_fixed: bool,
        columns: tuple[str, ...] | None,
        max_line_bytes: int = formats.DEFAULT_MAX_LINE_BYTES,
        log_every_s: float = 30.0,
    ) -> None:
        self.input_format = input_format
        self.delimiter = delimiter
        self.delimiter_fixed = delimiter_fixed
        self.columns = columns
        self.max_line_bytes = max_line_bytes
        self.log_every_s = log_every_s
        self.lines_counter = Metrics.counter("pipeline", "lines_read")
        self.rows_counter = Metrics.counter("pipeline", "rows_read")
        self.rejected_counter = Metrics.counter("pipeline", "rows_rejected")

    def process(self, element: tuple[int, str, int]) -> Iterator[Any]:
        file_ordinal, path, size = element
        parser = formats.LineParser(
            self.input_format,
            path=path,
            file_ordinal=file_ordinal,
            delimiter=self.delimiter,
            delimiter_fixed=self.delimiter_fixed,
            columns=self.columns,
        )
        start = last_log = time.monotonic()
        reported = {"lines_read": 0, "rows_read": 0, "rows_rejected": 0}
        with FileSystems.open(path) as stream:
            for line_no, (raw, consumed) in enumerate(formats.iter_lines(stream, self.max_line_bytes), start=1):
                out = parser.parse(line_no, raw)
                if isinstance(out, formats.Rejection):
                    yield REJECTED, out.to_line()
                else:
                    for parsed in out:
                        yield ROWS, parsed
                if line_no % 65536 == 0:
                    self._report(parser.counts, reported)
                    now = time.monotonic()
                    if now - last_log >= self.log_every_s:
                        last_log = now
                        rate = consumed / max(now - start, 1e-9)
                        eta = (size - consumed) / rate if size and consumed < size else 0.0
                        LOG.info(
                            "%s: %d lines, %.1f%% of %d bytes, %.1f MB/s, ETA %.0fs",
                            path,
                            line_no,
                            100.0 * consumed / max(size, 1),
                            size,
                            rate / 1e6,
                            eta,
                        )
        self._report(parser.counts, reported)
        LOG.info(
            "%s: done in %.1fs: %s (delimiter %r, columns %s, header %s)",
            path,
            time.monotonic() - start,
            {k: v for k, v in sorted(parser.counts.items()) if v},
            parser.delimiter,
            parser.layout,
            "none" if parser.header is None else repr(parser.header[:200]),
        )
        yield COUNTS, dict(parser.counts)

    def _report(self, counts: dict[str, int], reported: dict[str, int]) -> None:
        # Counters are bumped in batches: a metric update per line would dominate the parse cost.
        for key, counter in (
            ("lines_read", self.lines_counter),
            ("rows_read", self.rows_counter),
            ("rows_rejected", self.rejected_counter),
        ):
            delta = counts.get(key, 0) - reported[key]
            if delta:
                counter.inc(delta)
                reported[key] += delta


class SumDicts(beam.CombineFn):
    """Sums ``dict[str, int]`` elements key by key (the per-file counts)."""

    def create_accumulator(self) -> dict[str, int]:
        return {}

    def add_input(self, acc: dict[str, int], element: dict[str, int]) -> dict[str, int]:
        for key, value in element.items():
            acc[key] = acc.get(key, 0) + value
        return acc

    def merge_accumulators(self, accumulators: Iterable[dict[str, int]]) -> dict[str, int]:
        merged: dict[str, int] = {}
        for acc in accumulators:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: dict[str, int]) -> dict[str, int]:
        return acc


def _with_tag(element: tuple[str, Any], tag: str) -> list[Any]:
    return [element[1]] if element[0] == tag else []


def select(tagged: beam.PCollection, tag: str, label: str) -> beam.PCollection:
    """The values of ``(tag, value)`` pairs with this tag (a portable stand-in for a tagged output)."""
    return tagged | label >> beam.FlatMap(_with_tag, tag)


def combine_globally(pcoll: beam.PCollection, fn: beam.CombineFn, empty: Any, label: str) -> beam.PCollection:
    """``CombineGlobally(fn)`` that yields exactly one value, ``fn``'s result for ``empty`` on empty input.

    Beam injects the empty result through a side input; here a ``Create([empty])`` marker is combined in instead
    (``fn`` must ignore it: an empty collection of keys, an empty dict), which every runner supports.
    """
    marker = pcoll.pipeline | f"{label}Empty" >> beam.Create([empty])
    return (
        (pcoll, marker) | f"{label}WithEmpty" >> beam.Flatten() | label >> beam.CombineGlobally(fn).without_defaults()
    )


def build_sequence(element: tuple[str, Iterable[Any]], has_timestamps: bool, dedupe: bool) -> Sequence_:
    """One user's values -> ``(user, [item, ...])`` in chronological order, ties in input order (stable sort).

    With ``dedupe``, an event repeating an earlier event of the user is dropped: same item and same timestamp when
    the format has timestamps, else the same item as the immediately preceding event.
    """
    user, values = element
    ordered = sorted(values, key=lambda value: (value[0], value[1], value[2]))
    items: list[str] = []
    if not dedupe:
        for value in ordered:
            items.extend(value[3])
        return user, items
    seen: set[tuple[Any, str]] = set()
    for timestamp, _, _, keys in ordered:
        for item in keys:
            if has_timestamps:
                if (timestamp, item) in seen:
                    continue
                seen.add((timestamp, item))
            elif items and items[-1] == item:
                continue
            items.append(item)
    return user, items


class BuildSequences(beam.PTransform):
    """`formats.Parsed` values -> ``(user, [item, ...])`` chronological per user (grouped by user)."""

    def __init__(self, has_timestamps: bool, dedupe: bool) -> None:
        super().__init__()
        self.has_timestamps = has_timestamps
        self.dedupe = dedupe

    def expand(self, parsed: beam.PCollection) -> beam.PCollection:
        return (
            parsed
            | "GroupByUser" >> beam.GroupByKey()
            | "SortPerUser" >> beam.Map(build_sequence, has_timestamps=self.has_timestamps, dedupe=self.dedupe)
        )


def _events_by_item(element: Sequence_) -> Iterator[tuple[str, tuple[str, int]]]:
    user, items = element
    for position, item in enumerate(items):
        yield item, (user, position)


def _keep_frequent_item(element: tuple[str, Iterable[tuple[str, int]]], k: int) -> Iterator[Any]:
    item, uses = element
    uses = list(uses)
    if len(uses) >= k:
        for user, position in uses:
            yield user, (position, item)


def _rebuild_if_long(element: tuple[str, Iterable[tuple[int, str]]], k: int) -> Iterator[Sequence_]:
    user, positioned = element
    items = [item for _, item in sorted(positioned)]
    if len(items) >= k:
        yield user, items


class KCore(beam.PTransform):
    """Iterative k-core: per round, drop items with < k interactions, then users with < k left.

    Beam graphs are static, so the loop is unrolled ``rounds`` times (default 10); a round after the fixed point
    removes nothing. Output ``kcore_left`` (via `violations`) counts the items and users still below k afterwards,
    which is 0 when the fixed point was reached; the pipeline logs a warning and records it in metadata otherwise.

    A round groups the events by item (an item's group is its count: kept or dropped whole), then by user (the
    kept events back in sequence order). No side input (see the module docstring); memory per group is bounded by
    the most popular item's interactions.
    """

    def __init__(self, k: int, rounds: int) -> None:
        super().__init__()
        self.k = k
        self.rounds = rounds

    def expand(self, sequences: beam.PCollection) -> beam.PCollection:
        for r in range(self.rounds):
            sequences = (
                sequences
                | f"EventsByItem{r}" >> beam.FlatMap(_events_by_item)
                | f"GroupByItem{r}" >> beam.GroupByKey()
                | f"DropRareItems{r}" >> beam.FlatMap(_keep_frequent_item, k=self.k)
                | f"GroupByUser{r}" >> beam.GroupByKey()
                | f"DropShortUsers{r}" >> beam.FlatMap(_rebuild_if_long, k=self.k)
            )
        return sequences


def _item_counts(element: Sequence_) -> Iterable[tuple[str, int]]:
    return Counter(element[1]).items()


def kcore_violations(sequences: beam.PCollection, k: int, label: str = "KCoreCheck") -> beam.PCollection:
    """Stats ``("kcore_items_below_k", 1)`` per item and ``("kcore_users_below_k", 1)`` per user still below k."""
    items_low = (
        sequences
        | f"{label}ItemCounts" >> beam.FlatMap(_item_counts)
        | f"{label}SumItems" >> beam.CombinePerKey(sum)
        | f"{label}LowItems" >> beam.FlatMap(lambda kv: [("kcore_items_below_k", 1)] if kv[1] < k else [])
    )
    users_low = sequences | f"{label}LowUsers" >> beam.FlatMap(
        lambda kv: [("kcore_users_below_k", 1)] if len(kv[1]) < k else []
    )
    return (items_low, users_low) | f"{label}Flatten" >> beam.Flatten()


def sequence_stats(sequences: beam.PCollection, label: str, users_key: str | None = None) -> beam.PCollection:
    """Stats ``(label, len(items))`` (and ``(users_key, 1)``) per ``(user, [item])``, to be summed per key.

    All bookkeeping goes through one keyed sum at the end (``SumStats`` in `pipeline.run.build_pipeline`; `SumStats`
    here is the same as one dict): one cheap keyed sum instead of a `CombineGlobally` per
    number (each of which costs Beam ~0.5 s of graph construction).
    """
    if users_key is None:
        return sequences | f"Stats_{label}" >> beam.Map(lambda kv: (label, len(kv[1])))
    return sequences | f"Stats_{label}" >> beam.FlatMap(lambda kv: [(label, len(kv[1])), (users_key, 1)])


def _stat_dict(element: tuple[str, int]) -> dict[str, int]:
    return {element[0]: element[1]}


class SumStats(beam.PTransform):
    """``(name, int)`` collections -> a singleton ``dict[name, total]`` (absent names are simply missing; ``{}``
    for no stats at all)."""

    def expand(self, stats: beam.PCollection) -> beam.PCollection:
        totals = stats | "SumPerName" >> beam.CombinePerKey(sum) | "AsDict" >> beam.Map(_stat_dict)
        return combine_globally(totals, SumDicts(), {}, "ToDict")


class Vocabulary(beam.CombineFn):
    """Combines collections of keys into the sorted distinct list (`formats.vocabulary_order`)."""

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
        return formats.vocabulary_order(acc)


def _item_ids(vocabulary: list[str]) -> Iterator[tuple[str, int]]:
    for item_id, key in enumerate(vocabulary, start=1):
        yield key, item_id


def _ids_by_user(element: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, tuple[int, int]]]:
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

    The split is the loo protocol's (every user in every split: ``None``) or the user protocol's, from
    ``split_file`` (``{user key: split}`` read from ``--split_file``, checked against the vocabulary by
    `splits.file_split_assignment`, which raises `splits.SplitFileError`) when given, else from
    `splits.user_split_assignment`.
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

    def process(self, user_vocab: list[str]) -> Iterator[tuple[str, tuple[int, str | None]]]:
        if self.protocol == "loo":
            assignment: dict[str, str] | None = None
        elif self.split_file is not None:
            assignment = splits.file_split_assignment(user_vocab, self.split_file)
        else:
            assignment = splits.user_split_assignment(user_vocab, self.seed, self.valid_fraction, self.test_fraction)
        for index, key in enumerate(user_vocab, start=1):
            yield key, (index, None if assignment is None else assignment[key])


def _sequence_length(element: Sequence_) -> tuple[str, int]:
    user, items = element
    return user, len(items)


def records_of_user(element: tuple[str, dict[str, list[Any]]], protocol: str) -> Iterator[tuple[str, Any]]:
    """A user's joined ``{"user": [(user_index, split)], "length": [n], "ids": [(position, item id), ...]}`` -> its
    ``(split, record)`` pairs; fails loudly unless exactly positions 0..n-1 arrived."""
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
    records = splits.loo_records(user_index, ids) if protocol == "loo" else splits.user_records(user_index, ids, split)
    Metrics.counter("pipeline", "users_written").inc()
    yield from records.items()


class MakeRecords(beam.PTransform):
    """``{"sequences", "item_vocab", "user_vocab"}`` -> ``(split, (user_index, [item id], target))`` pairs.

    Item ids (position in ``item_vocab`` + 1) reach the events by a join on the item key, user indices and splits
    (`UserSplits`) by a join on the user key: two shuffles of the events instead of broadcasting the vocabularies
    as side inputs, which the Dask runner recomputes per task (module docstring). A user with no vocabulary entry
    cannot occur: both vocabularies are built from these sequences. Each sequence's length joins too, so a record is
    written only when every one of its positions arrived (`records_of_user`).
    """

    def __init__(
        self,
        protocol: str,
        seed: int,
        valid_fraction: float,
        test_fraction: float,
        split_file: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.protocol = protocol
        self.user_splits = UserSplits(protocol, seed, valid_fraction, test_fraction, split_file)

    def expand(self, inputs: dict[str, beam.PCollection]) -> beam.PCollection:
        item_ids = inputs["item_vocab"] | "ItemIds" >> beam.FlatMap(_item_ids)
        events = inputs["sequences"] | "EventsByItem" >> beam.FlatMap(_events_by_item)
        ids = (
            {"id": item_ids, "uses": events}
            | "JoinItemIds" >> beam.CoGroupByKey()
            | "IdsByUser" >> beam.FlatMap(_ids_by_user)
        )
        users = inputs["user_vocab"] | "UserSplits" >> beam.ParDo(self.user_splits)
        lengths = inputs["sequences"] | "SequenceLengths" >> beam.Map(_sequence_length)
        return (
            {"user": users, "length": lengths, "ids": ids}
            | "JoinUsers" >> beam.CoGroupByKey()
            | "Records" >> beam.FlatMap(records_of_user, protocol=self.protocol)
        )


class ItemCounts(beam.CombineFn):
    """Counts item ids over records ``(user_index, [item id], target)``: ``{item_id: count}``."""

    def create_accumulator(self) -> Counter[int]:
        return Counter()

    def add_input(self, acc: Counter[int], record: Any) -> Counter[int]:
        acc.update(record[1])
        return acc

    def merge_accumulators(self, accumulators: Iterable[Counter[int]]) -> Counter[int]:
        merged: Counter[int] = Counter()
        for acc in accumulators:
            merged.update(acc)
        return merged

    def extract_output(self, acc: Counter[int]) -> dict[int, int]:
        return dict(acc)


def serialize_record(record: splits.Record) -> bytes:
    """The record as a serialised ``tf.train.Example``, equal to `mdcns_tf.features.make_example`'s proto.

    `pipeline.encoding` writes the wire format directly: no TensorFlow import in the Beam workers.
    """
    return encoding.encode_example(*record)
