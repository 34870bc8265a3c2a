"""What a version ships besides its graph: the vocabulary of ``serve_keys`` (``assets/items.txt``, line i = the key of
id i + 1) and the item table in its checkpoint."""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf

from mdcns_tf import features
from mdcns_tf.savedmodel.signatures import VOCABULARY_FILE

# The export's log lines carry the command's name, whichever module writes them.
log = logging.getLogger("mdcns_tf.export")


def read_vocabulary(export_dir: str) -> list[str]:
    """The item keys an export serves (see `mdcns_tf.features.read_keys`), from its own assets."""
    return features.read_keys(os.path.join(export_dir, VOCABULARY_FILE))


def vocabulary_path(data_dir: str | None) -> str | None:
    """``<data_dir>/items.txt`` when it exists."""
    if not data_dir:
        return None
    path = os.path.join(data_dir, features.ITEMS_FILE)
    return path if os.path.exists(path) else None


def write_vocabulary(path: str, vocabulary_file: str | None, n_items: int) -> list[str]:
    """Writes the vocabulary the export ships to ``path`` and returns its keys (line i = key of id i + 1).

    Without ``items.txt`` (datasets written without the pipeline) the keys are the decimal ids, so that
    ``serve_keys`` still works and says what it serves.
    """
    if vocabulary_file is None:
        log.warning("no %s beside the data: serve_keys will use the decimal item ids as keys", features.ITEMS_FILE)
        keys = [str(i) for i in range(1, n_items + 1)]
    else:
        keys = features.read_keys(vocabulary_file)
        if len(keys) != n_items:
            raise ValueError(f"{vocabulary_file} has {len(keys)} keys, the model has n_items={n_items}")
        bad = [i + 1 for i, key in enumerate(keys) if not key or "\r" in key]
        if bad:
            raise ValueError(f"{vocabulary_file}: empty keys or carriage returns on line(s) {bad[:5]}")
        if len(set(keys)) != len(keys):
            raise ValueError(f"{vocabulary_file}: duplicate item keys; each line must be unique")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(keys) + "\n")
    return keys


def read_item_table(export_dir: str) -> np.ndarray:
    """The item table `(n_items + 1, d)` of an export, read from its checkpoint (row 0 = padding)."""
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    key = "item_table/.ATTRIBUTES/VARIABLE_VALUE"
    if not reader.has_tensor(key):
        raise KeyError(f"{export_dir} has no {key!r}; was it written by mdcns_tf.export?")
    return reader.get_tensor(key)
