"""Re-evaluate a finished (or running) training run's selected weights with the current full-ranking metrics.

    python -m mdcns_tf.evaluate --run runs/beauty_sasrec_uniform [--splits valid test] [--output FILE]

Reads ``<run>/config.yaml`` (the resolved config `mdcns_tf.train` wrote), rebuilds the model, loads the best
weights kept by model selection (``<run>/best/weights``) and prints the metrics of each split as JSON, with the
run's identity (``run``) and the data it was measured on (``data``). Use it to re-measure runs trained before a
metrics fix, or on another copy of the data (``--set data.dir=...``). The data must be the data the run was trained
on (the same data fingerprint), and the run's records must agree (`mdcns_tf.runs.lineage`);
``--allow-data-mismatch`` measures on other data anyway and says so in the output.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import mdcns_tf  # noqa: F401
from mdcns_tf import cli
from mdcns_tf.config import ConfigError
from mdcns_tf.features import DataFolderError
from mdcns_tf.runs.lineage import ALLOW_FLAG
from mdcns_tf.training import finished_run

log = logging.getLogger("mdcns_tf.evaluate")


def evaluate_run(
    run_dir: str, splits: list[str], overrides: list[str] | None = None, allow_data_mismatch: bool = False
) -> dict[str, Any]:
    """``{"metric_version": n, "run": identity, "data": {...}, split: {metric: value}}`` for the best weights of
    ``run_dir``."""
    # Imported here, after the arguments are parsed: they import TensorFlow.
    from mdcns_tf import metrics
    from mdcns_tf.training.factory import eval_split, evaluate

    config = finished_run.load_run_config(run_dir, overrides)
    model, _, lineage = finished_run.load_checked(run_dir, config, allow_data_mismatch)
    return {
        "metric_version": metrics.METRIC_VERSION,
        **lineage,
        **{split: evaluate(model, eval_split(config, split)) for split in splits},
    }


def check_output(path: str) -> None:
    """Fails before the evaluation, not after it, when ``--output`` cannot be written."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--output {path} is a folder: name the file to write")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--output {path}: its folder {folder} does not exist; create it or name another file")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ConfigError(f"--output {path}: not writable; fix the permissions or name another file")


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("mdcns_tf.evaluate", "mdcns-evaluate", __doc__)
    parser.add_argument("--run", required=True, help="output_dir of a training run")
    parser.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument(
        ALLOW_FLAG,
        action="store_true",
        help="evaluate on a data.dir whose fingerprint differs from the run's (recorded in the output)",
    )
    args = parser.parse_args(argv)

    def evaluate_and_report() -> None:
        if args.output:
            check_output(args.output)
        text = json.dumps(evaluate_run(args.run, args.splits, args.set, args.allow_data_mismatch), indent=1)
        print(text)
        if args.output:
            with open(args.output, "w") as f:
                f.write(text + "\n")

    return cli.run_command(evaluate_and_report, (ConfigError, FileNotFoundError, DataFolderError))


if __name__ == "__main__":
    sys.exit(main())
