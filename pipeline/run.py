"""Raw interaction logs -> TFRecords + metadata (`mdcns_tf.features` layout), as a Beam pipeline.

    python -m pipeline.run --input PATH --input_format {interactions,sequences,pairs} --split {loo,user} \\
        --output DIR [--seed 42 | --split_file TSV] [--kcore K] [--min_seq_len N] [--delimiter auto] [--dedupe] \\
        [BEAM OPTIONS]

Our flags are parsed with ``parse_known_args`` and everything else goes to `PipelineOptions` (the apache/beam
wordcount shape), e.g. ``--runner=DataflowRunner --project ... --region ... --temp_location gs://... \\
--setup_file ./setup.py``. Without ``--runner`` the pipeline runs on the Python ``FnApiRunner`` (the direct runner's
engine), because Beam 2.77's ``DirectRunner`` first tries to download the Prism runner binary, which fails offline
before falling back. ``--direct_num_workers=2 --direct_running_mode=multi_processing`` uses two local processes.

Everything written (records, vocabularies, ``metadata.json``) is computed inside the pipeline, so the same code
works on a distributed runner with ``gs://``-style paths. Row accounting is in `pipeline.formats`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from mdcns_tf import cli, features
from pipeline import formats, outputs, sinks, splits, transforms

LOG = logging.getLogger("pipeline")

DEFAULT_RUNNER = "FnApiRunner"
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "whitespace": None, "space": None}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Our (non-Beam) flags, validated."""

    input: str
    input_format: str
    split: str
    output: str
    seed: int = 42
    kcore: int = 0
    kcore_rounds: int = 10
    min_seq_len: int | None = None  # None = the protocol's minimum (3 for loo, 2 for user)
    delimiter: str = "auto"
    columns: str | None = None
    dedupe: bool = False
    valid_fraction: float = 0.2
    test_fraction: float = 0.1
    num_shards: int = 0
    max_line_bytes: int = formats.DEFAULT_MAX_LINE_BYTES
    overwrite: bool = False
    split_file: str | None = None

    def __post_init__(self) -> None:
        if not self.input.strip():
            raise ValueError("--input is empty: name a file, a glob or a directory")
        if not self.output.strip():
            raise ValueError("--output is empty: name the output directory")
        if self.input_format not in formats.FORMATS:
            raise ValueError(f"--input_format must be one of {formats.FORMATS}, got {self.input_format!r}")
        if self.split not in splits.PROTOCOLS:
            raise ValueError(f"--split must be one of {splits.PROTOCOLS}, got {self.split!r}")
        minimum = splits.MIN_SEQ_LEN[self.split]
        if self.min_seq_len is not None and self.min_seq_len < minimum:
            raise ValueError(
                f"--min_seq_len {self.min_seq_len} is below {minimum}, the minimum for --split {self.split}"
            )
        if self.kcore < 0 or self.kcore_rounds < 1:
            raise ValueError("--kcore must be >= 0 and --kcore_rounds >= 1")
        if not self.delimiter:
            raise ValueError("--delimiter is empty: use auto, tab, comma, whitespace or a literal")
        if self.num_shards < 0 or self.max_line_bytes < 1:
            raise ValueError("--num_shards must be >= 0 and --max_line_bytes >= 1")
        if self.split == "user":
            splits.split_sizes(0, self.valid_fraction, self.test_fraction)  # validates the fractions
        if self.split_file is not None and self.split != "user":
            raise ValueError("--split_file assigns users to splits: it needs --split user")
        if self.columns is not None:
            if self.input_format != "interactions":
                raise ValueError("--columns only applies to --input_format interactions")
            formats.parse_columns(self.columns)

    @property
    def effective_min_seq_len(self) -> int:
        return self.min_seq_len if self.min_seq_len is not None else splits.MIN_SEQ_LEN[self.split]

    @property
    def delimiter_value(self) -> tuple[str | None, bool]:
        """``(delimiter, fixed)``; ``fixed=False`` means detect per file."""
        if self.delimiter == "auto":
            return None, False
        return _DELIMITER_NAMES.get(self.delimiter, self.delimiter), True


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=cli.prog("pipeline.run", "mdcns-preprocess"),
        description="Interaction logs -> gzip TFRecords + metadata.json. Unknown flags are Beam pipeline options.",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="file path, glob or directory (its non-hidden files) (local, gs://, ...); .gz read transparently",
    )
    parser.add_argument("--input_format", required=True, choices=formats.FORMATS)
    parser.add_argument("--split", required=True, choices=splits.PROTOCOLS, help="loo = leave-one-out; user = 70/20/10")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=42, help="user-split shuffle seed")
    parser.add_argument("--kcore", type=int, default=0, help="keep users and items with >= K interactions (0 = off)")
    parser.add_argument("--kcore_rounds", type=int, default=10, help="k-core rounds (unrolled in the graph)")
    parser.add_argument("--min_seq_len", type=int, default=None, help="default: 3 for loo, 2 for user")
    parser.add_argument(
        "--delimiter",
        default="auto",
        help="auto (per file: tab, then '::', then comma, else whitespace), tab, comma, whitespace, or a literal",
    )
    parser.add_argument(
        "--columns",
        default=None,
        help="interactions column layout, e.g. user,item,rating,timestamp (_ = ignore); default: header or guess",
    )
    parser.add_argument("--dedupe", action="store_true", help="drop repeated events (counted as rows_filtered)")
    parser.add_argument("--valid_fraction", type=float, default=0.2, help="user split: share of validation users")
    parser.add_argument("--test_fraction", type=float, default=0.1, help="user split: share of test users")
    parser.add_argument(
        "--split_file",
        default=None,
        help="user split: a TSV of 'user<TAB>valid|test' lines that replaces the seeded assignment "
        "(unlisted users train; # comments allowed), e.g. a paper's exact split",
    )
    parser.add_argument("--num_shards", type=int, default=0, help="TFRecord shards per split (0 = runner decides)")
    parser.add_argument("--max_line_bytes", type=int, default=formats.DEFAULT_MAX_LINE_BYTES)
    parser.add_argument("--overwrite", action="store_true", help="replace a previous pipeline output in --output")
    return parser


