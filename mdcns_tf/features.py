"""The one feature spec shared by `pipeline/` (writer), `mdcns_tf.data` (reader) and serving.

A record is one user's sequence in one split, as a gzip `tf.train.Example`:

- ``user_index``  int64 scalar: 1-based dense user index (the row of ``users.txt``).
- ``item_ids``    int64 var-len: the user's input sequence in chronological order, item ids in
  ``[1, n_items]`` (0 is reserved for padding and never stored).
- ``target``      int64 scalar: the held-out next item for evaluation records; 0 for training
  records, whose targets are the sequence's own next items.

The folder the pipeline writes (``metadata.json``, ``items.txt``, ``users.txt``, ``{train,valid,test}/*.tfrecord.gz``,
``rejected/*.txt``, ``manifest.json``) is described in docs/design.md, section "The data folder".

``metadata.json``'s ``fingerprint`` ties the records to the metadata (`verify_records`)::

    {"algorithm": "sha256",
     "splits": {"train": {"records": 660, "files": {"part-00000-of-00001.tfrecord.gz": "<sha256 hex>"}}, ...},
     "vocabularies": {"items.txt": "<sha256 hex>", "users.txt": "<sha256 hex>"}}

and the records tie the rest of ``metadata.json`` down: ``n_items`` / ``n_users`` are the line counts of the
fingerprinted vocabularies, ``item_counts`` the item occurrences of the train records (`check_record_ids`), so a
``metadata.json`` edited by hand, however self-consistent, is refused.

``<dir>/.mdcns.lock`` (`LOCK_FILE`): a `fcntl.flock` lock; the pipeline holds it exclusively while it writes a
folder, a training run shared while it reads one (`pipeline.outputs`, `mdcns_tf.runs.ownership`).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from typing import Any, BinaryIO

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
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".mdcns.lock"
FINGERPRINT_ALGORITHM = "sha256"


def read_keys(path: str) -> list[str]:
    """The keys of an ``items.txt`` / ``users.txt``, one a line: the key of id (user index) i at index i - 1."""
    with open(path, encoding="utf-8", newline="") as f:
        return [] if not (text := f.read()) else text.removesuffix("\n").split("\n")


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
    ``rows_read == rows_written + rows_rejected + rows_filtered`` always holds. ``fingerprint`` (None in metadata
    written before it existed) holds the sha256 of every record and vocabulary file (format: module docstring).
    """

    schema_version: int
    n_users: int
    n_items: int
    item_counts: list[int]
    split: dict[str, Any]
    counts: dict[str, int]
    records: dict[str, int]
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    fingerprint: dict[str, Any] | None = None

    @classmethod
    def load(cls, data_dir: str, verify: bool = True) -> Metadata:
        """Reads ``<data_dir>/metadata.json``; with ``verify``, also checks the records against it
        (`verify_records`: `RecordsMismatchError` when they belong to another dataset)."""
        path = os.path.join(data_dir, METADATA_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no {METADATA_FILE} in {data_dir!r}: run `python -m pipeline.run --output {data_dir} ...` first"
            )
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            if not isinstance(raw, dict):
                raise ValueError(f"a JSON {type(raw).__name__}, not an object")
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DataFolderError(f"{path} cannot be read as metadata ({e}); re-run the pipeline") from None
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise DataFolderError(
                f"{path}: schema_version {raw.get('schema_version')!r}, this code reads {SCHEMA_VERSION}; "
                "re-run the pipeline"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            meta = cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError as e:  # a required key missing
            raise DataFolderError(f"{path} is not pipeline metadata ({e}); re-run the pipeline") from None
        problem = _shape_problem(meta)
        if problem:
            raise DataFolderError(f"{path}: {problem}; re-run the pipeline")
        if verify:
            verify_records(data_dir, meta)
        return meta

    def save(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        with open(os.path.join(data_dir, METADATA_FILE), "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)


# --- Records vs metadata ---------------------------------------------------------------------------------------


class DataFolderError(ValueError):
    """A data folder that cannot be used as it is; the message names the file and what to do."""


class RecordsMismatchError(DataFolderError):
    """The records (or vocabularies) in a data directory are not the ones its ``metadata.json`` describes."""


class DamagedRecordsError(RecordsMismatchError):
    """A record file that is not a readable gzip TFRecord any more (cut short, corrupted on disk or in a copy)."""


def _shape_problem(meta: Metadata) -> str | None:
    """What is wrong with the types and sizes of ``meta``'s fields, or None."""
    sizes = (meta.n_users, meta.n_items)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes):
        return f"n_users and n_items must be integers >= 0, got {sizes}"
    if not isinstance(meta.item_counts, list) or not all(isinstance(c, int) and c >= 0 for c in meta.item_counts):
        return "item_counts must be a list of integers >= 0"
    if len(meta.item_counts) != meta.n_items + 1:
        return f"item_counts has {len(meta.item_counts)} entries, expected n_items + 1"
    return None if isinstance(meta.records, dict) else "records must be an object of record counts per split"


class MissingFingerprintWarning(UserWarning):
    """``metadata.json`` predates the fingerprint: the records are checked by scanning them instead."""


def sha256_stream(stream: BinaryIO, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a binary stream's remaining bytes, read in chunks (shared by the pipeline and the check)."""
    digest = hashlib.new(FINGERPRINT_ALGORITHM)
    while chunk := stream.read(chunk_bytes):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def verify_records(data_dir: str, metadata: Metadata, scan_ids: bool | None = None) -> None:
    """Checks that ``data_dir``'s records and vocabularies are the ones ``metadata`` was written with.

    First the fingerprint (cheap: a sha256 per file, no TensorFlow): the same record files with the same bytes,
    record counts and ``items.txt``/``users.txt``, whose line counts are ``n_items`` / ``n_users``. Then, unless
    ``scan_ids`` is False, a pass over the records (`check_record_ids`): ids in range, record counts and the train
    records' item occurrences equal to ``item_counts``; over the train split only when the fingerprint matched
    (the pipeline wrote those bytes with those ids), over every split without one (metadata written before it
    existed, which only warns) or with ``scan_ids`` True.

    Raises `RecordsMismatchError` naming the first offending file and what differs (`DamagedRecordsError` for a
    record file that is no longer a readable gzip TFRecord).
    """
    fingerprint = metadata.fingerprint
    if fingerprint is None:
        warnings.warn(
            MissingFingerprintWarning(
                f"{os.path.join(data_dir, METADATA_FILE)} has no record fingerprint (written by an older pipeline): "
                "scanning the records' ids instead; re-run the pipeline to record one"
            ),
            stacklevel=2,
        )
    else:
        _check_fingerprint(data_dir, metadata, fingerprint)
    _check_vocabulary_sizes(data_dir, metadata)
    if scan_ids or scan_ids is None:
        check_record_ids(data_dir, metadata, SPLITS if scan_ids or fingerprint is None else ("train",))


def _edited(path: str, what: str) -> RecordsMismatchError:
    return RecordsMismatchError(
        f"{path}: {what}; {METADATA_FILE} was edited after the pipeline wrote it, or describes other records: re-run "
        "the pipeline (--overwrite) to rewrite it, or point data.dir at the folder it came from"
    )


def _check_vocabulary_sizes(data_dir: str, metadata: Metadata) -> None:
    """``n_items`` / ``n_users`` are the line counts of ``items.txt`` / ``users.txt`` (when present)."""
    for name, key in ((ITEMS_FILE, "n_items"), (USERS_FILE, "n_users")):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path) and (lines := len(read_keys(path))) != getattr(metadata, key):
            raise _edited(
                os.path.join(data_dir, METADATA_FILE), f"{key} is {getattr(metadata, key)} but {name} has {lines} lines"
            )


def _mismatch(path: str, what: str) -> RecordsMismatchError:
    return RecordsMismatchError(
        f"{path}: {what}; the records and {METADATA_FILE} come from different pipeline runs "
        "(re-run the pipeline into an empty --output, or point data.dir at the matching folder)"
    )


def _check_fingerprint(data_dir: str, metadata: Metadata, fingerprint: dict[str, Any]) -> None:
    meta_path = os.path.join(data_dir, METADATA_FILE)
    try:
        algorithm = fingerprint["algorithm"]
        split_prints = {split: fingerprint["splits"][split] for split in SPLITS}
        vocabularies = dict(fingerprint.get("vocabularies", {}))
    except (KeyError, TypeError) as e:
        raise RecordsMismatchError(f"{meta_path}: malformed fingerprint ({e!r})") from None
    if algorithm != FINGERPRINT_ALGORITHM:
        raise RecordsMismatchError(f"{meta_path}: fingerprint algorithm {algorithm!r}, expected sha256")
    for split, expected in split_prints.items():
        if expected.get("records") != metadata.records.get(split):
            raise _mismatch(
                meta_path,
                f"{split} has {metadata.records.get(split)} records but the fingerprint {expected.get('records')}",
            )
        _check_files(os.path.join(data_dir, split), dict(expected.get("files", {})), split_pattern(data_dir, split))
    for name, digest in vocabularies.items():
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise _mismatch(path, "missing (the fingerprint lists it)")
        if file_sha256(path) != digest:
            raise _mismatch(path, f"sha256 differs from the fingerprint's {digest[:12]}... (another vocabulary)")


def _check_files(directory: str, expected: dict[str, str], pattern: str) -> None:
    """The record files matching ``pattern`` are exactly ``expected`` (``{file name: sha256}``), byte for byte."""
    actual = {os.path.basename(path): path for path in glob.glob(pattern)}
    extra = sorted(set(actual) - set(expected))
    if extra:
        raise _mismatch(actual[extra[0]], "a record file the fingerprint does not list")
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise _mismatch(os.path.join(directory, missing[0]), "missing (the fingerprint lists it)")
    for name in sorted(actual):
        digest = file_sha256(actual[name])
        if digest != expected[name]:
            if damage := record_file_damage(actual[name]):
                raise _damaged(actual[name], f"{damage}; its sha256 no longer matches the one the pipeline recorded")
            raise _mismatch(
                actual[name], f"sha256 {digest[:12]}... differs from the fingerprint's {expected[name][:12]}..."
            )


def _damaged(path: str, reason: str) -> DamagedRecordsError:
    """A damaged file explains a mismatch better than records of another run: checked first wherever one appears."""
    fix = "re-run the pipeline (--overwrite) to write the folder again, or restore the file"
    return DamagedRecordsError(f"{path} is damaged ({reason}): {fix}")


def record_file_damage(path: str) -> str | None:
    """Why ``path`` is not a whole gzip TFRecord file (gzip stream, then record framing), or None. No TensorFlow:
    the gzip CRC catches changed bytes, the framing a file cut at a gzip member boundary."""
    try:
        with gzip.open(path, "rb") as f:
            while header := f.read(12):  # uint64 length, uint32 CRC of the length, data, uint32 CRC of the data
                (length,) = struct.unpack("<Q", header[:8]) if len(header) == 12 else (-1,)
                if not 0 <= length < 1 << 31:
                    return "a record header is cut short or garbled"
                if len(f.read(length + 4)) != length + 4:
                    return "its last record is cut short"
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        return f"not a readable gzip file: {e}"
    return None


def check_record_ids(data_dir: str, metadata: Metadata, splits: Sequence[str] = SPLITS) -> None:
    """Scans the record files of ``splits``: ids within the vocabularies, record counts as in
    ``metadata.records``, and the train records' item occurrences equal to ``metadata.item_counts``."""
    import numpy as np

    for split in splits:
        total = 0
        occurrences = np.zeros(metadata.n_items + 1, np.int64)
        for path in sorted(glob.glob(split_pattern(data_dir, split))):
            count, ranges, counted = _record_ranges(path, metadata.n_items if split == "train" else 0)
            total += count
            if not count:
                continue
            problems = []
            if ranges["item_min"] is not None and (ranges["item_min"] < 1 or ranges["item_max"] > metadata.n_items):
                problems.append(f"item ids span [{ranges['item_min']}, {ranges['item_max']}]")
            if ranges["target_min"] < PADDING_ID or ranges["target_max"] > metadata.n_items:
                problems.append(f"targets span [{ranges['target_min']}, {ranges['target_max']}]")
            if problems:
                raise _mismatch(path, f"{' and '.join(problems)} but n_items is {metadata.n_items}")
            if ranges["user_min"] < 1 or ranges["user_max"] > metadata.n_users:
                raise _mismatch(
                    path,
                    f"user indices span [{ranges['user_min']}, {ranges['user_max']}] but n_users is {metadata.n_users}",
                )
            if split == "train":
                occurrences += counted
        if split in metadata.records and total != metadata.records[split]:
            # A file cut at a record boundary inside the gzip stream reads as fewer whole records: check the streams.
            said = f"the split holds {total} records, {METADATA_FILE} says {metadata.records[split]}"
            for path in sorted(glob.glob(split_pattern(data_dir, split))):
                if damage := record_file_damage(path):
                    raise _damaged(path, f"{damage}; {said}")
            raise _mismatch(
                os.path.join(data_dir, split), f"{total} records, {METADATA_FILE} says {metadata.records[split]}"
            )
        differ = np.flatnonzero(occurrences != np.asarray(metadata.item_counts))
        if split == "train" and differ.size:
            i = int(differ[0])
            raise _edited(
                os.path.join(data_dir, METADATA_FILE),
                f"item_counts differ from the train records for {len(differ)} item(s) (item {i}: "
                f"{metadata.item_counts[i]}, the records hold {occurrences[i]})",
            )


def _record_ranges(path: str, n_items: int | None = None) -> tuple[int, dict[str, int | None], Any]:
    """``(record count, {item_min, item_max, target_min, target_max, user_min, user_max}, occurrences)`` of one
    record file (``item_min``/``item_max`` None when no record has an item); ``occurrences``: the count of each item
    id in ``[0, n_items]`` (ids outside are left out; only id 0 without ``n_items``), a numpy vector."""
    import tensorflow as tf

    spec = feature_spec()
    big = tf.constant(2**62, tf.int64)
    size = (n_items or 0) + 1

    def lows(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        # (records, minima of (item, -item, target, -target, user, -user), item occurrences) of a batch: one min
        # reduces them all
        example = tf.io.parse_example(serialized, spec)
        columns = [example[ITEM_IDS].values, example[TARGET], example[USER_INDEX]]
        signed = [part for column in columns for part in (column, -column)]
        minima = tf.stack([tf.reduce_min(tf.concat([values, [big]], 0)) for values in signed])
        items = example[ITEM_IDS].values
        inside = tf.boolean_mask(items, (items >= 0) & (items < size))
        counted = tf.math.bincount(inside, minlength=size, maxlength=size, dtype=tf.int64)
        return tf.size(serialized, out_type=tf.int64), minima, counted

    def fold(acc: tuple, batch: tuple) -> tuple:
        return acc[0] + batch[0], tf.minimum(acc[1], batch[1]), acc[2] + batch[2]

    # batch before parsing: parse_example on 4096 records is ~10x faster than parse_single_example per record
    dataset = tf.data.TFRecordDataset([path], compression_type="GZIP").batch(4096).map(lows)
    try:
        start = (tf.constant(0, tf.int64), tf.fill([6], big), tf.zeros([size], tf.int64))
        count, low, counted = dataset.reduce(start, fold)
    except tf.errors.OpError as e:
        reason = record_file_damage(path) or f"not records of this feature spec: {e.message.split('}} ')[-1]}"
        raise _damaged(path, reason) from None
    low = [int(v) for v in low.numpy()]
    names = ("item_min", "item_max", "target_min", "target_max", "user_min", "user_max")
    ranges: dict[str, int | None] = dict(zip(names, (low[0], -low[1], low[2], -low[3], low[4], -low[5]), strict=True))
    if low[0] == 2**62:  # no record has an item
        ranges["item_min"] = ranges["item_max"] = None
    return int(count), ranges, counted.numpy()
