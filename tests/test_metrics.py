"""Full-ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
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


def brute_force_ranks(queries: np.ndarray, table: np.ndarray, targets: np.ndarray, histories: np.ndarray) -> list:
    """The definition, user by user, in exact arithmetic (int64 or float64 scores)."""
    wide = np.int64 if np.issubdtype(table.dtype, np.integer) else np.float64
    scores = queries.astype(wide) @ table.astype(wide).T
    ranks = []
    for u, target in enumerate(targets):
        excluded = {0, int(target), *histories[u].tolist()}
        ranks.append(sum(1 for j in range(len(table)) if j not in excluded and scores[u, j] > scores[u, target]))
    return ranks


def integer_users(seed: int, n_items: int, batch: int, history: int, dim: int = 6):
    """Small-integer embeddings: every score is an exact integer in float32 whatever the summation order, so the
    catalogue is full of exact ties with the target (which never count) and any kernel must match the brute force.
    Histories: 0-padded, some holding the target (repeat consumption), some an item twice, one empty row."""
    rng = np.random.default_rng(seed)
    table = rng.integers(-2, 3, size=(n_items + 1, dim))
    queries = rng.integers(-2, 3, size=(batch, dim))
    targets = rng.integers(1, n_items + 1, size=batch)
    histories = rng.integers(1, n_items + 1, size=(batch, history))
    lengths = rng.integers(0, history + 1, size=batch)
    histories[np.arange(history)[np.newaxis, :] >= lengths[:, np.newaxis]] = 0
    if history:
        histories[: batch // 3, 0] = targets[: batch // 3]
        histories[-1] = 0
    if history > 2:
        histories[::4, 2] = histories[::4, 1]
    return queries, table, targets, histories


@pytest.mark.parametrize("n_items, batch, history", [(1, 3, 2), (50, 9, 7), (1_000, 33, 12), (4_099, 17, 0)])
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1_000, 65_536])
def test_ranks_equal_brute_force_with_ties_history_and_padding(n_items, batch, history, chunk_size):
    queries, table, targets, histories = integer_users(n_items + chunk_size, n_items, batch, history)
    expected = brute_force_ranks(queries, table, targets, histories)
    ranks = metrics.target_ranks(
        tf.constant(queries, tf.float32),
        tf.Variable(table.astype(np.float32)),  # a model's table is a resource variable
        tf.constant(targets),
        tf.constant(histories),
        chunk_size=chunk_size,
    )
    np.testing.assert_array_equal(ranks.numpy(), expected)


def test_ties_with_the_target_never_count():
    # Items 1, 2 and 4 score exactly what target 3 scores; item 5 more. Rank 1 whatever the history holds.
    scores = [[7.0, 0.5, 0.5, 0.5, 0.5, 0.6]]
    assert ranks_for(scores, [3], [[0]]).tolist() == [1]
    assert ranks_for(scores, [3], [[3, 3, 1, 0]], chunk_size=2).tolist() == [1]
    assert ranks_for(scores, [3], [[5]]).tolist() == [0]


def test_ranks_equal_the_previous_kernel_bit_for_bit_on_dense_embeddings():
    # Real-valued scores: the block scan compares the very float32 scores the previous kernel compared (the same
    # MatMul, the same dot product for the target), so even near-ties in the last bits come out the same.
    from benchmarks.eval_speed import legacy_target_ranks, synthetic_users

    queries, table, targets, histories = synthetic_users(20_011, 32, 256, 40, seed=3)
    args = (tf.constant(queries), tf.Variable(table), tf.constant(targets), tf.constant(histories))
    legacy = legacy_target_ranks(*args).numpy()
    for chunk_size in (65_536, 1_000, 333):
        np.testing.assert_array_equal(metrics.target_ranks(*args, chunk_size=chunk_size).numpy(), legacy)


def test_ranks_compile_whole_under_xla():
    # `train.jit_compile` compiles the whole test step: the block loop must keep every slice inside the table there.
    queries, table, targets, histories = integer_users(5, 1_003, 21, 9)
    expected = brute_force_ranks(queries, table, targets, histories)
    args = (tf.constant(queries, tf.float32), tf.constant(table, tf.float32), tf.constant(targets))

    for chunk_size in (100, 65_536):
        compiled = tf.function(lambda h, c=chunk_size: metrics.target_ranks(*args, h, chunk_size=c), jit_compile=True)
        np.testing.assert_array_equal(compiled(tf.constant(histories)).numpy(), expected)


def test_excluded_ids_once_each_in_a_power_of_two_width():
    ids = metrics.excluded_ids(tf.constant([3, 5]), tf.constant([[3, 2, 2, 0], [1, 0, 0, 0]])).numpy()
    assert ids.shape == (2, 8)
    assert sorted(i for i in ids[0] if i >= 0) == [0, 2, 3]
    assert sorted(i for i in ids[1] if i >= 0) == [0, 1, 5]
    assert metrics.excluded_ids(tf.constant([1]), tf.zeros([1, 15], tf.int32)).shape == (1, 32)


def test_a_score_that_is_not_a_number_never_helps_the_target():
    """A diverged model measures 0, never 1: a NaN item score beats the target; a NaN or infinite target is last."""
    n_rows = 6
    table = np.eye(n_rows, dtype=np.float32)
    table[2] = np.nan  # item 2 scores NaN for everyone
    queries = tf.constant([[0.0, 0.9, 0.0, 0.5, 0.1, 0.2]] * 2, tf.float32)
    history = tf.constant([[0], [0]])
    # target 3 (0.5): item 1 (0.9) beats it, and NaN item 2 counts as beating it too -> rank 2 (finite scores: 1)
    ranks = metrics.target_ranks(queries, tf.constant(table), tf.constant([3, 3]), history).numpy()
    assert ranks.tolist() == [2, 2]
    # a NaN target (item 2 itself) or a NaN query is last: rank n_rows - 1, recall@5 0
    nan_query = tf.constant([[np.nan] * n_rows, [0.0, 0.9, 0.0, 0.5, 0.1, 0.2]], tf.float32)
    ranks = metrics.target_ranks(nan_query, tf.constant(table), tf.constant([3, 2]), history).numpy()
    assert ranks.tolist() == [n_rows - 1, n_rows - 1]
    assert metrics.metrics_from_ranks(tf.constant(ranks), [5])["recall@5"].numpy().tolist() == [0.0, 0.0]


@pytest.mark.parametrize("target_score", [np.inf, -np.inf])
def test_an_infinite_target_score_ranks_last(target_score: float):
    # +inf: nothing finite beats it, but an infinite score is no evidence of a good model; -inf: the same rule
    scores = [[0.0, 0.9, 0.8, target_score, 0.7, 0.1]]
    assert ranks_for(scores, [3], [[0]]).tolist() == [5]