def with_default_runner(beam_args: Sequence[str]) -> list[str]:
    """Adds ``--runner=FnApiRunner`` unless the user chose a runner (see the module docstring for why)."""
    beam_args = list(beam_args)
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in beam_args):
        beam_args.append(f"--runner={DEFAULT_RUNNER}")
    return beam_args


def with_dask_defaults(beam_args: Sequence[str]) -> list[str]:
    """On the Dask runner, one input file per partition unless ``--dask_npartitions``/``--dask_partition_size``
    is given: the runner ignores ``Reshuffle`` and puts up to 128 ``Create`` elements in one partition, so every
    file would be read by one worker and every later step would inherit that single partition."""
    beam_args = list(beam_args)
    runner = next((a.split("=", 1)[1] for a in beam_args if a.startswith("--runner=")), "")
    if "--runner" in beam_args and beam_args.index("--runner") + 1 < len(beam_args):
        runner = beam_args[beam_args.index("--runner") + 1]
    partitioned = any(a.split("=", 1)[0] in ("--dask_npartitions", "--dask_partition_size") for a in beam_args)
    if runner.endswith("DaskRunner") and not partitioned:
        beam_args.append("--dask_partition_size=1")
    return beam_args


def parse_args(argv: Sequence[str] | None = None) -> tuple[PipelineConfig, PipelineOptions]:
    known, beam_args = build_arg_parser().parse_known_args(argv)
    config = PipelineConfig(**vars(known))
    return config, PipelineOptions(with_dask_defaults(with_default_runner(beam_args)))


