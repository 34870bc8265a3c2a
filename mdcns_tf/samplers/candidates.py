"""Mechanisms every sampler shares: drawing items outside a user's history, scoring them, top-M picks.

Samplers differ in policy (which candidates, which scores, which pick); these functions are the mechanism, so
uniform, DNS, DNS(M,N), SRNS, GDNS and the MDCNS views never reimplement them.
"""

from __future__ import annotations

import tensorflow as tf

# A draw that hits the history is redrawn; with |history| << n_items almost every draw is valid, and the loop is
# bounded so that a pathological input (history covering the catalogue) fails loudly instead of spinning.
MAX_REDRAWS = 1000


def in_sorted(sorted_ids: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """Membership test. sorted_ids `(batch, x)` ascending per row, ids `(batch, n)` -> bool `(batch, n)`."""
    position = tf.searchsorted(sorted_ids, ids, side="left")
    position = tf.minimum(position, tf.shape(sorted_ids)[1] - 1)
    return tf.equal(tf.gather(sorted_ids, position, batch_dims=1), ids)


def sample_excluding(
    generator: tf.random.Generator,
    exclusion_ids: tf.Tensor,
    n_items: int,
    num_samples: int,
    probs_logits: tf.Tensor | None = None,
) -> tf.Tensor:
    """Draws `(batch, num_samples)` item ids in ``[1, n_items]`` that are not in ``exclusion_ids`` `(batch, x)`.

    Uniform by default; with ``probs_logits`` `(n_items + 1,)` (log-weights, index 0 ignored) the draw follows
    that distribution restricted to the allowed items (rejection sampling keeps the proportions exact).
    Padding zeros in ``exclusion_ids`` are harmless: 0 is never drawn.
    """
    exclusion_ids = tf.cast(exclusion_ids, tf.int32)
    sorted_exclusions = tf.sort(exclusion_ids, axis=-1)
    batch = tf.shape(exclusion_ids)[0]
    shape = tf.stack([batch, num_samples])

    if probs_logits is not None:
        weights = tf.exp(tf.cast(probs_logits[1:], tf.float64) - tf.reduce_max(tf.cast(probs_logits[1:], tf.float64)))
        cdf = tf.cumsum(weights / tf.reduce_sum(weights))

    def draw() -> tf.Tensor:
        if probs_logits is None:
            return generator.uniform(shape, minval=1, maxval=n_items + 1, dtype=tf.int32)
        # Inverse-CDF draw: O(log n_items) per sample, so a 1M-item catalogue costs no (batch, n_items) tensor.
        u = tf.reshape(generator.uniform(shape, dtype=tf.float64), [-1])
        picks = tf.searchsorted(cdf, u, side="right", out_type=tf.int32)
        return tf.reshape(tf.minimum(picks, n_items - 1) + 1, shape)

    ids = draw()

    def not_done(ids: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        return tf.logical_and(tf.reduce_any(in_sorted(sorted_exclusions, ids)), step < MAX_REDRAWS)

    def redraw(ids: tf.Tensor, step: tf.Tensor):
        return tf.where(in_sorted(sorted_exclusions, ids), draw(), ids), step + 1

    ids, steps = tf.while_loop(not_done, redraw, (ids, tf.constant(0)))
    tf.debugging.assert_less(
        steps, MAX_REDRAWS, message="negative sampling: a history covers (almost) the whole item catalogue"
    )
    return ids


def score_candidates(states: tf.Tensor, item_embeddings: tf.Tensor, candidate_ids: tf.Tensor) -> tf.Tensor:
    """Scores a per-sequence candidate pool at every position without a `(batch, len, n, dim)` tensor.

    states `(batch, seq_len, dim)`, item_embeddings `(n_items + 1, dim)`, candidate_ids `(batch, n)`
    -> scores `(batch, seq_len, n)`.
    """
    candidates = tf.gather(item_embeddings, candidate_ids)
    return tf.einsum("bld,bnd->bln", states, candidates)


def score_items(states: tf.Tensor, item_embeddings: tf.Tensor, item_ids: tf.Tensor) -> tf.Tensor:
    """Scores per-position items: states `(batch, seq_len, dim)`, item_ids `(batch, seq_len, k)` -> `(batch, seq_len, k)`."""
    return tf.einsum("bld,blkd->blk", states, tf.gather(item_embeddings, item_ids))


def top_m_uniform_pick(generator: tf.random.Generator, scores: tf.Tensor, m: int, num_picks: int = 1) -> tf.Tensor:
    """Index of one candidate drawn uniformly among the ``m`` highest ``scores`` (DNS(M,N); m = 1 is DNS).

    scores `(..., n)` -> indices `(..., num_picks)` into the last axis (drawn with replacement among the top-m).
    """
    _, top_indices = tf.math.top_k(scores, k=m)
    choice = generator.uniform(tf.concat([tf.shape(scores)[:-1], [num_picks]], 0), minval=0, maxval=m, dtype=tf.int32)
    return tf.gather(top_indices, choice, batch_dims=len(scores.shape) - 1)


def gather_pool(pool_ids: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """Item ids of pool positions: pool_ids `(batch, n)`, indices `(batch, seq_len, k)` -> `(batch, seq_len, k)`."""
    return tf.gather(pool_ids, indices, batch_dims=1)
