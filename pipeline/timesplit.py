"""``--split time``: a global temporal cut, leakage-free by construction (Ji et al., "A Critical Study on Data
Leakage in Recommender System Offline Evaluation", TOIS 2023).

One timestamp ``c`` cuts the whole log: ``--cutoff c``, or ``--cutoff_quantile Q`` for ``c = min_t + Q * (max_t -
min_t)`` over every parsed row's timestamp. An event is *before* the cut when ``t < c``. Per user, the *visible*
events are those before the cut plus the first one at or after it (its *target*; ties in input order); later ones
are dropped (``rows_filtered_time_cut``). The filters (k-core, ``--min_seq_len``) then run on the visible events,
so no event after a target decides which users and items are kept; the vocabularies hold the items up to and
including the targets, so every target has an id even when it never occurs before the cut (such targets are
counted in ``metadata.json`` ``split.targets_unseen_in_train``). Records (`pipeline.splits.time_records`): every
user trains on its events before the cut; a user whose target survived the filters is held out, evaluated on its
history before the cut -> the target; half the held-out users validate, half test (`splits.time_split_assignment`).

    TimeCut      blocks of (user K, [(t, item K), ...]) chronological (`pipeline.blocks`)
                   -> {"sequences": blocks of ((user K, target K | None), [item K, ...]) the visible events,
                       "stats": ("rows_filtered_time_cut", n), "info": {"cutoff", "time_range"} once}
    HeldOut      the filtered blocks -> {"sequences": blocks of (user K, [item K, ...]),
                                         "held_out": (block, [(user K, split), ...])}
    unseen_targets   eval targets + train item counts, by item block -> ("targets_unseen_<split>", n)

The target rides in the user key through the filters: they drop an item's events all at once and a user's all at
once (`pipeline.sequences.KCore`), so a target event survives exactly when its item does, and is then still last.
"""

from __future__ import annotations

import bisect
import logging
import operator
from collections.abc import Iterable
from typing import Any

import apache_beam as beam

from pipeline import blocks, splits, vocabulary

LOG = logging.getLogger("pipeline")

CUTOFF_HELP = (
    "--split time: the cut, in the unit of the log's timestamps: events before it train; each user's first event at "
    "or after it is evaluated (history: the events before it), later ones are dropped"
)
QUANTILE_HELP = (
    "--split time: the cut as a fraction Q (0 < Q < 1) of the log's time range: cutoff = min_t + Q * (max_t - min_t) "
    "over every parsed row's timestamp (not a quantile of the events)"
)
Timed = tuple[str, list[tuple[Any, str]]]
Cut = tuple[tuple[str, "str | None"], list[str], int]


def visible_events(element: Timed, cutoff: float) -> Cut:
    """``(user, [(t, item), ...])`` chronological -> ``((user, target or None), visible items, events dropped)``."""
    user, events = element
    before = bisect.bisect_left(events, cutoff, key=lambda event: event[0])
    items = [item for _, item in events[:before]]
    if before == len(events):
        return (user, None), items, 0
    target = events[before][1]
    return (user, target), [*items, target], len(events) - before - 1


def _block_range(block: blocks.Block) -> list[tuple[Any, Any]]:
    """A block's ``(first t, last t)`` over its users; nothing for a block without users."""
    pairs = block[1]
    if not pairs:
        return []
    return [(min(events[0][0] for _, events in pairs), max(events[-1][0] for _, events in pairs))]


def _cut_block(block: blocks.Block, cutoff: float) -> tuple[int, list[Cut]]:
    return block[0], [visible_events(pair, cutoff) for pair in block[1]]


class TimeRange(beam.CombineFn):
    """``(first t, last t)`` per user -> ``(min t, max t)`` of the log (None for no input)."""

    def create_accumulator(self) -> tuple[Any, Any] | None:
        return None

    def add_input(self, acc: tuple[Any, Any] | None, element: tuple[Any, Any]) -> tuple[Any, Any]:
        return element if acc is None else (min(acc[0], element[0]), max(acc[1], element[1]))

    def merge_accumulators(self, accumulators: Iterable[tuple[Any, Any] | None]) -> tuple[Any, Any] | None:
        merged = None
        for acc in accumulators:
            if acc is not None:
                merged = self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: tuple[Any, Any] | None) -> tuple[Any, Any] | None:
        return acc


def cutoff_info(time_range: tuple[Any, Any], cutoff: float | None, quantile: float | None) -> dict[str, Any]:
    """``{"cutoff", "time_range": [min t, max t]}``: ``cutoff`` as given, else ``min + quantile * (max - min)``."""
    low, high = time_range
    used = cutoff if cutoff is not None else low + quantile * (high - low)
    if used <= low:
        LOG.warning("--split time: the cutoff %s is at or before the first event (%s): nothing trains", used, low)
    elif used > high:
        LOG.warning("--split time: the cutoff %s is after the last event (%s): no user is held out", used, high)
    return {"cutoff": used, "time_range": [low, high]}


def _cut_joined(element: tuple[int, dict[str, list[Any]]]) -> list[tuple[int, list[Cut]]]:
    block, joined = element
    return [_cut_block((block, pairs), cutoff) for cutoff in joined["cutoff"] for _, pairs in joined["block"]]


def _visible(cut: tuple[int, list[Cut]]) -> blocks.Block:
    return cut[0], [(key, items) for key, items, _ in cut[1]]