def match_inputs(pattern: str) -> list[tuple[int, str, int]]:
    """``(file_ordinal, path, size)`` of the matched files in path order (the ordinal orders ties across files);
    local paths are absolute, because workers read them (a Dask worker's cwd is not the launcher's).

    A local directory stands for its non-hidden files (not its subdirectories); directories a glob matches are
    skipped: a directory is not a file of rows.
    """
    directory_input = outputs.is_local(pattern) and os.path.isdir(pattern)
    if directory_input:
        pattern = os.path.join(pattern, "*")
    try:
        metadata = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # noqa: BLE001  (Beam raises BeamIOError, or ValueError for an unknown scheme)
        raise FileNotFoundError(f"--input {pattern!r}: {e}") from None
    paths = sorted(
        (outputs.absolute(m.path), m.size_in_bytes)
        for m in metadata
        if not (outputs.is_local(m.path) and os.path.isdir(m.path))
        and not (directory_input and os.path.basename(m.path).startswith("."))
    )
    if not paths:
        raise FileNotFoundError(f"--input {pattern!r} matches no file")
    return [(i, path, size) for i, (path, size) in enumerate(paths)]


@dataclasses.dataclass(frozen=True)
class SplitFile:
    """A parsed ``--split_file``: ``{user key: split}`` and the sha256 of the file's bytes (for metadata.json)."""

    path: str
    assignment: dict[str, str]
    sha256: str

    @property
    def sizes(self) -> dict[str, int]:
        return {split: sum(s == split for s in self.assignment.values()) for split in splits.SPLIT_FILE_SPLITS}


def load_split_file(path: str) -> SplitFile:
    """Reads and checks ``--split_file`` (local or ``gs://``-style); `splits.SplitFileError` on a bad file."""
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"--split_file {path!r} does not exist")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise splits.SplitFileError(f"--split_file {path!r} is not UTF-8 text ({e})") from None
    assignment = splits.parse_split_file(text, source=f"--split_file {path}")
    return SplitFile(path, assignment, hashlib.sha256(raw).hexdigest())


def write_metadata(
    _: Any,
    *,
    config: PipelineConfig,
    files: list[str],
    stats: dict[str, int],
    item_vocab: list[str],
    user_vocab: list[str],
    item_counts: dict[int, int],
    written: list[str],
    split_file: SplitFile | None = None,
) -> dict[str, Any]:
    """The final step: ``items.txt``, ``users.txt``, ``metadata.json``, then the complete ``manifest.json``
    (returns the metadata dict).

    ``stats`` holds the summed bookkeeping (see `build_pipeline`). Called once by `finish`, after every sink's
    files are in place: ``written`` (their final paths) is what the fingerprint hashes.
    """
    n_items, n_users = len(item_vocab), len(user_vocab)
    dense_counts = [0] * (n_items + 1)
    for item_id, count in item_counts.items():
        dense_counts[item_id] = count
    stat = lambda key: int(stats.get(key, 0))  # noqa: E731  (absent = nothing was counted)
    rows_parsed = stat("rows_parsed")
    counts = {
        "lines_read": stat("lines_read"),
        "empty_lines": stat("empty_lines"),
        "header_lines": stat("header_lines"),
        "rows_read": stat("rows_read"),
        "rows_rejected": stat("rows_rejected"),
        "rows_written": stat("rows_written"),
        "rows_filtered": rows_parsed - stat("rows_written"),
        "rows_filtered_dedupe": rows_parsed - stat("rows_after_dedupe"),
        "rows_filtered_kcore": stat("rows_after_dedupe") - stat("rows_after_kcore"),
        "rows_filtered_min_seq_len": stat("rows_after_kcore") - stat("rows_written"),
        "users_read": stat("users_read"),
        "users_written": n_users,
        **{k: v for k, v in sorted(stats.items()) if k.startswith("rejected_")},
    }
    if config.kcore > 1:
        counts["kcore_items_below_k"] = stat("kcore_items_below_k")
        counts["kcore_users_below_k"] = stat("kcore_users_below_k")
    if counts["rows_read"] != counts["rows_written"] + counts["rows_rejected"] + counts["rows_filtered"]:
        raise AssertionError(f"row accounting is broken (a bug): {counts}")
    records = {split: stat(f"records_{split}") for split in features.SPLITS}
    vocabularies = {
        features.ITEMS_FILE: "".join(k + "\n" for k in item_vocab),
        features.USERS_FILE: "".join(k + "\n" for k in user_vocab),
    }
    fingerprint, written_files = outputs.record_fingerprint(config.output, written, records, vocabularies)
    meta = features.Metadata(
        schema_version=features.SCHEMA_VERSION,
        n_users=n_users,
        n_items=n_items,
        item_counts=dense_counts,
        split={
            "protocol": config.split,
            "seed": config.seed if split_file is None else None,
            "fractions": (
                {
                    "train": round(1.0 - config.valid_fraction - config.test_fraction, 10),
                    "valid": config.valid_fraction,
                    "test": config.test_fraction,
                }
                if config.split == "user" and split_file is None
                else None
            ),
            "min_seq_len": config.effective_min_seq_len,
            **(
                {
                    "split_file": split_file.path,
                    "split_file_sha256": split_file.sha256,
                    "split_file_users": split_file.sizes,
                }
                if split_file is not None
                else {}
            ),
        },
        counts=counts,
        records=records,
        source={
            "input": config.input,
            "files": files,
            "format": config.input_format,
            "options": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("input", "output")},
        },
        fingerprint=fingerprint,
    )
    for name, text in vocabularies.items():
        outputs.write_text(FileSystems.join(config.output, name), text)
    if "://" in config.output:  # Metadata.save writes local files only
        outputs.write_text(
            FileSystems.join(config.output, features.METADATA_FILE), json.dumps(dataclasses.asdict(meta), indent=1)
        )
    else:
        meta.save(config.output)
    outputs.write_manifest(config.output, outputs.COMPLETE, [*written_files, *vocabularies, features.METADATA_FILE])
    empty = empty_output_message(config.output, {**counts, "users_written": n_users})
    if empty is not None:  # `main` exits 1 on it; `run` callers get this warning
        LOG.warning("%s", empty)
    if counts.get("kcore_items_below_k") or counts.get("kcore_users_below_k"):
        LOG.warning(
            "k-core did not reach its fixed point in %d rounds (%d items, %d users still below k=%d): "
            "raise --kcore_rounds",
            config.kcore_rounds,
            counts["kcore_items_below_k"],
            counts["kcore_users_below_k"],
            config.kcore,
        )
    LOG.info(
        "wrote %s: %d users, %d items, records %s, counts %s", config.output, n_users, n_items, meta.records, counts
    )
    return dataclasses.asdict(meta)


