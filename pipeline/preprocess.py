"""The whole Beam graph as one composite transform, `Preprocess`: input files -> the data folder in ``--output``.

    p | "Preprocess" >> Preprocess(config, inputs, split_file, parent)      # what `pipeline.run` applies

Its stages, in order, and the elements between them (``K`` = a raw key string; a *block* is the users, or the
items, whose key hashes to one of ``n`` buckets, `pipeline.blocks`):

    ReadFiles          (file_ordinal, path, size_bytes)
                         -> (ROWS, (block, batch of rows)) | (REJECTED, [line]) | (COUNTS, dict)  `pipeline.reading`
    (SpillRows)        local runners: the batches left in spill files, (block, reference) shuffled  `pipeline.spill`
    BuildSequences     batches grouped per user block -> (block, [(user K, [item K, ...]), ...])  `pipeline.sequences`
    (TimeCut)          --split time: the events up to each user's target (the first at/after the cut)
                         -> blocks of ((user K, target K | None), [item K, ...])                `pipeline.timesplit`
    FilterSequences    -> the same blocks, fewer users and events: k-core, minimum length         `pipeline.sequences`
    (HeldOut)          --split time: -> blocks of (user K, [item K, ...]) + (block, [(user K, split)])
    ItemUses           -> (item block, (user block, [item K, ...])): each block's distinct items  `pipeline.records`
    BuildVocabularies  -> {"item_vocab": [item K, ...], "user_vocab": [user K, ...]}          `pipeline.vocabulary`
    MakeRecords        blocks (spilled again on local runners) + vocabularies -> (split, [record bytes]) per block,
                         train item counts, stats
    WriteOutputFiles   rejected lines, records -> (sink, temporary path) per file                    `pipeline.sinks`
    Finish             all of the above in one group -> files renamed, vocabularies, metadata.json, manifest

No step holds the dataset in one worker, and no shuffle moves single events: rows leave the reader in batches per
user block, and every later step works on a block's users at once (the k-core, which is off by default, runs per
event). The item and user vocabularies (distinct keys, not interactions) are combined into one sorted list each;
that bounds the vocabulary (not the data) by one worker's memory. Ids reach the blocks through joins of item blocks
(`MakeRecords`); every join checks that what arrived is whole (`pipeline.records.records_of_block`).

Every stage feeds the last one (`Finish`) through its main input: the stats (`pipeline.accounting`), the
vocabularies and item counts, and the temporary files the sinks wrote, which also orders it after every sink. No
side input, no tagged output, and no step that leads nowhere: `pipeline.portable` says why.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from pipeline import (
    blocks,
    formats,
    inputfiles,
    outputs,
    portable,
    reading,
    records,
    sequences,
    sinks,
    spill,
    timesplit,
    vocabulary,
)
from pipeline.config import PipelineConfig
from pipeline.parent import ParentVocabulary
from pipeline.splits import SplitFile


def _expansion(path: str) -> int:
    """How many bytes of lines a byte of the file holds, roughly: compressed logs count 4 times their size."""
    return 1 if inputfiles.compression_of(path) == CompressionTypes.UNCOMPRESSED else 4


class Preprocess(beam.PTransform):
    """The pipeline's root -> the singleton PCollection of the metadata dict (`outputs.write_metadata`).

    ``inputs``: the matched files, ``[(file_ordinal, path, size_bytes)]`` (`reading.match_inputs`); the output
    directory must have been made ready (`outputs.prepare_output`). ``split_file`` (the loaded ``--split_file``)
    travels with the `records.UserSplits` DoFn: a paper's split is a few thousand lines; a split of millions of
    users would rather be joined like the vocabularies. ``parent``: the checked ``--vocabulary_from``
    (`pipeline.parent.load_parent`). ``workers``: the local runner's processes (`pipeline.runners.local_workers`);
    ``spill_shuffles``: keep the rows and the blocks in spill files between the steps that make and read them
    (`pipeline.spill`; `pipeline.runners.spills_shuffles` decides).
    """

    def __init__(
        self,
        config: PipelineConfig,
        inputs: list[tuple[int, str, int]],
        split_file: SplitFile | None = None,
        parent: ParentVocabulary | None = None,
        workers: int = 1,
        spill_shuffles: bool = False,
    ) -> None:
        super().__init__()
        # Workers (Dask worker processes, remote machines) write the files: never rely on the launcher's cwd.
        self.config = dataclasses.replace(config, output=outputs.absolute(config.output))
        self.inputs = inputs
        self.split_file = split_file
        self.parent = parent
        self.run_id = uuid.uuid4().hex[:16]  # names the sinks' temporary folders
        self.num_blocks = blocks.block_count(sum(size * _expansion(path) for _, path, size in inputs), workers)
        self.spill_dir = spill.spill_dir(self.config.output, self.run_id) if spill_shuffles else None

    def expand(self, root: beam.pvalue.PBegin) -> beam.PCollection:
        config = self.config
        delimiter, fixed = config.delimiter_value
        columns = formats.parse_columns(config.columns) if config.columns else None
        num_blocks = self.num_blocks
        parsed = (
            root
            | "Files" >> beam.Create(self.inputs)
            | "ReadFiles"
            >> reading.ReadFiles(
                reading.ReadAndParse(
                    config.input_format, delimiter, fixed, columns, config.max_line_bytes, num_blocks=num_blocks
                )
            )
        )
        time_split = config.split == "time"
        spill_dir = self.spill_dir
        rows = portable.select(parsed, reading.ROWS, "Rows")
        if spill_dir is not None:
            rows = rows | "SpillRows" >> beam.ParDo(spill.SpillPayloads(spill_dir))
        built = rows | "BuildSequences" >> sequences.BuildSequences(
            has_timestamps=config.input_format == "interactions", dedupe=config.dedupe, with_times=time_split
        )
        if time_split:
            cut = built | "TimeCut" >> timesplit.TimeCut(config.cutoff, config.cutoff_quantile, num_blocks)
            built = cut["sequences"]
        filtered = built | "FilterSequences" >> sequences.FilterSequences(
            config.kcore, config.kcore_rounds, config.effective_min_seq_len, num_blocks
        )
        kept = (
            filtered["sequences"]
            if not time_split
            else filtered["sequences"] | "HeldOut" >> timesplit.HeldOut(config.seed, num_blocks)
        )
        kept_sequences = kept if not time_split else kept["sequences"]
        uses = kept_sequences | "ItemUses" >> beam.FlatMap(records.item_uses, num_blocks)
        vocabularies = {"sequences": kept_sequences, "item_uses": uses} | "BuildVocabularies" >> (
            vocabulary.BuildVocabularies(self.parent)
        )
        made = {
            "sequences": kept_sequences,
            "item_uses": uses,
            **vocabularies,
            **({"held_out": kept["held_out"]} if time_split else {}),
        } | "MakeRecords" >> records.MakeRecords(
            records.UserSplits(
                config.split,
                config.seed,
                config.valid_fraction,
                config.test_fraction,
                self.split_file.assignment if self.split_file is not None else None,
                num_blocks,
            ),
            spill_dir,
        )
        split_records = portable.select(made, records.RECORDS, "SplitRecords")
        temp_files = {
            "rejected": portable.select(parsed, reading.REJECTED, "RejectedLines"),
            "records": split_records,
        } | "WriteOutputFiles" >> sinks.WriteOutputFiles(config.output, self.run_id, config.num_shards)
        item_counts = (
            portable.select(made, records.ITEM_COUNTS, "TrainItemCounts")
            | "GroupByIdBlock" >> beam.GroupByKey()
            | "CountPerItem" >> beam.Map(_summed_counts)
        )
        stats = (
            portable.select(parsed, reading.COUNTS, "FileCounts") | "ReadStats" >> beam.FlatMap(dict.items),
            filtered["stats"],
            vocabularies["stats"],
            portable.select(made, records.STATS, "RecordStats") | "RecordStatPairs" >> beam.FlatMap(lambda s: s),
            *(
                (
                    cut["stats"],
                    timesplit.unseen_targets(portable.select(made, records.EVAL_TARGETS, "EvalTargets"), item_counts),
                )
                if time_split
                else ()
            ),
        ) | "AllStats" >> beam.Flatten()
        files = [path for _, path, _ in self.inputs]
        return {
            "temp_files": temp_files,
            "stats": stats,
            "item_counts": item_counts,
            "item_vocab": vocabularies["item_vocab"],
            "user_vocab": vocabularies["user_vocab"],
            **({"time_cut": cut["info"]} if time_split else {}),
        } | "Finish" >> Finish(config, files, self.run_id, self.split_file, self.parent)


def _summed_counts(element: tuple[int, Iterable[dict[int, int]]]) -> tuple[int, dict[int, int]]:
    """An item-id block's per-user-block train counts -> ``(id block, {item id: train uses})``."""
    total: dict[int, int] = {}
    for counts in element[1]:
        for item_id, n in counts.items():
            total[item_id] = total.get(item_id, 0) + n
    return element[0], total


