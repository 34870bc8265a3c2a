"""Reads a pipeline output back into Python (for tests, debugging and round-trip checks; not for training).

Training reads the records with `mdcns_tf.data`; this module decodes them eagerly with the same
`mdcns_tf.features.feature_spec`, so a round trip through it checks what the trainer will see.
"""

from __future__ import annotations

import glob
import os

import mdcns_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from mdcns_tf import features

Record = tuple[int, list[int], int]


def read_split(data_dir: str, split: str) -> list[Record]:
    """All records of one split as ``(user_index, item_ids, target)``, sorted by user index."""
    import tensorflow as tf

    files = sorted(glob.glob(features.split_pattern(data_dir, split)))
    if not files:
        return []
    spec = features.feature_spec()
    out = []
    for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096):
        parsed = tf.io.parse_example(serialized, spec)
        # Item ids are >= 1 and 0 is never stored, so the dense padding 0 marks the end of each row.
        ids = tf.sparse.to_dense(parsed[features.ITEM_IDS]).numpy()
        for user, row, target in zip(
            parsed[features.USER_INDEX].numpy(), ids, parsed[features.TARGET].numpy(), strict=True
        ):
            out.append((int(user), [int(i) for i in row if i != features.PADDING_ID], int(target)))
    return sorted(out)


def read_vocab(data_dir: str, name: str) -> list[str]:
    """Keys of ``items.txt``/``users.txt``; element ``i - 1`` is the key of id ``i``."""
    with open(os.path.join(data_dir, name), encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def full_sequences(data_dir: str) -> dict[str, list[str]]:
    """``{user key: [item key, ...]}``: each written user's whole chronological sequence, in raw keys.

    Leave-one-out: the test record's input plus its target. User split: a train user's record, a held-out
    user's input plus target. Time split: the events up to the target (the train record; a held-out user's
    evaluation record's input plus target), not those after it, which the cut dropped.
    """
    items = read_vocab(data_dir, features.ITEMS_FILE)
    users = read_vocab(data_dir, features.USERS_FILE)
    meta = features.Metadata.load(data_dir)
    records = read_split(data_dir, "test")
    if meta.split["protocol"] in ("user", "time"):
        # time: the evaluation record (history + target) comes after the train record and overrides it
        records = read_split(data_dir, "train") + read_split(data_dir, "valid") + records
    out = {}
    for user, ids, target in records:
        sequence = ids + ([target] if target else [])
        out[users[user - 1]] = [items[i - 1] for i in sequence]
    return out
