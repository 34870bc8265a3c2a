"""Row accounting: the ``(name, n)`` stats the steps emit, and the ``metadata.json`` counts made of them.

Every step that changes the row count emits stats, summed per name by one keyed sum at the end of the graph
(`pipeline.preprocess.Finish`): one cheap keyed sum instead of a `CombineGlobally` per number (each of which costs
Beam ~0.5 s of graph construction). The names:

- per file, from the parser (`pipeline.formats.LineParser.counts`): ``lines_read``, ``empty_lines``,
  ``header_lines``, ``rows_read``, ``rows_parsed``, ``rows_rejected``, ``rejected_<reason>``;
- per block of users (`block_stats`): ``users_read`` and ``rows_after_dedupe`` as the sequences enter the filters,
  ``rows_after_kcore`` after the k-core, ``rows_written`` after the minimum length; with a k-core,
  ``kcore_items_below_k`` / ``kcore_users_below_k`` (`pipeline.sequences.kcore_violations`); with the time split,
  ``rows_filtered_time_cut``, the events after a user's target, dropped before the filters (so
  ``rows_after_dedupe`` counts the rows left after the dedupe and the cut), and ``targets_unseen_<split>``
  (`pipeline.timesplit`);
- per written user vocabulary: ``users_written`` (`pipeline.vocabulary.BuildVocabularies`);
- per record: ``records_<split>``.

`row_counts` turns the totals into ``metadata.counts`` and checks the invariant
``rows_read == rows_written + rows_rejected + rows_filtered`` (a row is defined in `pipeline.formats`).
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam

from mdcns_tf import features
from pipeline import portable


def _block_stats(block: tuple[int, list[tuple[str, list]]], label: str, users_key: str | None) -> list[tuple[str, int]]:
    stats = [(label, sum(len(pair[1]) for pair in block[1]))]
    return [*stats, (users_key, len(block[1]))] if users_key is not None else stats


def block_stats(blocks: beam.PCollection, label: str, users_key: str | None = None) -> beam.PCollection:
    """Stats ``(label, events)`` (and ``(users_key, users)``) per block of ``(user, [item])`` (`pipeline.blocks`),
    to be summed per key."""
    return blocks | f"Stats_{label}" >> beam.FlatMap(_block_stats, label, users_key)


class SumDicts(beam.CombineFn):
    """Sums ``dict[str, int]`` elements key by key."""

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


def _stat_dict(element: tuple[str, int]) -> dict[str, int]:
    return {element[0]: element[1]}


class SumStats(beam.PTransform):
    """``(name, int)`` collections -> a singleton ``dict[name, total]`` (absent names are simply missing; ``{}``
    for no stats at all). The graph itself sums per name and gathers the totals in its last step; this is the same
    sum as one value, for checking a stage's stats on its own."""

    def expand(self, stats: beam.PCollection) -> beam.PCollection:
        totals = stats | "SumPerName" >> beam.CombinePerKey(sum) | "AsDict" >> beam.Map(_stat_dict)
        return portable.combine_globally(totals, SumDicts(), {}, "ToDict")


def row_counts(stats: dict[str, int], users_written: int, kcore: int, time_cut: bool = False) -> dict[str, int]:
    """``metadata.counts`` from the summed stats (an absent name counted nothing); AssertionError when the rows
    do not add up, which is a bug, never bad input. The k-core counts appear only when a k-core ran (``kcore > 1``),
    ``rows_filtered_time_cut`` only with the time split (``time_cut``).
    """
    stat = lambda key: int(stats.get(key, 0))  # noqa: E731
    rows_parsed = stat("rows_parsed")
    cut = stat("rows_filtered_time_cut")
    counts = {
        "lines_read": stat("lines_read"),
        "empty_lines": stat("empty_lines"),
        "header_lines": stat("header_lines"),
        "rows_read": stat("rows_read"),
        "rows_rejected": stat("rows_rejected"),
        "rows_written": stat("rows_written"),
        "rows_filtered": rows_parsed - stat("rows_written"),
        "rows_filtered_dedupe": rows_parsed - stat("rows_after_dedupe") - cut,
        **({"rows_filtered_time_cut": cut} if time_cut else {}),
        "rows_filtered_kcore": stat("rows_after_dedupe") - stat("rows_after_kcore"),
        "rows_filtered_min_seq_len": stat("rows_after_kcore") - stat("rows_written"),
        "users_read": stat("users_read"),
        "users_written": users_written,
        **{k: v for k, v in sorted(stats.items()) if k.startswith("rejected_")},
    }
    if kcore > 1:
        counts["kcore_items_below_k"] = stat("kcore_items_below_k")
        counts["kcore_users_below_k"] = stat("kcore_users_below_k")
    if counts["rows_read"] != counts["rows_written"] + counts["rows_rejected"] + counts["rows_filtered"]:
        raise AssertionError(f"row accounting is broken (a bug): {counts}")
    return counts


def record_counts(stats: dict[str, int]) -> dict[str, int]:
    """``metadata.records``: ``{split: records written}`` from the summed ``records_<split>`` stats."""
    return {split: int(stats.get(f"records_{split}", 0)) for split in features.SPLITS}