def _dropped(cut: tuple[int, list[Cut]]) -> tuple[str, int]:
    return "rows_filtered_time_cut", sum(dropped for _, _, dropped in cut[1])


class TimeCut(beam.PTransform):
    """Timed blocks -> the visible events keyed by ``(user, target)``, the cut's stats and its info (module
    docstring). A given ``cutoff`` is a constant of the graph; a ``quantile`` is computed from the log's time range
    and joined to each of the ``num_blocks`` blocks (no side input: `pipeline.portable`)."""

    def __init__(self, cutoff: float | None, quantile: float | None, num_blocks: int) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.quantile = quantile
        self.num_blocks = num_blocks

    def expand(self, timed: beam.PCollection) -> dict[str, beam.PCollection]:
        info = (
            timed
            | "BlockTimeRange" >> beam.FlatMap(_block_range)
            | "TimeRange" >> beam.CombineGlobally(TimeRange()).without_defaults()
            | "Cutoff" >> beam.Map(cutoff_info, cutoff=self.cutoff, quantile=self.quantile)
        )
        if self.cutoff is not None:
            cut = timed | "Cut" >> beam.Map(_cut_block, cutoff=self.cutoff)
        else:
            per_block = info | "CutoffPerBlock" >> beam.FlatMap(
                lambda i, n=self.num_blocks: [(b, i["cutoff"]) for b in range(n)]
            )
            cut = (
                {"cutoff": per_block, "block": timed | "KeyedBlocks" >> beam.Map(lambda b: (b[0], b))}
                | "JoinCutoff" >> beam.CoGroupByKey()
                | "Cut" >> beam.FlatMap(_cut_joined)
            )
        return {
            "sequences": cut | "Visible" >> beam.Map(_visible),
            "stats": cut | "CutStats" >> beam.Map(_dropped),
            "info": info,
        }


def _held_out_user(element: tuple[tuple[str, str | None], list[str]]) -> list[str]:
    (user, target), items = element
    if target is None or items[-1] != target:
        return []  # no event after the cut, or its target item was filtered out: the user only trains
    if len(items) < splits.MIN_SEQ_LEN["time"]:  # `--min_seq_len` >= 2 keeps a history; a bug otherwise
        raise ValueError(f"user {user!r}: its target {target!r} has no event before the cut left")
    return [user]


def _held_out_of_block(block: blocks.Block) -> list[list[str]]:
    users = [user for pair in block[1] for user in _held_out_user(pair)]
    return [users] if users else []


def _assign(users: list[str], seed: int, num_blocks: int) -> Iterable[tuple[int, list[tuple[str, str]]]]:
    """The held-out users' splits, a list per user block."""
    assignment = splits.time_split_assignment(users, seed).items()
    return blocks.by_block(assignment, num_blocks, key=operator.itemgetter(0)).items()


def _user_keys(block: blocks.Block) -> blocks.Block:
    return block[0], [(key[0], items) for key, items in block[1]]


class HeldOut(beam.PTransform):
    """Filtered blocks of ``((user, target), items)`` -> ``{"sequences": blocks of (user, items), "held_out":
    (block, [(user, valid | test), ...])}``: the held-out users (target still last) split in half by the seed,
    over their sorted list (one worker's memory, like the user vocabulary)."""

    def __init__(self, seed: int, num_blocks: int) -> None:
        super().__init__()
        self.seed = seed
        self.num_blocks = num_blocks

    def expand(self, filtered: beam.PCollection) -> dict[str, beam.PCollection]:
        held_out = (
            filtered
            | "HeldOutUsers" >> beam.FlatMap(_held_out_of_block)
            | "HeldOutList" >> beam.CombineGlobally(vocabulary.Vocabulary()).without_defaults()
            | "AssignHeldOut" >> beam.FlatMap(_assign, seed=self.seed, num_blocks=self.num_blocks)
        )
        return {"sequences": filtered | "UserKeys" >> beam.Map(_user_keys), "held_out": held_out}


def _unseen(element: tuple[int, dict[str, list[Any]]]) -> list[tuple[str, int]]:
    joined = element[1]
    trained = {item_id for counts in joined["trained"] for item_id in counts}
    unseen: dict[str, int] = {}
    for targets in joined["targets"]:
        for target, split in targets:
            if target not in trained:
                unseen[f"targets_unseen_{split}"] = unseen.get(f"targets_unseen_{split}", 0) + 1
    return list(unseen.items())


def unseen_targets(eval_targets: beam.PCollection, item_counts: beam.PCollection) -> beam.PCollection:
    """``(id block, [(target id, split), ...])`` of the evaluation records and ``(id block, {item id: train
    occurrences})`` -> stats ``("targets_unseen_<split>", n)``: the evaluation records whose target no train record
    holds."""
    return (
        {"trained": item_counts, "targets": eval_targets}
        | "JoinTargetCounts" >> beam.CoGroupByKey()
        | "UnseenTargets" >> beam.FlatMap(_unseen)
    )


def time_cut_metadata(info: dict[str, Any] | None, stats: dict[str, int]) -> dict[str, Any] | None:
    """``metadata.json`` ``split`` fields of the cut (`pipeline.splits.split_metadata`); None without events."""
    if info is None:
        return None
    unseen = {split: int(stats.get(f"targets_unseen_{split}", 0)) for split in ("valid", "test")}
    return {**info, "targets_unseen_in_train": unseen}
