"""Export a finished training run again, without retraining.

    python -m mdcns_tf.export --run runs/quickstart [--top_k K] [--model_name NAME] [--version V] [--index I]
    mdcns-export --run runs/quickstart --top_k 50

Exports the weights model selection kept (``<run>/best/weights``) as a new version of ``<run>/export/<model_name>/``
with the run's ``config.yaml``, its data folder (whose ``items.txt`` is the ``serve_keys`` vocabulary) and the code
that exports at the end of training: for another K, another model name, another index (``--index bfloat16``), or an
export that failed or was turned off
(``export.enabled: false``). Versions are immutable; ``--version 0`` (the default) takes the next free number. The
version's ``assets.extra/model_card.json`` holds the run's identity (``run``: run id, config hash, data
fingerprint), its metrics, its training provenance and this command's.

The weights, ``config.yaml``, ``metrics.json`` and the data folder must belong to one run (`mdcns_tf.runs.lineage`):
the data folder's fingerprint must be the run's, or the vocabulary served would be another one;
``--allow-data-mismatch`` exports with the data folder as it is and records that in the model card.

The SavedModel code, and its API (`mdcns_tf.savedmodel.publish.export_saved_model`), is in `mdcns_tf.savedmodel`;
this command imports it once the arguments are parsed, so that its ``--help`` does not wait for TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import mdcns_tf  # noqa: F401
from mdcns_tf import cli
from mdcns_tf.config import ConfigError
from mdcns_tf.runs import provenance
from mdcns_tf.runs.lineage import ALLOW_FLAG
from mdcns_tf.training import finished_run

log = logging.getLogger("mdcns_tf.export")

# Run metrics copied into the model card.
CARD_METRICS = ("valid", "test", "best_epoch", "weights")


def reexport(
    run_dir: str,
    top_k: int | None = None,
    model_name: str | None = None,
    version: int = 0,
    index: str | None = None,
    rescore: int | None = None,
    allow_data_mismatch: bool = False,
    data_dir: str | None = None,
) -> str:
    """Exports the selected weights of the training run in ``run_dir``; returns the new version's path.

    ``top_k`` / ``model_name`` / ``index`` / ``rescore``: default to the run's ``export.*`` keys; ``version`` 0 takes
    the next free number. ``data_dir``: the run's data folder where it is now, if it moved (its fingerprint is
    checked all the same). Raises `ConfigError` (`mdcns_tf.runs.lineage.LineageError`: records or data of another
    run, unless ``allow_data_mismatch`` for the data), `FileNotFoundError` (not a run, no selected weights),
    `FileExistsError` (the version exists) or `ValueError` (the vocabulary does not fit the model).
    """
    overrides = [f"export.version={version}", "export.enabled=true"]
    if data_dir is not None:
        overrides.append(f"data.dir={json.dumps(data_dir)}")
    if top_k is not None:
        overrides.append(f"export.top_k={top_k}")
    if model_name is not None:
        overrides.append(f"export.model_name={json.dumps(model_name)}")
    if index is not None:
        overrides.append(f"export.index={json.dumps(index)}")
        if rescore is None and index == "exact":
            overrides.append("export.rescore=0")  # a bfloat16 run's window does not apply to the exact index
    if rescore is not None:
        overrides.append(f"export.rescore={rescore}")
    config = finished_run.load_run_config(run_dir, overrides)
    from mdcns_tf.savedmodel import publish  # TensorFlow: imported once the arguments are known
    from mdcns_tf.training import preflight

    preflight.check_export(config, run_dir)
    model, metadata, lineage = finished_run.load_checked(run_dir, config, allow_data_mismatch)
    if config.export.top_k > metadata.n_items:
        raise ConfigError(f"top_k ({config.export.top_k}) exceeds the number of items ({metadata.n_items})")
    metrics = finished_run.read_metrics(run_dir) or {}  # checked to be the weights' run by load_checked
    card = {
        "metrics": {key: metrics[key] for key in CARD_METRICS if key in metrics},
        "run": lineage["run"],
        "data_check": lineage["data"],
        "provenance": provenance.run_record(config.to_dict(), config.data.dir, metadata.fingerprint),
        "exported_from": os.path.abspath(run_dir),
        "training_provenance": metrics.get("provenance"),
    }
    return publish.export_saved_model(
        model.encoder,
        os.path.join(run_dir, "export"),
        config.export.model_name,
        config.data.max_len,
        config.export.top_k,
        config.export.version,
        data_dir=config.data.dir,
        model_card=card,
        index=config.export.index,
        rescore=config.export.rescore,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("mdcns_tf.export", "mdcns-export", __doc__)
    parser.add_argument("--run", required=True, help="output_dir of a training run")
    parser.add_argument("--top_k", type=int, default=None, help="K of the export (default: the run's export.top_k)")
    parser.add_argument("--model_name", default=None, help="model folder and served name (default: the run's)")
    parser.add_argument("--version", type=int, default=0, help="version number (default 0: the next free one)")
    parser.add_argument(
        "--index", default=None, help="item index: exact or bfloat16 (default: the run's export.index; README, Serving)"
    )
    parser.add_argument(
        "--rescore", type=int, default=None, help="bfloat16 index: candidates re-scored per query (0: 4 x top_k)"
    )
    parser.add_argument(
        "--data", default=None, help="the run's data folder, if it moved since (default: the run's data.dir)"
    )
    parser.add_argument(
        ALLOW_FLAG,
        action="store_true",
        help="export with a data folder whose fingerprint differs from the run's (recorded in the model card)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_command(
        lambda: print(
            reexport(
                args.run,
                args.top_k,
                args.model_name,
                args.version,
                args.index,
                args.rescore,
                args.allow_data_mismatch,
                args.data,
            )
        ),
        (ValueError, FileNotFoundError, FileExistsError),  # ConfigError is a ValueError
    )


if __name__ == "__main__":
    sys.exit(main())
