"""Full-ranking metrics with history masking, in-graph and in item chunks.

For one user with query state q, held-out target t and history H (the user's whole input sequence):
rank = |{ j in 1..n_items : j not in H, j != t, q.e_j > q.e_t }|  (0-based; padding item 0 never counts).
Items of H are masked out of the ranking, but the target itself is always ranked even when the user has consumed
it before (repeat consumption), otherwise such users could never score a hit.
Recall@K = HR@K = [rank < K]; NDCG@K = [rank < K] / log2(rank + 2); MRR = 1 / (rank + 1).
Ties count in the target's favour (strictly greater scores only), as in RecBole's full-sort evaluation.
Scores that are not numbers never help a target: a NaN item score counts as beating it, and a target whose own
score is NaN or infinite ranks last, so a diverged model measures 0, never 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

# Version of the ranking definition above, written into every metrics.json and benchmark result. 1: before commit
# 3f5f247, when the target was compared with its own (re-computed) score and ranked one place too low for about
# half the users on dense embeddings (NDCG@10 ~10% low); 2: items are excluded by id. Results without a version are 1.
METRIC_VERSION = 2


# A scan block holds about this many (user, item) scores: 4 MB of float32, which stays in the CPU's caches between
# the matmul that writes it and the count that reads it (`target_ranks`). Measured at 1M items, d 64, on this 2-core
# machine: blocks of 0.5-4 M scores are within ~10% of each other (1 M best for 128 and 512 users), the previous
# kernel's 32 M-score chunks (512 users x 65,536 items) make the bare matmuls alone ~40% slower.
BLOCK_SCORES = 1 << 20
# A block never holds fewer items than this: matmuls over fewer items lose more to per-block overheads than the
# cache gains (2,048 users: blocks of 1,024 items 7-24% faster than of 512, in two interleaved sweeps).
MIN_BLOCK_ITEMS = 1024


def target_ranks(
    queries: tf.Tensor,
    item_embeddings: tf.Tensor,
    target: tf.Tensor,
    history_ids: tf.Tensor,
    chunk_size: int = 65_536,
) -> tf.Tensor:
    """0-based rank of each target among the non-history items.

    queries `(batch, dim)`, item_embeddings `(n_items + 1, dim)`, target `(batch,)`, history_ids `(batch, x)`
    (0-padded) -> ranks `(batch,)` int32. Items are scored in blocks of at most ``chunk_size`` rows (so a 1M-item
    catalogue never needs a `(batch, n_items)` score matrix), and of about `BLOCK_SCORES` scores, so that a block
    stays in cache between the float32 matmul that writes it and the count that reads it.

    The target, the padding item and the history are excluded from the count by id, never by comparing scores:
    the target's own score from a matmul and from a dot product differ in the last bits (different summation
    orders), and a comparison would count the target as beating itself for about a third of the users.

    The rank's definition is docs/design.md, section "Losses and metrics". How: every block counts the items whose
    score beats the target's, then subtracts those of its items that are excluded (padding, target, history, each id
    once per user) and beat it, read from the same block's scores, so the count is exactly the one a per-block
    `(batch, block)` exclusion mask would give, without building that mask. The count and the subtraction are one
    XLA computation per block (`_count_block`); the matmul stays TensorFlow's (oneDNN) float32 MatMul, so every
    score is the one the previous kernel compared, bit for bit (`benchmarks.eval_speed --ranking` checks it).
    """
    # One read of the table: slicing a resource variable inside the loop would read it again for every block, and
    # after a gather from it (TensorFlow's copy-on-read mode) every such read copies the whole table.
    table = tf.convert_to_tensor(item_embeddings)
    queries = tf.convert_to_tensor(queries, table.dtype)
    target = tf.cast(target, tf.int32)
    target_scores = tf.reduce_sum(queries * tf.gather(table, target), axis=-1)
    excluded = excluded_ids(target, tf.cast(history_ids, tf.int32))
    batch = tf.shape(queries)[0]
    n_rows = tf.shape(table)[0]
    block = tf.minimum(chunk_size, tf.maximum(BLOCK_SCORES // tf.maximum(batch, 1), MIN_BLOCK_ITEMS))
    block = tf.minimum(block, n_rows)
    # Whole blocks in the loop, then the last 1..block rows: every slice of the loop has the same size and lies
    # inside the table, so the loop also compiles under XLA (a `train.jit_compile` test step), where a slice that
    # ran past the table's end would be shifted back into it and count rows twice.
    whole = (n_rows - 1) // block

    def count_block(i: tf.Tensor, total: tf.Tensor):
        start = i * block
        scores = tf.matmul(queries, tf.slice(table, [start, 0], [block, -1]), transpose_b=True)
        return i + 1, total + _count_block(scores, target_scores, excluded - start)

    _, above = tf.while_loop(lambda i, _: i < whole, count_block, (tf.constant(0), tf.zeros_like(target)))
    start = whole * block
    scores = tf.matmul(queries, table[start:], transpose_b=True)
    ranks = above + _count_block(scores, target_scores, excluded - start)
    # A target whose own score is not a number, or infinite, is last: nothing finite could beat an infinite score,
    # and a diverged model would otherwise rank every target first and report 1.0.
    return tf.where(tf.math.is_finite(target_scores), ranks, n_rows - 1)


def excluded_ids(target: tf.Tensor, history_ids: tf.Tensor) -> tf.Tensor:
    """The ids a user's rank leaves out, each once: padding 0, the target and the history `(batch, x)` ->
    `(batch, w)` int32, sorted, repeats replaced by -1 (an id no block holds), ``w`` = x + 2 rounded up to a power of
    two (at least 8) with -1, so that the XLA count compiles for a few widths, not for every history length."""
    ids = tf.concat([tf.zeros_like(target)[:, tf.newaxis], target[:, tf.newaxis], history_ids], axis=1)
    width = tf.shape(ids)[1]
    padded = width - 1  # the next power of two >= width, by smearing the highest bit down
    for shift in (1, 2, 4, 8, 16):
        padded = tf.bitwise.bitwise_or(padded, tf.bitwise.right_shift(padded, shift))
    ids = tf.pad(ids, [[0, 0], [0, tf.maximum(padded + 1, 8) - width]], constant_values=-1)
    ids = tf.sort(ids, axis=1)
    repeat = tf.concat([tf.zeros_like(ids[:, :1], tf.bool), tf.equal(ids[:, 1:], ids[:, :-1])], axis=1)
    return tf.where(repeat, -1, ids)


@tf.function(jit_compile=True, autograph=False)
def _count_block(scores: tf.Tensor, target_scores: tf.Tensor, local_excluded: tf.Tensor) -> tf.Tensor:
    """Per user, the items of one block `(batch, size)` of scores beating the target, minus the excluded ones among
    them (``local_excluded`` `(batch, w)`: excluded ids minus the block's first id; outside [0, size) = elsewhere).

    Compiled by XLA into one pass over the block (compare, count) and a `(batch, w)` gather: TensorFlow's own ops
    would make three passes (compare, cast, sum) and a dozen small ops per block. The count is a float32 sum of
    ones, exact up to 2**24 items a block (`BLOCK_SCORES` keeps blocks far below), and a faster reduction than int32.
    """
    size = tf.shape(scores)[1]
    threshold = target_scores[:, tf.newaxis]
    # "not <=" rather than ">": the same for numbers, and a NaN score beats the target instead of never ranking
    beats = tf.cast(tf.reduce_sum(tf.where(scores <= threshold, 0.0, 1.0), axis=1), tf.int32)
    inside = (local_excluded >= 0) & (local_excluded < size)
    excluded_scores = tf.gather(scores, tf.clip_by_value(local_excluded, 0, size - 1), batch_dims=1)
    excluded_beats = tf.reduce_sum(tf.cast(inside & ~(excluded_scores <= threshold), tf.int32), axis=1)
    return beats - excluded_beats


def metrics_from_ranks(ranks: tf.Tensor, ks: Sequence[int]) -> dict[str, tf.Tensor]:
    """Per-user metric values `(batch,)` keyed ``recall@K``, ``ndcg@K`` and ``mrr``."""
    ranks = tf.cast(ranks, tf.float32)
    out: dict[str, tf.Tensor] = {}
    for k in ks:
        hit = tf.cast(ranks < k, tf.float32)
        out[f"recall@{k}"] = hit
        out[f"ndcg@{k}"] = hit / (tf.math.log(ranks + 2.0) / tf.math.log(2.0))
    out["mrr"] = 1.0 / (ranks + 1.0)
    return out


def metric_names(ks: Sequence[int]) -> list[str]:
    return [f"{name}@{k}" for k in ks for name in ("recall", "ndcg")] + ["mrr"]


def keras_name(metric: str) -> str:
    """``ndcg@10`` -> ``ndcg_10``: TensorBoard summary names may not contain ``@``."""
    return metric.replace("@", "_")
