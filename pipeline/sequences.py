"""Per-user sequences: parsed rows -> ``(user K, [item K, ...])`` in chronological order, then filtered.

    BuildSequences    ``(block, blocks.Batch)`` rows grouped per user block -> blocks of (user K, [item K, ...])
                      sorted by (timestamp, file, line), optionally deduplicated
    FilterSequences   blocks of (user K, [item K, ...]) -> the same, fewer: k-core (`KCore`), then the minimum length

Sequences travel in blocks (`pipeline.blocks`): no step holds more than one block's events (a k-core round, which
runs per event, one item's).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from pipeline import accounting, blocks, spill

UserSequence = tuple[str, list[str]]
# `KCore` rounds are unrolled into the graph, 5 steps each: beyond ~300 rounds Beam's graph optimiser overflows
# Python's recursion limit. Real logs reach the fixed point in far fewer rounds (`kcore_violations` says when not).
MAX_KCORE_ROUNDS = 100


def build_sequence(
    element: tuple[str, Iterable[Any]], has_timestamps: bool, dedupe: bool, with_times: bool = False
) -> UserSequence | tuple[str, list[tuple[Any, str]]]:
    """One user's values -> ``(user, [item, ...])`` in chronological order, ties in input order (stable sort);
    with ``with_times`` ``(user, [(timestamp, item), ...])`` (the time split cuts on them, `pipeline.timesplit`).

    With ``dedupe``, an event repeating an earlier event of the user is dropped: same item and same timestamp when
    the format has timestamps, else the same item as the immediately preceding event.
    """
    user, values = element
    ordered = sorted(values, key=lambda value: (value[0], value[1], value[2]))
    if not dedupe:
        if with_times:
            return user, [(value[0], item) for value in ordered for item in value[3]]
        items: list[Any] = []
        for value in ordered:
            items.extend(value[3])
        return user, items
    events: list[Any] = []
    seen: set[tuple[Any, str]] = set()
    previous = None
    for timestamp, _, _, keys in ordered:
        for item in keys:
            if has_timestamps:
                if (timestamp, item) in seen:
                    continue
                seen.add((timestamp, item))
            elif events and previous == item:
                continue
            previous = item
            events.append((timestamp, item) if with_times else item)
    return user, events


def build_block(
    element: tuple[int, Iterable[bytes | spill.Ref]], has_timestamps: bool, dedupe: bool, with_times: bool = False
) -> blocks.Block:
    """A block's packed row batches (`pipeline.blocks.pack`), or references to them in spill files
    (`pipeline.spill`) -> the block's sequences (`build_sequence` per user)."""
    block, batches = element
    values: dict[str, list[Any]] = {}
    for payload in spill.payloads(batches):
        ordinal, users, items, times, lines = blocks.unpack(payload)
        for user, keys, timestamp, line in zip(users, items, times, lines, strict=True):
            user_values = values.get(user)
            if user_values is None:
                user_values = values[user] = []
            user_values.append((timestamp, ordinal, line, keys))
    return block, [build_sequence(pair, has_timestamps, dedupe, with_times) for pair in values.items()]


class BuildSequences(beam.PTransform):
    """``(block, packed blocks.Batch)`` row batches -> blocks of ``(user, [item, ...])``, chronological per user; with
    ``with_times`` ``(user, [(timestamp, item), ...])``."""

    def __init__(self, has_timestamps: bool, dedupe: bool, with_times: bool = False) -> None:
        super().__init__()
        self.has_timestamps = has_timestamps
        self.dedupe = dedupe
        self.with_times = with_times

    def expand(self, parsed: beam.PCollection) -> beam.PCollection:
        return (
            parsed
            | "GroupByBlock" >> beam.GroupByKey()
            | "SortPerUser"
            >> beam.Map(build_block, has_timestamps=self.has_timestamps, dedupe=self.dedupe, with_times=self.with_times)
        )


def events_by_item(element: UserSequence) -> Iterator[tuple[str, tuple[str, int]]]:
    """``(user, [item, ...])`` -> ``(item, (user, position))`` per event."""
    user, items = element
    for position, item in enumerate(items):
        yield item, (user, position)


