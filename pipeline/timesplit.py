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

    TimeCut      (user K, [(t, item K), ...]) chronological
                   -> {"sequences": ((user K, target K | None), [item K, ...]) the visible events,
                       "stats": ("rows_filtered_time_cut", n), "info": {"cutoff", "time_range"} once}
    HeldOut      the filtered sequences -> {"sequences": (user K, [item K, ...]), "held_out": (user K, split)}
    unseen_targets   records + train item counts -> ("targets_unseen_<split>", 1) per target no train record holds

The target rides in the user key through the filters: they drop an item's events all at once and a user's all at
once (`pipeline.sequences.KCore`), so a target event survives exactly when its item does, and is then still last.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from pipeline import splits, vocabulary

LOG = logging.getLogger("pipeline")

CUTOFF_HELP = (
    "--split time: the cut, in the unit of the log's timestamps: events before it train; each user's first event at "
    "or after it is evaluated (history: the events before it), later ones are dropped"
)
QUANTILE_HELP = (
    "--split time: the cut as a fraction Q (0 < Q < 1) of the log's time range: cutoff = min_t + Q * (max_t - min_t) "
    "over every parsed row's timestamp (not a quantile of the events)"
)
# The computed cutoff reaches the users through a join on a bucket of their key (no side input: `pipeline.portable`);
# a bucket's group holds the keys of 1/BUCKETS of the users.
BUCKETS = 256

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


def _first_last(element: Timed) -> tuple[Any, Any]:
    events = element[1]
    return events[0][0], events[-1][0]


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


def bucket(user: str) -> int:
    """A user's bucket: a hash of the key that every process computes the same (not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(user.encode()).digest()[:4], "big") % BUCKETS


def _cutoff_per_user(element: tuple[int, dict[str, list[Any]]]) -> Iterator[tuple[str, float]]:
    for cutoff in element[1]["cutoff"]:
        for user in element[1]["users"]:
            yield user, cutoff


def _cut_joined(element: tuple[str, dict[str, list[Any]]]) -> Cut:
    user, joined = element
    ((cutoff,), (events,)) = joined["cutoff"], joined["events"]
    return visible_events((user, events), cutoff)


class TimeCut(beam.PTransform):
    """Timed sequences -> the visible events keyed by ``(user, target)``, the cut's stats and its info (module
    docstring). A given ``cutoff`` is a constant of the graph; a ``quantile`` is computed from the log's time range
    and joined to the users by bucket, then by user."""

    def __init__(self, cutoff: float | None, quantile: float | None) -> None:
        super().__init__()
        self.cutoff = cutoff
        self.quantile = quantile

    def expand(self, timed: beam.PCollection) -> dict[str, beam.PCollection]:
        info = (
            timed
            | "UserTimeRange" >> beam.Map(_first_last)
            | "TimeRange" >> beam.CombineGlobally(TimeRange()).without_defaults()
            | "Cutoff" >> beam.Map(cutoff_info, cutoff=self.cutoff, quantile=self.quantile)
        )
        if self.cutoff is not None:
            cut = timed | "Cut" >> beam.Map(visible_events, cutoff=self.cutoff)
        else:
            per_bucket = info | "CutoffPerBucket" >> beam.FlatMap(lambda i: [(b, i["cutoff"]) for b in range(BUCKETS)])
            users = timed | "UserBuckets" >> beam.Map(lambda kv: (bucket(kv[0]), kv[0]))
            per_user = (
                {"cutoff": per_bucket, "users": users}
                | "JoinCutoffBuckets" >> beam.CoGroupByKey()
                | "CutoffPerUser" >> beam.FlatMap(_cutoff_per_user)
            )
            cut = (
                {"cutoff": per_user, "events": timed}
                | "JoinCutoff" >> beam.CoGroupByKey()
                | "Cut" >> beam.Map(_cut_joined)
            )
        return {
            "sequences": cut | "Visible" >> beam.Map(lambda c: (c[0], c[1])),
            "stats": cut | "CutStats" >> beam.Map(lambda c: ("rows_filtered_time_cut", c[2])),
            "info": info,
        }


def _held_out_user(element: tuple[tuple[str, str | None], list[str]]) -> list[str]:
    (user, target), items = element
    if target is None or items[-1] != target:
        return []  # no event after the cut, or its target item was filtered out: the user only trains
    if len(items) < splits.MIN_SEQ_LEN["time"]:  # `--min_seq_len` >= 2 keeps a history; a bug otherwise
        raise ValueError(f"user {user!r}: its target {target!r} has no event before the cut left")
    return [user]


def _assign(users: list[str], seed: int) -> Iterable[tuple[str, str]]:
    return splits.time_split_assignment(users, seed).items()


class HeldOut(beam.PTransform):
    """Filtered ``((user, target), items)`` -> ``{"sequences": (user, items), "held_out": (user, valid | test)}``:
    the held-out users (target still last) split in half by the seed, over their sorted list (one worker's memory,
    like the user vocabulary)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def expand(self, filtered: beam.PCollection) -> dict[str, beam.PCollection]:
        held_out = (
            filtered
            | "HeldOutUsers" >> beam.FlatMap(_held_out_user)
            | "HeldOutKeys" >> beam.Map(lambda user: (user,))
            | "HeldOutList" >> beam.CombineGlobally(vocabulary.Vocabulary()).without_defaults()
            | "AssignHeldOut" >> beam.FlatMap(_assign, seed=self.seed)
        )
        return {"sequences": filtered | "UserKeys" >> beam.Map(lambda kv: (kv[0][0], kv[1])), "held_out": held_out}


def _unseen(element: tuple[int, dict[str, list[Any]]]) -> list[tuple[str, int]]:
    joined = element[1]
    return [] if joined["trained"] else [(f"targets_unseen_{split}", 1) for split in joined["targets"]]


def unseen_targets(split_records: beam.PCollection, item_counts: beam.PCollection) -> beam.PCollection:
    """``(split, (user_index, ids, target))`` records and ``(item id, train occurrences)`` -> a stat
    ``("targets_unseen_<split>", 1)`` per evaluation record whose target no train record holds."""
    targets = split_records | "EvalTargets" >> beam.FlatMap(lambda kv: [(kv[1][2], kv[0])] if kv[0] != "train" else [])
    return (
        {"trained": item_counts, "targets": targets}
        | "JoinTargetCounts" >> beam.CoGroupByKey()
        | "UnseenTargets" >> beam.FlatMap(_unseen)
    )


def time_cut_metadata(info: dict[str, Any] | None, stats: dict[str, int]) -> dict[str, Any] | None:
    """``metadata.json`` ``split`` fields of the cut (`pipeline.splits.split_metadata`); None without events."""
    if info is None:
        return None
    unseen = {split: int(stats.get(f"targets_unseen_{split}", 0)) for split in ("valid", "test")}
    return {**info, "targets_unseen_in_train": unseen}
