"""GDNS (Zhu et al. WWW 2022, "A Gain-Tuning Dynamic Negative Sampler for Recommendation").

Per user u and candidate negative j, the expected preference gap over the user's positives
``H^t(u,j) = E_{i in P(u)} sig(r_uj - r_ui)`` and its gain
``G^t(u,j) = a . G^{t-1}(u,j) + (1 - a) . sig((H^{t-1}(u,j) - H^t(u,j)) / (H^t(u,j) + eps))``.
A true negative's gap shrinks as the model learns it (high gain); a false negative's stays put (low gain). The
negatives are the candidates with the highest gain, trained with the group-wise margin loss
``sum_{i in P} sum_{j in N} max(0, r_uj - r_ui + margin)``.

Choices (the paper leaves them open or is written for (user, item) collaborative filtering):

* **Candidate pool**: a per-user memory of ``pool_size`` (32) items from outside the user's sequence, kept
  across visits because the gain needs two observations of the same (u, j). At each visit the ``refresh``
  (8) lowest-gain items, the suspected false negatives and the already-learned ones, are replaced by fresh
  uniform items, so the pool keeps exploring; a fresh item starts at gain ``initial_gain`` = sig(0) = 0.5, the
  gain of "no change", and gets a real gain from its second visit on.
* **Positives of u**: the trained positions of the sequence (with ``train_positions: all``, the user's whole
  training sequence; ``r_ui`` is position l's score of its target and ``r_uj`` position l's score of j). H is
  their mean. With ``last``, a visit is one prefix sample, so P(u) is its single target.
* **Time t**: one visit of the user (one epoch with ``all``).
* **Negative group**: the ``num_negatives`` highest-gain items of the user, shared by all its positions; the
  group-wise loss pairs every positive (position) with every negative. The trainer averages over positions
  where the paper sums: a constant factor the learning rate absorbs. ``group_loss: false`` keeps the
  configured pairwise loss (``loss.name``) instead, for comparisons at equal loss.

State per user (tf.Variables, in-graph scatter updates): ``pool_size`` int32 ids + float32 H + float32 G:
12 . 32 = 384 bytes a user with the defaults; Sports (35,598 users) 13.7 MB, Games (31,013) 11.9 MB.
Users appearing twice in one batch (prefix samples) write their rows once; which write wins is unspecified.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import positive_scores, sample_excluding, score_candidates

# H of an item not yet observed (real H values are means of sigmoids, in (0, 1)).
UNSEEN = -1.0


@dataclasses.dataclass
class GDNSParams:
    """Config block ``sampler.gdns``.

    pool_size     per-user candidate memory (items whose gain is tracked).
    refresh       lowest-gain memory items replaced by fresh uniform ones at each visit (0 = fixed pool).
    ema           a, the weight of the previous gain.
    eps           keeps the relative change finite when H is near 0.
    initial_gain  gain of an item fresh to the pool (0.5 = sig(0), the gain of an unchanged H).
    margin        of the group-wise hinge loss.
    group_loss    true: the group-wise margin loss; false: the configured ``loss.name`` on the same negatives.
    """

    pool_size: int = 32
    refresh: int = 8
    ema: float = 0.7
    eps: float = 1e-6
    initial_gain: float = 0.5
    margin: float = 1.0
    group_loss: bool = True


def expected_gap(scores: tf.Tensor, positive: tf.Tensor, trained: tf.Tensor) -> tf.Tensor:
    """H(u, j) = mean over trained positions l of sig(s_lj - s_l+).

    scores `(batch, seq_len, n)`, positive `(batch, seq_len)`, trained bool `(batch, seq_len)` -> `(batch, n)`.
    """
    weights = tf.cast(trained, scores.dtype)[..., tf.newaxis]
    gaps = tf.sigmoid(scores - positive[..., tf.newaxis]) * weights
    return tf.math.divide_no_nan(tf.reduce_sum(gaps, axis=1), tf.reduce_sum(weights, axis=1))


def updated_gain(gain: tf.Tensor, previous: tf.Tensor, current: tf.Tensor, ema: float, eps: float) -> tf.Tensor:
    """G^t = a . G^{t-1} + (1 - a) . sig((H^{t-1} - H^t) / (H^t + eps)) where H^{t-1} was observed; else G^{t-1}.

    All `(batch, n)`; ``previous == UNSEEN`` marks an unobserved item.
    """
    new = ema * gain + (1.0 - ema) * tf.sigmoid((previous - current) / (current + eps))
    return tf.where(previous >= 0.0, new, gain)


class GDNSSampler(NegativeSampler):
    Params = GDNSParams

    def __init__(self, params: GDNSParams, n_items: int, n_users: int, num_negatives: int, *args, **kwargs) -> None:
        super().__init__(params, n_items, n_users, num_negatives, *args, **kwargs)
        if params.refresh < 0 or num_negatives + params.refresh > params.pool_size:
            raise ValueError(
                f"gdns: need num_negatives ({num_negatives}) + refresh ({params.refresh}) <= pool_size "
                f"({params.pool_size}), so that the picked negatives are never the evicted ones"
            )
        if not 0.0 <= params.ema < 1.0:
            raise ValueError(f"gdns: ema must be in [0, 1), got {params.ema}")
        rows = n_users + 1  # user_index is 1-based; row 0 unused
        self.pool_ids = tf.Variable(tf.zeros([rows, params.pool_size], tf.int32), trainable=False, name="pool_ids")
        self.gap = tf.Variable(tf.fill([rows, params.pool_size], UNSEEN), trainable=False, name="gap")
        self.gain = tf.Variable(tf.fill([rows, params.pool_size], params.initial_gain), trainable=False, name="gain")

    @staticmethod
    def bytes_per_user(params: GDNSParams) -> int:
        return 12 * params.pool_size

    def sample(self, context: SamplingContext) -> Negatives:
        p = self.params
        users = tf.cast(context.user_index, tf.int32)
        batch, seq_len = tf.shape(context.target_ids)[0], tf.shape(context.target_ids)[1]
        pool = tf.gather(self.pool_ids, users)  # (B, P)
        previous = tf.gather(self.gap, users)
        gain = tf.gather(self.gain, users)

        fresh = sample_excluding(self.generator, context.exclusion_ids, self.n_items, p.pool_size + p.refresh)
        empty = tf.equal(pool, 0)  # a user's first visit fills its pool
        pool = tf.where(empty, fresh[:, : p.pool_size], pool)
        previous = tf.where(empty, UNSEEN, previous)
        gain = tf.where(empty, p.initial_gain, gain)

        states = tf.stop_gradient(context.states)
        embeddings = tf.stop_gradient(context.item_embeddings)
        scores = score_candidates(states, embeddings, pool)  # (B, L, P)
        trained = tf.not_equal(context.target_ids, 0)
        current = expected_gap(scores, positive_scores(states, embeddings, context.target_ids), trained)
        gain = updated_gain(gain, previous, current, p.ema, p.eps)

        top = tf.math.top_k(gain, k=self.num_negatives).indices  # (B, k)
        group = tf.gather(pool, top, batch_dims=1)
        ids = tf.broadcast_to(group[:, tf.newaxis, :], [batch, seq_len, self.num_negatives])

        if p.refresh:
            evicted = tf.math.top_k(-gain, k=p.refresh).indices  # (B, R) the lowest gains
            rows = tf.broadcast_to(tf.range(batch)[:, tf.newaxis], tf.shape(evicted))
            where = tf.stack([rows, evicted], axis=-1)  # (B, R, 2)
            pool = tf.tensor_scatter_nd_update(pool, where, fresh[:, p.pool_size :])
            current = tf.tensor_scatter_nd_update(current, where, tf.fill(tf.shape(evicted), UNSEEN))
            gain = tf.tensor_scatter_nd_update(gain, where, tf.fill(tf.shape(evicted), p.initial_gain))
        self.pool_ids.scatter_nd_update(users[:, None], pool)
        self.gap.scatter_nd_update(users[:, None], current)
        self.gain.scatter_nd_update(users[:, None], gain)
        return Negatives(ids=ids)

    def loss(
        self, context: SamplingContext, negatives: Negatives, positive_scores: tf.Tensor, negative_scores: tf.Tensor
    ) -> tf.Tensor:
        """Group-wise hinge: per position l, sum_j max(0, s_lj - s_l+ + margin) `(batch, seq_len)`."""
        if not self.params.group_loss:
            return super().loss(context, negatives, positive_scores, negative_scores)
        hinge = tf.nn.relu(negative_scores - positive_scores[..., tf.newaxis] + self.params.margin)
        return tf.reduce_sum(hinge, axis=-1)
