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


def unique_history_mask(history_ids: tf.Tensor, target: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Sorted history `(batch, x)` and a bool mask `(batch, x)` of its distinct real items other than the target."""
    history = tf.sort(tf.cast(history_ids, tf.int32), axis=-1)
    first_occurrence = tf.concat(
        [tf.ones_like(history[:, :1], tf.bool), tf.not_equal(history[:, 1:], history[:, :-1])], axis=1
    )
    keep = first_occurrence & tf.not_equal(history, 0) & tf.not_equal(history, tf.cast(target, tf.int32)[:, None])
    return history, keep


def target_ranks(
    queries: tf.Tensor,
    item_embeddings: tf.Tensor,
    target: tf.Tensor,
    history_ids: tf.Tensor,
    chunk_size: int = 65_536,
) -> tf.Tensor:
    """0-based rank of each target among the non-history items.

    queries `(batch, dim)`, item_embeddings `(n_items + 1, dim)`, target `(batch,)`, history_ids `(batch, x)`
    -> ranks `(batch,)` int32. Items are scored ``chunk_size`` rows at a time, so a 1M-item catalogue never needs a
    `(batch, n_items)` score matrix.
    """
    target = tf.cast(target, tf.int32)
    target_scores = tf.reduce_sum(queries * tf.gather(item_embeddings, target), axis=-1)
    n_rows = tf.shape(item_embeddings)[0]

    def count_chunk(start: tf.Tensor, total: tf.Tensor):
        chunk = item_embeddings[start : start + chunk_size]
        scores = tf.matmul(queries, chunk, transpose_b=True)
        ids = tf.range(start, start + tf.shape(chunk)[0])
        beats = (scores > target_scores[:, None]) & tf.not_equal(ids, 0)[None, :]
        return start + chunk_size, total + tf.reduce_sum(tf.cast(beats, tf.int32), axis=1)

    _, above = tf.while_loop(
        lambda start, _: start < n_rows,
        count_chunk,
        (tf.constant(0), tf.zeros_like(target)),
    )
    # Remove the history items that were counted: each distinct history item except the target, once.
    history, keep = unique_history_mask(history_ids, target)
    history_scores = tf.einsum("bd,bxd->bx", queries, tf.gather(item_embeddings, history))
    masked_above = tf.reduce_sum(tf.cast(keep & (history_scores > target_scores[:, None]), tf.int32), axis=1)
    return above - masked_above


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
