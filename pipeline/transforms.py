"""Beam transforms: raw files -> per-user chronological sequences -> filtered -> dense ids -> split records.

Element shapes between the steps (``K`` = raw key string):

    ReadAndParse       (file_ordinal, path, size_bytes)
                         -> main: (user K, (timestamp, file_ordinal, line_no, (item K, ...)))
                            rejected: "path\\tline\\treason\\traw" lines; counts: one dict[str, int] per file
    BuildSequences     (user K, values) grouped per user -> (user K, [item K, ...]) sorted by (timestamp, file, line)
    KCore / min length (user K, [item K, ...]) -> same, fewer
    MakeRecords        (user K, [item K, ...]) -> tagged train/valid/test (user_index, [item id], target)

No step holds the dataset in one worker: parsing streams each file, sequences are grouped per user. The item and
user vocabularies (distinct keys, not interactions) are combined into one sorted list each and broadcast as side
inputs; that bounds the vocabulary (not the data) by one worker's memory.
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

REJECTED = "rejected"
COUNTS = "counts"

Sequence_ = tuple[str, list[str]]


class ReadAndParse(beam.DoFn):
    """Streams one file line by line (order kept via line numbers) through a `formats.LineParser`.

    Input: ``(file_ordinal, path, size_bytes)``. Outputs: main `formats.Parsed` values, ``rejected`` text lines and,
    once per file, a ``counts`` dict. Logs progress with an ETA every ``log_every_s`` seconds.
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
                    yield beam.pvalue.TaggedOutput(REJECTED, out.to_line())
                else:
                    yield from out
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
        yield beam.pvalue.TaggedOutput(COUNTS, dict(parser.counts))

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


class _DropItems(beam.DoFn):
    """Removes the side input's items from each sequence, then drops users left with fewer than ``k`` items."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._drop: frozenset[str] | None = None

    def process(self, element: Sequence_, drop: Iterable[str]) -> Iterator[Sequence_]:
        # In a batch pipeline a side input is constant, so it is materialised once per DoFn instance, not per call.
        if self._drop is None:
            self._drop = frozenset(drop)
        user, items = element
        if self._drop:
            items = [item for item in items if item not in self._drop]
        if len(items) >= self.k:
            yield user, items


def _item_counts(element: Sequence_) -> Iterable[tuple[str, int]]:
    return Counter(element[1]).items()


class KCore(beam.PTransform):
    """Iterative k-core: per round, drop items with < k interactions, then users with < k left.

    Beam graphs are static, so the loop is unrolled ``rounds`` times (default 10); a round after the fixed point
    removes nothing. Output ``kcore_left`` (via `violations`) counts the items and users still below k afterwards,
    which is 0 when the fixed point was reached; the pipeline logs a warning and records it in metadata otherwise.
    """

    def __init__(self, k: int, rounds: int) -> None:
        super().__init__()
        self.k = k
        self.rounds = rounds

    def expand(self, sequences: beam.PCollection) -> beam.PCollection:
        for r in range(self.rounds):
            low_items = (
                sequences
                | f"ItemCounts{r}" >> beam.FlatMap(_item_counts)
                | f"SumItems{r}" >> beam.CombinePerKey(sum)
                | f"LowItems{r}" >> beam.Filter(lambda kv, k=self.k: kv[1] < k)
                | f"LowKeys{r}" >> beam.Keys()
            )
            sequences = sequences | f"Drop{r}" >> beam.ParDo(_DropItems(self.k), beam.pvalue.AsList(low_items))
        return sequences


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

    All bookkeeping goes through one `SumStats` at the end: one cheap keyed sum instead of a `CombineGlobally` per
    number (each of which costs Beam ~0.5 s of graph construction).
    """
    if users_key is None:
        return sequences | f"Stats_{label}" >> beam.Map(lambda kv: (label, len(kv[1])))
    return sequences | f"Stats_{label}" >> beam.FlatMap(lambda kv: [(label, len(kv[1])), (users_key, 1)])


class SumStats(beam.PTransform):
    """``(name, int)`` collections -> a singleton ``dict[name, total]`` (absent names are simply missing)."""

    def expand(self, stats: beam.PCollection) -> beam.PCollection:
        return stats | "SumPerName" >> beam.CombinePerKey(sum) | "ToDict" >> beam.combiners.ToDict()


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


class MakeRecords(beam.DoFn):
    """``(user K, [item K])`` -> tagged ``train``/``valid``/``test`` records ``(user_index, [item id], target)``.

    Side inputs: the item vocabulary (id = position + 1) and the user vocabulary (index = position + 1); for the
    user protocol the split of each user comes from ``split_file`` (``{user key: split}`` read from
    ``--split_file``, checked against the vocabulary by `splits.file_split_assignment`) when given, else from
    `splits.user_split_assignment` on the user vocabulary.
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
        self._item_ids: dict[str, int] | None = None
        self._user_index: dict[str, int] | None = None
        self._user_split: dict[str, str] | None = None
        self.users_counter = Metrics.counter("pipeline", "users_written")

    def process(self, element: Sequence_, item_vocab: list[str], user_vocab: list[str]) -> Iterator[Any]:
        if self._item_ids is None:  # side inputs are constant in batch: build the lookups once per instance
            self._item_ids = {key: i for i, key in enumerate(item_vocab, start=1)}
            self._user_index = {key: i for i, key in enumerate(user_vocab, start=1)}
            if self.protocol == "user" and self.split_file is not None:
                self._user_split = splits.file_split_assignment(user_vocab, self.split_file)
            elif self.protocol == "user":
                self._user_split = splits.user_split_assignment(
                    user_vocab, self.seed, self.valid_fraction, self.test_fraction
                )
        assert self._user_index is not None
        user, items = element
        ids = [self._item_ids[item] for item in items]
        user_index = self._user_index[user]
        if self.protocol == "loo":
            records = splits.loo_records(user_index, ids)
        else:
            assert self._user_split is not None
            records = splits.user_records(user_index, ids, self._user_split[user])
        self.users_counter.inc()
        for split, record in records.items():
            yield beam.pvalue.TaggedOutput(split, record)


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
