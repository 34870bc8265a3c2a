"""Full-ranking metrics with history masking, in-graph and in item chunks.

For one user with query state q, held-out target t and history H (the user's whole input sequence):
rank = |{ j in 1..n_items : j not in H, j != t, q.e_j > q.e_t }|  (0-based; padding item 0 never counts).
Items of H are masked out of the ranking, but the target itself is always ranked even when the user has consumed
it before (repeat consumption), otherwise such users could never score a hit.
Recall@K = HR@K = [rank < K]; NDCG@K = [rank < K] / log2(rank + 2); MRR = 1 / (rank + 1).
Ties count in the target's favour (strictly greater scores only), as in RecBole's full-sort evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

# Version of the ranking definition above, written into every metrics.json and benchmark result. 1: before commit
# 3f5f247, when the target was compared with its own (re-computed) score and ranked one place too low for about
# half the users on dense embeddings (NDCG@10 ~10% low); 2: items are excluded by id. Results without a version are 1.
METRIC_VERSION = 2


def target_ranks(
    queries: tf.Tensor,
    item_embeddings: tf.Tensor,
    target: tf.Tensor,
    history_ids: tf.Tensor,
    chunk_size: int = 65_536,
) -> tf.Tensor:
    """0-based rank of each target among the non-history items.

    queries `(batch, dim)`, item_embeddings `(n_items + 1, dim)`, target `(batch,)`, history_ids `(batch, x)`
    (0-padded) -> ranks `(batch,)` int32. Items are scored ``chunk_size`` rows at a time, so a 1M-item catalogue
    never needs a `(batch, n_items)` score matrix.

    The target, the padding item and the history are excluded from the count by id, never by comparing scores:
    the target's own score from a matmul and from a dot product differ in the last bits (different summation
    orders), and a comparison would count the target as beating itself for about a third of the users.
    """
    target = tf.cast(target, tf.int32)
    history = tf.cast(history_ids, tf.int32)
    target_scores = tf.reduce_sum(queries * tf.gather(item_embeddings, target), axis=-1)
    batch = tf.shape(queries)[0]
    rows = tf.broadcast_to(tf.range(batch)[:, tf.newaxis], tf.shape(history))
    n_rows = tf.shape(item_embeddings)[0]

    def count_chunk(start: tf.Tensor, total: tf.Tensor):
        chunk = item_embeddings[start : start + chunk_size]
        size = tf.shape(chunk)[0]
        scores = tf.matmul(queries, chunk, transpose_b=True)
        ids = tf.range(start, start + size)
        # The `(batch, size)` mask of this chunk's history items, from the (user, item) pairs that fall in it.
        local = history - start
        inside = (local >= 0) & (local < size) & tf.not_equal(history, 0)
        pairs = tf.stack([tf.boolean_mask(rows, inside), tf.boolean_mask(local, inside)], axis=1)
        seen = tf.scatter_nd(pairs, tf.ones(tf.shape(pairs)[:1], tf.int32), tf.stack([batch, size])) > 0
        ranked = tf.not_equal(ids, 0)[tf.newaxis, :] & tf.not_equal(ids[tf.newaxis, :], target[:, tf.newaxis])
        beats = (scores > target_scores[:, tf.newaxis]) & ranked & ~seen
        return start + chunk_size, total + tf.reduce_sum(tf.cast(beats, tf.int32), axis=1)

    _, above = tf.while_loop(
        lambda start, _: start < n_rows,
        count_chunk,
        (tf.constant(0), tf.zeros_like(target)),
    )
    return above


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