def finish(
    element: tuple[None, Iterable[tuple[str, Any]]],
    *,
    config: PipelineConfig,
    files: list[str],
    run_id: str,
    split_file: SplitFile | None = None,
) -> dict[str, Any]:
    """The last step, on the gathered ``(kind, value)`` parts: ``("temp", (sink, temporary path))`` per file
    written (`sinks.finalize` renames them), ``("stat", (name, total))``, ``("item_count", (item id, n))``,
    ``("item_vocab", list)`` and ``("user_vocab", list)``; then `write_metadata`. A vocabulary that is absent (no
    user left) is empty."""
    temp_paths: dict[str, list[str | None]] = {sink: [] for sink in SINKS}
    stats: dict[str, int] = {}
    item_counts: dict[int, int] = {}
    vocabularies: dict[str, list[str]] = {"item_vocab": [], "user_vocab": []}
    for kind, value in element[1]:
        if kind == "temp":
            temp_paths[value[0]].append(value[1])
        elif kind == "stat":
            stats[value[0]] = value[1]
        elif kind == "item_count":
            item_counts[value[0]] = value[1]
        else:
            vocabularies[kind] = value
    written = [path for sink in SINKS for path in finalize_sink(sink, temp_paths[sink], config, run_id)]
    return write_metadata(
        None,
        config=config,
        files=files,
        stats=stats,
        item_counts=item_counts,
        written=written,
        split_file=split_file,
        **vocabularies,
    )


SINKS = (outputs.REJECTED_DIR, *features.SPLITS)


