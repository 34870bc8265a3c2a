"""Scoring a large candidate pool per position (MDCNS ``pool_scope: position``), fused by XLA: the same scores and
gradients as `candidates.score_items`, without a `(batch, len, N, dim)` tensor, and with the item-table gradient
dense (small catalogues) or sparse over the pool's distinct rows (`pool_rows`, lazy updates at a large catalogue).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

# Rows a block of the forward and of the states' gradient: a block's gathered `(256, N, dim)` rows (6.5 MB at N 100,
# d 64) stay in cache, where one whole-batch gather was a 328 MB buffer (2-2.8x slower, 25x the memory).
BLOCK_ROWS = 256


def _in_blocks(fn: Any, *tensors: tf.Tensor) -> tf.Tensor:
    """``fn`` over blocks of `BLOCK_ROWS` rows of ``tensors`` (rows a multiple of it), concatenated."""
    blocks = [tf.reshape(t, [-1, BLOCK_ROWS, *t.shape[1:]]) for t in tensors]
    out = tf.map_fn(lambda block: fn(*block), tuple(blocks), fn_output_signature=tensors[0].dtype)
    return tf.reshape(out, [-1, *out.shape[2:]])


@tf.function(jit_compile=True)
def _pool_scores(states: tf.Tensor, item_embeddings: tf.Tensor, pool_ids: tf.Tensor) -> tf.Tensor:
    def block(states: tf.Tensor, pool_ids: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(states[:, tf.newaxis, :] * tf.gather(item_embeddings, pool_ids), axis=-1)

    return _in_blocks(block, states, pool_ids)


@tf.function(jit_compile=True)
def _pool_score_state_gradient(upstream: tf.Tensor, item_embeddings: tf.Tensor, pool_ids: tf.Tensor) -> tf.Tensor:
    def block(upstream: tf.Tensor, pool_ids: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(upstream[..., tf.newaxis] * tf.gather(item_embeddings, pool_ids), axis=-2)

    return _in_blocks(block, upstream, pool_ids)


# One sum over all rows: accumulating blocks into the table in a loop copied the table every block (30x slower).
@tf.function(jit_compile=True)
def _pool_score_table_gradient(
    upstream: tf.Tensor, states: tf.Tensor, pool_ids: tf.Tensor, n_rows: int | tf.Tensor
) -> tf.Tensor:
    rows = upstream[..., tf.newaxis] * states[:, tf.newaxis, :]
    return tf.math.unsorted_segment_sum(tf.reshape(rows, [-1, states.shape[-1]]), tf.reshape(pool_ids, [-1]), n_rows)


@tf.custom_gradient
def _fused_pool_scores(states: tf.Tensor, item_embeddings: tf.Tensor, pool_ids: tf.Tensor):
    def gradient(upstream: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, None]:
        # Two compiled calls, so that their temporaries are never held at once.
        d_states = _pool_score_state_gradient(upstream, item_embeddings, pool_ids)
        n_rows = item_embeddings.shape[0] if item_embeddings.shape[0] is not None else tf.shape(item_embeddings)[0]
        return d_states, _pool_score_table_gradient(upstream, states, pool_ids, n_rows), None

    # Without stop_gradient an eager tape would record the compiled call for its own gradient, and that variant
    # hands the map's TensorList across the XLA boundary (unsupported); the gradient is the one above anyway.
    return _pool_scores(tf.stop_gradient(states), tf.stop_gradient(item_embeddings), pool_ids), gradient


# XLA compiles once per shape, and the rows of a pool per position vary from batch to batch (length buckets, trained
# positions only), so the rows are padded up to a ladder: a multiple of 2^(floor(log2 rows) - 3), at least
# MIN_ROW_QUANTUM. That is 8 compiled sizes an octave and at most 1/8 of padding rows; every size is a whole number
# of blocks.
MIN_ROW_QUANTUM = BLOCK_ROWS


def padded_rows(rows: tf.Tensor) -> tf.Tensor:
    """The ladder size for ``rows`` (int32 scalar): ``rows`` rounded up to a multiple of its quantum."""
    rows = tf.maximum(tf.cast(rows, tf.int32), 1)
    octave = tf.cast(
        tf.math.floor(tf.math.log(tf.cast(rows, tf.float64)) / tf.math.log(tf.constant(2.0, tf.float64))), tf.int32
    )
    quantum = tf.maximum(tf.bitwise.left_shift(1, tf.maximum(octave - 3, 0)), MIN_ROW_QUANTUM)
    return (rows + quantum - 1) // quantum * quantum


class PoolRows(NamedTuple):
    """The distinct item-table rows a pool touches (`pool_rows`): ``ids`` `(U',)` the distinct item ids, padded
    with item 0 up to a `padded_rows` size; ``local`` the pool's ids as indices into ``ids``, the pool's shape."""

    ids: tf.Tensor
    local: tf.Tensor


# Distinct ids by a hash (`tf.unique`) cost ~0.1-0.2 us an id, growing with the count (1.28M ids: 150-200 ms);
# by a count over the table's rows (`tf.math.bincount` + `tf.where`), about one pass over the rows (1M rows:
# 12-17 ms) plus ~30 ns an id. The count wins once the ids are more than about a quarter of the rows (random ids,
# 12k / 100k / 1M rows, 10k-1.28M ids, both ways side by side: `benchmarks.large_catalog.distinct_ids_ms`).
COUNT_DISTINCT_SHARE = 4


def distinct_ids(ids: tf.Tensor, n_rows: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`tf.unique` of flat int32 ``ids`` in ``[0, n_rows)``: (distinct ids `(U,)`, each id's index into them).

    Few ids against the table (a uniform SASRec step: 38k of 1M rows): `tf.unique`'s hash, in order of first
    occurrence. Many (MDCNS pools per position: 1.28M draws of 1M rows): a count over the rows, O(n_rows) but a
    tenth of the hash's time there; its distinct ids come out sorted. Measured with both on random ids at 12k, 100k
    and 1M rows (`COUNT_DISTINCT_SHARE`). Either way the index is int32 and the distinct ids int32.
    """
    ids = tf.cast(tf.reshape(ids, [-1]), tf.int32)

    def by_hash() -> tuple[tf.Tensor, tf.Tensor]:
        unique, index = tf.unique(ids, out_idx=tf.int32)
        return unique, index

    def by_count() -> tuple[tf.Tensor, tf.Tensor]:
        present = tf.math.bincount(ids, minlength=n_rows, maxlength=n_rows) > 0
        rank = tf.cumsum(tf.cast(present, tf.int32)) - 1
        return tf.cast(tf.where(present)[:, 0], tf.int32), tf.gather(rank, ids)

    many = tf.size(ids) * COUNT_DISTINCT_SHARE > tf.cast(n_rows, tf.int32)
    return tf.cond(many, by_count, by_hash)


