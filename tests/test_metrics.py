"""Full-ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

import mdcns_tf  # noqa: F401
from mdcns_tf import metrics


def ranks_for(scores: list[list[float]], targets: list[int], histories: list[list[int]], chunk_size: int = 65_536):
    """Uses one-hot item embeddings so that q . e_j = scores[u][j] exactly."""
    scores_np = np.array(scores, np.float32)
    n_rows = scores_np.shape[1]
    item_embeddings = tf.eye(n_rows)
    return metrics.target_ranks(
        tf.constant(scores_np), item_embeddings, tf.constant(targets), tf.constant(histories), chunk_size=chunk_size
    ).numpy()


def test_rank_masks_history_and_padding_but_not_the_target():
    # Item 0 is padding (score 9 must not count); items 2 and 4 are history; target 3 (score 0.5).
    scores = [[9.0, 0.9, 0.8, 0.5, 0.7, 0.1]]
    # Items beating the target: 1 (0.9), 2 (0.8, history -> masked), 4 (0.7, history -> masked) -> rank 1.
    assert ranks_for(scores, [3], [[2, 4, 0]]).tolist() == [1]
    # Without history both 2 and 4 count: rank 3.
    assert ranks_for(scores, [3], [[0, 0, 0]]).tolist() == [3]
    # The target itself in the history (repeat consumption) is still ranked; duplicates are masked once.
    assert ranks_for(scores, [3], [[3, 2, 2]]).tolist() == [2]


def test_chunked_ranking_equals_single_chunk():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(8, 37)).tolist()
    targets = rng.integers(1, 37, size=8).tolist()
    histories = rng.integers(0, 37, size=(8, 5)).tolist()
    np.testing.assert_array_equal(
        ranks_for(scores, targets, histories, chunk_size=5), ranks_for(scores, targets, histories)
    )


def test_metric_values_by_hand():
    values = {k: v.numpy() for k, v in metrics.metrics_from_ranks(tf.constant([0, 4, 12]), ks=[5, 10]).items()}
    np.testing.assert_allclose(values["recall@5"], [1, 1, 0])
    np.testing.assert_allclose(values["recall@10"], [1, 1, 0])
    np.testing.assert_allclose(values["ndcg@5"], [1.0, 1 / math.log2(6), 0.0], rtol=1e-6)
    np.testing.assert_allclose(values["mrr"], [1.0, 1 / 5, 1 / 13], rtol=1e-6)


def test_metric_names_are_tensorboard_safe():
    assert metrics.keras_name("ndcg@20") == "ndcg_20"
    assert metrics.metric_names([10]) == ["recall@10", "ndcg@10", "mrr"]


def test_ranks_equal_brute_force_on_real_valued_embeddings():
    # Dense random embeddings: the target's dot-product score and its matmul score differ in the last bits, and a
    # rank computed by comparing them counts the target as beating itself (the bug this guards against).
    rng = np.random.default_rng(1)
    n_items, dim, batch = 300, 48, 64
    item_embeddings = rng.normal(size=(n_items + 1, dim)).astype(np.float32)
    queries = rng.normal(size=(batch, dim)).astype(np.float32)
    targets = rng.integers(1, n_items + 1, size=batch)
    histories = rng.integers(0, n_items + 1, size=(batch, 12))
    histories[:4, 0] = targets[:4]  # repeat consumption: the target is in the history and still ranked
    scores = queries.astype(np.float64) @ item_embeddings.T.astype(np.float64)
    expected = []
    for u in range(batch):
        masked = set(histories[u].tolist()) | {0, int(targets[u])}
        expected.append(sum(1 for j in range(n_items + 1) if j not in masked and scores[u, j] > scores[u, targets[u]]))
    for chunk_size in (65_536, 7):
        ranks = metrics.target_ranks(
            tf.constant(queries), tf.constant(item_embeddings), tf.constant(targets), tf.constant(histories), chunk_size
        )
        np.testing.assert_array_equal(ranks.numpy(), expected)