def finalize_sink(sink: str, temp_paths: list[str | None], config: PipelineConfig, run_id: str) -> list[str]:
    """The final paths of one sink's files (`sinks.finalize`); an empty split still gets one (empty) file."""
    rejected = sink == outputs.REJECTED_DIR
    return sinks.finalize(
        temp_paths,
        directory=FileSystems.join(config.output, sink),
        prefix="rejected" if rejected else "part",
        suffix=".txt" if rejected else features.TFRECORD_SUFFIX,
        temp_dir=temp_dir(config.output, sink, run_id),
        min_shards=1 if rejected else max(1, config.num_shards),
    )


def temp_dir(output: str, sink: str, run_id: str) -> str:
    return FileSystems.join(output, sink, f".temp-{run_id}")


def _tagged(value: Any, kind: str) -> tuple[str, Any]:
    return kind, value


def build_pipeline(
    p: beam.Pipeline,
    config: PipelineConfig,
    inputs: list[tuple[int, str, int]],
    split_file: SplitFile | None = None,
) -> beam.PCollection:
    """Adds the whole graph to ``p``; returns the singleton PCollection of the metadata dict.

    ``split_file`` (the loaded ``--split_file``) travels with the `transforms.UserSplits` DoFn: a paper's split is
    a few thousand lines; a split of millions of users would rather be joined like the vocabularies.

    Bookkeeping: every step that changes the row count emits ``(name, n)`` stats (per-file read counts, per-user
    lengths after dedupe / k-core / min length, one per record); one keyed sum turns them into ``metadata.counts``.

    Every step feeds the last one (`finish`) through its main input: the stats, vocabularies and item counts, and
    the temporary files the sinks wrote, which also orders it after every sink; it finalizes the files, then writes
    the metadata. No side input, no tagged output (the Dask runner gets both wrong: `pipeline.transforms`), and no
    step that leads nowhere: the Dask runner computes only what the last step applied depends on::

        p | "a" >> beam.Create([1]) | "wa" >> beam.Map(lambda _: open("/tmp/a", "w"))
        p | "b" >> beam.Create([2]) | "wb" >> beam.Map(lambda _: open("/tmp/b", "w"))
        # Dask: only /tmp/b is created; any other runner: both
    """
    delimiter, fixed = config.delimiter_value
    columns = formats.parse_columns(config.columns) if config.columns else None
    # Workers (Dask worker processes, remote machines) write the files: never rely on the launcher's cwd.
    config = dataclasses.replace(config, output=outputs.absolute(config.output))
    out = config.output
    run_id = uuid.uuid4().hex[:16]

    parsed = (
        p
        | "Files" >> beam.Create(inputs)
        # Spread files over workers; a file itself is read by one worker, streaming, to keep line order.
        | "SpreadFiles" >> beam.Reshuffle()
        | "ReadAndParse"
        >> beam.ParDo(transforms.ReadAndParse(config.input_format, delimiter, fixed, columns, config.max_line_bytes))
    )
    stats = [transforms.select(parsed, transforms.COUNTS, "FileCounts") | "ReadStats" >> beam.FlatMap(dict.items)]
    sequences = transforms.select(parsed, transforms.ROWS, "Rows") | "Sequences" >> transforms.BuildSequences(
        has_timestamps=config.input_format == "interactions", dedupe=config.dedupe
    )
    stats.append(transforms.sequence_stats(sequences, "rows_after_dedupe", users_key="users_read"))
    if config.kcore > 1:
        sequences = sequences | "KCore" >> transforms.KCore(config.kcore, config.kcore_rounds)
        stats.append(transforms.kcore_violations(sequences, config.kcore))
    stats.append(transforms.sequence_stats(sequences, "rows_after_kcore"))
    sequences = sequences | "MinSeqLen" >> beam.Filter(lambda kv, n=config.effective_min_seq_len: len(kv[1]) >= n)
    stats.append(transforms.sequence_stats(sequences, "rows_written"))

    # Without defaults: no user left = no vocabulary element (`finish` reads it as empty).
    item_vocab = (
        sequences
        | "Items" >> beam.FlatMap(lambda kv: kv[1])
        # distinct first: a global combine is one group, which the Dask runner materialises whole in one worker
        | "DistinctItems" >> beam.Distinct()
        | "ItemKeys" >> beam.Map(lambda key: (key,))
        | "ItemVocab" >> beam.CombineGlobally(transforms.Vocabulary()).without_defaults()
    )
    user_vocab = (
        sequences
        | "UserKeys" >> beam.Map(lambda kv: (kv[0],))
        | "UserVocab" >> beam.CombineGlobally(transforms.Vocabulary()).without_defaults()
    )
    records = {"sequences": sequences, "item_vocab": item_vocab, "user_vocab": user_vocab} | "MakeRecords" >> (
        transforms.MakeRecords(
            config.split,
            config.seed,
            config.valid_fraction,
            config.test_fraction,
            split_file.assignment if split_file is not None else None,
        )
    )
    stats.append(records | "RecordStats" >> beam.Map(lambda kv: (f"records_{kv[0]}", 1)))
    rejected_dir = outputs.REJECTED_DIR
    rejected = transforms.select(parsed, transforms.REJECTED, "RejectedLines")
    # The rejected lines always go to one file; the records to --num_shards files per split, or one per bundle.
    temp_files = [
        rejected
        | "RejectedPairs" >> beam.Map(_tagged, rejected_dir)
        | "WriteRejected"
        >> sinks.WriteFiles({rejected_dir: (temp_dir(out, rejected_dir, run_id), ".txt", sinks.TEXT, 1)}),
        records
        | "Serialize" >> beam.Map(lambda kv: (kv[0], transforms.serialize_record(kv[1])))
        | "WriteRecords"
        >> sinks.WriteFiles(
            {
                split: (temp_dir(out, split, run_id), features.TFRECORD_SUFFIX, sinks.TFRECORD, config.num_shards)
                for split in features.SPLITS
            }
        ),
    ]
    item_counts = (
        transforms.select(records, "train", "TrainRecords")
        | "TrainItemIds" >> beam.FlatMap(lambda record: [(item_id, 1) for item_id in record[1]])
        | "CountPerItem" >> beam.CombinePerKey(sum)
    )

    # Everything meets in one group for the last step (Dask computes only what that step depends on). One marker
    # per sink, so that a sink that got no element still gets its (empty) file.
    markers = p | "SinkMarkers" >> beam.Create([(sink, None) for sink in SINKS])
    parts = (
        [*temp_files, markers] | "AllTempFiles" >> beam.Flatten() | "TempParts" >> beam.Map(_tagged, "temp"),
        stats
        | "AllStats" >> beam.Flatten()
        | "SumStats" >> beam.CombinePerKey(sum)
        | "StatParts" >> beam.Map(_tagged, "stat"),
        item_counts | "ItemCountParts" >> beam.Map(_tagged, "item_count"),
        item_vocab | "ItemVocabPart" >> beam.Map(_tagged, "item_vocab"),
        user_vocab | "UserVocabPart" >> beam.Map(_tagged, "user_vocab"),
    )
    return (
        parts
        | "AllParts" >> beam.Flatten()
        | "OneKey" >> beam.Map(lambda part: (None, part))
        | "Gather" >> beam.GroupByKey()
        | "WriteMetadata"
        >> beam.Map(finish, config=config, files=[path for _, path, _ in inputs], run_id=run_id, split_file=split_file)
    )


