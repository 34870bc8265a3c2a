"""Query an exported SavedModel in-process, exactly as TF Serving would run its `serving_default` signature.

    python -m mdcns_tf.recommend --model runs/quickstart/export/mdcns --history 12,7,33 [--data data/quickstart]

``--model`` is a model folder (the newest numeric version is used) or one version folder. The raw item keys are
printed beside the ids, from the vocabulary the export ships (``assets/items.txt``): the one the model was trained
with, whatever the data folder holds today. ``--data`` is only compared with it (a warning when they differ).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import mdcns_tf  # noqa: F401
from mdcns_tf import cli, features
from mdcns_tf.savedmodel import versions
from mdcns_tf.savedmodel.signatures import ITEM_IDS, SCORES, SERVING_DEFAULT, checked_item_id

# TensorFlow is imported by the functions that load the model, not here: `--help` answers at once.
if TYPE_CHECKING:
    import numpy as np


def recommend(version_dir: str, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-K (ids, scores) for one history (oldest first), through the ``serving_default`` signature."""
    import tensorflow as tf

    serve = tf.saved_model.load(version_dir).signatures[SERVING_DEFAULT]
    max_len = serve.structured_input_signature[1][ITEM_IDS].shape[1]
    padded = ([0] * max_len + history)[-max_len:]
    outputs = serve(**{ITEM_IDS: tf.constant([padded], tf.int32)})
    return outputs[ITEM_IDS].numpy()[0], outputs[SCORES].numpy()[0]


def item_keys(version_dir: str, data_dir: str | None) -> list[str] | None:
    """``["", k_1, ..., k_n]`` (index = item id, 0 = the "no item" marker) from the export's own vocabulary, or None
    for an export without one. A ``data_dir`` whose ``items.txt`` differs only earns a warning: its ids may have
    been renumbered since the model was trained, so its keys could name other items."""
    from mdcns_tf.savedmodel import assets

    try:
        keys = assets.read_vocabulary(version_dir)
    except FileNotFoundError:
        return None
    if data_dir:
        path = os.path.join(data_dir, features.ITEMS_FILE)
        try:
            differs = features.read_keys(path) != keys
        except (OSError, UnicodeDecodeError) as e:
            print(f"warning: cannot read {path} ({e}); showing the export's keys", file=sys.stderr)
        else:
            if differs:
                print(f"warning: {path} is not the export's vocabulary; showing the export's keys", file=sys.stderr)
    return [""] + keys


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("mdcns_tf.recommend", "mdcns-recommend", __doc__)
    parser.add_argument("--model", required=True, help="export/<model_name> folder or one version folder")
    parser.add_argument("--history", required=True, help="comma-separated item ids, oldest first")
    parser.add_argument("--data", help="pipeline output folder: warns when its items.txt differs from the export's")
    args = parser.parse_args(argv)
    cli.start_tensorflow()  # after parsing: --help and usage errors do not wait for TensorFlow
    import tensorflow as tf

    try:
        history = [checked_item_id(x) for x in args.history.split(",") if x.strip()]
        version_dir = versions.newest_version(args.model)
        ids, scores = recommend(version_dir, history)
    except (ValueError, FileNotFoundError, tf.errors.InvalidArgumentError) as e:
        message = e.message if isinstance(e, tf.errors.OpError) else str(e)
        print(f"error: {message}", file=sys.stderr)
        return 2
    keys = item_keys(version_dir, args.data)
    print(f"model {version_dir}; history {history}")
    for rank, (item, score) in enumerate(zip(ids, scores, strict=True), start=1):
        key = f" (key {keys[item]})" if keys and 0 < item < len(keys) else ""
        print(f"{rank:3d}. item {item}{key}  score {score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
