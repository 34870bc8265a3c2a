"""GDNS (Zhu et al. WWW 2022, "A Gain-Tuning Dynamic Negative Sampler for Recommendation").

Per user u and candidate negative j, the expected preference gap over the user's positives
``H^t(u,j) = E_{i in P(u)} sig(r_uj - r_ui)`` and its gain
``G^t(u,j) = a . G^{t-1}(u,j) + (1 - a) . sig((H^{t-1}(u,j) - H^t(u,j)) / (H^t(u,j) + eps))``.
A true negative's gap shrinks as the model learns it (high gain); a false negative's stays put (low gain).
Negatives are drawn with probability proportional to the gain and trained with the group-wise margin loss
``sum_{i in P} sum_{j in N} max(0, r_uj - r_ui + margin)``.

Why not a sticky pool and an argmax. The first version kept 32 candidates per user across visits (the gain needs
two observations of the same (u, j)), took the argmax of the gain, gave that one negative to every position and
evicted the lowest gains. That loop feeds on itself: training pushes the picked item down, its gap falls, its gain
rises, it is picked again, and informative items are evicted (a simulation gave 2 distinct negatives a user and
96% repeats from one epoch to the next; test NDCG@10 .005 against uniform's .026 on Beauty). Here:

* **Fresh candidates at every visit**: ``pool_size`` uniform items outside the user's sequence.
* **The previous epochs' scores of any item** come from snapshots of the model (`snapshots.ModelSnapshots`: the
  end-of-epoch item table and the user's dropout-free reference state at its visit), so H^{t-1}, H^{t-2}, ... of a
  fresh candidate are computed, not remembered: no per-(user, item) memory, and no stickiness.
* **The gain** is the EMA above over the last ``history_epochs`` epochs and the current one, started at the
  oldest available change (so it is a weighted mean of observed changes, not shrunk towards a prior);
  ``initial_gain`` only when no earlier snapshot exists (the first epoch: uniform sampling).
* **Sampling in proportion to the gain** (``G^power``, power 1 = proportional): every position of the sequence
  draws its own ``num_negatives`` from the pool, independently and with replacement (Gumbel-max), so positions get
  different negatives.

Sequential mapping (the paper is for (user, item) collaborative filtering):

* **u's representation**: its dropout-free state at its last trained position (the state its latest item is
  predicted from); ``r_uj`` = that state . E[j]. Dropout-free (``needs_inference_states``, one more forward pass a
  step) because dropout noise would dominate a relative change of H.
* **Positives P(u)**: the targets of the sequence's trained positions (with ``train_positions: all`` the user's
  whole training sequence; with ``last`` the prefix sample's single target). The same ids are scored with every
  snapshot, so H changes only because the model did.
* **Time t**: an epoch (one visit of the user with ``all``).
* **Group-wise loss**: per position, the hinge summed over its own negatives; the trainer averages over positions
  where the paper sums (a constant factor the learning rate absorbs). ``group_loss: false`` keeps the configured
  pairwise loss (``loss.name``) instead, for comparisons at equal loss.

Measured (Beauty, the MDCNS authors' split, SASRec, 3 seeds; README "Results"): at uniform's level. The gain's
standard deviation within a fresh pool is .02-.07 around 0.5, so the power-1 draw gives the likeliest candidate
1.1-1.3x uniform's chance (``gdns_top_share`` in the training log); power 4 does no better and power 20 collapses
(the self-feeding loop above, back). Give it the group its loss is written for (``sampler.num_negatives`` 4: test
NDCG@10 .0424 against .0368 with 1), and compare with uniform at the same count (.0429).

State (tf.Variables, in-graph updates, checkpointed): the snapshots only, ``(history_epochs + 1) x (dim + 1)``
4-byte values a user (1,040 bytes with the defaults and dim 64) plus ``history_epochs + 1`` item tables.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from mdcns_tf.samplers.base import Negatives, NegativeSampler, SamplingContext
from mdcns_tf.samplers.candidates import at_position, last_trained_position, sample_excluding
from mdcns_tf.samplers.snapshots import ModelSnapshots


@dataclasses.dataclass
class GDNSParams:
    """Config block ``sampler.gdns``.

    pool_size       fresh uniform candidates per user and visit, outside its sequence (64: a pool per sequence,
                    from which each position draws its own negatives).
    history_epochs  earlier epochs whose snapshots enter the gain (3 changes of H: a = 0.7 leaves the oldest one
                    a weight of 0.49 against 0.3 for the newest; older ones would barely count).
    ema             a, the weight of the previous gain.
    eps             keeps the relative change finite when H is near 0.
    initial_gain    the gain before any change is observed (0.5 = sig(0), the gain of an unchanged H).
    power           draws are proportional to gain ** power (1: in proportion to the gain).
    margin          of the group-wise hinge loss.
    group_loss      true: the group-wise margin loss; false: the configured ``loss.name`` on the same negatives.
    """

    pool_size: int = 64
    history_epochs: int = 3
    ema: float = 0.7
    eps: float = 1e-6
    initial_gain: float = 0.5
    power: float = 1.0
    margin: float = 1.0
    group_loss: bool = True


def expected_gap(candidate_scores: tf.Tensor, positive_scores: tf.Tensor, trained: tf.Tensor) -> tf.Tensor:
    """H(u, j) = mean over the positives i (trained positions) of sig(r_uj - r_ui).

    candidate_scores `(..., n)`, positive_scores `(..., seq_len)`, trained bool `(batch, seq_len)` with the batch
    axis first in both -> `(..., n)`.
    """
    weights = tf.cast(trained, candidate_scores.dtype)
    while weights.shape.rank < positive_scores.shape.rank:  # (B, L) -> (B, 1, ..., L)
        weights = weights[:, tf.newaxis]
    gaps = tf.sigmoid(candidate_scores[..., tf.newaxis, :] - positive_scores[..., :, tf.newaxis])  # (..., L, n)
    total = tf.reduce_sum(gaps * weights[..., tf.newaxis], axis=-2)
    return tf.math.divide_no_nan(total, tf.reduce_sum(weights, axis=-1, keepdims=True))


def step_gain(previous: tf.Tensor, current: tf.Tensor, eps: float) -> tf.Tensor:
    """sig((H^{t-1} - H^t) / (H^t + eps))."""
    return tf.sigmoid((previous - current) / (current + eps))


def chained_gain(
    history: tf.Tensor, valid: tf.Tensor, current: tf.Tensor, ema: float, eps: float, initial_gain: float
) -> tf.Tensor:
    """G over the snapshots, oldest first: the first observed change starts it, each later one enters as
    ``G = a . G + (1 - a) . step_gain``; ``initial_gain`` where no change is observed. Missing snapshots are
    skipped (the change is taken from the latest earlier one).

    history `(batch, window, n)` H of earlier epochs, valid bool `(batch, window)`, current `(batch, n)` H now
    -> `(batch, n)`.
    """
    gain = tf.fill(tf.shape(current), tf.constant(initial_gain, current.dtype))
    started = tf.zeros(tf.shape(current)[:1], tf.bool)
    last_h, has_last = tf.zeros_like(current), tf.zeros_like(started)
    window = history.shape[1]
    for k in range(window + 1):  # static: the window is a handful of epochs
        h, ok = (history[:, k], valid[:, k]) if k < window else (current, tf.ones_like(started))
        pair = tf.logical_and(has_last, ok)
        change = step_gain(last_h, h, eps)
        updated = tf.where(started[:, None], ema * gain + (1.0 - ema) * change, change)
        gain = tf.where(pair[:, None], updated, gain)
        started = tf.logical_or(started, pair)
        last_h = tf.where(ok[:, None], h, last_h)
        has_last = tf.logical_or(has_last, ok)
    return gain


def draw_logits(weights: tf.Tensor, power: float) -> tf.Tensor:
    """log(weights ** power): a draw with probability softmax of these is one in proportion to weights ** power."""
    return power * tf.math.log(weights)


def proportional_picks(generator: tf.random.Generator, logits: tf.Tensor, seq_len: tf.Tensor, k: int) -> tf.Tensor:
    """Indices into the pool drawn with probability softmax(logits) (`draw_logits`: weights ** power / sum),
    independently for every position and negative (with replacement, Gumbel-max: one argmax, no loop).

    logits `(batch, n)` -> `(batch, seq_len, k)`.
    """
    shape = tf.concat([tf.shape(logits)[:1], [seq_len, k], tf.shape(logits)[1:]], axis=0)
    uniform = generator.uniform(shape, minval=1e-20, maxval=1.0, dtype=logits.dtype)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    return tf.argmax(logits[:, tf.newaxis, tf.newaxis, :] + gumbel, axis=-1, output_type=tf.int32)


class GDNSSampler(NegativeSampler):
    Params = GDNSParams
    replica_local_state = True
    needs_inference_states = True

    def __init__(self, params: GDNSParams, n_items: int, n_users: int, num_negatives: int, *args, **kwargs) -> None:
        super().__init__(params, n_items, n_users, num_negatives, *args, **kwargs)
        if params.pool_size < 1 or params.history_epochs < 1:
            raise ValueError("gdns: need pool_size >= 1 and history_epochs >= 1")
        if not 0.0 <= params.ema < 1.0:
            raise ValueError(f"gdns: ema must be in [0, 1), got {params.ema}")
        if not 0.0 < params.initial_gain < 1.0 or params.power < 0:
            raise ValueError("gdns: need 0 < initial_gain < 1 and power >= 0")
        self.snapshots = ModelSnapshots(n_users, n_items, self.embedding_dim, params.history_epochs, name="snapshots")
        self.epoch = tf.Variable(0, trainable=False, name="epoch")
        # How far the draw is from uniform, for the log: whether the gain steers anything is an empirical question
        # (a sigmoid of small relative changes sits near 0.5 for most candidates).
        self.last_gain_spread = tf.Variable(0.0, trainable=False, name="last_gain_spread")
        self.last_top_share = tf.Variable(1.0, trainable=False, name="last_top_share")

    @staticmethod
    def bytes_per_user(params: GDNSParams, dim: int = 64) -> int:
        return ModelSnapshots.bytes_per_user(dim, params.history_epochs)

    def pool_gains(
        self, users: tf.Tensor, reference: tf.Tensor, target_ids: tf.Tensor, table: tf.Tensor, pool: tf.Tensor
    ) -> tf.Tensor:
        """Gains `(batch, n)` of ``pool`` `(batch, n)` for users `(batch,)` whose reference states are
        ``reference`` `(batch, dim)` now, with positives ``target_ids`` `(batch, seq_len)` (0 = not trained)."""
        target_ids = tf.cast(target_ids, tf.int32)
        trained = tf.not_equal(target_ids, 0)
        ids = tf.concat([target_ids, pool], axis=1)
        seq_len = tf.shape(target_ids)[1]
        now = tf.einsum("bd,bnd->bn", reference, tf.gather(table, ids))  # (B, L + n)
        current = expected_gap(now[:, seq_len:], now[:, :seq_len], trained)
        past, valid = self.snapshots.past_scores(users, ids, self.epoch)  # (B, W, L + n)
        history = expected_gap(past[..., seq_len:], past[..., :seq_len], trained)
        p = self.params
        return chained_gain(history, valid, current, p.ema, p.eps, p.initial_gain)

    def sample(self, context: SamplingContext) -> Negatives:
        p = self.params
        users = tf.cast(context.user_index, tf.int32)
        table = tf.stop_gradient(context.item_embeddings)
        reference = at_position(context.reference_states(), last_trained_position(context.target_ids))  # (B, d)
        pool = sample_excluding(self.generator, context.exclusion_ids, self.n_items, p.pool_size)  # (B, n)
        gains = self.pool_gains(users, reference, context.target_ids, table, pool)
        logits = draw_logits(gains, p.power)
        self.record_draw_shape(gains, logits)
        picks = proportional_picks(self.generator, logits, tf.shape(context.target_ids)[1], self.num_negatives)
        ids = tf.gather(pool, tf.reshape(picks, [tf.shape(pool)[0], -1]), batch_dims=1)
        self.snapshots.record(users, reference, table, self.epoch)
        return Negatives(ids=tf.reshape(ids, tf.shape(picks)))

    def record_draw_shape(self, gains: tf.Tensor, logits: tf.Tensor) -> None:
        """For the last batch: the standard deviation of the gain within a pool, and the probability of a pool's
        likeliest candidate as a multiple of uniform's 1/n (1 = a uniform draw), both averaged over the pools.

        gains and their `draw_logits` `(batch, n)`."""
        top_share = tf.reduce_max(tf.nn.softmax(logits, axis=-1), axis=-1) * tf.cast(tf.shape(gains)[-1], gains.dtype)
        self.last_gain_spread.assign(tf.reduce_mean(tf.math.reduce_std(gains, axis=-1)))
        self.last_top_share.assign(tf.reduce_mean(top_share))

    def on_epoch_end(self, epoch: int) -> None:
        self.epoch.assign(epoch + 1)

    def metrics(self) -> dict[str, tf.Tensor]:
        return {"gdns_gain_spread": self.last_gain_spread.value(), "gdns_top_share": self.last_top_share.value()}

    def loss(
        self, context: SamplingContext, negatives: Negatives, positive_scores: tf.Tensor, negative_scores: tf.Tensor
    ) -> tf.Tensor:
        """Group-wise hinge: per position l, sum_j max(0, s_lj - s_l+ + margin) `(batch, seq_len)`."""
        if not self.params.group_loss:
            return super().loss(context, negatives, positive_scores, negative_scores)
        hinge = tf.nn.relu(negative_scores - positive_scores[..., tf.newaxis] + self.params.margin)
        return tf.reduce_sum(hinge, axis=-1)
