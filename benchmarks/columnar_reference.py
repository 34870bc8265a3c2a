"""A columnar leave-one-out preprocessor in one process: the floor `benchmarks.pipeline_scaling` sets beside the
Beam pipeline. A floor for the benchmark, NOT the product: no rejected rows, no accounting beyond a few counts, no
k-core, no dedupe, no other split, one machine and one process, everything in memory.

    python -m benchmarks.columnar_reference --input DIR_OR_FILE --output DIR [--threads 1]

What it does, the cheapest way it can while writing what `pipeline.run --input_format interactions --split loo`
writes for a clean log:

- reads every non-hidden file of ``--input`` (sorted by name, as `pipeline.reading.match_inputs` orders them) as
  tab-separated ``user \\t item \\t timestamp`` rows with ``pyarrow.csv.read_csv`` (no header; keys verbatim, not
  normalised; timestamps as float64, exact below 2**53), user and item dictionary-encoded as they are read;
- drops users with fewer than 3 events (the pipeline's ``min_seq_len`` for loo);
- numbers items and users in the pipeline's vocabulary order (`pipeline.vocabulary.vocabulary_order`, copied here
  as `vocabulary_order` so that no Beam is imported: integer keys numerically, then the others sorted), applied to
  the distinct keys only, so ``items.txt`` / ``users.txt`` are the pipeline's byte for byte;
- sorts the events by (user index, timestamp, input order) (a stable ``numpy.lexsort``; input order = file, line);
- writes per user ``pipeline.splits.loo_records``: train ``s[:-2]`` (target 0), valid ``s[:-2] -> s[-2]``, test
  ``s[:-1] -> s[-1]``, as gzip TFRecord files ``{train,valid,test}/part-00000-of-00001.tfrecord.gz`` of serialised
  ``tf.train.Example``s with the `mdcns_tf.features` names. The bytes are `pipeline.encoding.encode_example`'s (the
  same wire layout, built from a per-item table of varints instead of one value at a time; the test checks that
  they are equal); TFRecord framing with crcmod's crc32c, gzip level 6, like Beam's sink (no TensorFlow import);
- writes ``items.txt``, ``users.txt`` and a small ``metadata.json`` (``"reference"`` says what it is; ``counts``
  ``rows_read``/``rows_written``/``rows_filtered``/``users_read``/``users_written``, ``records``, ``n_users``,
  ``n_items``, ``item_counts``): enough for `benchmarks.compare_outputs --parts records,vocabularies` against a
  pipeline output and for the benchmark's row checks, not a `mdcns_tf.features.Metadata` (training refuses it).

At the end it prints its CPU seconds (user + sys of this process) and wall seconds. ``--threads`` (default 1) is
Arrow's thread pool: 1 keeps the whole floor on one core.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mdcns_tf import features
from pipeline.encoding import length_delimited, varint
from pipeline.fields import is_integer_key

MIN_SEQ_LEN = 3  # pipeline.splits.MIN_SEQ_LEN["loo"]
GZIP_LEVEL = 6  # zlib.Z_DEFAULT_COMPRESSION, what Beam's gzip sink writes
WRITE_CHUNK = 1 << 20
SHARD_NAME = "part-00000-of-00001" + features.TFRECORD_SUFFIX
DESCRIPTION = (
    "benchmarks.columnar_reference: a floor for benchmarks.pipeline_scaling, not the product and not a pipeline "
    "output (no rejected rows, no accounting, one machine)"
)


def input_files(path: str) -> list[str]:
    """A file, or a directory's non-hidden regular files sorted by name (the pipeline's order of a directory)."""
    if not os.path.isdir(path):
        return [path]
    names = sorted(n for n in os.listdir(path) if not n.startswith(".") and os.path.isfile(os.path.join(path, n)))
    if not names:
        raise FileNotFoundError(f"--input {path!r}: no file to read")
    return [os.path.join(path, n) for n in names]


def read_log(paths: Sequence[str], threads: bool = False) -> tuple[np.ndarray, list[str], np.ndarray, list[str], Any]:
    """``(user codes, user keys, item codes, item keys, timestamps)``: the rows of every file in order, user and item
    as codes into one dictionary each (first-seen order, not yet the vocabulary's)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    keys = pa.dictionary(pa.int32(), pa.string())
    read = pcsv.ReadOptions(column_names=["user", "item", "timestamp"], use_threads=threads)
    parse = pcsv.ParseOptions(delimiter="\t", quote_char=False)
    convert = pcsv.ConvertOptions(column_types={"user": keys, "item": keys, "timestamp": pa.float64()})
    tables = [pcsv.read_csv(p, read_options=read, parse_options=parse, convert_options=convert) for p in paths]
    table = pa.concat_tables(tables).unify_dictionaries()
    del tables

    def codes(column: str) -> tuple[np.ndarray, list[str]]:
        chunks = table[column].chunks
        if not chunks:
            return np.zeros(0, np.int32), []
        indices = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks]).astype(np.int32)
        return indices, chunks[0].dictionary.to_pylist()

    users, user_keys = codes("user")
    items, item_keys = codes("item")
    timestamps = table["timestamp"].to_numpy()
    return users, user_keys, items, item_keys, timestamps


