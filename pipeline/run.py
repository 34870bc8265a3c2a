"""Raw interaction logs -> TFRecords + metadata (`mdcns_tf.features` layout), as a Beam pipeline.

    python -m pipeline.run --input PATH --input_format {interactions,sequences,pairs} --split {loo,user,time} \\
        --output DIR [--seed 42 | --split_file TSV] [--cutoff T | --cutoff_quantile Q] [--vocabulary_from DIR] \\
        [--kcore K] [--min_seq_len N] [--delimiter auto] [--dedupe] [BEAM OPTIONS]

Our flags are parsed with ``parse_known_args`` and everything else goes to `PipelineOptions` (the apache/beam
wordcount shape), e.g. ``--runner=DataflowRunner --project ... --region ... --temp_location gs://... \\
--setup_file ./setup.py``. Without ``--runner`` the pipeline runs on the Python ``FnApiRunner`` (the direct runner's
engine), because Beam 2.77's ``DirectRunner`` first tries to download the Prism runner binary, which fails offline
before falling back; from 64 MiB of input it runs one worker process per core (`pipeline.runners`), and
``--direct_num_workers=N --direct_running_mode=multi_processing`` chooses the processes.

The graph is one composite transform, `pipeline.preprocess.Preprocess`; this module parses the flags, checks the
inputs and the files named by flags before anything runs (`prepare`), applies the graph and runs it (`execute`).
Everything written (records, vocabularies, ``metadata.json``) is computed inside the pipeline, so the same code works
on a distributed runner with ``gs://``-style paths.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from mdcns_tf import cli
from pipeline import (
    formats,
    inputfiles,
    outputs,
    parent,
    portable,
    preprocess,
    reading,
    runners,
    spill,
    splits,
    timesplit,
)
from pipeline.config import PipelineConfig

LOG = logging.getLogger("pipeline")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=cli.prog("pipeline.run", "mdcns-preprocess"),
        description="Interaction logs -> gzip TFRecords + metadata.json. Unknown flags are Beam pipeline options.",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="file path, glob or directory (its non-hidden files) (local, gs://, ...); .gz .bz2 .xz .zst .deflate "
        "decompressed by name",
    )
    parser.add_argument("--input_format", required=True, choices=formats.FORMATS)
    parser.add_argument(
        "--split",
        required=True,
        choices=splits.PROTOCOLS,
        help="loo = leave-one-out; user = 70/20/10 of the users; time = a global temporal cut (--cutoff*)",
    )
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=42, help="user and time splits: seed of the valid/test draw")
    parser.add_argument("--kcore", type=int, default=0, help="keep users and items with >= K interactions (0 = off)")
    parser.add_argument("--kcore_rounds", type=int, default=10, help="k-core rounds (unrolled in the graph; <= 100)")
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
    parser.add_argument("--cutoff", type=float, default=None, help=timesplit.CUTOFF_HELP)
    parser.add_argument("--cutoff_quantile", type=float, default=None, help=timesplit.QUANTILE_HELP)
    parser.add_argument("--vocabulary_from", default=None, metavar="PREVIOUS_OUTPUT", help=parent.HELP)
    parser.add_argument("--num_shards", type=int, default=0, help="TFRecord shards per split (0 = runner decides)")
    parser.add_argument("--max_line_bytes", type=int, default=formats.DEFAULT_MAX_LINE_BYTES)
    parser.add_argument("--overwrite", action="store_true", help="replace a previous pipeline output in --output")
    return parser


def parse_args(
    argv: Sequence[str] | None = None, inputs: list[tuple[int, str, int]] | None = None
) -> tuple[PipelineConfig, PipelineOptions]:
    """Our config and Beam's options; the matched ``inputs`` (`reading.match_inputs`) decide the local default run
    mode by their size (`runners.with_local_parallelism`)."""
    known, beam_args = build_arg_parser().parse_known_args(argv)
    config = PipelineConfig(**vars(known))
    return config, runners.beam_options(beam_args, sum(size for _, _, size in inputs or ()))


def run(argv: Sequence[str] | None = None) -> beam.runners.runner.PipelineResult:
    """Parses ``argv`` (ours + Beam's), builds and runs the pipeline, waits for it; returns the Beam result."""
    config, _ = parse_args(argv)
    prepared = prepare(config)
    _, options = parse_args(argv, prepared[0])
    return execute(config, options, *prepared)


def prepare(
    config: PipelineConfig,
) -> tuple[list[tuple[int, str, int]], splits.SplitFile | None, parent.ParentVocabulary | None]:
    """Everything checked before the pipeline starts (inputs, ``--split_file``, ``--vocabulary_from``,
    ``--output``), then ``--output`` made ready (`outputs.prepare_output`): ``(inputs, split file, parent)``.
    Raises ValueError / FileNotFoundError / FileExistsError."""
    inputs = reading.match_inputs(config.input)
    split_file = splits.load_split_file(config.split_file) if config.split_file else None
    # before `prepare_output`, whose --overwrite deletes files
    checked = parent.load_parent(config.vocabulary_from, config.output) if config.vocabulary_from else None
    check_output_folder(config.output)
    outputs.prepare_output(config.output, config.overwrite, [path for _, path, _ in inputs])
    return inputs, split_file, checked


def check_output_folder(output: str) -> None:
    """A local ``--output`` is a writable folder or can be created in one, else `outputs.OutputError` naming both
    (not an OSError from deep inside); what it may hold: `outputs.check_output_location`."""
    if not outputs.is_local(output) or (os.path.lexists(output) and not os.path.isdir(output)):
        return  # an existing file: `outputs.check_output_location` says so
    folder = os.path.abspath(output)
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise outputs.OutputError(f"--output {output!r} cannot be created: {folder} is not a folder; choose another")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise outputs.OutputError(f"--output {output!r}: {folder} is not writable; choose another --output")


def execute(
    config: PipelineConfig,
    options: PipelineOptions,
    inputs: list[tuple[int, str, int]],
    split_file: splits.SplitFile | None,
    vocabulary_parent: parent.ParentVocabulary | None = None,
) -> beam.runners.runner.PipelineResult:
    """Builds and runs the pipeline on a `prepare`d output, waits for it; returns the Beam result."""
    LOG.info("pipeline: %d input file(s), runner %s, %s", len(inputs), options.view_as(StandardOptions).runner, config)
    start = time.monotonic()
    runners.guard_local_data_plane(options)
    workers, spills = runners.local_workers(options), runners.spills_shuffles(options)
    graph = preprocess.Preprocess(config, inputs, split_file, vocabulary_parent, workers, spills)
    runners.cap_dask_partitions(options, max(len(inputs), graph.num_blocks))
    p = beam.Pipeline(options=options)
    _ = p | "Preprocess" >> graph
    result = None
    try:
        result = p.run()
        result.wait_until_finish()
    finally:
        spill.remove(config.output, graph.run_id)  # a failed run's too (a finished one's last step removed it)
        outputs.release_output(config.output)  # taken by `prepare`
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


# Raised inside the pipeline for bad input (a damaged or changing input file, a split file that does not fit the
# data): reported as one ``error:`` line, exit code 2, like a usage error found before the run.
WORKER_ERRORS = (inputfiles.InputFileError, splits.SplitFileError, parent.ParentVocabularyError)


class QuietWorkerErrors(logging.Filter):
    """Drops Beam's logged traceback of a `WORKER_ERRORS` error, which `main` reports as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("apache_beam") or record.levelno < logging.ERROR:
            return True
        error = record.exc_info[1] if record.exc_info else RuntimeError(record.getMessage())
        return portable.worker_error(error, WORKER_ERRORS) is None


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: 0 on success, 2 on a usage or input error (one ``error:`` line; ``MDCNS_TF_TRACEBACK=1`` for the
    traceback), 1 when no user is left to write. Other failures inside the pipeline keep their traceback."""
    # force: importing Beam already logged through (and so configured) the root logger
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # Beam logs one INFO line per string type hint (from `from __future__ import annotations`): noise for users.
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    traceback = bool(os.environ.get(cli.TRACEBACK_ENV))
    for handler in logging.getLogger().handlers if not traceback else []:
        handler.addFilter(QuietWorkerErrors())
    try:
        config, _ = parse_args(argv)
        prepared = prepare(config)
        _, options = parse_args(argv, prepared[0])
    except (ValueError, OSError) as e:
        if traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        execute(config, options, *prepared)
    except Exception as e:  # noqa: BLE001
        cause = portable.worker_error(e, WORKER_ERRORS)
        if cause is None or traceback:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2
    meta = outputs.read_metadata(config.output)
    c = meta["counts"]
    empty = outputs.empty_output_message(config.output, c)
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