def _keep_frequent_item(element: tuple[str, Iterable[tuple[str, int]]], k: int) -> Iterator[Any]:
    item, uses = element
    uses = list(uses)
    if len(uses) >= k:
        for user, position in uses:
            yield user, (position, item)


def _rebuild_if_long(element: tuple[str, Iterable[tuple[int, str]]], k: int) -> Iterator[UserSequence]:
    user, positioned = element
    items = [item for _, item in sorted(positioned)]
    if len(items) >= k:
        yield user, items


class KCore(beam.PTransform):
    """Iterative k-core: per round, drop items with < k interactions, then users with < k left.

    Beam graphs are static, so the loop is unrolled ``rounds`` times (default 10, at most `MAX_KCORE_ROUNDS`); a
    round after the fixed point removes nothing. `kcore_violations` counts the items and users still below k
    afterwards, which is 0 when the fixed point was reached; the pipeline logs a warning and records it in metadata
    otherwise.

    A round groups the events by item (an item's group is its count: kept or dropped whole), then by user (the
    kept events back in sequence order). No side input (`pipeline.portable`); memory per group is bounded by
    the most popular item's interactions.
    """

    def __init__(self, k: int, rounds: int) -> None:
        super().__init__()
        if not 1 <= rounds <= MAX_KCORE_ROUNDS:
            raise ValueError(f"k-core rounds must be in 1..{MAX_KCORE_ROUNDS} (unrolled into the graph), got {rounds}")
        self.k = k
        self.rounds = rounds

    def expand(self, sequences: beam.PCollection) -> beam.PCollection:
        for r in range(self.rounds):
            sequences = (
                sequences
                | f"EventsByItem{r}" >> beam.FlatMap(events_by_item)
                | f"GroupByItem{r}" >> beam.GroupByKey()
                | f"DropRareItems{r}" >> beam.FlatMap(_keep_frequent_item, k=self.k)
                | f"GroupByUser{r}" >> beam.GroupByKey()
                | f"DropShortUsers{r}" >> beam.FlatMap(_rebuild_if_long, k=self.k)
            )
        return sequences


def _item_counts(element: UserSequence) -> Iterable[tuple[str, int]]:
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


def _long_enough(block: blocks.Block, n: int) -> blocks.Block:
    return block[0], [pair for pair in block[1] if len(pair[1]) >= n]


class FilterSequences(beam.PTransform):
    """Blocks of ``(user K, [item K, ...])`` -> ``{"sequences": the same, fewer; "stats": (name, n) pairs}``.

    The k-core when ``kcore > 1`` (`KCore`, per event: the sequences leave their blocks and are grouped back by
    ``num_blocks``), then users shorter than ``min_seq_len`` dropped. The stats (`pipeline.accounting`) count the
    users and rows that come in and the rows left after each filter.
    """

    def __init__(self, kcore: int, kcore_rounds: int, min_seq_len: int, num_blocks: int) -> None:
        super().__init__()
        self.kcore = kcore
        self.kcore_rounds = kcore_rounds
        self.min_seq_len = min_seq_len
        self.num_blocks = num_blocks

    def expand(self, sequences: beam.PCollection) -> dict[str, beam.PCollection]:
        stats = [accounting.block_stats(sequences, "rows_after_dedupe", users_key="users_read")]
        if self.kcore > 1:
            kept = (
                sequences | "Users" >> beam.FlatMap(blocks.users_of) | "KCore" >> KCore(self.kcore, self.kcore_rounds)
            )
            stats.append(kcore_violations(kept, self.kcore))
            sequences = (
                kept
                | "UserBlocks" >> beam.Map(blocks.keyed, self.num_blocks)
                | "GroupByBlock" >> beam.GroupByKey()
                | "AsBlocks" >> beam.Map(blocks.as_block)
            )
        stats.append(accounting.block_stats(sequences, "rows_after_kcore"))
        sequences = sequences | "MinSeqLen" >> beam.Map(_long_enough, self.min_seq_len)
        stats.append(accounting.block_stats(sequences, "rows_written"))
        return {"sequences": sequences, "stats": stats | "AllStats" >> beam.Flatten()}
