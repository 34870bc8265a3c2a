"""Mechanisms every sampler shares: drawing items outside a user's history, scoring them, top-M picks.

Samplers differ in policy (which candidates, which scores, which pick); these functions are the mechanism, so
uniform, DNS, DNS(M,N), SRNS, GDNS and the MDCNS views never reimplement them. `PooledHardNegativeSampler` is the
DNS(M,N) mechanism as a sampler base class, shared by DNS, DNS(M,N), MixGCF and MixGCF+.
"""

from __future__ import annotations

from typing import Any, NamedTuple

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
    exclusion_ids = tf.cast(exclusion_ids, tf.int32)
    sorted_exclusions = tf.sort(exclusion_ids, axis=-1)
    batch = tf.shape(exclusion_ids)[0]

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

    ids = draw(tf.stack([batch, num_samples]))
    # Only the rejected draws are drawn again, each checked against its own row: re-drawing and re-checking all
    # B x L x N draws of position pools every round made the draw ~10% of an MDCNS step. Each draw still ends as
    # the first of its proposals outside the history, so the distribution is the same.
    rejected = tf.where(in_sorted(sorted_exclusions, ids))  # (R, 2): (row, column)

    def redraw(ids: tf.Tensor, rejected: tf.Tensor, step: tf.Tensor):
        proposals = draw(tf.shape(rejected)[:1])
        still = in_sorted(tf.gather(sorted_exclusions, rejected[:, 0]), proposals[:, tf.newaxis])[:, 0]
        ids = tf.tensor_scatter_nd_update(ids, rejected, proposals)
        return ids, tf.boolean_mask(rejected, still), step + 1

    ids, rejected, _ = tf.while_loop(
        lambda ids, rejected, step: tf.logical_and(tf.size(rejected) > 0, step < MAX_REDRAWS),
        redraw,
        (ids, rejected, tf.constant(0)),
        shape_invariants=(ids.shape, tf.TensorShape([None, 2]), tf.TensorShape([])),
    )
    tf.debugging.assert_equal(
        tf.size(rejected), 0, message="negative sampling: a history covers (almost) the whole item catalogue"
    )
    return ids


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
