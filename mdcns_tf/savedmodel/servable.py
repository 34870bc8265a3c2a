"""The servable: SavedModel export of the evaluated (self) model for TensorFlow Serving.

`mdcns_tf.export` is the command and the public name of this API (``export.export_saved_model`` reaches the
functions here); this module imports TensorFlow, that one does not.

Layout: ``<base>/<model_name>/<version>/`` with numeric versions, the format TF Serving's file-system source polls
(it lists the children of the base path and keeps the names that parse as int64; anything else is ignored).
A version is written, checked and made durable in a hidden temporary folder beside the final one (``.<v>-tmp-*``,
never a number) and only then renamed into place, so a server never sees a half-written version and a crash
leaves only a dot-folder that TF Serving ignores. On object stores (``gs://``, ``s3://``) a rename is a copy, not
atomic: export to local disk and upload the finished folder (see ``serving/README.md``).

Signatures (``max_len`` = ``data.max_len``, ``K`` = ``export.top_k``, ``d`` = ``model.dim``):

- ``serving_default``: ``item_ids`` int32 `(batch, max_len)`, left-padded with 0, most recent item last
  -> ``item_ids`` int32 `(batch, K)`, ``scores`` float32 `(batch, K)`: the best items by score, the input's
  items excluded.
- ``serve_keys``: ``item_keys`` string `(batch, max_len)`, raw item keys as in ``items.txt``, ``""`` = padding
  -> ``item_keys`` string `(batch, K)`, ``scores`` float32 `(batch, K)`, ``unknown_keys`` int32 `(batch,)`
  (how many non-empty input keys were not in the vocabulary: they are dropped like padding, never an error).
- ``query_embedding``: ``item_ids`` int32 `(batch, max_len)` -> ``embedding`` float32 `(batch, d)`, the
  query vector scored against ``item_embeddings`` by dot product (for an external ANN index).
- ``item_embeddings``: ``item_ids`` int32 `(n,)`, ids in ``[1, n_items]`` -> ``embeddings`` float32 `(n, d)`.
  The whole table (to build an ANN index offline) is cheaper to read from the checkpoint: `read_item_table`.

Input rules shared by the id signatures: ids outside ``[0, n_items]`` and a sequence length other than
``max_len`` fail with an ``INVALID_ARGUMENT`` error that says so (checked in the graph, because the C++ server
does not check a feed's shape against the signature and a shorter input would otherwise be answered silently
with wrong positions). Padding (0 / ``""`` / unknown keys) may sit anywhere: the real items are moved to the
end, in order, which is how the model saw histories in training. A history with no real item has no query:
its row returns item id 0 / key ``""`` with score `NO_ITEM_SCORE` (0 is never a real item), and a zero
``embedding``. The same marker fills the tail of a row when the catalog has fewer than K unseen items.

``K`` is fixed per export (``export.top_k``): TF Serving batches concurrent requests of one signature into one
run, which needs every input to be a batchable tensor; a per-request K would be a second input and a dynamic
output shape. The index (``export.index``) is brute force: ``exact`` scores every item in float32 (a matmul and a
top-k); ``bfloat16`` scans a bfloat16 copy of the table saved with the version (half the bytes a query reads) and
re-scores its best candidates exactly (`mdcns_tf.savedmodel.compact_index`): the same ids as ``exact`` unless an item of the
true top-K falls outside the re-scored window (recall in ``benchmarks/serving_latency.py``). Both are plain TF ops.
Far beyond a million items, use ``query_embedding`` with an ANN.

``assets.extra/tf_serving_warmup_requests`` holds a few `PredictionLog` requests per signature and batch size;
TF Serving replays them when it loads the version, so the first real request does not pay for lazy
initialisation. They are written without ``tensorflow-serving-api`` (`mdcns_tf.savedmodel.prediction_log`), so a plain
``pip install`` exports them too. ``assets.extra/model_card.json`` says what the version is: its signatures and
K, and (from `mdcns_tf.train` and the re-export command) the run's metrics and `mdcns_tf.runs.provenance` record.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
from tensorflow.core.framework import tensor_pb2

import mdcns_tf  # noqa: F401
from mdcns_tf import features
from mdcns_tf.backbones import Backbone
from mdcns_tf.config import is_safe_model_name
from mdcns_tf.savedmodel import compact_index, prediction_log

log = logging.getLogger("mdcns_tf.export")

SERVING_DEFAULT = "serving_default"
SERVE_KEYS = "serve_keys"
QUERY_EMBEDDING = "query_embedding"
ITEM_EMBEDDINGS = "item_embeddings"
SIGNATURES = (SERVING_DEFAULT, SERVE_KEYS, QUERY_EMBEDDING, ITEM_EMBEDDINGS)

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# What the version is and where it comes from (TF Serving ignores assets.extra files other than the warmup).
MODEL_CARD_FILE = os.path.join("assets.extra", "model_card.json")
# The vocabulary an export ships (line i = key of id i + 1): the asset the serve_keys lookup tables read.
VOCABULARY_FILE = os.path.join("assets", features.ITEMS_FILE)
# Score of the "no item" marker (id 0, key ""): finite so that JSON clients can parse it, and below any real score.
NO_ITEM_SCORE = float(np.finfo(np.float32).min)
# TF Serving refuses warmup files with more than 1000 records.
MAX_WARMUP_RECORDS = 1000


class TableBruteForce(tfrs.layers.factorized_top_k.BruteForce):
    """TFRS `BruteForce` that scores an embedding table by reference instead of copying it.

    The stock ``BruteForce.index`` copies the candidates into new variables (``candidates`` `(n, d)` and
    ``identifiers`` `(n,)`), which doubles the size of the export and of the served model in memory. Here the
    index holds the backbone's own table `(n_items + 1, d)`; the identifier of a row is its index, and row 0
    (padding) is kept out of results by adding 0 to every query's exclusions (see `ServingModule`).
    ``query_with_exclusions`` is the TFRS one.
    """

    def index_table(self, table: tf.Variable) -> TableBruteForce:
        self._table = table
        self._candidates = table  # TFRS's "index() first" checks look at this attribute
        self._reset_tf_function_cache()
        return self

    def call(self, queries: tf.Tensor, k: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """queries `(batch, d)` -> (scores `(batch, k)`, row ids int32 `(batch, k)`)."""
        k = self._k if k is None else k
        scores = tf.matmul(tf.cast(queries, self._table.dtype), self._table, transpose_b=True)
        # query_with_exclusions asks for k + the number of exclusions; a small catalog may have fewer rows.
        values, indices = tf.math.top_k(scores, k=min(k, int(self._table.shape[0])))
        return values, indices


class ServingModule(tf.Module):
    """The exported object: the trained backbone, the item table (by reference), the index and the vocabulary.

    ``index``: `compact_index.EXACT` or `compact_index.BFLOAT16` (then ``rescore``, 0 = the default window, is
    how many candidates a query re-scores exactly; see `compact_index.RescoredBruteForce`).
    """

    def __init__(
        self,
        encoder: Backbone,
        max_len: int,
        top_k: int,
        vocabulary_file: str,
        index: str = compact_index.EXACT,
        rescore: int = 0,
    ) -> None:
        super().__init__(name="serving")
        if not 0 < top_k <= encoder.n_items:
            raise ValueError(f"top_k must be in [1, n_items={encoder.n_items}], got {top_k}")
        if index not in compact_index.INDEXES:
            raise ValueError(f"index must be one of {compact_index.INDEXES}, got {index!r}")
        self.encoder = encoder
        self.max_len = max_len
        self.top_k = top_k
        self.n_items = encoder.n_items
        self.dim = encoder.dim
        # The very variable the encoder embeds inputs with: saved once, shared by the index and item_embeddings.
        self.item_table = encoder.item_embeddings
        if index == compact_index.EXACT:
            self.index = TableBruteForce(k=top_k, name="brute_force").index_table(self.item_table)
        else:
            # A snapshot of the trained table, built once here and saved with the version: (n_items + 1, d).
            self.compact_item_table = tf.Variable(
                compact_index.compact_table(self.item_table), trainable=False, name="compact_item_table"
            )
            self.index = compact_index.RescoredBruteForce(
                k=top_k, rescore=compact_index.rescore_count(rescore, top_k), name="rescored_brute_force"
            ).index_tables(self.item_table, self.compact_item_table)
        # Line i (0-based) of items.txt is the key of id i + 1. TextFileInitializer tracks the file as a SavedModel
        # asset (copied to assets/ and re-pointed at load time), so the version folder is self-contained.
        self.key_to_line = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocabulary_file,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=-1,
        )
        self.line_to_key = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocabulary_file,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        history = tf.TensorSpec([None, max_len], tf.int32, name="item_ids")
        self.serve = tf.function(self._serve, input_signature=[history])
        self.serve_keys = tf.function(
            self._serve_keys, input_signature=[tf.TensorSpec([None, max_len], tf.string, name="item_keys")]
        )
        self.query_embedding = tf.function(self._query_embedding, input_signature=[history])
        self.item_embeddings = tf.function(
            self._item_embeddings, input_signature=[tf.TensorSpec([None], tf.int32, name="item_ids")]
        )

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        return {
            SERVING_DEFAULT: self.serve.get_concrete_function(),
            SERVE_KEYS: self.serve_keys.get_concrete_function(),
            QUERY_EMBEDDING: self.query_embedding.get_concrete_function(),
            ITEM_EMBEDDINGS: self.item_embeddings.get_concrete_function(),
        }

    # -- input checks ----------------------------------------------------------------------------------------

    def _check_length(self, x: tf.Tensor, name: str) -> tf.Tensor:
        # The signature's static shape is not enforced by TF Serving's C++ session (the Python session is the one
        # that checks feeds), and tf.debugging asserts on a statically known dimension are folded away at trace
        # time. EnsureShape is a runtime op, so it fails in every runtime; its message names the tensor.
        return tf.ensure_shape(x, [None, self.max_len], name=f"{name}_must_have_shape_batch_x_max_len_{self.max_len}")

    def _check_ids(self, item_ids: tf.Tensor, low: int) -> tf.Tensor:
        """Returns ``item_ids`` after runtime checks that every id is in ``[low, n_items]``."""
        checks = [
            tf.debugging.assert_greater_equal(
                item_ids, low, message=f"item_ids must be >= {low}" + (" (0 is padding)" if low == 0 else "")
            ),
            tf.debugging.assert_less_equal(
                item_ids, self.n_items, message=f"item_ids must be <= n_items ({self.n_items})"
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(item_ids)

    def _history(self, item_ids: tf.Tensor) -> tf.Tensor:
        """`(batch, max_len)` raw input -> validated, left-aligned ids `(batch, max_len)`."""
        return left_align(self._check_ids(self._check_length(item_ids, "item_ids"), low=0))

    # -- model -------------------------------------------------------------------------------------------------

    def _query(self, history: tf.Tensor) -> tf.Tensor:
        """Left-aligned ids `(batch, max_len)` -> `(batch, d)`: the state at the last (most recent) position."""
        return self.encoder(history, training=False)[:, -1, :]

    def _recommend(self, history: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Left-aligned ids `(batch, max_len)` -> (ids int32 `(batch, K)`, scores float32 `(batch, K)`)."""
        # Row 0 of the table is padding: excluding 0 for every query keeps it out of the results even when the
        # history has no padding.
        exclusions = tf.pad(history, [[0, 0], [1, 0]])
        scores, ids = self.index.query_with_exclusions(self._query(history), exclusions=exclusions, k=self.top_k)
        # TFRS demotes excluded items by 1e5 and returns them with their original score when fewer than K
        # non-excluded items exist among the K + len(exclusions) fetched (tiny catalogs); and an empty history
        # has no meaningful query. Both get the "no item" marker instead of a plausible-looking answer.
        seen = tf.reduce_any(tf.equal(ids[:, :, tf.newaxis], exclusions[:, tf.newaxis, :]), axis=-1)
        empty = tf.reduce_all(tf.equal(history, 0), axis=1, keepdims=True)
        invalid = tf.logical_or(seen, empty)
        ids = tf.where(invalid, tf.zeros_like(ids), ids)
        scores = tf.where(invalid, tf.fill(tf.shape(scores), tf.constant(NO_ITEM_SCORE, scores.dtype)), scores)
        return tf.ensure_shape(ids, [None, self.top_k]), tf.ensure_shape(scores, [None, self.top_k])

    # -- signatures ----------------------------------------------------------------------------------------------

    def _serve(self, item_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        ids, scores = self._recommend(self._history(item_ids))
        return {"item_ids": ids, "scores": scores}

    def _serve_keys(self, item_keys: tf.Tensor) -> dict[str, tf.Tensor]:
        item_keys = self._check_length(item_keys, "item_keys")
        line = self.key_to_line.lookup(item_keys)
        known = tf.greater_equal(line, 0)
        unknown = tf.logical_and(tf.logical_not(known), tf.not_equal(item_keys, ""))
        history = left_align(tf.where(known, tf.cast(line + 1, tf.int32), 0))
        ids, scores = self._recommend(history)
        keys = self.line_to_key.lookup(tf.cast(ids, tf.int64) - 1)  # id 0 -> line -1 -> "" (the no-item marker)
        return {
            "item_keys": keys,
            "scores": scores,
            "unknown_keys": tf.reduce_sum(tf.cast(unknown, tf.int32), axis=1),
        }

    def _query_embedding(self, item_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embedding": self._query(self._history(item_ids))}

    def _item_embeddings(self, item_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"embeddings": tf.gather(self.item_table, self._check_ids(item_ids, low=1))}


def left_align(item_ids: tf.Tensor) -> tf.Tensor:
    """`(batch, L)` ids with padding (0) anywhere -> the same ids with the real items last, in their order."""
    length = tf.shape(item_ids)[1]
    position = tf.range(length)[tf.newaxis, :]
    # Padding sorts by its position (first), real items by position + L (after all padding): a stable partition.
    order = tf.argsort(tf.where(tf.not_equal(item_ids, 0), position + length, position), axis=1, stable=True)
    return tf.gather(item_ids, order, batch_dims=1)


# -- version folders ---------------------------------------------------------------------------------------------


def serving_versions(model_dir: str) -> list[int]:
    """The version numbers TF Serving would see in ``model_dir``: children whose names are integers."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(name) for name in os.listdir(model_dir) if re.fullmatch(r"\d+", name))


def next_version(model_dir: str) -> int:
    """1 + the largest numeric version folder in ``model_dir`` (1 for a new model)."""
    return max(serving_versions(model_dir), default=0) + 1


def check_target(base_dir: str, model_name: str) -> str:
    """Checks that versions of ``model_name`` can be written under ``base_dir`` before anything is trained for them.

    Raises `ValueError` for a model name that is not one safe path component (``../x`` would write outside
    ``base_dir``) and `OSError` when the folder cannot be created or written. Returns the model folder.
    """
    if not is_safe_model_name(model_name):
        raise ValueError(f"model name {model_name!r} is not a single folder name (letters, digits, '.', '_', '-')")
    model_dir = os.path.join(base_dir, model_name)
    os.makedirs(model_dir, exist_ok=True)
    # Permission bits do not tell (root ignores them, read-only mounts, ACLs): create what an export creates.
    os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=model_dir))
    return model_dir


def read_keys(path: str) -> list[str]:
    """The keys of an ``items.txt``, one a line (``[k_1, ..., k_n]``: the key of id i at index i - 1)."""
    with open(path, encoding="utf-8", newline="") as f:
        keys = f.read().split("\n")
    return keys[:-1] if keys and keys[-1] == "" else keys


def read_vocabulary(export_dir: str) -> list[str]:
    """The item keys an export serves (see `read_keys`), from its own assets."""
    return read_keys(os.path.join(export_dir, VOCABULARY_FILE))


def vocabulary_path(data_dir: str | None) -> str | None:
    """``<data_dir>/items.txt`` when it exists."""
    if not data_dir:
        return None
    path = os.path.join(data_dir, features.ITEMS_FILE)
    return path if os.path.exists(path) else None


def _write_vocabulary(path: str, vocabulary_file: str | None, n_items: int) -> list[str]:
    """Writes the vocabulary the export ships to ``path`` and returns its keys (line i = key of id i + 1).

    Without ``items.txt`` (datasets written without the pipeline) the keys are the decimal ids, so that
    ``serve_keys`` still works and says what it serves.
    """
    if vocabulary_file is None:
        log.warning("no %s beside the data: serve_keys will use the decimal item ids as keys", features.ITEMS_FILE)
        keys = [str(i) for i in range(1, n_items + 1)]
    else:
        keys = read_keys(vocabulary_file)
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


# -- warmup ------------------------------------------------------------------------------------------------------


def warmup_inputs(
    n_items: int, max_len: int, keys: Sequence[str], batch_sizes: Sequence[int], seed: int = 0
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(signature, inputs) pairs: every signature at every batch size, with histories of varied length."""
    rng = np.random.default_rng(seed)
    requests: list[tuple[str, dict[str, np.ndarray]]] = []
    for batch in batch_sizes:
        ids = np.zeros((batch, max_len), np.int32)
        for row in range(batch):
            length = int(rng.integers(1, max_len + 1))
            ids[row, max_len - length :] = rng.integers(1, n_items + 1, size=length)
        key_array = np.where(ids > 0, np.asarray([""] + list(keys), dtype=object)[ids], "").astype(object)
        requests += [
            (SERVING_DEFAULT, {"item_ids": ids}),
            (SERVE_KEYS, {"item_keys": key_array}),
            (QUERY_EMBEDDING, {"item_ids": ids}),
            (ITEM_EMBEDDINGS, {"item_ids": rng.integers(1, n_items + 1, size=batch).astype(np.int32)}),
        ]
    return requests


def write_warmup(path: str, model_name: str, requests: Sequence[tuple[str, dict[str, np.ndarray]]]) -> None:
    """Writes ``requests`` as a TFRecord of `PredictionLog` (the format TF Serving reads from assets.extra)."""
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"{len(requests)} warmup requests; TF Serving accepts at most {MAX_WARMUP_RECORDS}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            tensors = {name: tf.make_tensor_proto(value).SerializeToString() for name, value in inputs.items()}
            writer.write(prediction_log.encode(model_name, signature, tensors))


def read_warmup(path: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The (signature, inputs) pairs of a warmup file."""
    out = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        _, signature, tensors = prediction_log.decode(record)
        inputs = {name: tf.make_ndarray(tensor_pb2.TensorProto.FromString(data)) for name, data in tensors.items()}
        out.append((signature, inputs))
    return out


def replay_warmup(export_dir: str) -> int:
    """Loads ``export_dir`` with `tf.saved_model.load` and runs every warmup request; returns how many ran."""
    loaded = tf.saved_model.load(export_dir)
    requests = read_warmup(os.path.join(export_dir, WARMUP_FILE))
    for signature, inputs in requests:
        outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        batch = next(iter(inputs.values())).shape[0]
        for name, value in outputs.items():
            if value.shape[0] != batch:
                raise AssertionError(f"{signature}/{name}: batch {value.shape[0]} for a request of {batch}")
    return len(requests)


def read_item_table(export_dir: str) -> np.ndarray:
    """The item table `(n_items + 1, d)` of an export, read from its checkpoint (row 0 = padding)."""
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    key = "item_table/.ATTRIBUTES/VARIABLE_VALUE"
    if not reader.has_tensor(key):
        raise KeyError(f"{export_dir} has no {key!r}; was it written by mdcns_tf.export?")
    return reader.get_tensor(key)


# -- export --------------------------------------------------------------------------------------------------------


def _fsync_tree(root: str) -> None:
    """Flushes every file and folder under ``root`` so that a power cut after the rename finds whole files."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _verify(staging: str, module: ServingModule, requests: Sequence[tuple[str, dict[str, np.ndarray]]]) -> None:
    """Loads the staged export and checks it against the in-memory module before it is published."""
    loaded = tf.saved_model.load(staging)
    for signature, inputs in requests:
        outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        if signature != SERVING_DEFAULT:
            continue
        expected = module.serve(tf.constant(inputs["item_ids"]))
        # Scores must match; ids must match except between items whose scores tie (float reordering).
        np.testing.assert_allclose(outputs["scores"].numpy(), expected["scores"].numpy(), rtol=1e-4, atol=1e-5)
        differ = outputs["item_ids"].numpy() != expected["item_ids"].numpy()
        if differ.any():
            scores = expected["scores"].numpy()
            ties = np.isclose(scores[:, 1:], scores[:, :-1], rtol=1e-5, atol=1e-6)
            tie_mask = np.zeros_like(differ)
            tie_mask[:, 1:] |= ties
            tie_mask[:, :-1] |= ties
            if (differ & ~tie_mask).any():
                raise AssertionError("the staged export does not return the in-memory model's top-K")


def export_saved_model(
    encoder: Backbone,
    base_dir: str,
    model_name: str,
    max_len: int,
    top_k: int,
    version: int = 0,
    data_dir: str | None = None,
    warmup_batch_sizes: Sequence[int] = (1, 8, 64),
    verify: bool = True,
    model_card: dict[str, Any] | None = None,
    index: str = "exact",
    rescore: int = 0,
) -> str:
    """Writes ``<base_dir>/<model_name>/<version>/`` atomically and returns its path.

    ``version`` 0 picks the next free number. ``data_dir``'s ``items.txt`` becomes the ``serve_keys`` vocabulary.
    ``warmup_batch_sizes``: one warmup request per signature and size (use the server's ``allowed_batch_sizes``
    when batching is on). ``verify`` reloads the staged folder and compares it with the in-memory model before
    publishing it (a few seconds; the check a server would otherwise do with real traffic). ``model_card``: more
    entries for ``assets.extra/model_card.json`` (the run's metrics and provenance), written with the version.
    ``index`` / ``rescore``: ``export.index`` / ``export.rescore`` (see `ServingModule`).
    """
    model_dir = check_target(base_dir, model_name)
    version = version or next_version(model_dir)
    final_path = os.path.join(model_dir, str(version))
    if os.path.exists(final_path):
        raise FileExistsError(f"export version {final_path} exists; versions are immutable, pick another")
    # The staging name starts with a dot and is not a number: TF Serving never loads it, whatever happens next.
    staging = tempfile.mkdtemp(prefix=f".{version}-tmp-", dir=model_dir)
    try:
        # The asset keeps its base name in assets/: write it as items.txt.
        os.makedirs(os.path.join(staging, "vocabulary"))
        vocabulary_file = os.path.join(staging, "vocabulary", features.ITEMS_FILE)
        keys = _write_vocabulary(vocabulary_file, vocabulary_path(data_dir), encoder.n_items)
        saved = os.path.join(staging, "model")
        module = ServingModule(
            encoder, max_len=max_len, top_k=top_k, vocabulary_file=vocabulary_file, index=index, rescore=rescore
        )
        tf.saved_model.save(module, saved, signatures=module.signatures())
        requests = warmup_inputs(encoder.n_items, max_len, keys, warmup_batch_sizes)
        write_warmup(os.path.join(saved, WARMUP_FILE), model_name, requests)
        card = {
            "model_name": model_name,
            "version": version,
            "signatures": list(SIGNATURES),
            "top_k": top_k,
            "max_len": max_len,
            "n_items": encoder.n_items,
            "index": index,
            **({"rescore": compact_index.rescore_count(rescore, top_k)} if index != compact_index.EXACT else {}),
            **(model_card or {}),
        }
        with open(os.path.join(saved, MODEL_CARD_FILE), "w", encoding="utf-8") as f:
            json.dump(card, f, indent=1)
        if verify:
            _verify(saved, module, requests)
        _fsync_tree(saved)
        if os.path.exists(final_path):  # another exporter took the number meanwhile
            raise FileExistsError(f"export version {final_path} appeared during the export; not overwriting it")
        os.rename(saved, final_path)
        dir_fd = os.open(model_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s (signatures: %s)", final_path, ", ".join(SIGNATURES))
    return final_path
