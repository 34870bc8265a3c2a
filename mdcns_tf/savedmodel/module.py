"""The exported object: `ServingModule`, a `tf.Module` whose functions are the signatures, and their input checks.

Signatures, inputs and outputs: `mdcns_tf.savedmodel.signatures`. Input rules shared by the id signatures: ids
outside ``[0, n_items]`` and a sequence length other than ``max_len`` fail with an ``INVALID_ARGUMENT`` error that
says so (checked in the graph, because the C++ server does not check a feed's shape against the signature and a
shorter input would otherwise be answered silently with wrong positions). Padding (0 / ``""`` / unknown keys) may
sit anywhere: the real items are moved to the end, in order (`left_align`), which is how the model saw histories in
training. A history with no real item has no query: its row returns item id 0 / key ``""`` with score
`NO_ITEM_SCORE` (0 is never a real item), and a zero ``embedding``. The same marker fills the tail of a row when
the catalog has fewer than K unseen items.

``K`` is fixed per export (``export.top_k``): TF Serving batches concurrent requests of one signature into one
run, which needs every input to be a batchable tensor; a per-request K would be a second input and a dynamic
output shape. The top-K index (``export.index``): `mdcns_tf.savedmodel.index`.
"""

from __future__ import annotations

import tensorflow as tf

from mdcns_tf.backbones import Backbone
from mdcns_tf.savedmodel.index import EXACT, INDEXES, RescoredBruteForce, TableBruteForce, compact_table, rescore_count
from mdcns_tf.savedmodel.signatures import (
    EMBEDDING,
    EMBEDDINGS,
    ITEM_EMBEDDINGS,
    ITEM_IDS,
    ITEM_KEYS,
    NO_ITEM_SCORE,
    QUERY_EMBEDDING,
    SCORES,
    SERVE_KEYS,
    SERVING_DEFAULT,
    UNKNOWN_KEYS,
)


class ServingModule(tf.Module):
    """The exported object: the trained backbone, the item table (by reference), the index and the vocabulary.

    ``index``: `index.EXACT` or `index.BFLOAT16` (then ``rescore``, 0 = the default window, is how many
    candidates a query re-scores exactly; see `index.RescoredBruteForce`).
    """

    def __init__(
        self,
        encoder: Backbone,
        max_len: int,
        top_k: int,
        vocabulary_file: str,
        index: str = EXACT,
        rescore: int = 0,
    ) -> None:
        super().__init__(name="serving")
        if not 0 < top_k <= encoder.n_items:
            raise ValueError(f"top_k must be in [1, n_items={encoder.n_items}], got {top_k}")
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
        self.encoder = encoder
        self.max_len = max_len
        self.top_k = top_k
        self.n_items = encoder.n_items
        self.dim = encoder.dim
        # The very variable the encoder embeds inputs with: saved once, shared by the index and item_embeddings.
        self.item_table = encoder.item_embeddings
        if index == EXACT:
            self.index = TableBruteForce(k=top_k, name="brute_force").index_table(self.item_table)
        else:
            # A snapshot of the trained table, built once here and saved with the version: (n_items + 1, d).
            self.compact_item_table = tf.Variable(
                compact_table(self.item_table), trainable=False, name="compact_item_table"
            )
            self.index = RescoredBruteForce(
                k=top_k, rescore=rescore_count(rescore, top_k), name="rescored_brute_force"
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
        # A signature's input is named after its function's argument: item_ids / item_keys, as in `signatures`.
        history = tf.TensorSpec([None, max_len], tf.int32, name=ITEM_IDS)
        self.serve = tf.function(self._serve, input_signature=[history])
        self.serve_keys = tf.function(
            self._serve_keys, input_signature=[tf.TensorSpec([None, max_len], tf.string, name=ITEM_KEYS)]
        )
        self.query_embedding = tf.function(self._query_embedding, input_signature=[history])
        self.item_embeddings = tf.function(
            self._item_embeddings, input_signature=[tf.TensorSpec([None], tf.int32, name=ITEM_IDS)]
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
        return left_align(self._check_ids(self._check_length(item_ids, ITEM_IDS), low=0))

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
        return {ITEM_IDS: ids, SCORES: scores}

    def _serve_keys(self, item_keys: tf.Tensor) -> dict[str, tf.Tensor]:
        item_keys = self._check_length(item_keys, ITEM_KEYS)
        line = self.key_to_line.lookup(item_keys)
        known = tf.greater_equal(line, 0)
        unknown = tf.logical_and(tf.logical_not(known), tf.not_equal(item_keys, ""))
        history = left_align(tf.where(known, tf.cast(line + 1, tf.int32), 0))
        ids, scores = self._recommend(history)
        keys = self.line_to_key.lookup(tf.cast(ids, tf.int64) - 1)  # id 0 -> line -1 -> "" (the no-item marker)
        return {
            ITEM_KEYS: keys,
            SCORES: scores,
            UNKNOWN_KEYS: tf.reduce_sum(tf.cast(unknown, tf.int32), axis=1),
        }

    def _query_embedding(self, item_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {EMBEDDING: self._query(self._history(item_ids))}

    def _item_embeddings(self, item_ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {EMBEDDINGS: tf.gather(self.item_table, self._check_ids(item_ids, low=1))}


def left_align(item_ids: tf.Tensor) -> tf.Tensor:
    """`(batch, L)` ids with padding (0) anywhere -> the same ids with the real items last, in their order."""
    length = tf.shape(item_ids)[1]
    position = tf.range(length)[tf.newaxis, :]
    # Padding sorts by its position (first), real items by position + L (after all padding): a stable partition.
    order = tf.argsort(tf.where(tf.not_equal(item_ids, 0), position + length, position), axis=1, stable=True)
    return tf.gather(item_ids, order, batch_dims=1)