def _tagged(value: Any, kind: str) -> tuple[str, Any]:
    return kind, value


class Finish(beam.PTransform):
    """The last step: ``{"temp_files": (sink, path | None), "stats": (name, n), "item_counts": (id block, {item id: n}),
    "item_vocab": [key], "user_vocab": [key]}`` (and ``"time_cut"``: the time split's cutoff info) -> the
    singleton metadata dict.

    Everything meets in one group, sent to `finish` as ``(kind, value)`` parts: that one step depends on every
    other, which is what the Dask runner computes (`pipeline.portable`), and runs after every sink has written.
    """

    def __init__(
        self,
        config: PipelineConfig,
        files: list[str],
        run_id: str,
        split_file: SplitFile | None,
        parent: ParentVocabulary | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.files = files
        self.run_id = run_id
        self.split_file = split_file
        self.parent = parent

    def expand(self, results: dict[str, beam.PCollection]) -> beam.PCollection:
        parts = (
            results["temp_files"] | "TempParts" >> beam.Map(_tagged, "temp"),
            results["stats"] | "SumStats" >> beam.CombinePerKey(sum) | "StatParts" >> beam.Map(_tagged, "stat"),
            results["item_counts"] | "ItemCountParts" >> beam.Map(_tagged, "item_counts"),
            results["item_vocab"] | "ItemVocabPart" >> beam.Map(_tagged, "item_vocab"),
            results["user_vocab"] | "UserVocabPart" >> beam.Map(_tagged, "user_vocab"),
            *([results["time_cut"] | "TimeCutPart" >> beam.Map(_tagged, "time_cut")] if "time_cut" in results else []),
        )
        return (
            parts
            | "AllParts" >> beam.Flatten()
            | "OneKey" >> beam.Map(lambda part: (None, part))
            | "Gather" >> beam.GroupByKey()
            | "WriteMetadata"
            >> beam.Map(
                finish,
                config=self.config,
                files=self.files,
                run_id=self.run_id,
                split_file=self.split_file,
                parent=self.parent,
            )
        )


def finish(
    element: tuple[None, Iterable[tuple[str, Any]]],
    *,
    config: PipelineConfig,
    files: list[str],
    run_id: str,
    split_file: SplitFile | None = None,
    parent: ParentVocabulary | None = None,
) -> dict[str, Any]:
    """The gathered ``(kind, value)`` parts: ``("temp", (sink, temporary path or None))`` per file written (and
    per sink marker), ``("stat", (name, total))``, ``("item_counts", (id block, {item id: n}))``, ``("item_vocab",
    list)``, ``("user_vocab", list)`` and ``("time_cut", dict)`` -> the sinks' files renamed
    (`sinks.finalize_sink`), then `outputs.write_metadata`. A vocabulary that is absent (no user left) is empty."""
    temp_paths: dict[str, list[str | None]] = {sink: [] for sink in sinks.SINKS}
    stats: dict[str, int] = {}
    item_counts: dict[int, int] = {}
    vocabularies: dict[str, list[str]] = {"item_vocab": [], "user_vocab": []}
    time_cut = None
    for kind, value in element[1]:
        if kind == "temp":
            temp_paths[value[0]].append(value[1])
        elif kind == "stat":
            stats[value[0]] = value[1]
        elif kind == "item_counts":
            item_counts.update(value[1])
        elif kind == "time_cut":
            time_cut = value
        else:
            vocabularies[kind] = value
    written = [
        path
        for sink in sinks.SINKS
        for path in sinks.finalize_sink(sink, temp_paths[sink], config.output, run_id, config.num_shards)
    ]
    spill.remove(config.output, run_id)  # every step that reads the spill files ran before this one
    return outputs.write_metadata(
        config=config,
        files=files,
        stats=stats,
        item_counts=item_counts,
        written=written,
        split_file=split_file,
        time_cut=timesplit.time_cut_metadata(time_cut, stats),
        vocabulary_from=(
            parent.describe(len(vocabularies["item_vocab"]), len(vocabularies["user_vocab"])) if parent else None
        ),
        **vocabularies,
    )