def vocabulary_order(keys: Any) -> list[str]:
    """`pipeline.vocabulary.vocabulary_order` without importing Beam (~1 s of the floor): integer keys numerically
    (negative ones first, ties by the string), then the others sorted. The test checks both orders agree."""
    keys = set(keys)
    integers = sorted((key for key in keys if is_integer_key(key)), key=_integer_order)
    return integers + sorted(key for key in keys if not is_integer_key(key))


_COMPLEMENT = str.maketrans("0123456789", "9876543210")


def _integer_order(key: str) -> tuple[int, int, str, str]:
    digits = key.lstrip("+-").lstrip("0")
    if not digits:
        return (1, 0, "", key)
    if key.startswith("-"):
        return (0, -len(digits), digits.translate(_COMPLEMENT), key)
    return (2, len(digits), digits, key)


def ranks(keys: list[str], present: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Codes -> 1-based ids in `vocabulary_order` of the present keys (0 for absent codes), and that vocabulary."""
    vocabulary = vocabulary_order(keys[c] for c in np.flatnonzero(present))
    position = {key: i for i, key in enumerate(vocabulary, start=1)}
    table = np.zeros(len(keys), np.int64)
    for code in np.flatnonzero(present):
        table[code] = position[keys[code]]
    return table, vocabulary


class ExampleEncoder:
    """`pipeline.encoding.encode_example`'s bytes, with the item ids' varints looked up in a table (ids >= 0)."""

    def __init__(self, n_items: int) -> None:
        self.varints = [varint(i) for i in range(n_items + 1)]
        self._item_key = length_delimited(b"\x0a", features.ITEM_IDS.encode())
        self._scalars = {
            name: length_delimited(b"\x0a", name.encode()) for name in (features.TARGET, features.USER_INDEX)
        }

    def _entry(self, key: bytes, packed: bytes) -> bytes:
        int64_list = length_delimited(b"\x0a", packed) if packed else b""
        entry = key + length_delimited(b"\x12", length_delimited(b"\x1a", int64_list))
        return length_delimited(b"\x0a", entry)

    def encode(self, user_index: int, packed_items: bytes, target: int) -> bytes:
        """``packed_items``: the concatenated varints of the item ids (`packed`)."""
        body = (
            self._entry(self._item_key, packed_items)
            + self._entry(self._scalars[features.TARGET], varint(target))
            + self._entry(self._scalars[features.USER_INDEX], varint(user_index))
        )
        return length_delimited(b"\x0a", body)

    def packed(self, item_ids: Sequence[int]) -> bytes:
        return b"".join([self.varints[i] for i in item_ids])


def _masked_crc32c_fn() -> Any:
    import crcmod.predefined

    crc32c = crcmod.predefined.mkPredefinedCrcFun("crc-32c")

    def masked(data: bytes) -> int:
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    return masked


class TFRecordFile:
    """A gzip TFRecord file: per record length (u64 LE), masked crc32c of it, the bytes, their masked crc32c."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._file = gzip.open(path, "wb", compresslevel=GZIP_LEVEL)
        self._masked = _masked_crc32c_fn()
        self._buffer: list[bytes] = []
        self._size = 0
        self.records = 0

    def write(self, record: bytes) -> None:
        length = struct.pack("<Q", len(record))
        self._buffer += (
            length,
            struct.pack("<I", self._masked(length)),
            record,
            struct.pack("<I", self._masked(record)),
        )
        self._size += len(record) + 16
        self.records += 1
        if self._size >= WRITE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        self._file.write(b"".join(self._buffer))
        self._buffer, self._size = [], 0

    def close(self) -> None:
        self._flush()
        self._file.close()


def preprocess(input_path: str, output: str, threads: bool = False) -> dict[str, Any]:
    """Reads ``input_path``, writes the leave-one-out output to ``output``; returns the metadata it wrote."""
    paths = input_files(input_path)
    users, user_keys, items, item_keys, timestamps = read_log(paths, threads)
    rows_read = len(users)
    per_user = np.bincount(users, minlength=len(user_keys))
    kept_users = per_user >= MIN_SEQ_LEN
    keep = kept_users[users]
    users, items, timestamps = users[keep], items[keep], timestamps[keep]
    user_index, user_vocab = ranks(user_keys, kept_users)
    item_id, item_vocab = ranks(item_keys, np.bincount(items, minlength=len(item_keys)) > 0)
    index = user_index[users]
    order = np.lexsort((timestamps, index))  # stable: ties stay in input order
    ids = item_id[items[order]]
    del users, items, timestamps, order
    lengths = np.bincount(index, minlength=len(user_vocab) + 1)[1:]
    ends = np.cumsum(lengths)

    encoder = ExampleEncoder(len(item_vocab))
    os.makedirs(output, exist_ok=True)
    files = {split: TFRecordFile(os.path.join(output, split, SHARD_NAME)) for split in features.SPLITS}
    varints = encoder.varints
    start = 0
    id_list = ids.tolist()
    for user, end in enumerate(ends.tolist(), start=1):
        sequence = id_list[start:end]
        start = end
        history = b"".join([varints[i] for i in sequence[:-2]])
        files["train"].write(encoder.encode(user, history, features.PADDING_ID))
        files["valid"].write(encoder.encode(user, history, sequence[-2]))
        files["test"].write(encoder.encode(user, history + varints[sequence[-2]], sequence[-1]))
    for f in files.values():
        f.close()

    position = np.arange(len(ids)) - np.repeat(ends - lengths, lengths)  # of each event in its user's sequence
    train_items = ids[position < np.repeat(lengths - 2, lengths)]
    item_counts = np.bincount(train_items, minlength=len(item_vocab) + 1).tolist()
    item_counts[0] = 0
    for name, vocabulary in ((features.ITEMS_FILE, item_vocab), (features.USERS_FILE, user_vocab)):
        with open(os.path.join(output, name), "w", encoding="utf-8") as f:
            f.write("".join(key + "\n" for key in vocabulary))
    metadata = {
        "reference": DESCRIPTION,
        "n_users": len(user_vocab),
        "n_items": len(item_vocab),
        "item_counts": item_counts,
        "split": {"protocol": "loo", "min_seq_len": MIN_SEQ_LEN},
        "counts": {
            "rows_read": rows_read,
            "rows_written": int(len(ids)),
            "rows_filtered": rows_read - int(len(ids)),
            "users_read": len(user_keys),
            "users_written": len(user_vocab),
        },
        "records": {split: f.records for split, f in files.items()},
        "source": {"files": [os.path.basename(p) for p in paths]},
    }
    with open(os.path.join(output, features.METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=1)
    return metadata


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="a log file or a directory of them (user\\titem\\ttimestamp)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--threads", type=int, default=1, help="Arrow's thread pool size (1: one core)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import pyarrow as pa

    pa.set_cpu_count(max(1, args.threads))
    pa.set_io_thread_count(max(1, args.threads))
    meta = preprocess(args.input, args.output, threads=args.threads > 1)
    c = meta["counts"]
    print(
        f"{args.output}: {meta['n_users']} users, {meta['n_items']} items, records {meta['records']}, rows read "
        f"{c['rows_read']} = written {c['rows_written']} + filtered {c['rows_filtered']} ({DESCRIPTION})"
    )
    print(f"cpu seconds: {cpu_seconds():.2f}, wall seconds: {time.perf_counter() - started:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