def run(argv: Sequence[str] | None = None) -> beam.runners.runner.PipelineResult:
    """Parses ``argv`` (ours + Beam's), builds and runs the pipeline, waits for it; returns the Beam result."""
    config, options = parse_args(argv)
    return run_config(config, options)


def run_config(config: PipelineConfig, options: PipelineOptions) -> beam.runners.runner.PipelineResult:
    inputs, split_file = prepare(config)
    return execute(config, options, inputs, split_file)


def prepare(config: PipelineConfig) -> tuple[list[tuple[int, str, int]], SplitFile | None]:
    """Everything checked before the pipeline starts (inputs, ``--split_file``, ``--output``), then ``--output``
    made ready (`outputs.prepare_output`). Raises ValueError / FileNotFoundError / FileExistsError."""
    inputs = match_inputs(config.input)
    split_file = load_split_file(config.split_file) if config.split_file else None
    outputs.prepare_output(config.output, config.overwrite, [path for _, path, _ in inputs])
    return inputs, split_file


def execute(
    config: PipelineConfig,
    options: PipelineOptions,
    inputs: list[tuple[int, str, int]],
    split_file: SplitFile | None,
) -> beam.runners.runner.PipelineResult:
    """Builds and runs the pipeline on a `prepare`d output, waits for it; returns the Beam result."""
    LOG.info("pipeline: %d input file(s), runner %s, %s", len(inputs), options.view_as(StandardOptions).runner, config)
    start = time.monotonic()
    p = beam.Pipeline(options=options)
    build_pipeline(p, config, inputs, split_file)
    result = p.run()
    try:
        result.wait_until_finish()
    finally:
        # Beam's Dask runner opens a `distributed.Client` per run and never closes it: closed here, else it keeps
        # reconnecting (and logging tracebacks) once the cluster is gone.
        client = getattr(result, "client", None)
        if client is not None and hasattr(client, "close"):
            client.close()
    LOG.info("pipeline finished in %.1fs (state %s)", time.monotonic() - start, result.state)
    try:  # not every runner reports metrics back to the launcher
        counters = result.metrics().query(MetricsFilter().with_namespace("pipeline"))["counters"]
        LOG.info("counters: %s", {c.key.metric.name: c.committed for c in counters})
    except Exception:  # noqa: BLE001
        pass
    return result


