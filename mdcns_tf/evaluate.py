"""Re-evaluate a finished (or running) training run's selected weights with the current full-ranking metrics.

    python -m mdcns_tf.evaluate --run runs/beauty_sasrec_uniform [--splits valid test] [--output FILE]

Reads ``<run>/config.yaml`` (the resolved config `mdcns_tf.train` wrote), rebuilds the model, loads the best
weights kept by model selection (``<run>/best/weights``) and prints the metrics of each split as JSON. Use it to
re-measure runs trained before a metrics fix, or on another copy of the data (``--set data.dir=...``).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import mdcns_tf  # noqa: F401
from mdcns_tf import cli
from mdcns_tf.config import ConfigError
from mdcns_tf.training import finished_run

log = logging.getLogger("mdcns_tf.evaluate")


def evaluate_run(run_dir: str, splits: list[str], overrides: list[str] | None = None) -> dict[str, Any]:
    """``{"metric_version": n, split: {metric: value}}`` for the best weights of ``run_dir``."""
    # Imported here, after the arguments are parsed: they import TensorFlow.
    from mdcns_tf import metrics
    from mdcns_tf.training.factory import eval_split, evaluate

    config = finished_run.load_run_config(run_dir, overrides)
    model, _ = finished_run.load_model(run_dir, config)
    return {
        "metric_version": metrics.METRIC_VERSION,
        **{split: evaluate(model, eval_split(config, split)) for split in splits},
    }


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("mdcns_tf.evaluate", "mdcns-evaluate", __doc__)
    parser.add_argument("--run", required=True, help="output_dir of a training run")
    parser.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args(argv)

    def evaluate_and_report() -> None:
        text = json.dumps(evaluate_run(args.run, args.splits, args.set), indent=1)
        print(text)
        if args.output:
            with open(args.output, "w") as f:
                f.write(text + "\n")

    return cli.run_command(evaluate_and_report, (ConfigError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
