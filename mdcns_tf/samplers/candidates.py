"""Mechanisms every sampler shares: drawing items outside a user's history, scoring them, top-M picks.

Samplers differ in policy (which candidates, which scores, which pick); these functions are the mechanism, so
uniform, DNS, DNS(M,N), SRNS, GDNS and the MDCNS views never reimplement them. `PooledHardNegativeSampler` is the
DNS(M,N) mechanism as a sampler base class, shared by DNS, DNS(M,N), MixGCF and MixGCF+. Large pools scored at
every position (MDCNS) have their own fused kernel: `pool_scoring`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from mdcns_tf.samplers.base import NegativeSampler, SamplingContext

# A draw that hits the history is redrawn; with |history| << n_items almost every draw is valid, and the loop is
# bounded so that a pathological input (history covering the catalogue) fails loudly instead of spinning.
MAX_REDRAWS = 1000

# Where a candidate pool is drawn: once per sequence (shared by its positions) or once per position. The values and
# meaning of ``mdcns.pool_scope`` (`mdcns_tf.config.MDCNSConfig`) and of the DNS samplers' ``pool_scope``.
POOL_SCOPES = ("sequence", "position")


def in_sorted(sorted_ids: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """Membership test. sorted_ids `(batch, x)` ascending per row, ids `(batch, n)` -> bool `(batch, n)`."""
    position = tf.searchsorted(sorted_ids, ids, side="left")
    position = tf.minimum(position, tf.shape(sorted_ids)[1] - 1)
    return tf.equal(tf.gather(sorted_ids, position, batch_dims=1), ids)


def draw_cdf(probs_logits: tf.Tensor) -> tf.Tensor:
    """The float64 CDF `(n_items,)` over items 1..n_items that `sample_excluding` draws from, given log-weights
    `(n_items + 1,)` (index 0 ignored). O(n_items): compute it once (a sampler's constructor) and pass it as
    ``probs_cdf``, not every step (a pass over the catalogue a step: 1M items, ~10 ms)."""
    weights = tf.exp(tf.cast(probs_logits[1:], tf.float64) - tf.reduce_max(tf.cast(probs_logits[1:], tf.float64)))
    return tf.cumsum(weights / tf.reduce_sum(weights))


def sample_excluding(
    generator: tf.random.Generator,
    exclusion_ids: tf.Tensor,
    n_items: int,
    num_samples: int,
    probs_logits: tf.Tensor | None = None,
    probs_cdf: tf.Tensor | None = None,
) -> tf.Tensor:
    """Draws `(batch, num_samples)` item ids in ``[1, n_items]`` that are not in ``exclusion_ids`` `(batch, x)`.

    Uniform by default; with ``probs_logits`` `(n_items + 1,)` (log-weights, index 0 ignored), or their
    `draw_cdf` computed once, ``probs_cdf``, the draw follows that distribution restricted to the allowed items
    (rejection sampling keeps the proportions exact). Padding zeros in ``exclusion_ids`` are harmless: 0 is never
    drawn.
    """
    cdf = probs_cdf
    if cdf is None and probs_logits is not None:
        cdf = draw_cdf(probs_logits)

    def draw(shape: tf.Tensor) -> tf.Tensor:
        if cdf is None:
            return generator.uniform(shape, minval=1, maxval=n_items + 1, dtype=tf.int32)
        # Inverse-CDF draw: O(log n_items) per sample, so a 1M-item catalogue costs no (batch, n_items) tensor.
        u = tf.reshape(generator.uniform(shape, dtype=tf.float64), [-1])
        picks = tf.searchsorted(cdf, u, side="right", out_type=tf.int32)
        return tf.reshape(tf.minimum(picks, n_items - 1) + 1, shape)

    return draw_excluding(draw, lambda drawn: drawn, exclusion_ids, num_samples)


def sample_from_rows(
    generator: tf.random.Generator, exclusion_ids: tf.Tensor, row_ids: tf.Tensor, num_samples: int
) -> tf.Tensor:
    """Draws `(batch, num_samples)` indices into ``row_ids`` `(S,)` whose items are not in ``exclusion_ids``
    `(batch, x)`: uniform over the S rows (duplicates count as often as they occur), rejection as in
    `sample_excluding`. With ``row_ids`` themselves a draw from the catalogue, each sample is marginally a draw
    from the catalogue outside the history, while a step touches only the S rows (MDCNS ``pool_source: step``)."""
    rows = tf.shape(row_ids)[0]

    def draw(shape: tf.Tensor) -> tf.Tensor:
        return generator.uniform(shape, minval=0, maxval=rows, dtype=tf.int32)

    return draw_excluding(draw, lambda drawn: tf.gather(row_ids, drawn), exclusion_ids, num_samples)


def draw_excluding(draw: Any, to_ids: Any, exclusion_ids: tf.Tensor, num_samples: int) -> tf.Tensor:
    """The rejection loop of `sample_excluding` and `sample_from_rows`: ``draw(shape)`` proposals `(shape)`,
    ``to_ids(proposals)`` their item ids; proposals whose item is in the row's ``exclusion_ids`` `(batch, x)` are
    drawn again. -> accepted proposals `(batch, num_samples)`."""
    exclusion_ids = tf.cast(exclusion_ids, tf.int32)
    sorted_exclusions = tf.sort(exclusion_ids, axis=-1)
    batch = tf.shape(exclusion_ids)[0]
    drawn = draw(tf.stack([batch, num_samples]))
    # Only the rejected draws are drawn again, each checked against its own row: re-drawing and re-checking all
    # B x L x N draws of position pools every round made the draw ~10% of an MDCNS step. Each draw still ends as
    # the first of its proposals outside the history, so the distribution is the same.
    rejected = tf.where(in_sorted(sorted_exclusions, to_ids(drawn)))  # (R, 2): (row, column)

    def redraw(drawn: tf.Tensor, rejected: tf.Tensor, step: tf.Tensor):
        proposals = draw(tf.shape(rejected)[:1])
        still = in_sorted(tf.gather(sorted_exclusions, rejected[:, 0]), to_ids(proposals)[:, tf.newaxis])[:, 0]
        drawn = tf.tensor_scatter_nd_update(drawn, rejected, proposals)
        return drawn, tf.boolean_mask(rejected, still), step + 1

    drawn, rejected, _ = tf.while_loop(
        lambda drawn, rejected, step: tf.logical_and(tf.size(rejected) > 0, step < MAX_REDRAWS),
        redraw,
        (drawn, rejected, tf.constant(0)),
        shape_invariants=(drawn.shape, tf.TensorShape([None, 2]), tf.TensorShape([])),
    )
    tf.debugging.assert_equal(
        tf.size(rejected), 0, message="negative sampling: a history covers (almost) the whole item catalogue"
    )
    return drawn


def sample_position_pools(
    generator: tf.random.Generator,
    exclusion_ids: tf.Tensor,
    n_items: int,
    seq_len: tf.Tensor,
    pool_size: int,
    probs_logits: tf.Tensor | None = None,
    probs_cdf: tf.Tensor | None = None,
) -> tf.Tensor:
    """A fresh pool of ``pool_size`` items outside ``exclusion_ids`` `(batch, x)` for every position:
    -> `(batch, seq_len, pool_size)` (one draw; the positions of a sequence share its exclusions). Uniform, or
    following ``probs_logits`` / ``probs_cdf`` as in `sample_excluding`."""
    pools = sample_excluding(generator, exclusion_ids, n_items, seq_len * pool_size, probs_logits, probs_cdf)
    return tf.reshape(pools, [tf.shape(exclusion_ids)[0], seq_len, pool_size])


def score_candidates(states: tf.Tensor, item_embeddings: tf.Tensor, candidate_ids: tf.Tensor) -> tf.Tensor:
    """Scores a per-sequence candidate pool at every position without a `(batch, len, n, dim)` tensor.

    states `(batch, seq_len, dim)`, item_embeddings `(n_items + 1, dim)`, candidate_ids `(batch, n)`
    -> scores `(batch, seq_len, n)`.
    """
    candidates = tf.gather(item_embeddings, candidate_ids)
    return tf.einsum("bld,bnd->bln", states, candidates)


def score_items(states: tf.Tensor, item_embeddings: tf.Tensor, item_ids: tf.Tensor) -> tf.Tensor:
    """Scores per-position items: states `(batch, seq_len, dim)`, item_ids `(batch, seq_len, k)`
    -> `(batch, seq_len, k)`."""
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


def pooled_hard_negatives(
    generator: tf.random.Generator,
    states: tf.Tensor,
    item_embeddings: tf.Tensor,
    exclusion_ids: tf.Tensor,
    n_items: int,
    pool_size: int,
    m: int,
    num_negatives: int,
    pool_scope: str = "sequence",
) -> tf.Tensor:
    """DNS(M,N) mechanism: per negative, ``pool_size`` uniform candidates outside the history, scored at every
    position; each position picks uniformly among the top-``m`` of each sub-pool.

    ``pool_scope`` (the option and meaning of ``mdcns.pool_scope``): ``sequence`` draws the pool once per sequence
    and shares it among its positions (one `(batch, k * pool_size)` draw): the positions share the history, so the
    candidates are valid for all of them and only the scores differ per position, but positions with similar
    states then pick the same hardest item. ``position`` draws a fresh pool for every position
    (`sample_position_pools`, a `(batch, seq_len, k * pool_size)` gather to score): distinct hard negatives across
    positions, at seq_len times the candidates. ``num_negatives`` sub-pools keep the k negatives independent (a
    shared top-1 would give k copies of one item).

    states `(batch, seq_len, dim)`, item_embeddings `(n_items + 1, dim)`, exclusion_ids `(batch, x)`
    -> ids `(batch, seq_len, num_negatives)`.
    """
    # Selection only: no gradient flows through the choice, so the tape need not keep the scores. The scores, not the
    # table, are cut from the tape: a stop_gradient on the table variable reads it whole (a 256 MB copy a step at 1M
    # items, once the variable has been gathered from), where the gathers read only the pool's rows; same values.
    states = tf.stop_gradient(states)
    batch, seq_len = tf.shape(states)[0], tf.shape(states)[1]
    if pool_scope == "position":
        pool_ids = sample_position_pools(generator, exclusion_ids, n_items, seq_len, num_negatives * pool_size)
        scores = tf.stop_gradient(score_items(states, item_embeddings, pool_ids))  # (B, L, k * N)
    elif pool_scope == "sequence":
        pool_ids = sample_excluding(generator, exclusion_ids, n_items, num_negatives * pool_size)
        scores = tf.stop_gradient(score_candidates(states, item_embeddings, pool_ids))  # (B, L, k * N)
    else:
        raise ValueError(f"pool_scope must be 'sequence' or 'position', got {pool_scope!r}")
    scores = tf.reshape(scores, [batch, seq_len, num_negatives, pool_size])
    picks = top_m_uniform_pick(generator, scores, m, num_picks=1)[..., 0]  # (B, L, k) index within sub-pool
    picks += tf.range(num_negatives, dtype=picks.dtype) * pool_size
    if pool_scope == "position":
        return tf.gather(pool_ids, picks, batch_dims=2)
    return gather_pool(pool_ids, picks)


class PooledHardNegativeSampler(NegativeSampler):
    """A sampler whose negatives are DNS(M,N) picks from uniform candidate pools (`pooled_hard_negatives`).

    The mechanism lives here: the option checks, the pool, its scores and the top-M pick (`hard_negative_ids`).
    A subclass sets the policy: its ``Params`` (with ``pool_size`` and ``pool_scope``, and ``top_m`` unless it
    fixes `top_m`, as DNS and MixGCF do with M = 1) and what `sample` makes of the picked items (DNS(M,N): the
    items themselves; MixGCF: mixes of them with the positive).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pool_size, pool_scope = self.params.pool_size, self.params.pool_scope
        if pool_size < 1 or not 1 <= self.top_m <= pool_size:
            raise ValueError(f"{self.name}: need 1 <= top_m <= pool_size, got {self.top_m} and {pool_size}")
        if pool_scope not in POOL_SCOPES:
            raise ValueError(f"{self.name}: pool_scope must be one of {POOL_SCOPES}, got {pool_scope!r}")

    @property
    def top_m(self) -> int:
        """M: each negative is drawn uniformly among the M highest-scoring candidates of its sub-pool."""
        return self.params.top_m

    def hard_negative_ids(self, context: SamplingContext) -> tf.Tensor:
        """The picked items `(batch, seq_len, num_negatives)`: per negative, ``pool_size`` uniform candidates
        outside ``context.exclusion_ids``, scored with ``context.states``, one drawn among the top `top_m`."""
        return pooled_hard_negatives(
            self.generator,
            context.states,
            context.item_embeddings,
            context.exclusion_ids,
            self.n_items,
            self.params.pool_size,
            self.top_m,
            self.num_negatives,
            self.params.pool_scope,
        )


def gumbel_top_k(generator: tf.random.Generator, logits: tf.Tensor, k: int) -> tf.Tensor:
    """``k`` indices drawn without replacement with probabilities softmax(``logits``) (successive sampling, as
    `numpy.random.choice(p=softmax, replace=False)`), via the Gumbel-top-k trick: one `top_k`, no loop.

    logits `(..., n)` (``-inf`` = never drawn) -> indices `(..., k)`.
    """
    uniform = generator.uniform(tf.shape(logits), minval=1e-20, maxval=1.0, dtype=logits.dtype)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    return tf.math.top_k(logits + gumbel, k=k).indices


def positive_scores(states: tf.Tensor, item_embeddings: tf.Tensor, target_ids: tf.Tensor) -> tf.Tensor:
    """Score of each position's target: states `(batch, seq_len, dim)`, target_ids `(batch, seq_len)`
    -> `(batch, seq_len)`."""
    return tf.reduce_sum(states * tf.gather(item_embeddings, target_ids), axis=-1)


def last_trained_position(target_ids: tf.Tensor) -> tf.Tensor:
    """Index of the last trained position of each sequence (``target != 0``); `(batch, seq_len)` -> `(batch,)`.

    Inputs are left-padded, so this is ``seq_len - 1`` for both training-position modes; computing it keeps
    stateful samplers correct for any masking the data layer may add.
    """
    trained = tf.cast(tf.not_equal(target_ids, 0), tf.int32)
    seq_len = tf.shape(target_ids)[1]
    return seq_len - 1 - tf.argmax(tf.reverse(trained, axis=[1]), axis=1, output_type=tf.int32)


def at_position(values: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """values `(batch, seq_len, ...)`, positions `(batch,)` -> `(batch, ...)`, the entry at each row's position."""
    return tf.gather(values, positions, batch_dims=1)


def duplicates_of(candidate_ids: tf.Tensor, reference_ids: tf.Tensor) -> tf.Tensor:
    """bool `(batch, n)`: which candidates `(batch, n)` already appear in reference_ids `(batch, r)` (r small)."""
    return tf.reduce_any(tf.equal(candidate_ids[:, :, tf.newaxis], reference_ids[:, tf.newaxis, :]), axis=-1)