def split_file_error(error: BaseException) -> splits.SplitFileError | None:
    """The `splits.SplitFileError` behind a pipeline failure, if any: runners re-raise a DoFn's error augmented
    with the step name, as the same type or chained (``__cause__`` / ``__context__``), depending on the runner."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, splits.SplitFileError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def empty_output_message(output: str, counts: dict[str, int]) -> str | None:
    """The error for a run that wrote no user (every row rejected or filtered), naming the counts; else None."""
    if counts.get("users_written", 0) > 0:
        return None
    reasons = ", ".join(f"{k[len('rejected_') :]} {v}" for k, v in sorted(counts.items()) if k.startswith("rejected_"))
    return (
        f"no user left in {output}: {counts.get('lines_read', 0)} lines read ({counts.get('empty_lines', 0)} empty, "
        f"{counts.get('header_lines', 0)} header), rows read {counts.get('rows_read', 0)} = written 0 + rejected "
        f"{counts.get('rows_rejected', 0)}{f' ({reasons})' if reasons else ''} + filtered "
        f"{counts.get('rows_filtered', 0)} (dedupe {counts.get('rows_filtered_dedupe', 0)}, kcore "
        f"{counts.get('rows_filtered_kcore', 0)}, min_seq_len {counts.get('rows_filtered_min_seq_len', 0)}); "
        f"the rejected rows are in {FileSystems.join(output, outputs.REJECTED_DIR)}/"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: 0 on success, 2 on a usage error (one ``error:`` line), 1 when no user is left to write."""
    # force: importing Beam already logged through (and so configured) the root logger
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # Beam logs one INFO line per string type hint (from `from __future__ import annotations`): noise for users.
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    try:  # usage errors get a one-line message; failures inside the pipeline keep their traceback
        config, options = parse_args(argv)
        inputs, split_file = prepare(config)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        execute(config, options, inputs, split_file)
    except Exception as e:  # noqa: BLE001  (a split file that does not fit the data fails inside the pipeline)
        cause = split_file_error(e)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2
    meta = outputs.read_metadata(config.output)
    c = meta["counts"]
    empty = empty_output_message(config.output, c)
    if empty is not None:
        print(f"error: {empty}", file=sys.stderr)
        return 1
    print(
        f"{config.output}: {meta['n_users']} users, {meta['n_items']} items, records {meta['records']}, "
        f"rows read {c['rows_read']} = written {c['rows_written']} + rejected {c['rows_rejected']} + filtered "
        f"{c['rows_filtered']}; lines: {c['empty_lines']} empty, {c['header_lines']} header"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