def pool_rows(pool_ids: tf.Tensor, n_rows: int) -> PoolRows:
    """The distinct rows of a pool `(..., N)` of ids in ``[0, n_rows)``, for `score_position_pools`'s sparse table
    gradient. Computed once per step and shared by every table scored on the same pool (MDCNS's two students)."""
    unique, local = distinct_ids(pool_ids, n_rows)
    count = tf.size(unique)
    padded = tf.pad(unique, [[0, padded_rows(count) - count]])  # item 0: a zero gradient, merged by the optimizer
    return PoolRows(padded, tf.reshape(local, tf.shape(pool_ids)))


def score_position_pools(
    states: tf.Tensor, item_embeddings: tf.Tensor, pool_ids: tf.Tensor, rows: PoolRows | None = None
) -> tf.Tensor:
    """`score_items` for large per-position pools (MDCNS ``pool_scope: position``): the same scores and gradients,
    fused by XLA so that no `(batch, len, N, dim)` tensor exists.

    Why: at Beauty's shapes (256 x 50 x 100 candidates, d 64) the gather's gradient is 1.28M `IndexedSlices` rows;
    the optimizer's de-duplication of them (`unsorted_segment_sum`) alone cost ~4x the forward scoring, and the
    gathered `(batch, len, N, dim)` tensors were 328 MB each. Summed inside XLA it costs about what the forward does
    (forward + backward 2.5x faster for one model, 2-core Xeon). The positions are flattened to rows and padded with
    zero states and item 0 up to `padded_rows`, so XLA compiles a few sizes, not one per batch.

    The item-table gradient: with ``rows`` None, a dense `(n_items + 1, dim)` table (right for a small catalogue,
    which such a pool touches whole, and what Keras's Adam updates densely anyway). With ``rows`` (`pool_rows`: the
    pool's distinct items, for ``train.sparse_updates: lazy``) the scoring reads and differentiates only those rows
    (`tf.gather` of the variable), so the gradient is `IndexedSlices` over them and the table is never read whole
    (once a variable has been gathered from, TensorFlow copies all of it on every whole read: 26 ms at 1M x 64).

    states `(batch, seq_len, dim)`, item_embeddings `(n_items + 1, dim)`, pool_ids `(batch, seq_len, N)`
    -> `(batch, seq_len, N)`.
    """
    shape = tf.shape(pool_ids)
    rows_count = shape[0] * shape[1]
    extra = padded_rows(rows_count) - rows_count
    if rows is None:
        # A variable would reach the custom gradient as a captured resource; its value is a plain input.
        table, ids = tf.convert_to_tensor(item_embeddings), pool_ids
    else:
        table, ids = tf.gather(item_embeddings, rows.ids), rows.local
    flat_states = tf.pad(tf.reshape(states, [rows_count, states.shape[-1]]), [[0, extra], [0, 0]])
    flat_ids = tf.pad(tf.reshape(ids, [rows_count, shape[2]]), [[0, extra], [0, 0]])
    scores = _fused_pool_scores(flat_states, table, flat_ids)
    return tf.reshape(scores[:rows_count], shape)
