"""Top-K recommendations for every user of a data folder, from an exported SavedModel, as a Beam pipeline.

    python -m pipeline.recommend --model EXPORT_DIR --data DATA_DIR --output DIR [--split all|train|valid|test] \\
        [--top_k K] [--format jsonl|tfrecord] [--batch_size N] [--overwrite] [--allow_data_mismatch] [BEAM OPTIONS]

``--model``: a model folder (``<run>/export/<name>``, its newest version) or one version folder. ``--data``: the
pipeline's data folder the model was trained on. ``--split all`` (the default) scores each user's whole sequence
(every record, targets included: what the model should recommend next); ``train``/``valid``/``test`` score the
inputs of that split's records (its users only, targets left out). ``--top_k``: at most the export's K (default).

Output in ``DIR``: ``part-SSSSS-of-NNNNN.jsonl``, one line a user::

    {"user_index": 7, "user": "<users.txt key>", "item_ids": [..K], "item_keys": [..K], "scores": [..K]}

(``--format tfrecord``: ``part-*.tfrecord.gz``, one ``tf.train.Example`` a user with the same five features), then
``manifest.json`` and, last, ``_SUCCESS`` with the counts (users in = users out) and what was scored with what.
The lists are ``serving_default``'s answer to the user's history, last ``max_len`` items, left-padded: the items of
the history excluded; id 0 / key "" / float32-lowest score where fewer than K unseen items exist. Output folder
rules: `pipeline.recommend_output`.

Before anything runs: the data folder is checked against its fingerprint and the model against the data
(`pipeline.inference.check_identity`: the same item vocabulary, and the records the model card records); a
mismatch is one ``error:`` line, exit code 2, nothing written. Beam options as for `pipeline.run`: the default
runner is ``FnApiRunner``; ``--direct_num_workers=2 --direct_running_mode=multi_processing`` uses two processes;
``--runner=apache_beam.runners.dask.dask_runner.DaskRunner --dask_client_address=HOST:PORT`` a Dask cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from mdcns_tf import cli, features
from pipeline import inference, outputs, recommend_output, recommendations, runners

LOG = logging.getLogger("pipeline")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.recommend",
        description="Top-K recommendations for every user of a data folder from an exported SavedModel. Unknown "
        "flags are Beam pipeline options.",
    )
    parser.add_argument("--model", required=True, help="export/<model_name> folder or one version folder")
    parser.add_argument("--data", required=True, help="the pipeline's data folder the model was trained on")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument(
        "--split",
        default=recommendations.ALL,
        choices=recommendations.SPLIT_CHOICES,
        help="all = each user's whole sequence (default); train/valid/test = that split's record inputs",
    )
    parser.add_argument("--top_k", type=int, default=0, help="items per user, at most the export's K (0 = K)")
    parser.add_argument("--format", default="jsonl", choices=tuple(recommend_output.FORMATS))
    parser.add_argument("--batch_size", type=int, default=512, help="users per serving_default call")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous output of this command")
    parser.add_argument(
        "--allow_data_mismatch",
        action="store_true",
        help="score a data folder with the model's item vocabulary but other records than it was trained on",
    )
    return parser


def prepare(args: argparse.Namespace) -> recommendations.RecommendOptions:
    """Every check before the pipeline runs, then ``--output`` claimed. Raises ValueError / OSError (including
    `inference.IdentityError`, `features.DataFolderError`, `outputs.OutputError`, FileExistsError)."""
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    export = inference.load_export(args.model)
    data_dir = os.path.abspath(args.data)
    metadata = features.Metadata.load(data_dir)  # the records against their fingerprint
    identity = inference.check_identity(export, data_dir, metadata, args.allow_data_mismatch)
    top_k = args.top_k or export.top_k
    if not 1 <= top_k <= export.top_k:
        raise ValueError(f"--top_k {args.top_k}: this export returns K={export.top_k}; re-export for a larger K")
    users = metadata.n_users if args.split == recommendations.ALL else metadata.records.get(args.split, 0)
    output = outputs.absolute(args.output)
    recommend_output.prepare_output(output, args.overwrite, [data_dir, export.version_dir])
    summary = {
        "writer": recommend_output.WRITER,
        "model": export.version_dir,
        "data": data_dir,
        "split": args.split,
        "top_k": top_k,
        "format": args.format,
        "batch_size": args.batch_size,
        "identity": identity,
    }
    return recommendations.RecommendOptions(
        version_dir=export.version_dir,
        data_dir=data_dir,
        output=output,
        split=args.split,
        max_len=export.max_len,
        top_k=top_k,
        format=args.format,
        batch_size=args.batch_size,
        users_expected=users,
        summary=summary,
    )


def execute(options: recommendations.RecommendOptions, beam_opts: PipelineOptions) -> dict:
    """Runs the pipeline on a `prepare`d output and waits for it; returns the ``_SUCCESS`` summary."""
    LOG.info("recommend: %d users, runner %s", options.users_expected, beam_opts.view_as(StandardOptions).runner)
    start = time.monotonic()
    runners.guard_local_data_plane(beam_opts)
    p = beam.Pipeline(options=beam_opts)
    _ = p | "Recommend" >> recommendations.Recommend(options)
    result = None
    try:
        result = p.run()
        result.wait_until_finish()
    finally:
        outputs.release_output(options.output)
        client = getattr(result, "client", None)  # the Dask runner's, which it never closes (see pipeline.run)
        if client is not None and hasattr(client, "close"):
            client.close()
    seconds = time.monotonic() - start
    summary = recommend_output.read_success(options.output)
    LOG.info("pipeline.recommend finished in %.2fs: %d users", seconds, summary["users_out"])
    return summary


def run(argv: Sequence[str] | None = None) -> dict:
    """Parses ``argv`` (ours + Beam's), checks, runs; returns the ``_SUCCESS`` summary."""
    args, beam_args = build_arg_parser().parse_known_args(argv)
    beam_opts = runners.beam_options(beam_args)
    return execute(prepare(args), beam_opts)


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success; 2 with one ``error:`` line for a usage, data or identity error (``MDCNS_TF_TRACEBACK=1`` for
    the traceback). Failures inside the pipeline keep their traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    args, beam_args = build_arg_parser().parse_known_args(argv)
    try:
        beam_opts = runners.beam_options(beam_args)
        options = prepare(args)
    except (ValueError, OSError) as e:
        if os.environ.get(cli.TRACEBACK_ENV):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = execute(options, beam_opts)
    print(
        f"{options.output}: {summary['users_out']} users (of {summary['users_expected']}), top {options.top_k}, "
        f"{len(summary['files'])} {options.format} file(s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
