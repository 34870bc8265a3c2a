"""The one feature spec shared by `pipeline/` (writer), `mdcns_tf.data` (reader) and serving.

A record is one user's sequence in one split, as a gzip `tf.train.Example`:

- ``user_index``  int64 scalar: 1-based dense user index (the row of ``users.txt``).
- ``item_ids``    int64 var-len: the user's input sequence in chronological order, item ids in
  ``[1, n_items]`` (0 is reserved for padding and never stored).
- ``target``      int64 scalar: the held-out next item for evaluation records; 0 for training
  records, whose targets are the sequence's own next items.

Directory layout written by the pipeline::

    <dir>/metadata.json
    <dir>/items.txt             raw item key of id i on line i (line 1 = id 1)
    <dir>/users.txt             raw user key of index u on line u
    <dir>/train/*.tfrecord.gz
    <dir>/valid/*.tfrecord.gz
    <dir>/test/*.tfrecord.gz
    <dir>/rejected/*.txt        malformed input rows with the reason (tab separated)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

SCHEMA_VERSION = 1
PADDING_ID = 0

USER_INDEX = "user_index"
ITEM_IDS = "item_ids"
TARGET = "target"

SPLITS = ("train", "valid", "test")
METADATA_FILE = "metadata.json"
ITEMS_FILE = "items.txt"
USERS_FILE = "users.txt"
TFRECORD_SUFFIX = ".tfrecord.gz"


def feature_spec() -> dict[str, Any]:
    """`tf.io.parse_single_example` spec for one record."""
    import tensorflow as tf

    return {
        USER_INDEX: tf.io.FixedLenFeature([], tf.int64),
        ITEM_IDS: tf.io.VarLenFeature(tf.int64),
        TARGET: tf.io.FixedLenFeature([], tf.int64, default_value=PADDING_ID),
    }


def make_example(user_index: int, item_ids: Sequence[int], target: int = PADDING_ID) -> bytes:
    """Serialises one record; used by the pipeline and by tests that write small datasets."""
    import tensorflow as tf

    feature = {
        USER_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(user_index)])),
        ITEM_IDS: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i) for i in item_ids])),
        TARGET: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(target)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def split_pattern(data_dir: str, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return os.path.join(data_dir, split, "*" + TFRECORD_SUFFIX)


@dataclasses.dataclass
class Metadata:
    """Contents of ``metadata.json``; the trainer validates its config against it.

    ``item_counts[i]`` is the number of training interactions of item ``i`` (index 0 = padding, 0).
    ``counts`` holds the pipeline's bookkeeping, in which
    ``rows_read == rows_written + rows_rejected + rows_filtered`` always holds.
    """

    schema_version: int
    n_users: int
    n_items: int
    item_counts: list[int]
    split: dict[str, Any]
    counts: dict[str, int]
    records: dict[str, int]
    source: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: str) -> Metadata:
        path = os.path.join(data_dir, METADATA_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"no {METADATA_FILE} in {data_dir!r}: run `python -m pipeline.run --output {data_dir} ...` first"
            )
        with open(path) as f:
            raw = json.load(f)
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema_version {raw.get('schema_version')!r}, this code reads {SCHEMA_VERSION}; "
                "re-run the pipeline"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        meta = cls(**{k: v for k, v in raw.items() if k in known})
        if len(meta.item_counts) != meta.n_items + 1:
            raise ValueError(f"{path}: item_counts has {len(meta.item_counts)} entries, expected n_items + 1")
        return meta

    def save(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        with open(os.path.join(data_dir, METADATA_FILE), "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)
